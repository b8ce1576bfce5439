//! The MCP server: corral's tools for MCP clients, served over Streamable HTTP at `/mcp`.
//!
//! Each tool parses its arguments, calls one supervisor method and maps the result; argument
//! and supervisor errors come back as tool errors (`isError: true`) with a precise message,
//! never as protocol failures, so the calling model can correct itself. Tools declare their
//! JSON schema from the types in [`args`] but parse the raw object themselves for that reason.
//! The handler holds no process state and would serve stdio as well as HTTP.

pub mod args;
mod tools;
mod tree;

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;

use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, JsonObject, ProgressNotificationParam,
    RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{tool_handler, ErrorData, Peer, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::supervisor::{Caller, Supervisor};

type ToolResult = Result<CallToolResult, ErrorData>;
type Outcome = Result<Value, String>;

/// Longest wait a tool call may block (clients commonly time out at 60 s).
pub const MAX_WAIT_S: f64 = 50.0;

fn schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    rmcp::handler::server::common::schema_for_type::<T>()
}

fn parse<T: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, String> {
    serde_json::from_value(Value::Object(args))
        .map_err(|e| format!("invalid arguments for {tool}: {e}"))
}

fn wait_timeout(t: Option<f64>) -> Result<Duration, String> {
    let t = t.unwrap_or(30.0);
    if !(t.is_finite() && (0.0..=MAX_WAIT_S).contains(&t)) {
        return Err(format!(
            "timeout_s = {t}: must be between 0 and {MAX_WAIT_S} seconds; to wait longer, call wait_for_reply again"
        ));
    }
    Ok(Duration::from_secs_f64(t))
}

fn bounded(name: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{name} = {n}: must be between 1 and {max}")),
    }
}

/// Who calls: set by the HTTP guard in the request's extensions (the operator, or an agent
/// with its own token). A request that did not pass the guard is refused.
fn caller(parts: &axum::http::request::Parts) -> Result<Caller, String> {
    parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| "unauthenticated request".to_string())
}

/// Connected MCP sessions with who opened them, for server-initiated log notifications (cap
/// warnings, pauses, instance ends, inbox messages). An agent's session hears only about its
/// own subtree. Sessions whose transport has closed are dropped.
#[derive(Clone, Default)]
pub struct Sessions(Arc<std::sync::Mutex<Vec<Session>>>);

/// An open session and who opened it.
type Session = (Caller, Peer<RoleServer>);

/// Events that reach MCP clients as `notifications/message`, with their level.
#[allow(deprecated)] // logging is part of protocol versions 2025-06-18 and 2025-11-25
fn log_level(kind: &str) -> Option<rmcp::model::LoggingLevel> {
    use rmcp::model::LoggingLevel as L;
    Some(match kind {
        "cap_warning" | "paused" => L::Warning,
        "exit" | "lost" => L::Notice,
        "resumed" | "notice" => L::Info,
        _ => return None,
    })
}

impl Sessions {
    fn add(&self, caller: Caller, peer: Peer<RoleServer>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((caller, peer));
    }

    /// The open sessions, as (caller, peer).
    fn open(&self) -> Vec<Session> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(_, p)| !p.is_transport_closed());
        all.clone()
    }

    /// Forwards the supervisor's notable events to every connected session.
    #[allow(deprecated)] // logging is part of protocol versions 2025-06-18 and 2025-11-25
    pub fn spawn_forwarder(&self, sup: &Supervisor) {
        self.spawn_inbox_forwarder(sup);
        let mut rx = sup.subscribe_events();
        let sessions = self.clone();
        let sup = sup.clone();
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(level) = log_level(&ev.kind) else {
                    continue;
                };
                let data = json!({ "event": ev.kind, "instance_id": ev.instance_id, "name": ev.name, "data": ev.data, "seq": ev.seq });
                let param = rmcp::model::LoggingMessageNotificationParam::new(level, data)
                    .with_logger("corral");
                for (caller, p) in sessions.open() {
                    let concerns = match (&caller, &ev.instance_id) {
                        (Caller::Operator, _) => true,
                        (Caller::Agent { id }, Some(inst)) => sup.concerns(id, inst),
                        (Caller::Agent { .. }, None) => false, // fleet-wide events
                    };
                    if concerns {
                        let _ = p.notify_logging_message(param.clone()).await;
                    }
                }
            }
        });
    }
}

#[derive(Clone)]
pub struct CorralMcp {
    sup: Supervisor,
    metrics: Arc<Metrics>,
    sessions: Sessions,
    tool_router: ToolRouter<Self>,
}

impl CorralMcp {
    pub fn new(sup: Supervisor, metrics: Arc<Metrics>, sessions: Sessions) -> Self {
        Self {
            sup,
            metrics,
            sessions,
            tool_router: Self::tool_router() + Self::tree_router(),
        }
    }

    /// The instance `r` names, if the caller may act on it.
    async fn target(
        &self,
        parts: &axum::http::request::Parts,
        r: &str,
    ) -> Result<crate::model::InstanceInfo, String> {
        let who = caller(parts)?;
        self.sup.resolve(&who, r).await.map_err(|e| e.to_string())
    }

    fn finish(&self, tool: &str, r: Outcome) -> ToolResult {
        self.metrics.mcp_request(tool, r.is_ok());
        Ok(match r {
            Ok(v) => CallToolResult::structured(v),
            Err(msg) => CallToolResult::error(vec![ContentBlock::text(msg)]),
        })
    }

    /// Waits for a turn, sending progress notifications each second when the client asked.
    async fn wait_reply(
        &self,
        instance: &str,
        turn: u64,
        timeout: Duration,
        meta: &RequestMetaObject,
        peer: &Peer<RoleServer>,
    ) -> Outcome {
        let token = meta.get_progress_token();
        let wait = self.sup.wait_turn(instance, turn, timeout);
        tokio::pin!(wait);
        let start = tokio::time::Instant::now();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                r = &mut wait => break r.map_err(|e| e.to_string())?,
                _ = tick.tick() => {
                    if let Some(token) = &token {
                        let p = ProgressNotificationParam::new(token.clone(), start.elapsed().as_secs_f64())
                            .with_total(timeout.as_secs_f64())
                            .with_message(format!("waiting for turn {turn} of {instance}"));
                        let _ = peer.notify_progress(p).await;
                    }
                }
            }
        };
        let mut v = json!(outcome);
        if !outcome.done {
            v["message"] = json!(format!(
                "no reply within {:.0} s; the turn is still running. Call wait_for_reply with instance {:?} and turn {turn} to keep waiting.",
                timeout.as_secs_f64(),
                outcome.name
            ));
        }
        Ok(v)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CorralMcp {
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let who = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>().cloned());
        if let Some(who) = who {
            if let Caller::Agent { id } = &who {
                // Audit which agent connected with its token, and with what client.
                let client = context
                    .peer
                    .peer_info()
                    .map(|p| (p.client_info.name.clone(), p.client_info.version.clone()));
                self.sup.note_mcp_session(id, client).await;
            }
            self.sessions.add(who, context.peer);
        }
    }

    #[allow(deprecated)] // logging is part of protocol versions 2025-06-18 and 2025-11-25
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_logging().build())
            .with_server_info(Implementation::new("corral", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "corral supervises long-running instances (AI coding agents or any command) on this host. \
                 spawn_agent starts one and returns its id; send_message types a message into it (wait: true \
                 returns the reply, or use wait_for_reply with the turn number); get_output reads what it \
                 printed; list_instances and get_instance show state; terminate stops it and its process tree. \
                 Files in an instance's workspace are readable with list_files and read_file. \
                 An agent connected with its own token acts on its own subtree: what it spawns becomes its \
                 child, it sees only its descendants, and reply_to_parent reports to its parent \
                 (read_inbox reads what its children reported).",
            )
    }
}
