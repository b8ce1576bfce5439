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

#[derive(Clone)]
pub struct CorralMcp {
    sup: Supervisor,
    metrics: Arc<Metrics>,
    tool_router: ToolRouter<Self>,
}

impl CorralMcp {
    pub fn new(sup: Supervisor, metrics: Arc<Metrics>) -> Self {
        Self {
            sup,
            metrics,
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
        description = "Start a new supervised instance (an agent or any command) in its own terminal, process group and workspace. Returns at once with its id, name and state (\"starting\"), unless wait_ready is true. Use send_message to give it work and get_output to read what it prints.",
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
                idle_timeout_s: a.idle_timeout_s,
                wall_timeout_s: a.wall_timeout_s,
                ready_pattern: a.ready_pattern,
                cols: None,
                rows: None,
                turn_quiet_ms: a.turn_quiet_ms,
                wait_ready: a.wait_ready.unwrap_or(false),
                limits: a.limits,
                landlock: a.landlock,
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
        description = "Set an instance's spending limits (max_cost_usd, max_tokens). At 80% a warning is logged; at 100% the instance is paused until the budget is raised. Budgets apply to agent instances that report token usage.",
        input_schema = schema::<BudgetArgs>()
    )]
    async fn set_budget(&self, Parameters(raw): Parameters<JsonObject>) -> ToolResult {
        let r = async {
            let a: BudgetArgs = parse("set_budget", raw)?;
            if a.max_cost_usd.is_none() && a.max_tokens.is_none() {
                return Err("give max_cost_usd, max_tokens or both".to_string());
            }
            if let Some(c) = a.max_cost_usd {
                if !(c.is_finite() && c >= 0.0) {
                    return Err(format!("max_cost_usd = {c}: must be a number of dollars ≥ 0"));
                }
            }
            let info = self.sup.get(&a.instance).await.map_err(|e| e.to_string())?;
            Err(format!(
                "instance {:?} is a {} instance: it reports no token usage or cost, so a budget could not be enforced on it; budgets apply to claude and codex instances",
                info.name,
                info.kind.as_str()
            ))
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
                json!({ "id": i.id, "name": i.name, "kind": i.kind, "state": i.state, "cost_usd": i.cost_usd,
                        "tokens": { "input": 0, "output": 0, "cache_write": 0, "cache_read": 0 } })
            };
            if let Some(inst) = a.instance {
                let i = self.sup.get(&inst).await.map_err(|e| e.to_string())?;
                return Ok(per(&i));
            }
            let all = self.sup.list(true).await.map_err(|e| e.to_string())?;
            let total: f64 = all.iter().map(|i| i.cost_usd).sum();
            Ok(json!({
                "fleet": { "instances": all.len(), "live": all.iter().filter(|i| i.state.is_live()).count(), "cost_usd": total,
                           "tokens": { "input": 0, "output": 0, "cache_write": 0, "cache_read": 0 } },
                "instances": all.iter().map(per).collect::<Vec<_>>(),
                "note": "command instances use no model tokens; usage comes from claude and codex instances",
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
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
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
