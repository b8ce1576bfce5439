//! How an instance task ends: the process exited (status, the rest of its group and cgroup
//! killed, the output drained, the end state and its reason committed), or the task lets go of
//! a tmux instance for the next daemon to adopt (detach).

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::instance::{next, Input, State};
use super::output::{last_lines, strip_ansi};
use super::task::{lock, Task, TurnStatus};
use super::SupervisorError;
use crate::backend::{pidfd, Output};
use crate::model::{now_ms, ExitStatus, ReasonCode};

impl Task {
    /// Lets go of a tmux instance without stopping it; its row stays live for adoption.
    /// Returns whether the task should end.
    pub(super) async fn detach(
        &mut self,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    ) -> bool {
        if self.control.tmux_session().is_none() {
            let _ = reply.send(Err(SupervisorError::State(format!(
                "instance {:?} runs in a PTY, which cannot outlive the daemon",
                self.info.name
            ))));
            return false;
        }
        self.commit("detached", json!({ "pid": self.info.pid }))
            .await;
        info!("detached; the tmux session keeps running for the next daemon to adopt");
        let _ = reply.send(Ok(()));
        true
    }

    pub(super) async fn on_exit(
        &mut self,
        status: std::io::Result<ExitStatus>,
        output: &mut Output,
        pid: i32,
    ) {
        let status = status.unwrap_or_else(|e| {
            warn!(error = %e, "could not read the exit status");
            ExitStatus::default()
        });
        // The leader is gone; whatever else is left in its group and its cgroup goes with it.
        let _ = pidfd::signal_group(pid, Signal::SIGKILL);
        let oom_kills = match &self.iso {
            Some(iso) => {
                iso.kill_all().await;
                iso.oom_kills()
            }
            None => 0,
        };
        let failing = matches!(
            self.state,
            State::Starting
                | State::Stopping {
                    reason: ReasonCode::SpawnFailed
                }
        );
        let screen = if failing {
            self.control.screen(40).await
        } else {
            None
        };
        if let Err(e) = self.control.cleanup().await {
            warn!(error = %e, "backend cleanup failed");
        }
        output.close_writer();
        let mut rest = Vec::new();
        output
            .drain(Duration::from_secs(1), |d| rest.extend_from_slice(d))
            .await;
        if !rest.is_empty() {
            self.record_output(&rest);
        }
        if let Some(seq) = self.current_turn.take() {
            self.finish_turn(seq, TurnStatus::Ended).await;
        }
        let timed_out = matches!(
            self.state,
            State::Stopping {
                reason: ReasonCode::SpawnFailed
            }
        );
        if let Some(iso) = self.iso.take() {
            iso.release();
        }
        let oom = oom_kills > 0 && !status.success();
        let input = if oom {
            Input::OomKilled(status)
        } else {
            Input::ProcessExited(status)
        };
        let Ok(new) = next(&self.state, &input) else {
            return;
        };
        self.state = new;
        if let State::Failed { .. } = self.state {
            let tail = screen
                .map(|s| s.into_bytes())
                .unwrap_or_else(|| lock(&self.shared.ring).tail(4096).1);
            let tail = strip_ansi(&tail);
            let tail = String::from_utf8_lossy(last_lines(&tail, 20))
                .trim()
                .to_string();
            let why = if timed_out {
                format!(
                    "not ready within {:.1} s (ready_pattern not seen); stopped",
                    self.start_timeout.as_secs_f64()
                )
            } else {
                format!("exited during start ({status})")
            };
            self.info.reason_detail = Some(if tail.is_empty() {
                format!("{why}; it printed nothing")
            } else {
                format!("{why}; last output:\n{tail}")
            });
        } else if self.state.reason() == Some(ReasonCode::Oom) {
            let limit = self
                .memory_max
                .map(|b| format!("memory_max = {} MiB", b >> 20))
                .unwrap_or_else(|| "the host's memory".into());
            self.info.reason_detail = Some(format!(
                "the kernel's OOM killer ended {oom_kills} process(es) of the instance: it used more than {limit} ({status})"
            ));
        } else if let Some(sig) = status.signal {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown");
            self.info.reason_detail = Some(format!("signal {sig} ({name})"));
        }
        self.info.ended_at = Some(now_ms());
        info!(state = self.state.name().as_str(), %status, "ended");
        self.commit(
            "exit",
            json!({
                "exit_code": status.code,
                "signal": status.signal,
                "state": self.state.name().as_str(),
                "reason": self.state.reason().map(|r| r.as_str()),
                "detail": self.info.reason_detail,
            }),
        )
        .await;
    }
}
