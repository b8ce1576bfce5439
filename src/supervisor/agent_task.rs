//! What an instance task does for agents (claude, codex) beyond commands: it reads the
//! agent's own events (ready, usage, turn end; see `agent::watch`), prices usage, enforces
//! caps, and types messages the way the TUIs want them (a bracketed paste, then Enter).
//!
//! Caps: at 80% of `max_cost_usd`, `max_tokens` or the fleet's `limits.max_total_cost_usd` a
//! `cap_warning` event (audit log, MCP log notification); at 100% the instance is paused (the
//! running turn is interrupted with Ctrl-C, messages are refused until the budget is raised)
//! or terminated, per `limits.on_cap`. A turn that crosses a cap is stopped mid-way: usage is
//! read as each model call completes, not at the end of the turn.

use std::collections::HashSet;

use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::instance::{next, Input, State};
use super::task::{lock, Task, TurnStatus};
use super::SupervisorError;
use crate::agent::prices::Tokens;
use crate::agent::usage::UsageRecord;
use crate::agent::watch::{AgentEvent, WatchHandle};
use crate::model::{InstanceInfo, ReasonCode};

/// An instance task's link to its agent.
pub(crate) struct AgentLink {
    /// Keeps the file watcher alive for the task's life (and takes nudges).
    pub watch: WatchHandle,
    pub rx: Option<mpsc::Receiver<AgentEvent>>,
    /// A first message to send once the agent is ready.
    pub pending_prompt: Option<String>,
    /// Caps already warned about (so each warns once per crossing).
    pub warned: HashSet<&'static str>,
    /// Cost and tokens when the running turn began (its delta is the turn's usage).
    pub turn_start: (f64, Tokens),
    /// How messages are being typed into it (see `agent_input`).
    pub input: super::agent_input::AgentInput,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CapLevel {
    Under,
    Warn,
    Reached,
}

/// Where `used` stands against `limit` (pure).
pub fn cap_level(used: f64, limit: Option<f64>) -> CapLevel {
    match limit {
        Some(l) if l > 0.0 && used >= l => CapLevel::Reached,
        Some(l) if l > 0.0 && used >= 0.8 * l => CapLevel::Warn,
        _ => CapLevel::Under,
    }
}

/// The caps an instance is over (counting its subtree's spend), as (name, reason).
pub(super) fn over_caps(info: &InstanceInfo) -> Option<(&'static str, ReasonCode)> {
    let (cost, tokens) = super::tree::subtree_spend(info);
    if cap_level(cost, info.max_cost_usd) == CapLevel::Reached {
        return Some(("max_cost_usd", ReasonCode::CostCap));
    }
    if cap_level(tokens as f64, info.max_tokens.map(|t| t as f64)) == CapLevel::Reached {
        return Some(("max_tokens", ReasonCode::TokenCap));
    }
    None
}

impl Task {
    pub(crate) async fn on_agent(&mut self, ev: AgentEvent) {
        match ev {
            AgentEvent::Ready(via) => {
                if matches!(self.state, State::Starting) {
                    self.become_ready(via).await;
                    let prompt = self.agent.as_mut().and_then(|a| a.pending_prompt.take());
                    if let Some(p) = prompt {
                        if let Err(e) = self.send(p, true).await {
                            warn!(error = %e, "sending the initial prompt failed");
                        }
                    }
                }
            }
            AgentEvent::Session(id) => {
                if self.info.session_id.as_deref() != Some(id.as_str()) {
                    self.info.session_id = Some(id.clone());
                    self.commit("session", json!({ "session_id": id })).await;
                }
            }
            AgentEvent::Notice(message) => {
                let _ = self
                    .inner
                    .note(self.event("notice", json!({ "message": message })))
                    .await;
            }
            AgentEvent::Submitted => {
                self.timers.submit_deadline = None;
            }
            AgentEvent::Usage(rec) => self.on_usage(rec).await,
            AgentEvent::TurnEnd { reply, error } => self.on_turn_end(reply, error).await,
        }
    }

    async fn on_usage(&mut self, rec: UsageRecord) {
        let (cost, priced_by) = match rec.cost_usd {
            Some(c) => (c, "cli"),
            None => match self.inner.prices.cost(&rec.model, &rec.tokens) {
                Some(c) => (c, "price_table"),
                None => (0.0, "unpriced"),
            },
        };
        match self
            .inner
            .store
            .add_usage(
                self.info.id.clone(),
                self.current_turn,
                rec.clone(),
                cost,
                priced_by,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => return, // seen before (a repeated transcript line, a re-read file)
            Err(e) => {
                warn!(error = %e, "store write failed (usage)");
                return;
            }
        }
        super::tree::add_to_subtree(&mut self.info, cost, &rec.tokens);
        self.info.tokens.add(&rec.tokens);
        self.info.cost_usd += cost;
        self.commit(
            "usage",
            json!({
                "turn": self.current_turn, "model": rec.model, "source": rec.source, "tokens": rec.tokens,
                "cost_usd": cost, "priced_by": priced_by,
                "total_cost_usd": self.info.cost_usd, "total_tokens": self.info.tokens.total(),
            }),
        )
        .await;
        if priced_by == "unpriced" {
            warn!(model = %rec.model, "no price for this model; add it under [prices] to count its cost");
        }
        self.inner.roll_up(&self.info.id, cost, rec.tokens).await;
        self.inner.add_fleet_cost(cost).await;
        self.check_caps().await;
    }

    /// Warns at 80% and acts at 100% of the instance's caps, counting its subtree's spend.
    pub(crate) async fn check_caps(&mut self) {
        let (cost, tokens) = super::tree::subtree_spend(&self.info);
        let caps = [
            ("max_cost_usd", cost, self.info.max_cost_usd),
            (
                "max_tokens",
                tokens as f64,
                self.info.max_tokens.map(|t| t as f64),
            ),
        ];
        for (cap, used, limit) in caps {
            if cap_level(used, limit) == CapLevel::Under {
                continue;
            }
            let fresh = self.agent.as_mut().is_some_and(|a| a.warned.insert(cap));
            if fresh {
                let limit = limit.unwrap_or(0.0);
                let _ = self
                    .inner
                    .note(self.event("cap_warning", json!({ "cap": cap, "used": used, "limit": limit, "percent": (used / limit * 100.0).floor() })))
                    .await;
            }
        }
        if let Some((cap, reason)) = over_caps(&self.info) {
            self.cap_reached(cap, reason).await;
            // Its descendants spend against the same cap: they stop too.
            self.inner.cap_subtree(&self.info.id);
        }
    }

    /// A cap is reached: pause (interrupt the turn, refuse messages) or terminate.
    pub(crate) async fn cap_reached(&mut self, cap: &str, reason: ReasonCode) {
        if self.inner.cfg.limits.on_cap == "terminate" {
            let grace = self.grace();
            let _ = self.begin_stop(reason, grace).await;
            return;
        }
        if matches!(self.state, State::Paused) || next(&self.state, &Input::Pause).is_err() {
            return;
        }
        // Only a running turn is interrupted: Ctrl-C to an idle TUI may quit it (Codex).
        if self.current_turn.is_some() {
            if let Err(e) = self.control.interrupt().await {
                warn!(error = %e, "interrupting the turn at the cap failed");
            }
        }
        self.note_interrupt();
        let turn = self.current_turn.take();
        if let Some(seq) = turn {
            self.set_turn_result(seq, None, Some(format!("stopped: {cap} reached")));
        }
        self.timers.enter_deadline = None;
        self.state = State::Paused;
        info!(cap, "paused at its cap");
        self.commit("paused", json!({ "cap": cap, "reason": reason.as_str(), "cost_usd": self.info.cost_usd, "tokens": self.info.tokens.total() }))
            .await;
        if let Some(seq) = turn {
            self.finish_turn(seq, TurnStatus::Completed).await;
        }
    }

    pub(crate) async fn on_turn_end(&mut self, reply: Option<String>, error: Option<String>) {
        if self.late_turn_end(&error) {
            return;
        }
        let Some(seq) = self.current_turn.take() else {
            return;
        };
        self.set_turn_result(seq, reply.clone(), error.clone());
        let (c0, t0) = self
            .agent
            .as_ref()
            .map(|a| a.turn_start)
            .unwrap_or_default();
        let mut tokens = self.info.tokens;
        tokens.input -= t0.input.min(tokens.input);
        tokens.output -= t0.output.min(tokens.output);
        tokens.cache_write -= t0.cache_write.min(tokens.cache_write);
        tokens.cache_read -= t0.cache_read.min(tokens.cache_read);
        let _ = self
            .transition(
                Input::TurnDone,
                "turn_completed",
                json!({ "turn": seq, "tokens": tokens, "cost_usd": self.info.cost_usd - c0, "error": error,
                        "reply_bytes": reply.as_ref().map(String::len) }),
            )
            .await;
        // Waiters see the turn done only now, with the state it led to already published.
        self.finish_turn(seq, TurnStatus::Completed).await;
    }

    pub(crate) fn set_turn_result(&self, seq: u64, reply: Option<String>, error: Option<String>) {
        if let Some(t) = lock(&self.shared.turns).iter_mut().find(|t| t.seq == seq) {
            t.reply = reply;
            t.error = error;
        }
    }

    /// Changes the instance's caps; a paused instance under its new caps resumes.
    pub(crate) async fn set_budget(
        &mut self,
        max_cost_usd: Option<f64>,
        max_tokens: Option<u64>,
    ) -> Result<InstanceInfo, SupervisorError> {
        if let Some(c) = max_cost_usd {
            self.info.max_cost_usd = Some(c);
        }
        if let Some(t) = max_tokens {
            self.info.max_tokens = Some(t);
        }
        let (cost, tokens) = super::tree::subtree_spend(&self.info);
        if let Some(a) = self.agent.as_mut() {
            if cap_level(cost, self.info.max_cost_usd) == CapLevel::Under {
                a.warned.remove("max_cost_usd");
            }
            if cap_level(tokens as f64, self.info.max_tokens.map(|t| t as f64)) == CapLevel::Under {
                a.warned.remove("max_tokens");
            }
        }
        self.commit(
            "budget_set",
            json!({ "max_cost_usd": self.info.max_cost_usd, "max_tokens": self.info.max_tokens }),
        )
        .await;
        self.resume_if_clear().await;
        // Descendants paused by this cap may go on too.
        self.inner.recheck_subtree(&self.info.id);
        Ok(self.info.clone())
    }

    /// A paused instance resumes once no cap is reached: its own, an ancestor's, the fleet's.
    pub(crate) async fn resume_if_clear(&mut self) {
        if matches!(self.state, State::Paused)
            && over_caps(&self.info).is_none()
            && !self.inner.fleet_over_cap()
            && self.inner.capped_ancestor(&self.info.id).is_none()
        {
            let _ = self
                .transition(
                    Input::Resume,
                    "resumed",
                    json!({ "cost_usd": self.info.cost_usd }),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_levels() {
        assert_eq!(cap_level(0.5, None), CapLevel::Under);
        assert_eq!(cap_level(0.79, Some(1.0)), CapLevel::Under);
        assert_eq!(cap_level(0.8, Some(1.0)), CapLevel::Warn);
        assert_eq!(cap_level(1.0, Some(1.0)), CapLevel::Reached);
        assert_eq!(cap_level(5.0, Some(0.0)), CapLevel::Under, "0 means no cap");
    }
}
