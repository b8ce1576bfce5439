//! The supervisor: the only API the protocol edges (HTTP, CLI, MCP) use.
//!
//! Theory of operation: [`Supervisor::spawn`] validates a request into a launch plan,
//! reserves the name and a slot, records the instance (`starting`) in the store, starts the
//! process through a backend, and hands it to a new [`task::Task`] that owns it from then on.
//! Every other method finds the instance's handle and sends its task a control message, or
//! reads what the task publishes (snapshot, output ring, chunk broadcast). Ended instances are
//! read from the store. Nothing here knows about HTTP or MCP.

mod agent_input;
mod agent_task;
mod clone;
pub mod files;
pub mod instance;
mod io;
pub mod output;
mod plan;
mod recovery;
mod spawn;
mod task;
mod task_end;
mod tokens;
pub mod tree;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::backend::{self, tmux::Tmux};
use crate::config::{Config, Paths};
use crate::isolation::Isolation;
use crate::model::{now_ms, BackendKind, Event, InstanceInfo, ReasonCode, SpawnRequest, StateName};
use crate::store::{Store, StoreError};
use instance::State;
use task::{lock, Ctl, Shared, Timers};

pub use io::{AttachInfo, Follow, OutputTail, TurnOutcome, MAX_OUTPUT_BYTES};
pub use task::TurnStatus;
pub use tokens::PREFIX as TOKEN_PREFIX;
pub use tree::Caller;

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

/// What a task needs to take over a process (fresh from a spawn, or adopted).
struct TaskStart {
    info: InstanceInfo,
    state: State,
    launched: backend::Launched,
    timers: Timers,
    ready_re: Option<regex::bytes::Regex>,
    stop_signal: nix::sys::signal::Signal,
    first_event: (&'static str, serde_json::Value),
    /// Output from before (the log tail of an adopted instance) for the ring.
    ring_seed: Vec<u8>,
    agent: Option<agent_task::AgentLink>,
    /// The instance's cgroup, tmp and identity (fresh spawns; an adopted instance has none).
    iso: Option<crate::isolation::Guard>,
    iso_summary: serde_json::Value,
    memory_max: Option<u64>,
}

/// A live slot: reserved at spawn, filled once the task runs, removed when it ends.
struct Slot {
    name: String,
    /// The live parent (None: the operator's).
    parent: Option<String>,
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
    pub prices: crate::agent::prices::PriceTable,
    /// USD recorded over all instances ever (the fleet's spend), and whether the fleet cap's
    /// warning and pause have been given.
    fleet_cost: Mutex<f64>,
    fleet_warned: AtomicBool,
    fleet_paused: AtomicBool,
    /// Per-instance MCP tokens (digests).
    pub tokens: tokens::TokenRegistry,
    /// Messages children post to their parents' inboxes.
    pub inbox: broadcast::Sender<crate::store::InboxMessage>,
    /// The `/mcp` URL agents are given, once the server is bound.
    pub mcp_url: std::sync::OnceLock<String>,
}

impl Inner {
    pub fn fleet_over_cap(&self) -> bool {
        let max = self.cfg.limits.max_total_cost_usd;
        max > 0.0 && *lock(&self.fleet_cost) >= max
    }

    /// Adds to the fleet's spend; warns at 80% of `limits.max_total_cost_usd` and pauses every
    /// agent at 100%.
    pub async fn add_fleet_cost(&self, cost: f64) {
        let total = {
            let mut f = lock(&self.fleet_cost);
            *f += cost;
            *f
        };
        let max = self.cfg.limits.max_total_cost_usd;
        match agent_task::cap_level(total, (max > 0.0).then_some(max)) {
            agent_task::CapLevel::Under => {}
            level => {
                if !self.fleet_warned.swap(true, Ordering::SeqCst) {
                    let ev = Event {
                        seq: 0,
                        ts: now_ms(),
                        instance_id: None,
                        name: None,
                        kind: "cap_warning".into(),
                        data: json!({ "cap": "max_total_cost_usd", "used": total, "limit": max, "percent": (total / max * 100.0).floor() }),
                    };
                    let _ = self.note(ev).await;
                }
                if level == agent_task::CapLevel::Reached
                    && !self.fleet_paused.swap(true, Ordering::SeqCst)
                {
                    warn!(total, max, "fleet cost cap reached: pausing every agent");
                    let handles: Vec<Handle> = lock(&self.live)
                        .values()
                        .filter_map(|s| s.handle.clone())
                        .collect();
                    for h in handles {
                        if h.shared.info.borrow().kind.is_agent() {
                            let _ = h.ctl.try_send(Ctl::CapReached {
                                cap: "max_total_cost_usd",
                                reason: ReasonCode::CostCap,
                            });
                        }
                    }
                }
            }
        }
    }

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
            prices: crate::agent::prices::PriceTable::new(cfg.prices.clone()),
            fleet_cost: Mutex::new(0.0),
            fleet_warned: AtomicBool::new(false),
            fleet_paused: AtomicBool::new(false),
            tokens: Default::default(),
            inbox: broadcast::channel(256).0,
            mcp_url: Default::default(),
            cfg,
        });
        *lock(&inner.fleet_cost) = inner.store.fleet_cost().await.unwrap_or(0.0);
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

    /// Tells the supervisor where agents reach `/mcp` (once the server is bound); agents
    /// spawned from then on get it registered with their own token.
    pub fn set_mcp_url(&self, url: String) {
        let _ = self.inner.mcp_url.set(url);
    }

    /// Whether `uid` is an agent's (and not the daemon's own).
    pub fn is_agent_uid(&self, uid: u32) -> bool {
        uid != nix::unistd::geteuid().as_raw() && self.inner.isolation.is_agent_uid(uid)
    }

    /// The caller a bearer token identifies, if it is a live instance's MCP token.
    pub fn caller_for_token(&self, token: &str) -> Option<Caller> {
        self.inner
            .tokens
            .lookup(token)
            .map(|id| Caller::Agent { id })
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

    /// Starts an instance. Returns once the process runs (or, with `wait_ready`, once it is
    /// ready); a process that fails to start is an error carrying the reason.
    pub async fn spawn(&self, req: SpawnRequest) -> Result<InstanceInfo, SupervisorError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let mut req = req;
        if let Some(p) = req.parent_id.take() {
            // By id or name; it must be live.
            let info = self.handle(&p).map(|h| h.shared.info.borrow().clone());
            let info = info.ok_or_else(|| {
                SupervisorError::State(format!(
                    "parent {p:?} is not running; children can be spawned only under a live instance"
                ))
            })?;
            req.parent_id = Some(info.id);
        }
        let wait_ready = req.wait_ready;
        let explicit_cap = req.max_cost_usd;
        let tree = self.plan_tree(&req, explicit_cap)?;
        let mut plan = plan::plan(&self.inner.cfg, self.inner.isolation.limits(), req)?;
        plan.tree = tree;
        if let (None, Some(pid), Some(cap)) = (explicit_cap, &plan.parent_id, plan.max_cost_usd) {
            // A default cap never gives a child more than its ancestors have left.
            if let Some((left, _)) = self.budget_left(pid) {
                plan.max_cost_usd = Some(cap.min(left));
            }
        }
        if plan.agent.is_some() && self.inner.fleet_over_cap() {
            return Err(SupervisorError::LimitReached(format!(
                "the fleet has spent ${:.2} of limits.max_total_cost_usd = ${:.2}; no new agents",
                *lock(&self.inner.fleet_cost),
                self.inner.cfg.limits.max_total_cost_usd
            )));
        }
        let id = self.new_id().await?;
        let name = plan
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{id}", plan.kind.as_str()));
        self.reserve(&id, &name, plan.parent_id.as_deref(), true)?;
        let result = self.launch(&id, &name, plan).await;
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                self.inner.remove_live(&id);
                self.inner.tokens.revoke(&id);
                return Err(e);
            }
        };
        if !wait_ready {
            return Ok(info);
        }
        self.wait_ready(&id).await
    }

    /// Changes an agent's caps; a paused instance under its new caps resumes.
    pub async fn set_budget(
        &self,
        r: &str,
        max_cost_usd: Option<f64>,
        max_tokens: Option<u64>,
    ) -> Result<InstanceInfo, SupervisorError> {
        if max_cost_usd.is_none() && max_tokens.is_none() {
            return Err(SupervisorError::InvalidArgument(
                "give max_cost_usd, max_tokens or both".into(),
            ));
        }
        if let Some(c) = max_cost_usd {
            if !(c.is_finite() && c > 0.0) {
                return Err(SupervisorError::InvalidArgument(format!(
                    "max_cost_usd = {c}: must be a positive number of dollars"
                )));
            }
        }
        if max_tokens == Some(0) {
            return Err(SupervisorError::InvalidArgument(
                "max_tokens = 0: must be positive".into(),
            ));
        }
        let info = self.get(r).await?;
        if let (Some(new), Some(parent)) = (max_cost_usd, info.parent_id.as_deref()) {
            // A child never gets more than its ancestors have left.
            if let Some((left, who)) = self.budget_left(parent) {
                let spent = tree::subtree_spend(&info).0;
                if new - spent > left + 1e-9 {
                    return Err(SupervisorError::InvalidArgument(format!(
                        "max_cost_usd = {new}: {:?} has spent ${spent:.4} and {who:?} has ${left:.4} left of its budget, so at most ${:.4}",
                        info.name,
                        spent + left
                    )));
                }
            }
        }
        if !info.kind.is_agent() {
            return Err(SupervisorError::InvalidArgument(format!(
                "instance {:?} is a command instance: it reports no token usage or cost, so a budget could not be enforced on it; budgets apply to claude and codex instances",
                info.name
            )));
        }
        let Some(h) = self.handle(r) else {
            return Err(SupervisorError::State(format!(
                "instance {:?} has ended ({})",
                info.name,
                info.state.as_str()
            )));
        };
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::SetBudget {
                max_cost_usd,
                max_tokens,
                reply: tx,
            })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))?
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

    /// Stops accepting spawns, then stops every live instance (reason `supervisor_shutdown`)
    /// and waits for each up to its grace period plus a margin. With `detach`, tmux instances
    /// are left running for the next daemon to adopt (PTY instances cannot outlive us).
    pub async fn shutdown(&self, grace: Duration, detach: bool) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let handles: Vec<Handle> = lock(&self.inner.live)
            .values()
            .filter_map(|s| s.handle.clone())
            .collect();
        info!(instances = handles.len(), detach, "shutting down instances");
        let mut detached = 0;
        for h in &handles {
            let tmux = h.shared.info.borrow().backend == BackendKind::Tmux;
            if detach && tmux {
                let (tx, rx) = oneshot::channel();
                if h.ctl.send(Ctl::Detach { reply: tx }).await.is_ok()
                    && matches!(rx.await, Ok(Ok(())))
                {
                    detached += 1;
                    continue;
                }
            }
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
        if detached == 0 {
            if let Err(e) = self.inner.tmux.kill_server().await {
                warn!(error = %e, "stopping the private tmux server failed");
            }
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
