//! The per-instance task: the only owner of an instance's process, terminal and timers.
//!
//! Everyone else talks to it through [`Ctl`] messages on its channel and reads its published
//! snapshot (`watch`), its output ring and its chunk broadcast. One `select!` loop waits on the
//! process exit (pidfd), output, controls and the earliest deadline (idle, wall, start, settle,
//! turn quiet, kill escalation), so every reaction is driven by an event, never by polling.
//! Each state change is committed to the store before its snapshot is published or a control
//! is answered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::instance::{next, Input, Rejected, State};
use super::output::{strip_ansi, Chunk, LogFile, Ring};
use super::{Inner, SupervisorError};
use crate::backend::{pidfd, Control, ExitWaiter, Output};
use crate::model::{now_ms, Event, InstanceInfo, ReasonCode};

/// A control message to an instance task.
pub(crate) enum Ctl {
    Send {
        text: String,
        enter: bool,
        reply: oneshot::Sender<Result<u64, SupervisorError>>,
    },
    Resize {
        cols: u16,
        rows: u16,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    Stop {
        reason: ReasonCode,
        grace: Duration,
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    Screen {
        lines: u32,
        reply: oneshot::Sender<Option<String>>,
    },
    Interrupt {
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    /// Leave the process running and let go of it (tmux only), for a later daemon to adopt.
    Detach {
        reply: oneshot::Sender<Result<(), SupervisorError>>,
    },
    /// Change caps (agents); a paused instance under its new caps resumes.
    SetBudget {
        max_cost_usd: Option<f64>,
        max_tokens: Option<u64>,
        reply: oneshot::Sender<Result<InstanceInfo, SupervisorError>>,
    },
    /// A cap outside the instance (the fleet's, an ancestor's) was reached.
    CapReached {
        cap: &'static str,
        reason: ReasonCode,
    },
    /// Its place in the tree (see `tree.rs`).
    Tree(super::tree::TreeCtl),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Running,
    Completed,
    /// The instance ended before the turn completed.
    Ended,
}

impl TurnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Running => "running",
            TurnStatus::Completed => "completed",
            TurnStatus::Ended => "ended",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub seq: u64,
    pub start_offset: u64,
    pub end_offset: Option<u64>,
    pub status: TurnStatus,
    /// The agent's own reply text (agents); commands reply with their output.
    pub reply: Option<String>,
    pub error: Option<String>,
}

/// Output chunks queued for live followers.
const CHUNKS_QUEUED: usize = 64;

/// Turns remembered in memory for `wait` (older ones are in the store).
const TURNS_KEPT: usize = 256;

/// What the handle and the task share.
pub(crate) struct Shared {
    pub info: watch::Sender<InstanceInfo>,
    /// Bumped whenever a turn record finishes (after the state it led to is published).
    pub turn_epoch: watch::Sender<u64>,
    pub ring: Mutex<Ring>,
    pub chunks: broadcast::Sender<Chunk>,
    pub turns: Mutex<VecDeque<TurnRecord>>,
}

impl Shared {
    pub fn new(info: InstanceInfo, ring_bytes: usize) -> Shared {
        Shared {
            info: watch::Sender::new(info),
            turn_epoch: watch::Sender::new(0),
            ring: Mutex::new(Ring::new(ring_bytes)),
            // Followers that fall further behind catch up from the ring (see `Follow`): each
            // slot costs memory per instance whether used or not (1024 slots: ~40 KiB).
            chunks: broadcast::channel(CHUNKS_QUEUED).0,
            turns: Mutex::new(VecDeque::new()),
        }
    }

    pub fn turn(&self, seq: u64) -> Option<TurnRecord> {
        lock(&self.turns).iter().find(|t| t.seq == seq).cloned()
    }
}

/// Locks a std mutex; a poisoned lock still holds consistent data here (plain buffers).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Timers {
    pub idle: Option<Duration>,
    pub wall_deadline: Option<Instant>,
    /// With a ready pattern: fail the spawn if not seen by then.
    pub start_deadline: Option<Instant>,
    /// Without a ready pattern: ready once alive this long.
    pub settle_deadline: Option<Instant>,
    pub quiet: Duration,
    pub quiet_deadline: Option<Instant>,
    pub kill_deadline: Option<Instant>,
    /// Agents: when to press Enter after a paste.
    pub enter_deadline: Option<Instant>,
    /// Interactive agents: when to press Enter again if the agent has not taken the prompt.
    pub submit_deadline: Option<Instant>,
    /// Agents: when to type a message held back while the TUI settles after an interrupt.
    pub paste_deadline: Option<Instant>,
    pub last_activity: Instant,
    /// The idle timer runs once the instance is ready (a slow start is the start timeout's
    /// business, not idleness).
    pub idle_armed: bool,
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        let idle = self
            .idle
            .filter(|_| self.idle_armed)
            .map(|d| self.last_activity + d);
        [
            idle,
            self.wall_deadline,
            self.start_deadline,
            self.settle_deadline,
            self.quiet_deadline,
            self.kill_deadline,
            self.enter_deadline,
            self.submit_deadline,
            self.paste_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

pub(crate) struct Task {
    pub inner: Arc<Inner>,
    pub shared: Arc<Shared>,
    pub info: InstanceInfo,
    pub state: State,
    pub control: Control,
    pub log: Option<LogFile>,
    pub timers: Timers,
    pub ready_re: Option<regex::bytes::Regex>,
    pub scan: Vec<u8>,
    pub stop_signal: Signal,
    pub current_turn: Option<u64>,
    pub start_timeout: Duration,
    /// The event that opens the task's life: `started` or `adopted`.
    pub first_event: (&'static str, serde_json::Value),
    /// Agents: the link to the agent's own events.
    pub agent: Option<super::agent_task::AgentLink>,
    /// The instance's cgroup, private tmp and identity; released once it has ended.
    pub iso: Option<crate::isolation::Guard>,
    /// What isolation it got, for the `started` event.
    pub iso_summary: serde_json::Value,
    pub memory_max: Option<u64>,
}

impl Task {
    #[tracing::instrument(name = "instance", skip_all, fields(id = %self.info.id, name = %self.info.name))]
    pub async fn run(
        mut self,
        mut output: Output,
        exit: ExitWaiter,
        mut ctl_rx: mpsc::Receiver<Ctl>,
    ) {
        let (kind, mut data) =
            std::mem::replace(&mut self.first_event, ("", serde_json::Value::Null));
        let isolation = std::mem::take(&mut self.iso_summary);
        if !isolation.is_null() {
            data["isolation"] = isolation;
        }
        self.commit(kind, data).await;
        let mut buf = vec![0u8; 16 * 1024];
        let mut output_open = true;
        let mut agent_rx = self.agent.as_mut().and_then(|a| a.rx.take());
        let status = loop {
            let deadline = self.timers.next();
            tokio::select! {
                status = exit.wait() => break status,
                n = output.read(&mut buf), if output_open => match n {
                    Ok(0) => output_open = false,
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        self.on_output(&data).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "output stream failed");
                        output_open = false;
                    }
                },
                Some(ctl) = ctl_rx.recv() => {
                    if let Ctl::Detach { reply } = ctl {
                        if self.detach(reply).await {
                            self.inner.remove_live(&self.info.id);
                            return;
                        }
                    } else {
                        self.on_ctl(ctl).await;
                    }
                }
                Some(ev) = recv_agent(&mut agent_rx) => self.on_agent(ev).await,
                _ = sleep_until(deadline) => self.on_deadline().await,
            }
        };
        self.on_exit(status, &mut output, exit.pid()).await;
        // Answer controls that raced with the exit.
        ctl_rx.close();
        while let Ok(ctl) = ctl_rx.try_recv() {
            self.refuse(ctl);
        }
        self.inner.remove_live(&self.info.id);
        self.inner.after_end(&self.info);
    }

    pub(super) fn sync_info(&mut self) {
        self.info.state = self.state.name();
        self.info.reason = self.state.reason();
        if let Some(st) = self.state.exit_status() {
            self.info.exit_code = st.code;
            self.info.exit_signal = st.signal;
        }
    }

    /// Commits the current info with an event, then publishes the snapshot.
    pub(crate) async fn commit(&mut self, kind: &str, data: serde_json::Value) {
        self.sync_info();
        let event = Event {
            seq: 0,
            ts: now_ms(),
            instance_id: Some(self.info.id.clone()),
            name: Some(self.info.name.clone()),
            kind: kind.to_string(),
            data,
        };
        match self.inner.store.record(self.info.clone(), event).await {
            Ok(ev) => {
                let _ = self.inner.events.send(ev);
            }
            Err(e) => warn!(error = %e, event = kind, "store write failed"),
        }
        self.shared.info.send_replace(self.info.clone());
    }

    pub(crate) async fn transition(
        &mut self,
        input: Input,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<bool, Rejected> {
        let new = next(&self.state, &input)?;
        if new == self.state {
            return Ok(false);
        }
        debug!(from = ?self.state.name(), to = ?new.name(), "transition");
        self.state = new;
        self.commit(kind, data).await;
        Ok(true)
    }

    pub(super) fn record_output(&mut self, data: &[u8]) {
        let offset = {
            let mut ring = lock(&self.shared.ring);
            let offset = ring.total();
            ring.push(data);
            offset
        };
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write(data) {
                warn!(error = %e, "instance log write failed; logging to file stops");
                self.log = None;
            }
        }
        let _ = self.shared.chunks.send(Chunk {
            offset,
            data: bytes::Bytes::copy_from_slice(data),
        });
        self.info.output_bytes += data.len() as u64;
        self.info.last_activity_at = now_ms();
        self.timers.last_activity = Instant::now();
    }

    async fn on_output(&mut self, data: &[u8]) {
        self.record_output(data);
        if let Some(a) = &self.agent {
            a.watch.nudge();
        }
        self.settling_output();
        if matches!(self.state, State::Busy) && self.agent.is_none() {
            self.timers.quiet_deadline = Some(Instant::now() + self.timers.quiet);
        }
        if matches!(self.state, State::Starting) {
            if let Some(re) = &self.ready_re {
                self.scan.extend_from_slice(data);
                if self.scan.len() > 64 * 1024 {
                    self.scan.drain(..self.scan.len() - 32 * 1024);
                }
                if re.is_match(&self.scan) || re.is_match(&strip_ansi(&self.scan)) {
                    self.scan = Vec::new();
                    if self.agent.is_some() {
                        // A TUI shows its banner a moment before it takes input: settle first.
                        if self.timers.settle_deadline.is_none() {
                            let settle =
                                Duration::from_millis(self.inner.cfg.agents.ready_settle_ms);
                            self.timers.settle_deadline = Some(Instant::now() + settle);
                        }
                    } else {
                        self.become_ready("ready_pattern").await;
                    }
                }
            }
        }
    }

    pub(crate) async fn become_ready(&mut self, how: &str) {
        self.timers.start_deadline = None;
        self.timers.settle_deadline = None;
        if !self.timers.idle_armed {
            self.timers.idle_armed = true;
            self.timers.last_activity = Instant::now();
        }
        if let Ok(true) = self
            .transition(Input::ReadySeen, "ready", json!({ "via": how }))
            .await
        {
            info!(via = how, "ready");
            // A message sent while starting begins its turn now.
            if self.current_turn.is_some() {
                let _ = self.transition(Input::MessageSent, "busy", json!({})).await;
                if self.agent.is_none() {
                    self.timers.quiet_deadline = Some(Instant::now() + self.timers.quiet);
                }
            }
        }
    }

    async fn on_ctl(&mut self, ctl: Ctl) {
        match ctl {
            Ctl::Send { text, enter, reply } => {
                let r = self.send(text, enter).await;
                let _ = reply.send(r);
            }
            Ctl::Resize { cols, rows, reply } => {
                let r = self
                    .control
                    .resize(cols, rows)
                    .await
                    .map_err(|e| SupervisorError::Backend(format!("resize failed: {e}")));
                if r.is_ok() {
                    let _ = self
                        .inner
                        .note(self.event("resize", json!({"cols": cols, "rows": rows})))
                        .await;
                }
                let _ = reply.send(r);
            }
            Ctl::Stop {
                reason,
                grace,
                reply,
            } => {
                let r = self.begin_stop(reason, grace).await;
                let _ = reply.send(r.map_err(|e| self.rejected(e)));
            }
            Ctl::Screen { lines, reply } => {
                let _ = reply.send(self.control.screen(lines).await);
            }
            Ctl::Detach { reply } => {
                let _ = self.detach(reply).await;
            }
            Ctl::SetBudget {
                max_cost_usd,
                max_tokens,
                reply,
            } => {
                let r = self.set_budget(max_cost_usd, max_tokens).await;
                let _ = reply.send(r);
            }
            Ctl::CapReached { cap, reason } => self.cap_reached(cap, reason).await,
            Ctl::Tree(t) => self.on_tree_ctl(t).await,
            Ctl::Interrupt { reply } => {
                let r = if self.state.is_ended() || matches!(self.state, State::Stopping { .. }) {
                    Err(self.rejected(Rejected::Stopping))
                } else {
                    match self.control.interrupt().await {
                        Ok(()) => {
                            let _ = self.inner.note(self.event("interrupt", json!({}))).await;
                            self.timers.last_activity = Instant::now();
                            if self.agent.is_some() {
                                self.agent_interrupted().await;
                            }
                            Ok(())
                        }
                        Err(e) => Err(SupervisorError::Backend(format!(
                            "sending the interrupt failed: {e}"
                        ))),
                    }
                };
                let _ = reply.send(r);
            }
        }
    }

    pub(crate) fn event(&self, kind: &str, data: serde_json::Value) -> Event {
        Event {
            seq: 0,
            ts: now_ms(),
            instance_id: Some(self.info.id.clone()),
            name: Some(self.info.name.clone()),
            kind: kind.into(),
            data,
        }
    }

    fn rejected(&self, e: Rejected) -> SupervisorError {
        SupervisorError::State(format!("instance {:?}: {e}", self.info.name))
    }

    fn refuse(&self, ctl: Ctl) {
        let err = || {
            SupervisorError::State(format!(
                "instance {:?} has ended ({})",
                self.info.name,
                self.info.state.as_str()
            ))
        };
        match ctl {
            Ctl::Send { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Ctl::Resize { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Ctl::Stop { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
            Ctl::Screen { reply, .. } => {
                let _ = reply.send(None);
            }
            Ctl::Interrupt { reply } | Ctl::Detach { reply } => {
                let _ = reply.send(Err(err()));
            }
            Ctl::SetBudget { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Ctl::CapReached { .. } | Ctl::Tree(_) => {}
        }
    }

    pub(crate) async fn send(&mut self, text: String, enter: bool) -> Result<u64, SupervisorError> {
        // Check first so nothing is typed into a paused or stopping instance.
        next(&self.state, &Input::MessageSent).map_err(|e| self.rejected(e))?;
        if self.agent.is_some() {
            self.paste_message(&text, enter).await?;
        } else {
            self.control.send_text(&text, enter).await.map_err(|e| {
                SupervisorError::Backend(format!("writing to the terminal failed: {e}"))
            })?;
        }
        let seq = self.info.turns + 1;
        self.info.turns = seq;
        self.info.last_activity_at = now_ms();
        self.timers.last_activity = Instant::now();
        if let Some(prev) = self.current_turn.take() {
            self.finish_turn(prev, super::task::TurnStatus::Completed)
                .await;
        }
        let start_offset = lock(&self.shared.ring).total();
        {
            let mut turns = lock(&self.shared.turns);
            turns.push_back(TurnRecord {
                seq,
                start_offset,
                end_offset: None,
                status: TurnStatus::Running,
                reply: None,
                error: None,
            });
            while turns.len() > TURNS_KEPT {
                turns.pop_front();
            }
        }
        self.current_turn = Some(seq);
        if let Err(e) = self
            .inner
            .store
            .start_turn(self.info.id.clone(), seq, text.len())
            .await
        {
            warn!(error = %e, "store write failed (turn)");
        }
        self.state = next(&self.state, &Input::MessageSent).map_err(|e| self.rejected(e))?;
        if !matches!(self.state, State::Starting) && self.agent.is_none() {
            self.timers.quiet_deadline = Some(Instant::now() + self.timers.quiet);
        }
        self.commit(
            "message",
            json!({ "turn": seq, "bytes": text.len(), "enter": enter }),
        )
        .await;
        Ok(seq)
    }

    pub(crate) async fn finish_turn(&mut self, seq: u64, status: TurnStatus) {
        let end = lock(&self.shared.ring).total();
        if let Some(t) = lock(&self.shared.turns).iter_mut().find(|t| t.seq == seq) {
            t.end_offset = Some(end);
            t.status = status;
        }
        self.shared.turn_epoch.send_modify(|e| *e += 1);
        if let Err(e) = self
            .inner
            .store
            .end_turn(self.info.id.clone(), seq, status.as_str())
            .await
        {
            warn!(error = %e, "store write failed (turn end)");
        }
    }

    pub(crate) async fn begin_stop(
        &mut self,
        reason: ReasonCode,
        grace: Duration,
    ) -> Result<(), Rejected> {
        let input = if reason == ReasonCode::SpawnFailed {
            Input::StartTimedOut
        } else {
            Input::Stop(reason)
        };
        let grace_s = grace.as_secs_f64();
        if !self
            .transition(
                input,
                "stopping",
                json!({ "reason": reason.as_str(), "grace_s": grace_s }),
            )
            .await?
        {
            return Ok(());
        }
        info!(reason = reason.as_str(), grace_s, "stopping");
        self.timers.start_deadline = None;
        self.timers.settle_deadline = None;
        self.timers.quiet_deadline = None;
        self.timers.idle = None;
        self.timers.wall_deadline = None;
        let pid = self.info.pid.unwrap_or(0);
        if pid <= 0 {
            return Ok(());
        }
        let sig = if grace.is_zero() {
            Signal::SIGKILL
        } else {
            self.stop_signal
        };
        if let Err(e) = pidfd::signal_group(pid, sig) {
            warn!(error = %e, "signalling the process group failed");
        }
        if grace.is_zero() {
            self.kill_cgroup();
        }
        if !grace.is_zero() {
            self.timers.kill_deadline = Some(Instant::now() + grace);
        }
        Ok(())
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if due(self.timers.kill_deadline) {
            self.timers.kill_deadline = None;
            if let Some(pid) = self.info.pid {
                warn!("grace period over; sending SIGKILL to the process group and cgroup");
                let _ = pidfd::signal_group(pid, Signal::SIGKILL);
                self.kill_cgroup();
                let _ = self
                    .inner
                    .note(self.event("kill_escalated", json!({})))
                    .await;
            }
        }
        if due(self.timers.enter_deadline) {
            self.timers.enter_deadline = None;
            if let Err(e) = self.control.send_text("", true).await {
                warn!(error = %e, "pressing Enter failed");
            }
            self.enter_pressed(false);
        }
        if due(self.timers.submit_deadline) {
            self.timers.submit_deadline = None;
            self.submit_overdue().await;
        }
        if due(self.timers.paste_deadline) {
            self.timers.paste_deadline = None;
            self.paste_held().await;
        }
        if due(self.timers.settle_deadline) {
            self.become_ready("settled").await;
        }
        if due(self.timers.start_deadline) {
            let grace = self.grace();
            let _ = self.begin_stop(ReasonCode::SpawnFailed, grace).await;
        }
        if due(self.timers.quiet_deadline) {
            self.timers.quiet_deadline = None;
            if let Some(seq) = self.current_turn.take() {
                let _ = self
                    .transition(Input::TurnDone, "turn_completed", json!({ "turn": seq }))
                    .await;
                self.finish_turn(seq, TurnStatus::Completed).await;
            }
        }
        if due(self.timers.wall_deadline) {
            let grace = self.grace();
            let _ = self.begin_stop(ReasonCode::WallTimeout, grace).await;
        }
        if self
            .timers
            .idle
            .is_some_and(|d| self.timers.last_activity + d <= now)
        {
            let grace = self.grace();
            let _ = self.begin_stop(ReasonCode::IdleTimeout, grace).await;
        }
    }

    /// SIGKILL to everything in the instance's cgroup, including processes that left its
    /// process group (double forks, `setsid`).
    fn kill_cgroup(&self) {
        if let Some(iso) = &self.iso {
            iso.kill();
        }
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.inner.cfg.instance.stop_grace_s)
    }
}

async fn recv_agent(
    rx: &mut Option<mpsc::Receiver<crate::agent::watch::AgentEvent>>,
) -> Option<crate::agent::watch::AgentEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
