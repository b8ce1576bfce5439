//! The supervisor: the only API the protocol edges (HTTP, CLI, MCP) use.
//!
//! Theory of operation: [`Supervisor::spawn`] validates a request into a launch plan,
//! reserves the name and a slot, records the instance (`starting`) in the store, starts the
//! process through a backend, and hands it to a new [`task::Task`] that owns it from then on.
//! Every other method finds the instance's handle and sends its task a control message, or
//! reads what the task publishes (snapshot, output ring, chunk broadcast). Ended instances are
//! read from the store. Nothing here knows about HTTP or MCP.

pub mod files;
pub mod instance;
pub mod output;
mod plan;
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::{self, tmux::Tmux};
use crate::config::{Config, Paths};
use crate::isolation::{Isolation, IsolationError};
use crate::model::{now_ms, BackendKind, Event, InstanceInfo, ReasonCode, SpawnRequest, StateName};
use crate::store::{Store, StoreError};
use instance::State;
use output::{last_lines, read_log_tail, strip_ansi, Chunk};
use task::{lock, Ctl, Shared, Task, Timers};

pub use task::TurnStatus;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    LimitReached(String),
    #[error("spawn failed: {0}")]
    SpawnFailed(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Backend(String),
    #[error("corral is shutting down; no new instances")]
    ShuttingDown,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A live instance as the supervisor holds it: a way to talk to its task.
#[derive(Clone)]
struct Handle {
    ctl: mpsc::Sender<Ctl>,
    shared: Arc<Shared>,
}

/// A live slot: reserved at spawn, filled once the task runs, removed when it ends.
struct Slot {
    name: String,
    handle: Option<Handle>,
}

pub(crate) struct Inner {
    pub cfg: Arc<Config>,
    pub paths: Paths,
    pub store: Store,
    pub tmux: Tmux,
    pub isolation: Isolation,
    pub events: broadcast::Sender<Event>,
    live: Mutex<HashMap<String, Slot>>,
    live_count: watch::Sender<usize>,
    shutting_down: AtomicBool,
}

impl Inner {
    /// Broadcasts an event the store has committed.
    pub fn announce(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// Commits an event that changes no instance row, then broadcasts it.
    pub async fn note(&self, ev: Event) -> Result<(), StoreError> {
        let ev = self.store.event(ev).await?;
        self.announce(ev);
        Ok(())
    }

    pub fn remove_live(&self, id: &str) {
        let n = {
            let mut live = lock(&self.live);
            live.remove(id);
            live.len()
        };
        self.live_count.send_replace(n);
    }
}

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Output of an instance, bounded.
#[derive(Debug, Clone, Serialize)]
pub struct OutputTail {
    pub id: String,
    pub name: String,
    /// Offset of the first returned byte in the instance's output.
    pub offset: u64,
    /// Bytes of output so far (live instances; for ended ones the log's size).
    pub total: u64,
    pub text: String,
    /// True when older output exists beyond what was returned.
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TurnOutcome {
    pub id: String,
    pub name: String,
    pub turn: u64,
    pub status: TurnStatus,
    /// False when the wait timed out (the turn keeps running).
    pub done: bool,
    pub state: StateName,
    /// Output produced during the turn (escapes stripped), bounded.
    pub reply: String,
}

/// A live follower of an instance's output.
pub struct Follow {
    pub tail: Vec<u8>,
    pub from: u64,
    pub chunks: Option<broadcast::Receiver<Chunk>>,
    pub info: Option<watch::Receiver<InstanceInfo>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttachInfo {
    pub id: String,
    pub name: String,
    pub argv: Vec<String>,
}

/// Most bytes any output read returns.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

impl Supervisor {
    /// Builds the supervisor, starts the private tmux server and settles what a previous run
    /// left live in the store.
    pub async fn start(cfg: Arc<Config>, store: Store) -> anyhow::Result<Supervisor> {
        use anyhow::Context;
        let paths = cfg.paths();
        let tmux = Tmux::new(&cfg.tmux.binary, &paths.run_dir);
        // Before tmux starts: setting up cgroups may move the daemon into a leaf cgroup, and
        // the tmux server must not stay behind in the daemon's former cgroup.
        let isolation = Isolation::start(&cfg, &paths)
            .map_err(|e| anyhow::anyhow!(e))
            .context("setting up isolation")?;
        let inner = Arc::new(Inner {
            tmux,
            isolation,
            paths,
            store,
            events: broadcast::channel(4096).0,
            live: Mutex::new(HashMap::new()),
            live_count: watch::Sender::new(0),
            shutting_down: AtomicBool::new(false),
            cfg,
        });
        let sup = Supervisor { inner };
        if let Err(e) = sup.inner.tmux.ensure_server().await {
            warn!(error = %e, "tmux is unavailable; the tmux backend will fail until it is installed");
        }
        sup.recover()
            .await
            .context("settling instances left by a previous run")?;
        Ok(sup)
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// What isolation instances get on this host (for /health).
    pub fn isolation_status(&self) -> serde_json::Value {
        self.inner.isolation.status()
    }

    /// Events as they are committed (for observers such as MCP notifications and metrics).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Instances that were live when the previous daemon stopped cannot be adopted (their
    /// output pipes and timers died with it), so they are stopped and marked `lost`.
    async fn recover(&self) -> Result<(), SupervisorError> {
        for mut info in self.inner.store.list_instances(true).await? {
            let mut session_alive = false;
            if let Some(session) = &info.tmux_session {
                session_alive = self.inner.tmux.has_session(session).await.unwrap_or(false);
                if session_alive {
                    if let Ok(st) = self.inner.tmux.pane_status(session).await {
                        let _ =
                            backend::pidfd::signal_group(st.pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    let _ = self.inner.tmux.kill_session(session).await;
                }
            }
            self.inner.isolation.reap_stale(&info.id).await;
            info.state = StateName::Lost;
            info.reason = Some(ReasonCode::Lost);
            info.reason_detail = Some(if session_alive {
                "the daemon restarted while it ran; its tmux session was stopped".into()
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
        }
        Ok(())
    }

    /// Starts an instance. Returns once the process runs (or, with `wait_ready`, once it is
    /// ready); a process that fails to start is an error carrying the reason.
    pub async fn spawn(&self, req: SpawnRequest) -> Result<InstanceInfo, SupervisorError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let wait_ready = req.wait_ready;
        let plan = plan::plan(&self.inner.cfg, self.inner.isolation.limits(), req)?;
        let id = self.new_id().await?;
        let name = plan
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{id}", plan.kind.as_str()));
        self.reserve(&id, &name)?;
        let result = self.launch(&id, &name, plan).await;
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                self.inner.remove_live(&id);
                return Err(e);
            }
        };
        if !wait_ready {
            return Ok(info);
        }
        self.wait_ready(&id).await
    }

    async fn new_id(&self) -> Result<String, SupervisorError> {
        for _ in 0..8 {
            let id = crate::ids::new_id();
            if !self.inner.store.id_exists(id.clone()).await? {
                return Ok(id);
            }
        }
        Err(SupervisorError::Backend(
            "could not draw a unique instance id".into(),
        ))
    }

    fn reserve(&self, id: &str, name: &str) -> Result<(), SupervisorError> {
        let mut live = lock(&self.inner.live);
        if live.values().any(|s| s.name == name) {
            return Err(SupervisorError::Conflict(format!(
                "an instance named {name:?} is already running; pick another name or stop it first"
            )));
        }
        let max = self.inner.cfg.limits.max_instances as usize;
        if live.len() >= max {
            return Err(SupervisorError::LimitReached(format!(
                "limits.max_instances = {max} instances are already live; stop one first"
            )));
        }
        live.insert(
            id.to_string(),
            Slot {
                name: name.to_string(),
                handle: None,
            },
        );
        let n = live.len();
        drop(live);
        self.inner.live_count.send_replace(n);
        Ok(())
    }

    async fn launch(
        &self,
        id: &str,
        name: &str,
        plan: plan::Plan,
    ) -> Result<InstanceInfo, SupervisorError> {
        let cfg = &self.inner.cfg;
        let (workspace, workspace_name) = plan.workspace_path(&self.inner.paths, id)?;
        let prepared = self
            .inner
            .isolation
            .prepare(crate::isolation::InstanceSpec {
                id,
                workspace: &workspace,
                workspace_name: &workspace_name,
                limits: &plan.limits,
                landlock: plan.landlock,
                env: plan.instance_env(name, id),
                argv: &plan.argv,
            })
            .map_err(|e| match e {
                IsolationError::Refused(m) => SupervisorError::SpawnFailed(m),
                other => SupervisorError::Backend(other.to_string()),
            })?;
        let now = now_ms();
        let mut info = InstanceInfo {
            id: id.to_string(),
            name: name.to_string(),
            kind: plan.kind,
            backend: plan.backend,
            parent_id: None,
            state: StateName::Starting,
            reason: None,
            reason_detail: None,
            exit_code: None,
            exit_signal: None,
            pid: None,
            argv: plan.argv.clone(),
            env_keys: plan.env.keys().cloned().collect(),
            workspace: workspace.display().to_string(),
            tmux_session: (plan.backend == BackendKind::Tmux).then(|| name.to_string()),
            idle_timeout_s: plan.idle_timeout_s,
            wall_timeout_s: plan.wall_timeout_s,
            created_at: now,
            started_at: None,
            ended_at: None,
            last_activity_at: now,
            output_bytes: 0,
            turns: 0,
            cost_usd: 0.0,
        };
        let spec_json = plan.spec_json();
        let ev = self.event(
            &info,
            "spawn",
            json!({
                "kind": info.kind.as_str(),
                "backend": info.backend.as_str(),
                "argv": info.argv,
                "env_keys": info.env_keys,
                "workspace": info.workspace,
            }),
        );
        let ev = match self
            .inner
            .store
            .insert_instance(info.clone(), spec_json, ev)
            .await
        {
            Ok(ev) => ev,
            Err(e) => {
                prepared.guard.release();
                return Err(e.into());
            }
        };
        self.inner.announce(ev);

        let spec = backend::LaunchSpec {
            argv: prepared.argv,
            cwd: workspace.clone(),
            cols: plan.cols,
            rows: plan.rows,
            session: name.to_string(),
        };
        let launched = backend::launch(
            plan.backend,
            &spec,
            &self.inner.tmux,
            &self.inner.paths.run_dir.join("pipes"),
            &format!("{id}.out"),
        )
        .await;
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                info.state = StateName::Failed;
                info.reason = Some(ReasonCode::SpawnFailed);
                info.reason_detail = Some(msg.clone());
                info.ended_at = Some(now_ms());
                let ev = self.event(
                    &info,
                    "exit",
                    json!({ "state": "failed", "reason": "spawn_failed", "detail": msg }),
                );
                prepared.guard.release();
                let ev = self.inner.store.record(info, ev).await?;
                self.inner.announce(ev);
                return Err(SupervisorError::SpawnFailed(msg));
            }
        };
        info.pid = Some(launched.pid);
        info.started_at = Some(now_ms());
        let shared = Arc::new(Shared::new(info.clone(), cfg.instance.ring_bytes));
        let log = output::LogFile::open(
            self.inner
                .paths
                .instance_log_dir()
                .join(format!("{id}.log")),
            cfg.instance.log_max_bytes,
            cfg.instance.log_keep,
        )
        .map_err(|e| warn!(error = %e, "instance log unavailable"))
        .ok();
        let now = Instant::now();
        let start_timeout = Duration::from_secs_f64(cfg.instance.start_timeout_s);
        let quiet = Duration::from_millis(plan.turn_quiet_ms);
        let timers = Timers {
            idle: (plan.idle_timeout_s > 0).then(|| Duration::from_secs(plan.idle_timeout_s)),
            wall_deadline: (plan.wall_timeout_s > 0)
                .then(|| now + Duration::from_secs(plan.wall_timeout_s)),
            start_deadline: plan.ready_re.is_some().then(|| now + start_timeout),
            settle_deadline: plan
                .ready_re
                .is_none()
                .then(|| now + Duration::from_millis(cfg.instance.settle_ms)),
            quiet,
            quiet_deadline: None,
            kill_deadline: None,
            last_activity: now,
        };
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let task = Task {
            inner: self.inner.clone(),
            shared: shared.clone(),
            info: info.clone(),
            state: State::Starting,
            control: launched.control,
            log,
            timers,
            ready_re: plan.ready_re,
            scan: Vec::new(),
            stop_signal: plan.stop_signal,
            current_turn: None,
            start_timeout,
            iso: Some(prepared.guard),
            iso_summary: prepared.summary,
            memory_max: plan.limits.memory_max,
        };
        {
            let mut live = lock(&self.inner.live);
            if let Some(slot) = live.get_mut(id) {
                slot.handle = Some(Handle {
                    ctl: ctl_tx,
                    shared: shared.clone(),
                });
            }
        }
        tokio::spawn(task.run(launched.output, launched.exit, ctl_rx));
        info!(%id, %name, pid = info.pid, backend = info.backend.as_str(), "spawned");
        Ok(info)
    }

    async fn wait_ready(&self, id: &str) -> Result<InstanceInfo, SupervisorError> {
        let Some(handle) = self.handle(id) else {
            return self.get(id).await.and_then(ready_or_error);
        };
        let mut rx = handle.shared.info.subscribe();
        let limit = Duration::from_secs_f64(self.inner.cfg.instance.start_timeout_s + 5.0);
        // Past `starting`, unless it is being stopped because it never became ready.
        let settled = |i: &InstanceInfo| match i.state {
            StateName::Starting => false,
            StateName::Stopping => i.reason != Some(ReasonCode::SpawnFailed),
            _ => true,
        };
        let _ = tokio::time::timeout(limit, rx.wait_for(settled)).await;
        let info = rx.borrow().clone();
        if info.state.is_live() && info.reason != Some(ReasonCode::SpawnFailed) {
            return Ok(info);
        }
        // The task commits the end state before it drops out of the live set.
        let _ = tokio::time::timeout(limit, rx.wait_for(|i| !i.state.is_live())).await;
        // It ended: read the committed end state (with its detail).
        self.get(id).await.and_then(ready_or_error)
    }

    fn event(&self, info: &InstanceInfo, kind: &str, data: serde_json::Value) -> Event {
        Event {
            seq: 0,
            ts: now_ms(),
            instance_id: Some(info.id.clone()),
            name: Some(info.name.clone()),
            kind: kind.into(),
            data,
        }
    }

    fn handle(&self, r: &str) -> Option<Handle> {
        let live = lock(&self.inner.live);
        if let Some(slot) = live.get(r) {
            return slot.handle.clone();
        }
        live.values()
            .find(|s| s.name == r)
            .and_then(|s| s.handle.clone())
    }

    /// Finds an instance by id or name (live first, then the store).
    pub async fn get(&self, r: &str) -> Result<InstanceInfo, SupervisorError> {
        if let Some(h) = self.handle(r) {
            let info = h.shared.info.borrow().clone();
            return Ok(info);
        }
        self.inner
            .store
            .find_instance(r.to_string())
            .await?
            .ok_or_else(|| not_found(r))
    }

    /// Live instances, or with `all` every instance the store knows, oldest first.
    pub async fn list(&self, all: bool) -> Result<Vec<InstanceInfo>, SupervisorError> {
        let live: Vec<InstanceInfo> = {
            let map = lock(&self.inner.live);
            map.values()
                .filter_map(|s| s.handle.as_ref())
                .map(|h| h.shared.info.borrow().clone())
                .collect()
        };
        let mut out = if all {
            self.inner.store.list_instances(false).await?
        } else {
            self.inner.store.list_instances(true).await?
        };
        for info in &mut out {
            if let Some(l) = live.iter().find(|l| l.id == info.id) {
                *info = l.clone();
            }
        }
        Ok(out)
    }

    /// Types `text` into the instance (and Enter, when asked); returns the turn number.
    pub async fn send(&self, r: &str, text: String, enter: bool) -> Result<u64, SupervisorError> {
        if text.len() > plan::MAX_MESSAGE_BYTES {
            return Err(SupervisorError::InvalidArgument(format!(
                "message is {} bytes; the limit is {}",
                text.len(),
                plan::MAX_MESSAGE_BYTES
            )));
        }
        if text.contains('\0') {
            return Err(SupervisorError::InvalidArgument(
                "message contains a NUL byte".into(),
            ));
        }
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Send {
                text,
                enter,
                reply: tx,
            })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))?
    }

    async fn live_handle_or_ended(&self, r: &str) -> Result<Handle, SupervisorError> {
        if let Some(h) = self.handle(r) {
            return Ok(h);
        }
        let info = self.get(r).await?;
        Err(SupervisorError::State(format!(
            "instance {:?} has ended ({}{})",
            info.name,
            info.state.as_str(),
            info.reason
                .map(|r| format!(": {}", r.as_str()))
                .unwrap_or_default()
        )))
    }

    /// Waits up to `timeout` for turn `turn` to complete and returns its output.
    pub async fn wait_turn(
        &self,
        r: &str,
        turn: u64,
        timeout: Duration,
    ) -> Result<TurnOutcome, SupervisorError> {
        let h = self.live_handle_or_ended(r).await?;
        let Some(_) = h.shared.turn(turn) else {
            return Err(SupervisorError::NotFound(format!(
                "instance {r:?} has no turn {turn} in memory"
            )));
        };
        let mut rx = h.shared.info.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let rec = h.shared.turn(turn);
            let ended = !rx.borrow_and_update().state.is_live();
            if let Some(rec) = &rec {
                if rec.status != TurnStatus::Running || ended {
                    return Ok(self.outcome(&h, rec, true));
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let rec = h.shared.turn(turn).ok_or_else(|| not_found(r))?;
                return Ok(self.outcome(&h, &rec, false));
            }
        }
    }

    fn outcome(&self, h: &Handle, rec: &task::TurnRecord, done: bool) -> TurnOutcome {
        let info = h.shared.info.borrow().clone();
        let end = rec.end_offset.unwrap_or(u64::MAX);
        let (_, bytes) = lock(&h.shared.ring).range(rec.start_offset, end);
        let bytes = if bytes.len() > MAX_OUTPUT_BYTES {
            bytes[bytes.len() - MAX_OUTPUT_BYTES..].to_vec()
        } else {
            bytes
        };
        TurnOutcome {
            id: info.id,
            name: info.name,
            turn: rec.seq,
            status: if done && rec.status == TurnStatus::Running {
                TurnStatus::Ended
            } else {
                rec.status
            },
            done,
            state: info.state,
            reply: String::from_utf8_lossy(&strip_ansi(&bytes)).into_owned(),
        }
    }

    /// Stops an instance: polite signal to its group, `grace`, then SIGKILL. With `wait`,
    /// returns once it has ended. An instance that has already ended is returned as it is.
    pub async fn stop(
        &self,
        r: &str,
        grace: Option<f64>,
        wait: bool,
    ) -> Result<InstanceInfo, SupervisorError> {
        let grace = match grace {
            Some(g) if !(g.is_finite() && (0.0..=3600.0).contains(&g)) => {
                return Err(SupervisorError::InvalidArgument(format!(
                    "grace_s = {g}: must be between 0 and 3600 seconds"
                )))
            }
            Some(g) => Duration::from_secs_f64(g),
            None => Duration::from_secs_f64(self.inner.cfg.instance.stop_grace_s),
        };
        let Some(h) = self.handle(r) else {
            return self.get(r).await;
        };
        self.stop_handle(&h, ReasonCode::Requested, grace).await?;
        if wait {
            let mut rx = h.shared.info.subscribe();
            let _ = tokio::time::timeout(
                grace + Duration::from_secs(10),
                rx.wait_for(|i| !i.state.is_live()),
            )
            .await;
            let id = rx.borrow().id.clone();
            return self.get(&id).await;
        }
        let info = h.shared.info.borrow().clone();
        Ok(info)
    }

    async fn stop_handle(
        &self,
        h: &Handle,
        reason: ReasonCode,
        grace: Duration,
    ) -> Result<(), SupervisorError> {
        let (tx, rx) = oneshot::channel();
        if h.ctl
            .send(Ctl::Stop {
                reason,
                grace,
                reply: tx,
            })
            .await
            .is_err()
        {
            return Ok(()); // the task already finished: already gone is success
        }
        rx.await.unwrap_or(Ok(()))
    }

    pub async fn resize(&self, r: &str, cols: u16, rows: u16) -> Result<(), SupervisorError> {
        plan::check_size(cols, rows)?;
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Resize {
                cols,
                rows,
                reply: tx,
            })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))?
    }

    /// The tmux screen (tmux instances only).
    pub async fn screen(&self, r: &str, lines: u32) -> Result<Option<String>, SupervisorError> {
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Screen { lines, reply: tx })
            .await
            .map_err(|_| ended(r))?;
        Ok(rx.await.unwrap_or(None))
    }

    /// The last output of an instance, bounded by `max_bytes` and then `lines`.
    pub async fn output(
        &self,
        r: &str,
        max_bytes: usize,
        lines: Option<usize>,
        strip: bool,
    ) -> Result<OutputTail, SupervisorError> {
        let max_bytes = max_bytes.clamp(1, MAX_OUTPUT_BYTES);
        let (info, offset, total, bytes) = match self.handle(r) {
            Some(h) => {
                let info = h.shared.info.borrow().clone();
                let ring = lock(&h.shared.ring);
                let (offset, bytes) = ring.tail(max_bytes);
                (info, offset, ring.total(), bytes)
            }
            None => {
                let info = self.get(r).await?;
                let bytes = self.read_log(&info.id, max_bytes)?;
                let total = info.output_bytes.max(bytes.len() as u64);
                (info, total - bytes.len() as u64, total, bytes)
            }
        };
        let mut bytes = if strip { strip_ansi(&bytes) } else { bytes };
        let mut truncated = offset > 0;
        if let Some(n) = lines {
            let kept = last_lines(&bytes, n).len();
            if kept < bytes.len() {
                truncated = true;
                bytes.drain(..bytes.len() - kept);
            }
        }
        Ok(OutputTail {
            id: info.id,
            name: info.name,
            offset,
            total,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            truncated,
        })
    }

    fn read_log(&self, id: &str, max: usize) -> Result<Vec<u8>, SupervisorError> {
        let path = self.log_path(id);
        match read_log_tail(&path, self.inner.cfg.instance.log_keep, max) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(SupervisorError::Backend(format!(
                "reading {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.inner
            .paths
            .instance_log_dir()
            .join(format!("{id}.log"))
    }

    /// A tail of the output plus, for live instances, a stream of what follows.
    pub async fn follow(&self, r: &str, tail_bytes: usize) -> Result<Follow, SupervisorError> {
        let tail_bytes = tail_bytes.min(MAX_OUTPUT_BYTES);
        if let Some(h) = self.handle(r) {
            let chunks = h.shared.chunks.subscribe();
            let (from, tail) = lock(&h.shared.ring).tail(tail_bytes);
            let from = from + tail.len() as u64;
            return Ok(Follow {
                tail,
                from,
                chunks: Some(chunks),
                info: Some(h.shared.info.subscribe()),
            });
        }
        let info = self.get(r).await?;
        let tail = self.read_log(&info.id, tail_bytes)?;
        Ok(Follow {
            tail,
            from: 0,
            chunks: None,
            info: None,
        })
    }

    /// How an operator attaches to the instance's terminal.
    pub async fn attach(&self, r: &str) -> Result<AttachInfo, SupervisorError> {
        let info = self.get(r).await?;
        if !info.state.is_live() {
            return Err(SupervisorError::State(format!(
                "instance {:?} has ended ({}); read its output with `corral logs {}`",
                info.name,
                info.state.as_str(),
                info.name
            )));
        }
        match (&info.backend, &info.tmux_session) {
            (BackendKind::Tmux, Some(session)) => Ok(AttachInfo {
                argv: self.inner.tmux.attach_argv(session),
                id: info.id,
                name: info.name,
            }),
            _ => Err(SupervisorError::InvalidArgument(format!(
                "instance {:?} runs in the pty backend, which has no terminal to attach to; use `corral logs -f {}` to follow it and `corral send` to type into it",
                info.name, info.name
            ))),
        }
    }

    pub async fn events(
        &self,
        r: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, SupervisorError> {
        let id = match r {
            Some(r) => Some(self.get(r).await?.id),
            None => None,
        };
        Ok(self
            .inner
            .store
            .events(id, after, limit.clamp(1, 10_000))
            .await?)
    }

    /// Sends the terminal's interrupt key (Ctrl-C) to the instance; it keeps running.
    pub async fn interrupt(&self, r: &str) -> Result<InstanceInfo, SupervisorError> {
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Interrupt { reply: tx })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))??;
        let info = h.shared.info.borrow().clone();
        Ok(info)
    }

    /// The newest turn of a live instance (0 when nothing was sent).
    pub async fn latest_turn(&self, r: &str) -> Result<u64, SupervisorError> {
        Ok(self.get(r).await?.turns)
    }

    /// Starts an ended instance again: the same command, environment and settings, in the
    /// same workspace and under the same name, as a new instance (ids are never reused).
    pub async fn resume(&self, r: &str) -> Result<InstanceInfo, SupervisorError> {
        let old = self.get(r).await?;
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
        req.wait_ready = false;
        let info = self.spawn(req).await?;
        let ev = self.event(&info, "resumed", json!({ "from": old.id }));
        self.inner.note(ev).await?;
        Ok(info)
    }

    /// Lists a directory inside the instance's workspace.
    pub async fn list_files(
        &self,
        r: &str,
        path: &str,
        max: usize,
    ) -> Result<files::Listing, SupervisorError> {
        let info = self.get(r).await?;
        files::list(std::path::Path::new(&info.workspace), path, max)
    }

    /// Reads part of a file inside the instance's workspace.
    pub async fn read_file(
        &self,
        r: &str,
        path: &str,
        offset: u64,
        max: usize,
    ) -> Result<files::FileChunk, SupervisorError> {
        let info = self.get(r).await?;
        files::read(std::path::Path::new(&info.workspace), path, offset, max)
    }

    /// Snapshots of the live instances.
    pub fn live_infos(&self) -> Vec<InstanceInfo> {
        lock(&self.inner.live)
            .values()
            .filter_map(|s| s.handle.as_ref())
            .map(|h| h.shared.info.borrow().clone())
            .collect()
    }

    /// Counts of live instances by state.
    pub fn counts(&self) -> HashMap<&'static str, usize> {
        let live = lock(&self.inner.live);
        let mut counts = HashMap::new();
        for slot in live.values() {
            let state = slot
                .handle
                .as_ref()
                .map(|h| h.shared.info.borrow().state)
                .unwrap_or(StateName::Starting);
            *counts.entry(state.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Stops accepting spawns and stops every live instance (reason `supervisor_shutdown`),
    /// waiting for each to end up to its grace period plus a margin.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let handles: Vec<Handle> = lock(&self.inner.live)
            .values()
            .filter_map(|s| s.handle.clone())
            .collect();
        info!(instances = handles.len(), "stopping instances for shutdown");
        for h in &handles {
            let _ = self
                .stop_handle(h, ReasonCode::SupervisorShutdown, grace)
                .await;
        }
        let mut rx = self.inner.live_count.subscribe();
        let limit = grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            warn!("some instances did not end within the shutdown grace period");
        }
        if let Err(e) = self.inner.tmux.kill_server().await {
            warn!(error = %e, "stopping the private tmux server failed");
        }
    }
}

fn not_found(r: &str) -> SupervisorError {
    SupervisorError::NotFound(format!("no instance with id or name {r:?}"))
}

fn ended(r: &str) -> SupervisorError {
    SupervisorError::State(format!("instance {r:?} has ended"))
}

fn ready_or_error(info: InstanceInfo) -> Result<InstanceInfo, SupervisorError> {
    let oom = info.state == StateName::Killed && info.reason == Some(ReasonCode::Oom);
    if info.state == StateName::Failed || oom {
        return Err(SupervisorError::SpawnFailed(
            info.reason_detail
                .unwrap_or_else(|| "it ended during start".into()),
        ));
    }
    Ok(info)
}
