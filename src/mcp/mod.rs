//! The MCP server: corral's tools for MCP clients, served over Streamable HTTP at `/mcp`.
//!
//! Each tool parses its arguments, calls one supervisor method and maps the result; argument
//! and supervisor errors come back as tool errors (`isError: true`) with a precise message,
//! never as protocol failures, so the calling model can correct itself. Tools declare their
//! JSON schema from the types in [`args`] but parse the raw object themselves for that reason.
//! The handler holds no process state and would serve stdio as well as HTTP.

pub mod args;

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, JsonObject, ProgressNotificationParam,
    RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{tool, tool_handler, tool_router, ErrorData, Peer, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::model::{SpawnRequest, StateName};
use crate::supervisor::Supervisor;
use args::*;

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

/// Connected MCP sessions, for server-initiated log notifications (cap warnings, pauses,
/// instance ends). Sessions whose transport has closed are dropped.
#[derive(Clone, Default)]
pub struct Sessions(Arc<std::sync::Mutex<Vec<Peer<RoleServer>>>>);

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
    fn add(&self, peer: Peer<RoleServer>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(peer);
    }

    /// Forwards the supervisor's notable events to every connected session.
    #[allow(deprecated)] // logging is part of protocol versions 2025-06-18 and 2025-11-25
    pub fn spawn_forwarder(&self, sup: &Supervisor) {
        let mut rx = sup.subscribe_events();
        let sessions = self.clone();
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
                let peers: Vec<Peer<RoleServer>> = {
                    let mut all = sessions.0.lock().unwrap_or_else(|p| p.into_inner());
                    all.retain(|p| !p.is_transport_closed());
                    all.clone()
                };
                for p in peers {
                    let _ = p.notify_logging_message(param.clone()).await;
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
            tool_router: Self::tool_router(),
        }
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

#[tool_router]
impl CorralMcp {
    #[tool(
        description = "Start a new supervised instance (an agent or any command) in its own terminal, process group and workspace. Returns at once with its id, name and state (\"starting\"), unless wait_ready is true (with repo_url, once the repository is cloned into its workspace; a failed clone is an error carrying git's message). Use send_message to give it work and get_output to read what it prints.",
        input_schema = schema::<SpawnArgs>()
    )]
    async fn spawn_agent(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: SpawnArgs = parse("spawn_agent", raw)?;
            let req = SpawnRequest {
                name: a.name,
                kind: a.kind,
                backend: a.backend,
                argv: a.argv,
                env: a.env.unwrap_or_default(),
                workspace: a.workspace,
                repo_url: a.repo_url,
                git_ref: a.git_ref,
                idle_timeout_s: a.idle_timeout_s,
                wall_timeout_s: a.wall_timeout_s,
                ready_pattern: a.ready_pattern,
                turn_quiet_ms: a.turn_quiet_ms,
                wait_ready: a.wait_ready.unwrap_or(false),
                limits: a.limits,
                landlock: a.landlock,
                mode: a.mode,
                model: a.model,
                prompt: a.prompt,
                system_prompt: a.system_prompt,
                permission_mode: a.permission_mode,
                extra_args: a.extra_args.unwrap_or_default(),
                max_cost_usd: a.max_cost_usd,
                max_tokens: a.max_tokens,
                ..Default::default()
            };
            Ok(json!(self
                .sup
                .spawn(req)
                .await
                .map_err(|e| e.to_string())?))
        }
        .await;
        self.finish("spawn_agent", r)
    }

    #[tool(
        description = "Type a message into an instance's terminal (followed by Enter). Without wait, returns at once with a turn number to pass to wait_for_reply. With wait: true, blocks up to timeout_s (at most 50 s) and returns the reply: the output the instance produced for this turn. A wait that times out says so and leaves the turn running.",
        input_schema = schema::<SendArgs>()
    )]
    async fn send_message(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> ToolResult {
        let r = async {
            let a: SendArgs = parse("send_message", raw)?;
            let timeout = wait_timeout(a.timeout_s)?;
            let turn = self
                .sup
                .send(&a.instance, a.text, a.enter.unwrap_or(true))
                .await
                .map_err(|e| e.to_string())?;
            if a.wait.unwrap_or(false) {
                return self
                    .wait_reply(&a.instance, turn, timeout, &meta, &peer)
                    .await;
            }
            let info = self.sup.get(&a.instance).await.map_err(|e| e.to_string())?;
            Ok(json!({ "id": info.id, "name": info.name, "turn": turn, "state": info.state }))
        }
        .await;
        self.finish("send_message", r)
    }

    #[tool(
        description = "Wait for a turn started by send_message to finish and return its reply (the output of that turn). Blocks up to timeout_s (at most 50 s); if the turn is still running then, says so (done: false) and can be called again.",
        input_schema = schema::<WaitArgs>()
    )]
    async fn wait_for_reply(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> ToolResult {
        let r = async {
            let a: WaitArgs = parse("wait_for_reply", raw)?;
            let timeout = wait_timeout(a.timeout_s)?;
            let turn = match a.turn {
                Some(t) => t,
                None => self
                    .sup
                    .latest_turn(&a.instance)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            if turn == 0 {
                return Err(format!(
                    "instance {:?} has not been sent any message yet",
                    a.instance
                ));
            }
            self.wait_reply(&a.instance, turn, timeout, &meta, &peer)
                .await
        }
        .await;
        self.finish("wait_for_reply", r)
    }

    #[tool(
        description = "Read an instance's recent output, bounded by lines and bytes. source \"log\" (default) is the output stream, also for instances that have ended; \"screen\" is what its terminal shows now (tmux instances). Terminal escape sequences are removed unless strip_ansi is false.",
        input_schema = schema::<OutputArgs>()
    )]
    async fn get_output(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: OutputArgs = parse("get_output", raw)?;
            let lines = bounded("lines", a.lines, 100, 5000)?;
            let max_bytes = bounded("max_bytes", a.max_bytes, 16 * 1024, crate::supervisor::MAX_OUTPUT_BYTES)?;
            match a.source.as_deref().unwrap_or("log") {
                "log" => {
                    let out = self
                        .sup
                        .output(&a.instance, max_bytes, Some(lines), a.strip_ansi.unwrap_or(true))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(json!(out))
                }
                "screen" => {
                    let screen = self.sup.screen(&a.instance, lines as u32).await.map_err(|e| e.to_string())?;
                    let text = screen.ok_or_else(|| {
                        format!("instance {:?} runs in the pty backend, which keeps no screen; use source \"log\"", a.instance)
                    })?;
                    let text = crate::supervisor::output::last_lines(text.as_bytes(), lines);
                    let start = text.len().saturating_sub(max_bytes);
                    Ok(json!({ "instance": a.instance, "source": "screen", "text": String::from_utf8_lossy(&text[start..]) }))
                }
                other => Err(format!("source = {other:?}: must be \"log\" or \"screen\"")),
            }
        }
        .await;
        self.finish("get_output", r)
    }

    #[tool(
        description = "Get one instance: id, name, kind, backend, state (starting, ready, busy, paused, stopping, exited, killed, failed, lost), end reason, exit code or signal, timestamps, turns and cost.",
        input_schema = schema::<InstanceArgs>()
    )]
    async fn get_instance(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("get_instance", raw)?;
            Ok(json!(self
                .sup
                .get(&a.instance)
                .await
                .map_err(|e| e.to_string())?))
        }
        .await;
        self.finish("get_instance", r)
    }

    #[tool(
        description = "List instances: the running ones, or with all: true every instance this server has known. Optionally only those in one state.",
        input_schema = schema::<ListArgs>()
    )]
    async fn list_instances(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: ListArgs = parse("list_instances", raw)?;
            let state = match a.state.as_deref() {
                None => None,
                Some(s) => Some(StateName::parse(s).ok_or_else(|| {
                    format!("state = {s:?}: must be one of starting, ready, busy, paused, stopping, exited, killed, failed, lost")
                })?),
            };
            let all = a.all.unwrap_or(false) || state.is_some_and(|s| !s.is_live());
            let list = self.sup.list(all).await.map_err(|e| e.to_string())?;
            let list: Vec<_> = list.into_iter().filter(|i| state.is_none_or(|s| i.state == s)).collect();
            Ok(json!({ "count": list.len(), "instances": list }))
        }
        .await;
        self.finish("list_instances", r)
    }

    #[tool(
        description = "Interrupt what an instance is doing by sending Ctrl-C to its terminal. The instance keeps running (unless the program itself exits on Ctrl-C).",
        input_schema = schema::<InstanceArgs>()
    )]
    async fn interrupt(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("interrupt", raw)?;
            Ok(json!(self
                .sup
                .interrupt(&a.instance)
                .await
                .map_err(|e| e.to_string())?))
        }
        .await;
        self.finish("interrupt", r)
    }

    #[tool(
        description = "Stop an instance and its whole process tree: SIGTERM to its process group, then SIGKILL after grace_s. Waits until it has ended (for grace periods up to 40 s) and returns its final state. Stopping an instance that already ended returns it unchanged.",
        input_schema = schema::<TerminateArgs>()
    )]
    async fn terminate(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: TerminateArgs = parse("terminate", raw)?;
            let wait = a.grace_s.unwrap_or(self.sup.config().instance.stop_grace_s) <= 40.0;
            Ok(json!(self
                .sup
                .stop(&a.instance, a.grace_s, wait)
                .await
                .map_err(|e| e.to_string())?))
        }
        .await;
        self.finish("terminate", r)
    }

    #[tool(
        description = "Start an ended instance again: the same command and settings, in the same workspace and under the same name. Returns the new instance (it has a new id).",
        input_schema = schema::<InstanceArgs>()
    )]
    async fn resume(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("resume", raw)?;
            Ok(json!(self
                .sup
                .resume(&a.instance)
                .await
                .map_err(|e| e.to_string())?))
        }
        .await;
        self.finish("resume", r)
    }

    #[tool(
        description = "Set a claude/codex instance's spending caps (max_cost_usd, max_tokens). At 80% of a cap a warning is logged (and sent as an MCP log message); at 100% the instance is paused (its turn interrupted, messages refused) or terminated, per the server's config. Raising the cap of a paused instance resumes it.",
        input_schema = schema::<BudgetArgs>()
    )]
    async fn set_budget(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: BudgetArgs = parse("set_budget", raw)?;
            let info = self
                .sup
                .set_budget(&a.instance, a.max_cost_usd, a.max_tokens)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!(info))
        }
        .await;
        self.finish("set_budget", r)
    }

    #[tool(
        description = "Token usage and cost in US dollars, for one instance or the whole fleet (with a per-instance breakdown).",
        input_schema = schema::<UsageArgs>()
    )]
    async fn get_usage(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: UsageArgs = parse("get_usage", raw)?;
            let per = |i: &crate::model::InstanceInfo| {
                json!({ "id": i.id, "name": i.name, "kind": i.kind, "state": i.state, "model": i.model,
                        "cost_usd": i.cost_usd, "tokens": i.tokens,
                        "max_cost_usd": i.max_cost_usd, "max_tokens": i.max_tokens })
            };
            if let Some(inst) = a.instance {
                let i = self.sup.get(&inst).await.map_err(|e| e.to_string())?;
                return Ok(per(&i));
            }
            let all = self.sup.list(true).await.map_err(|e| e.to_string())?;
            let mut tokens = crate::agent::prices::Tokens::default();
            for i in &all {
                tokens.add(&i.tokens);
            }
            let total: f64 = all.iter().map(|i| i.cost_usd).sum();
            let cap = self.sup.config().limits.max_total_cost_usd;
            Ok(json!({
                "fleet": { "instances": all.len(), "live": all.iter().filter(|i| i.state.is_live()).count(),
                           "cost_usd": total, "tokens": tokens, "max_total_cost_usd": (cap > 0.0).then_some(cap) },
                "instances": all.iter().map(per).collect::<Vec<_>>(),
            }))
        }
        .await;
        self.finish("get_usage", r)
    }

    #[tool(
        description = "List a directory inside an instance's workspace. Paths are relative to the workspace; absolute paths, '..' and symlinks leading outside are refused.",
        input_schema = schema::<ListFilesArgs>()
    )]
    async fn list_files(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: ListFilesArgs = parse("list_files", raw)?;
            let max = bounded(
                "max_entries",
                a.max_entries,
                200,
                crate::supervisor::files::MAX_ENTRIES,
            )?;
            let path = a.path.unwrap_or_else(|| ".".into());
            Ok(json!(self
                .sup
                .list_files(&a.instance, &path, max)
                .await
                .map_err(|e| e.to_string())?))
        }
        .await;
        self.finish("list_files", r)
    }

    #[tool(
        description = "Read a file inside an instance's workspace, up to max_bytes from offset. Paths are relative to the workspace; absolute paths, '..' and symlinks leading outside are refused.",
        input_schema = schema::<ReadFileArgs>()
    )]
    async fn read_file(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: ReadFileArgs = parse("read_file", raw)?;
            let max = bounded(
                "max_bytes",
                a.max_bytes,
                64 * 1024,
                crate::supervisor::files::MAX_READ_BYTES,
            )?;
            let chunk = self
                .sup
                .read_file(&a.instance, &a.path, a.offset.unwrap_or(0), max)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!(chunk))
        }
        .await;
        self.finish("read_file", r)
    }

    #[tool(
        description = "The shell command an operator runs on the corral host to attach a terminal to a tmux instance (detach with Ctrl-b d).",
        input_schema = schema::<InstanceArgs>()
    )]
    async fn attach_command(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("attach_command", raw)?;
            let at = self.sup.attach(&a.instance).await.map_err(|e| e.to_string())?;
            let command = at.argv.iter().map(|s| crate::backend::tmux::shell_quote(s)).collect::<Vec<_>>().join(" ");
            Ok(json!({ "id": at.id, "name": at.name, "argv": at.argv, "command": command, "via_cli": format!("corral attach {}", at.name) }))
        }
        .await;
        self.finish("attach_command", r)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CorralMcp {
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        self.sessions.add(context.peer);
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
                 Files in an instance's workspace are readable with list_files and read_file.",
            )
    }
}
