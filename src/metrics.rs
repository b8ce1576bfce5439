//! Prometheus metrics (`GET /metrics`, text exposition format), with prometheus-client.
//!
//! Counters are fed by the supervisor's committed events (an observer task), so they count
//! what the store recorded; live instance gauges are computed at scrape time. MCP request
//! counts come from the MCP layer.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

use crate::model::{Event, StateName};
use crate::supervisor::Supervisor;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateKind {
    state: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindBackend {
    kind: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    state: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    model: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolOutcome {
    tool: String,
    outcome: String,
}

pub struct Metrics {
    registry: Registry,
    instances: Family<StateKind, Gauge>,
    spawns: Family<KindBackend, Counter>,
    exits: Family<Reason, Counter>,
    mcp_requests: Family<ToolOutcome, Counter>,
    tokens: Family<TokenLabel, Counter>,
    cost: Family<ModelLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    spawn_to_ready: Histogram,
    /// spawn timestamps (ms) of instances not yet ready
    pending: Mutex<HashMap<String, i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("corral");
        let instances = Family::<StateKind, Gauge>::default();
        let spawns = Family::<KindBackend, Counter>::default();
        let exits = Family::<Reason, Counter>::default();
        let mcp_requests = Family::<ToolOutcome, Counter>::default();
        let tokens = Family::<TokenLabel, Counter>::default();
        let cost = Family::<ModelLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        // 1 ms .. ~33 s
        let spawn_to_ready = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "instances",
            "Live instances by state and kind",
            instances.clone(),
        );
        registry.register("spawns", "Instances spawned", spawns.clone());
        registry.register(
            "exits",
            "Instances ended, by end state and reason",
            exits.clone(),
        );
        registry.register(
            "mcp_requests",
            "MCP tool calls by tool and outcome",
            mcp_requests.clone(),
        );
        registry.register(
            "tokens",
            "Tokens agents reported, by model and kind (input, output, cache_write, cache_read)",
            tokens.clone(),
        );
        registry.register(
            "cost_usd",
            "US dollars agents spent, by model",
            cost.clone(),
        );
        registry.register(
            "spawn_to_ready_seconds",
            "Time from spawn to ready",
            spawn_to_ready.clone(),
        );
        Metrics {
            registry,
            instances,
            spawns,
            exits,
            mcp_requests,
            tokens,
            cost,
            spawn_to_ready,
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn mcp_request(&self, tool: &str, ok: bool) {
        self.mcp_requests
            .get_or_create(&ToolOutcome {
                tool: tool.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    fn on_event(&self, ev: &Event) {
        let s = |k: &str| ev.data[k].as_str().unwrap_or("").to_string();
        let id = ev.instance_id.clone().unwrap_or_default();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match ev.kind.as_str() {
            "spawn" => {
                self.spawns
                    .get_or_create(&KindBackend {
                        kind: s("kind"),
                        backend: s("backend"),
                    })
                    .inc();
                pending.insert(id, ev.ts);
            }
            "usage" => {
                let model = s("model");
                for k in ["input", "output", "cache_write", "cache_read"] {
                    let n = ev.data["tokens"][k].as_u64().unwrap_or(0);
                    self.tokens
                        .get_or_create(&TokenLabel {
                            model: model.clone(),
                            kind: k.into(),
                        })
                        .inc_by(n);
                }
                let c = ev.data["cost_usd"].as_f64().unwrap_or(0.0);
                self.cost.get_or_create(&ModelLabel { model }).inc_by(c);
            }
            "ready" => {
                if let Some(t0) = pending.remove(&id) {
                    self.spawn_to_ready
                        .observe((ev.ts - t0).max(0) as f64 / 1000.0);
                }
            }
            "exit" | "lost" => {
                pending.remove(&id);
                let (state, reason) = if ev.kind == "lost" {
                    ("lost".to_string(), "lost".to_string())
                } else {
                    (s("state"), s("reason"))
                };
                self.exits.get_or_create(&Reason { state, reason }).inc();
            }
            _ => {}
        }
    }

    /// Feeds the counters from committed events until the supervisor goes away.
    pub fn spawn_observer(self: &std::sync::Arc<Self>, sup: &Supervisor) {
        let mut rx = sup.subscribe_events();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => me.on_event(&ev),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "metrics observer lagged")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    /// The text exposition, with live gauges refreshed from the supervisor.
    pub fn render(&self, sup: &Supervisor) -> String {
        self.instances.clear();
        for state in StateName::ALL.iter().filter(|s| s.is_live()) {
            // every live state is present, so a dashboard sees zeros rather than gaps
            self.instances
                .get_or_create(&StateKind {
                    state: state.as_str().into(),
                    kind: "command".into(),
                })
                .set(0);
        }
        for info in sup.live_infos() {
            self.instances
                .get_or_create(&StateKind {
                    state: info.state.as_str().into(),
                    kind: info.kind.as_str().into(),
                })
                .inc();
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
