//! What a previous daemon left behind: on start, every instance the store records as live is
//! either adopted (a tmux pane that is still the recorded process, verified by pid, start time
//! and boot id) or settled as `lost`; `resume` starts an ended instance again.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::time::Instant;
use tracing::warn;

use super::instance::State;
use super::output::read_log_tail;
use super::task::Timers;
use super::{not_found, Caller, Supervisor, SupervisorError, TaskStart};
use crate::backend::{self, parse_signal};
use crate::model::{
    now_ms, BackendKind, Event, InstanceInfo, Kind, ReasonCode, SpawnRequest, StateName,
};

impl Supervisor {
    /// Settles every instance the store records as live: adopt it if its tmux pane is still
    /// the recorded process, else stop whatever is left of it and mark it `lost`.
    pub(super) async fn recover(&self) -> Result<(), SupervisorError> {
        let mut lost = Vec::new();
        for info in self.inner.store.list_instances(true).await? {
            match self.try_adopt(&info).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => warn!(id = %info.id, error = %e, "adoption failed"),
            }
            self.inner.remove_live(&info.id);
            lost.push(info.clone());
            self.mark_lost(info).await?;
        }
        // Adopted agents keep their MCP tokens; every other token is void.
        self.inner.store.revoke_ended_tokens().await?;
        for (digest, id) in self.inner.store.live_token_digests().await? {
            if self.handle(&id).is_some() {
                self.inner.tokens.restore(digest, id);
            }
        }
        // Adopted children of a parent that was lost follow its end policy.
        for info in &lost {
            self.inner.after_end(info);
        }
        self.remove_stale_pipes();
        Ok(())
    }

    /// Removes output FIFOs in our own run dir that no live instance uses (left by a daemon
    /// that died); nothing outside `<run_dir>/pipes` is touched.
    fn remove_stale_pipes(&self) {
        let dir = self.inner.paths.run_dir.join("pipes");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".out") else {
                continue;
            };
            if self.handle(id).is_none() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Adopts a live tmux instance. `Ok(false)` when there is nothing (verifiably ours) to adopt.
    async fn try_adopt(&self, info: &InstanceInfo) -> Result<bool, SupervisorError> {
        let (BackendKind::Tmux, Some(session), Some(pid)) =
            (info.backend, &info.tmux_session, info.pid)
        else {
            return Ok(false); // a PTY dies with the daemon that held its master
        };
        let tmux = &self.inner.tmux;
        if !tmux.has_session(session).await.unwrap_or(false) {
            return Ok(false);
        }
        let st = tmux
            .pane_status(session)
            .await
            .map_err(|e| SupervisorError::Backend(e.to_string()))?;
        if st.dead || st.pid != pid {
            return Ok(false);
        }
        if !backend::pidfd::same_process(pid, info.pid_start, info.boot_id.as_deref()) {
            warn!(id = %info.id, pid, "pane pid is not the recorded process (start time or boot differs); not adopting");
            return Ok(false);
        }
        self.reserve(&info.id, &info.name, info.parent_id.as_deref(), false)?;
        let launched = backend::adopt_tmux(
            tmux,
            session,
            pid,
            &self.inner.paths.run_dir.join("pipes"),
            &format!("{}.out", info.id),
        )
        .await
        .map_err(|e| SupervisorError::Backend(format!("re-piping {session}: {e}")))?;
        let cfg = &self.inner.cfg;
        let spec: Option<SpawnRequest> = self
            .inner
            .store
            .spec(info.id.clone())
            .await?
            .and_then(|s| serde_json::from_str(&s).ok());
        let quiet_ms = spec
            .and_then(|s| s.turn_quiet_ms)
            .unwrap_or(cfg.instance.turn_quiet_ms);
        // Timers continue from the recorded clock: idle from the last activity, wall from start.
        let now_wall = now_ms();
        let now = Instant::now();
        let ago = |ms: i64| Duration::from_millis((now_wall - ms).max(0) as u64);
        let last_activity = now.checked_sub(ago(info.last_activity_at)).unwrap_or(now);
        let wall_deadline = (info.wall_timeout_s > 0).then(|| {
            let started = now
                .checked_sub(ago(info.started_at.unwrap_or(info.created_at)))
                .unwrap_or(now);
            started + Duration::from_secs(info.wall_timeout_s)
        });
        let timers = Timers {
            idle: (info.idle_timeout_s > 0).then(|| Duration::from_secs(info.idle_timeout_s)),
            wall_deadline,
            start_deadline: None,
            settle_deadline: None,
            quiet: Duration::from_millis(quiet_ms),
            quiet_deadline: None,
            kill_deadline: None,
            enter_deadline: None,
            submit_deadline: None,
            paste_deadline: None,
            last_activity,
            idle_armed: true,
        };
        // An agent's watcher resumes its files; hook lines from before are not replayed.
        let agent = match info.kind {
            Kind::Claude | Kind::Codex => {
                let ws_name = std::path::Path::new(&info.workspace)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| info.id.clone());
                let dir = crate::agent::launch::agent_dir(&self.inner.paths.state_dir, &ws_name);
                let kind = info.kind;
                let mode = crate::agent::launch::Mode::parse(
                    info.mode.as_deref().unwrap_or("interactive"),
                )
                .unwrap_or(crate::agent::launch::Mode::Interactive);
                let headless = mode == crate::agent::launch::Mode::Headless;
                let spec = crate::agent::launch::WatchSpec {
                    kind,
                    mode,
                    config_dir: dir.join(if kind == Kind::Codex {
                        "codex"
                    } else {
                        "claude"
                    }),
                    hooks_file: dir.join(if headless {
                        format!("turns-{}.jsonl", info.id)
                    } else {
                        format!("hooks-{}.jsonl", info.id)
                    }),
                    session_id: info.session_id.clone(),
                    agent_dir: dir,
                    model: info.model.clone().unwrap_or_else(|| {
                        if kind == Kind::Codex {
                            "gpt-5.5".into()
                        } else {
                            "claude-opus-4-8".into()
                        }
                    }),
                };
                Some(self.link_agent(spec, !headless, None)?)
            }
            Kind::Command => None,
        };
        let state = match info.state {
            StateName::Paused => State::Paused,
            _ => State::Ready,
        };
        let mut adopted = info.clone();
        adopted.state = state.name();
        let ring_seed = read_log_tail(
            &self.log_path(&info.id),
            cfg.instance.log_keep,
            cfg.instance.ring_bytes,
        )
        .unwrap_or_default();
        self.start_task(TaskStart {
            info: adopted,
            state,
            launched,
            timers,
            ready_re: None,
            stop_signal: parse_signal(&cfg.instance.stop_signal).unwrap_or(Signal::SIGTERM),
            first_event: (
                "adopted",
                json!({ "pid": pid, "previous_state": info.state }),
            ),
            ring_seed,
            agent,
            iso: None,
            iso_summary: serde_json::Value::Null,
            memory_max: None,
        });
        tracing::info!(id = %info.id, name = %info.name, pid, "adopted");
        // A stop that was under way when the old daemon died is carried on.
        if let (StateName::Stopping, Some(reason)) = (info.state, info.reason) {
            if let Some(h) = self.handle(&info.id) {
                let grace = Duration::from_secs_f64(cfg.instance.stop_grace_s);
                let _ = self.stop_handle(&h, reason, grace).await;
            }
        }
        Ok(true)
    }

    /// Stops what is left of an instance that cannot be adopted and records it as `lost`.
    async fn mark_lost(&self, mut info: InstanceInfo) -> Result<(), SupervisorError> {
        let mut session_alive = false;
        if let Some(session) = &info.tmux_session {
            session_alive = self.inner.tmux.has_session(session).await.unwrap_or(false);
            if session_alive {
                if let Ok(st) = self.inner.tmux.pane_status(session).await {
                    let _ = backend::pidfd::signal_group(st.pid, Signal::SIGKILL);
                }
                let _ = self.inner.tmux.kill_session(session).await;
            }
        }
        // A PTY child whose master died got SIGHUP; anything of its group left goes now, but
        // only if the pid is still the recorded process.
        if let Some(pid) = info.pid {
            if backend::pidfd::same_process(pid, info.pid_start, info.boot_id.as_deref()) {
                let _ = backend::pidfd::signal_group(pid, Signal::SIGKILL);
            }
        }
        self.inner.isolation.reap_stale(&info.id).await;
        info.state = StateName::Lost;
        info.reason = Some(ReasonCode::Lost);
        info.reason_detail = Some(if session_alive {
            "its tmux session outlived the daemon but is not the recorded process; it was stopped"
                .into()
        } else {
            "found dead after a daemon restart".into()
        });
        info.ended_at = Some(now_ms());
        let ev = Event {
            seq: 0,
            ts: now_ms(),
            instance_id: Some(info.id.clone()),
            name: Some(info.name.clone()),
            kind: "lost".into(),
            data: json!({ "previous_pid": info.pid, "session_alive": session_alive }),
        };
        warn!(id = %info.id, name = %info.name, "marking instance lost");
        let ev = self.inner.store.record(info, ev).await?;
        self.inner.announce(ev);
        Ok(())
    }

    /// Starts an ended instance again: the same command, environment and settings, in the
    /// same workspace and under the same name, as a new instance (ids are never reused).
    /// A resumed child stays under its parent while that one lives; otherwise it goes to the
    /// caller (an agent resuming a descendant adopts it; the operator gets a root).
    pub async fn resume(&self, caller: &Caller, r: &str) -> Result<InstanceInfo, SupervisorError> {
        let old = self.resolve(caller, r).await?;
        if old.state.is_live() {
            return Err(SupervisorError::State(format!(
                "instance {:?} is {}; only an ended instance can be resumed",
                old.name,
                old.state.as_str()
            )));
        }
        let spec = self
            .inner
            .store
            .spec(old.id.clone())
            .await?
            .ok_or_else(|| not_found(r))?;
        let mut req: SpawnRequest = serde_json::from_str(&spec).map_err(|e| {
            SupervisorError::Backend(format!("stored spec of {:?} is unreadable: {e}", old.name))
        })?;
        req.name = Some(old.name.clone());
        req.workspace = std::path::Path::new(&old.workspace)
            .strip_prefix(&self.inner.paths.workspace_root)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_string);
        // The workspace is the clone already: no second clone.
        req.repo_url = None;
        req.git_ref = None;
        req.wait_ready = false;
        let parent_live = req
            .parent_id
            .as_deref()
            .is_some_and(|p| self.handle(p).is_some());
        if !parent_live {
            req.max_depth = None;
            req.parent_id = match caller {
                Caller::Operator => None,
                Caller::Agent { id } => Some(id.clone()),
            };
        }
        if old.kind.is_agent() {
            req.resume_session = old.session_id.clone();
        }
        let info = self.spawn(req).await?;
        let ev = self.event(&info, "resumed", json!({ "from": old.id }));
        self.inner.note(ev).await?;
        Ok(info)
    }
}
