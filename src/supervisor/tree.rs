//! Hierarchies: agents that spawn their own sub-agents, supervised as one tree.
//!
//! - **Scope.** A caller is the operator or an agent holding its per-instance MCP token. An
//!   agent sees and acts only on its strict descendants; anything else is reported as not
//!   found in its subtree (existence outside it is not revealed).
//! - **Limits.** Each instance has `max_children` (live children at once) and `max_depth`
//!   (levels allowed below it). A child's limits never exceed what its parent has left, and
//!   roots get at most `limits.max_children` / `limits.max_depth`.
//! - **Budgets.** A child's usage is added to the subtree spend of every live ancestor; an
//!   instance's caps count its subtree. A cap reached on an ancestor pauses (or terminates) the
//!   whole subtree; raising it resumes the subtree. A child is never given more budget than
//!   its ancestors have left.
//! - **Ends.** When an instance ends, its live children are stopped (`cascade`, children
//!   first) or handed to the operator (`orphan`), per its end policy. `terminate` with
//!   `cascade` stops a subtree deepest level first.
//! - **Inbox.** `reply_to_parent` posts to the parent's inbox (the operator's for roots) and
//!   reaches the parent's open MCP sessions as a notification.
//!
//! The live tree is read from the slots (each records its parent), so checks on live
//! instances never wait on the store; ended instances are read from the store.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::agent_task::over_caps;
use super::task::{lock, Ctl, Task};
use super::*;
use crate::agent::prices::Tokens;
use crate::model::{EndPolicy, TreeInfo};
use crate::store::InboxMessage;

/// Who is calling a supervisor method through a protocol edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator's token (or no token where none is configured): sees everything.
    Operator,
    /// An instance's own MCP token: sees its descendants.
    Agent { id: String },
}

/// Messages an instance task takes about its place in the tree.
pub(crate) enum TreeCtl {
    /// A descendant recorded usage.
    SubtreeUsage { cost: f64, tokens: Tokens },
    /// A cap above it was raised: resume if nothing is over any more.
    Recheck,
    /// Its parent ended with end policy `orphan`: it now belongs to the operator.
    Orphaned,
}

/// Longest inbox message.
pub const MAX_INBOX_BYTES: usize = 64 * 1024;
/// Deepest parent chain followed (a cycle in a corrupt store cannot loop forever).
const MAX_CHAIN: usize = 256;

/// What an instance has spent against its caps: its own usage and its descendants'.
pub fn subtree_spend(info: &InstanceInfo) -> (f64, u64) {
    (
        info.cost_usd.max(info.tree.subtree_cost_usd),
        info.tokens.total().max(info.tree.subtree_tokens.total()),
    )
}

impl Inner {
    fn live_info(&self, id: &str) -> Option<InstanceInfo> {
        lock(&self.live)
            .get(id)
            .and_then(|s| s.handle.as_ref())
            .map(|h| h.shared.info.borrow().clone())
    }

    /// Live ancestors of a live instance, nearest first (as handles with their info).
    fn live_ancestors(&self, id: &str) -> Vec<(Handle, InstanceInfo)> {
        let live = lock(&self.live);
        let mut out = Vec::new();
        let mut cur = live.get(id).and_then(|s| s.parent.clone());
        while let Some(p) = cur {
            if out.len() >= MAX_CHAIN {
                break;
            }
            let Some(slot) = live.get(&p) else { break };
            if let Some(h) = &slot.handle {
                out.push((h.clone(), h.shared.info.borrow().clone()));
            }
            cur = slot.parent.clone();
        }
        out
    }

    /// Whether `id` is a strict descendant of `ancestor`, among live instances.
    pub fn live_descends(&self, id: &str, ancestor: &str) -> bool {
        let live = lock(&self.live);
        let mut cur = live.get(id).and_then(|s| s.parent.clone());
        for _ in 0..MAX_CHAIN {
            match cur {
                Some(p) if p == ancestor => return true,
                Some(p) => cur = live.get(&p).and_then(|s| s.parent.clone()),
                None => return false,
            }
        }
        false
    }

    /// Live descendants of `id` grouped by level, nearest level first.
    fn live_levels(&self, id: &str) -> Vec<Vec<(String, Option<Handle>)>> {
        let live = lock(&self.live);
        let mut levels = Vec::new();
        let mut frontier = vec![id.to_string()];
        while !frontier.is_empty() && levels.len() < MAX_CHAIN {
            let next: Vec<(String, Option<Handle>)> = live
                .iter()
                .filter(|(_, s)| s.parent.as_ref().is_some_and(|p| frontier.contains(p)))
                .map(|(k, s)| (k.clone(), s.handle.clone()))
                .collect();
            if next.is_empty() {
                break;
            }
            frontier = next.iter().map(|(k, _)| k.clone()).collect();
            levels.push(next);
        }
        levels
    }

    /// The first live ancestor whose cap (USD or tokens) its subtree reached.
    pub fn capped_ancestor(&self, id: &str) -> Option<InstanceInfo> {
        self.live_ancestors(id)
            .into_iter()
            .map(|(_, i)| i)
            .find(|i| over_caps(i).is_some())
    }

    /// Adds a descendant's usage to every live ancestor of `id`.
    pub async fn roll_up(&self, id: &str, cost: f64, tokens: Tokens) {
        for (h, _) in self.live_ancestors(id) {
            let _ = h
                .ctl
                .send(Ctl::Tree(TreeCtl::SubtreeUsage { cost, tokens }))
                .await;
        }
    }

    /// A cap on `id` was reached: every live agent below it stops its turn too.
    pub fn cap_subtree(&self, id: &str) {
        for (_, h) in self.live_levels(id).into_iter().flatten() {
            if let Some(h) = h {
                if h.shared.info.borrow().kind.is_agent() {
                    let _ = h.ctl.try_send(Ctl::CapReached {
                        cap: "an ancestor's cap",
                        reason: ReasonCode::CostCap,
                    });
                }
            }
        }
    }

    /// A cap on `id` was raised: paused agents below it check whether they may go on.
    pub fn recheck_subtree(&self, id: &str) {
        for (_, h) in self.live_levels(id).into_iter().flatten() {
            if let Some(h) = h {
                let _ = h.ctl.try_send(Ctl::Tree(TreeCtl::Recheck));
            }
        }
    }

    /// After an instance ended: revoke its token, then cascade to or orphan its children.
    pub fn after_end(self: &Arc<Self>, info: &InstanceInfo) {
        self.tokens.revoke(&info.id);
        let store = self.store.clone();
        let id = info.id.clone();
        let inner = self.clone();
        let policy = info.tree.end_policy;
        tokio::spawn(async move {
            if let Err(e) = store.set_token_sha256(id.clone(), None).await {
                warn!(error = %e, "revoking the instance's token in the store failed");
            }
            let children: Vec<(String, Option<Handle>)> = inner
                .live_levels(&id)
                .into_iter()
                .next()
                .unwrap_or_default();
            if children.is_empty() {
                return;
            }
            info!(parent = %id, children = children.len(), policy = policy.as_str(), "parent ended");
            let sup = Supervisor { inner };
            for (child, _) in children {
                match policy {
                    EndPolicy::Cascade => {
                        let grace = Duration::from_secs_f64(sup.inner.cfg.instance.stop_grace_s);
                        if let Err(e) = sup
                            .stop_subtree(&child, ReasonCode::ParentEnded, grace)
                            .await
                        {
                            warn!(%child, error = %e, "stopping a child of an ended parent failed");
                        }
                    }
                    EndPolicy::Orphan => {
                        if let Some(slot) = lock(&sup.inner.live).get_mut(&child) {
                            slot.parent = None;
                        }
                        if let Some(h) = sup.handle(&child) {
                            let _ = h.ctl.send(Ctl::Tree(TreeCtl::Orphaned)).await;
                        }
                    }
                }
            }
        });
    }
}

/// Adds usage to an instance's subtree totals (which start from its own usage).
pub fn add_to_subtree(info: &mut InstanceInfo, cost: f64, tokens: &Tokens) {
    info.tree.subtree_cost_usd = info.cost_usd.max(info.tree.subtree_cost_usd) + cost;
    let mut t = info.tree.subtree_tokens;
    if t.total() < info.tokens.total() {
        t = info.tokens;
    }
    t.add(tokens);
    info.tree.subtree_tokens = t;
}

impl Task {
    /// Stores the current info without an event and publishes it (subtree spend changes).
    async fn sync_snapshot(&mut self) {
        self.sync_info();
        if let Err(e) = self.inner.store.touch(self.info.clone()).await {
            warn!(error = %e, "store write failed (subtree usage)");
        }
        self.shared.info.send_replace(self.info.clone());
    }

    pub(crate) async fn on_tree_ctl(&mut self, ctl: TreeCtl) {
        match ctl {
            TreeCtl::SubtreeUsage { cost, tokens } => {
                add_to_subtree(&mut self.info, cost, &tokens);
                self.sync_snapshot().await;
                self.check_caps().await;
            }
            TreeCtl::Recheck => self.resume_if_clear().await,
            TreeCtl::Orphaned => {
                let former = self.info.parent_id.take();
                self.commit("orphaned", json!({ "former_parent_id": former }))
                    .await;
            }
        }
    }
}

impl Supervisor {
    /// The instance `r` names, if the caller may see it.
    pub async fn resolve(&self, caller: &Caller, r: &str) -> Result<InstanceInfo, SupervisorError> {
        let info = self.get(r).await?;
        match caller {
            Caller::Operator => Ok(info),
            Caller::Agent { id } if self.descends(&info, id).await => Ok(info),
            Caller::Agent { .. } => Err(SupervisorError::NotFound(format!(
                "no instance {r:?} in your subtree: an agent may act only on the instances it spawned and their descendants"
            ))),
        }
    }

    /// Like [`Supervisor::resolve`], but an agent may also name itself (as a parent, a filter).
    pub async fn resolve_self_or_below(
        &self,
        caller: &Caller,
        r: &str,
    ) -> Result<InstanceInfo, SupervisorError> {
        if let Caller::Agent { id } = caller {
            let info = self.get(r).await?;
            if &info.id == id {
                return Ok(info);
            }
        }
        self.resolve(caller, r).await
    }

    /// `terminate` with `cascade`: stops `r`'s subtree, deepest level first, and waits.
    /// Returns the instance's final state and the ids of the descendants it stopped.
    pub async fn terminate_tree(
        &self,
        r: &str,
        grace_s: Option<f64>,
    ) -> Result<(InstanceInfo, Vec<String>), SupervisorError> {
        let grace = grace_s.unwrap_or(self.inner.cfg.instance.stop_grace_s);
        if !(grace.is_finite() && (0.0..=3600.0).contains(&grace)) {
            return Err(SupervisorError::InvalidArgument(format!(
                "grace_s = {grace}: must be between 0 and 3600 seconds"
            )));
        }
        let info = self.get(r).await?;
        let below: Vec<String> = self
            .inner
            .live_levels(&info.id)
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .collect();
        let info = self
            .stop_subtree(
                &info.id,
                ReasonCode::Requested,
                Duration::from_secs_f64(grace),
            )
            .await?;
        Ok((info, below))
    }

    /// Whether `info` is a strict descendant of `ancestor` (live tree first, then the store).
    async fn descends(&self, info: &InstanceInfo, ancestor: &str) -> bool {
        if self.inner.live_descends(&info.id, ancestor) {
            return true;
        }
        let mut cur = info.parent_id.clone();
        for _ in 0..MAX_CHAIN {
            let Some(p) = cur else { return false };
            if p == ancestor {
                return true;
            }
            cur = match self.inner.store.find_instance(p).await {
                Ok(Some(i)) => i.parent_id,
                _ => return false,
            };
        }
        false
    }

    /// Instances the caller may see: all for the operator, the subtree for an agent.
    pub async fn list_for(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<Vec<InstanceInfo>, SupervisorError> {
        let Caller::Agent { id } = caller else {
            return self.list(all).await;
        };
        // Every instance the store knows: ended ones link live ones to the caller.
        let everyone = self.list(true).await?;
        let parents: HashMap<&str, Option<&str>> = everyone
            .iter()
            .map(|i| (i.id.as_str(), i.parent_id.as_deref()))
            .collect();
        let under = |i: &InstanceInfo| {
            let mut cur = i.parent_id.as_deref();
            for _ in 0..MAX_CHAIN {
                match cur {
                    Some(p) if p == id => return true,
                    Some(p) => cur = parents.get(p).copied().flatten(),
                    None => return false,
                }
            }
            false
        };
        Ok(everyone
            .iter()
            .filter(|i| (all || i.state.is_live()) && under(i))
            .cloned()
            .collect())
    }

    /// The tree a new instance gets under `parent` (checked against the parent's limits and
    /// what its ancestors have left), or as a root.
    pub(super) fn plan_tree(
        &self,
        req: &SpawnRequest,
        max_cost_usd: Option<f64>,
    ) -> Result<TreeInfo, SupervisorError> {
        let cfg = &self.inner.cfg;
        let end_policy = match req.end_policy {
            Some(p) => p,
            None if cfg.instance.end_policy == "orphan" => EndPolicy::Orphan,
            None => EndPolicy::Cascade,
        };
        let invalid = SupervisorError::InvalidArgument;
        let Some(pid) = &req.parent_id else {
            let max_children = req.max_children.unwrap_or(cfg.limits.max_children);
            if max_children > cfg.limits.max_children {
                return Err(invalid(format!(
                    "max_children = {max_children}: more than limits.max_children = {}",
                    cfg.limits.max_children
                )));
            }
            let max_depth = req.max_depth.unwrap_or(cfg.limits.max_depth);
            if max_depth > cfg.limits.max_depth {
                return Err(invalid(format!(
                    "max_depth = {max_depth}: more than limits.max_depth = {}",
                    cfg.limits.max_depth
                )));
            }
            return Ok(TreeInfo {
                depth: 0,
                max_children,
                max_depth,
                end_policy,
                ..Default::default()
            });
        };
        let parent = self.inner.live_info(pid).ok_or_else(|| {
            SupervisorError::State(format!(
                "parent {pid:?} is not running; children can be spawned only under a live instance"
            ))
        })?;
        if parent.tree.max_depth == 0 {
            return Err(SupervisorError::LimitReached(format!(
                "max_depth: {:?} is at depth {} and may have no children (its max_depth is 0); the tree may not grow deeper",
                parent.name, parent.tree.depth
            )));
        }
        let room = parent.tree.max_depth - 1;
        let max_depth = req.max_depth.unwrap_or(room);
        if max_depth > room {
            return Err(invalid(format!(
                "max_depth = {max_depth}: a child of {:?} may have at most {room} level(s) below it",
                parent.name
            )));
        }
        let max_children = req.max_children.unwrap_or(cfg.limits.max_children);
        if max_children > cfg.limits.max_children {
            return Err(invalid(format!(
                "max_children = {max_children}: more than limits.max_children = {}",
                cfg.limits.max_children
            )));
        }
        if let Some(capped) = self.inner.capped_ancestor_or_self(pid) {
            return Err(SupervisorError::LimitReached(format!(
                "{:?} has reached its budget (max_cost_usd = {:?}, max_tokens = {:?}; its subtree spent ${:.4} and {} tokens); raise it with set_budget first",
                capped.name,
                capped.max_cost_usd,
                capped.max_tokens,
                subtree_spend(&capped).0,
                subtree_spend(&capped).1
            )));
        }
        if let (Some(want), Some((left, who))) = (max_cost_usd, self.budget_left(pid)) {
            if want > left + 1e-9 {
                return Err(invalid(format!(
                    "max_cost_usd = {want}: more than the ${left:.4} that {who:?} has left of its budget"
                )));
            }
        }
        Ok(TreeInfo {
            depth: parent.tree.depth + 1,
            max_children,
            max_depth,
            end_policy,
            ..Default::default()
        })
    }

    /// The least USD any live instance from `id` up has left under its cap, and its name.
    pub(super) fn budget_left(&self, id: &str) -> Option<(f64, String)> {
        let mut chain: Vec<InstanceInfo> = self.inner.live_info(id).into_iter().collect();
        chain.extend(self.inner.live_ancestors(id).into_iter().map(|(_, i)| i));
        chain
            .into_iter()
            .filter_map(|i| {
                i.max_cost_usd
                    .map(|m| ((m - subtree_spend(&i).0).max(0.0), i.name.clone()))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Stops `r` and its live descendants, deepest level first, each level at once; returns
    /// once all have ended (or their grace and a margin passed).
    pub async fn stop_subtree(
        &self,
        r: &str,
        reason: ReasonCode,
        grace: Duration,
    ) -> Result<InstanceInfo, SupervisorError> {
        let info = self.get(r).await?;
        let mut levels = self.inner.live_levels(&info.id);
        levels.reverse();
        levels.push(vec![(info.id.clone(), self.handle(&info.id))]);
        for level in levels {
            let mut waits = Vec::new();
            for (_, h) in level {
                let Some(h) = h else { continue };
                let _ = self.stop_handle(&h, reason, grace).await;
                let mut rx = h.shared.info.subscribe();
                waits.push(async move {
                    let _ = tokio::time::timeout(
                        grace + Duration::from_secs(10),
                        rx.wait_for(|i| !i.state.is_live()),
                    )
                    .await;
                });
            }
            futures::future::join_all(waits).await;
        }
        self.get(&info.id).await
    }

    /// Posts a message from `from` to its parent's inbox (the operator's for a root).
    pub async fn reply_to_parent(
        &self,
        from: &str,
        text: String,
    ) -> Result<InboxMessage, SupervisorError> {
        if text.trim().is_empty() {
            return Err(SupervisorError::InvalidArgument("text is empty".into()));
        }
        if text.len() > MAX_INBOX_BYTES {
            return Err(SupervisorError::InvalidArgument(format!(
                "text is {} bytes; the limit is {MAX_INBOX_BYTES}",
                text.len()
            )));
        }
        let me = self.get(from).await?;
        let ev = self.event(
            &me,
            "inbox",
            json!({ "to_id": me.parent_id, "bytes": text.len() }),
        );
        let (msg, ev) = self
            .inner
            .store
            .post_inbox(
                me.parent_id.clone(),
                me.id.clone(),
                me.name.clone(),
                text,
                ev,
            )
            .await?;
        self.inner.announce(ev);
        let _ = self.inner.inbox.send(msg.clone());
        Ok(msg)
    }

    /// Reads the inbox of `owner` (`None`: the operator's).
    pub async fn read_inbox(
        &self,
        owner: Option<String>,
        after: i64,
        unread_only: bool,
        limit: u32,
    ) -> Result<(Vec<InboxMessage>, u64), SupervisorError> {
        let list = self
            .inner
            .store
            .read_inbox(owner.clone(), after, unread_only, limit, true)
            .await?;
        let unread = self.inner.store.unread_count(owner).await?;
        Ok((list, unread))
    }

    /// Records that an agent opened an MCP session with its own token (and its client).
    pub async fn note_mcp_session(&self, id: &str, client: Option<(String, String)>) {
        let Ok(info) = self.get(id).await else { return };
        let (name, version) = client.unzip();
        let ev = self.event(
            &info,
            "mcp_session",
            json!({ "client": name, "client_version": version }),
        );
        if let Err(e) = self.inner.note(ev).await {
            warn!(error = %e, "store write failed (mcp_session)");
        }
    }

    /// Inbox messages as they are posted (for MCP notifications).
    pub fn subscribe_inbox(&self) -> broadcast::Receiver<InboxMessage> {
        self.inner.inbox.subscribe()
    }

    /// Whether an event about `instance` concerns the agent `viewer` (its own or its
    /// descendants'), among live instances.
    pub fn concerns(&self, viewer: &str, instance: &str) -> bool {
        instance == viewer || self.inner.live_descends(instance, viewer)
    }
}

impl Inner {
    /// `id` itself or a live ancestor over a cap.
    fn capped_ancestor_or_self(&self, id: &str) -> Option<InstanceInfo> {
        self.live_info(id)
            .filter(|i| over_caps(i).is_some())
            .or_else(|| self.capped_ancestor(id))
    }
}
