//! The tools that act on instances. Each finds who calls (the operator, or an agent with its
//! own token, see [`super::caller`]), resolves the instance it names within the caller's
//! reach, and calls the supervisor with that instance's id.

use axum::http::request::Parts;
use rmcp::handler::server::common::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{JsonObject, RequestMetaObject};
use rmcp::{tool, tool_router, Peer, RoleServer};
use serde_json::{json, Value};

use super::args::*;
use super::{bounded, caller, parse, schema, wait_timeout, CorralMcp, ToolResult};
use crate::model::{InstanceInfo, SpawnRequest, StateName};
use crate::supervisor::Caller;

#[tool_router(vis = "pub(super)")]
impl CorralMcp {
    #[tool(
        description = "Start a new supervised instance (an agent or any command) in its own terminal, process group and workspace. Returns at once with its id, name and state (\"starting\"), unless wait_ready is true (with repo_url, once the repository is cloned into its workspace; a failed clone is an error carrying git's message). Use send_message to give it work and get_output to read what it prints.",
        input_schema = schema::<SpawnArgs>()
    )]
    async fn spawn_agent(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: SpawnArgs = parse("spawn_agent", raw)?;
            let who = caller(&parts)?;
            let parent_id = match (&who, a.parent_id) {
                (_, Some(p)) => Some(
                    self.sup
                        .resolve_self_or_below(&who, &p)
                        .await
                        .map_err(|e| e.to_string())?
                        .id,
                ),
                (Caller::Agent { id }, None) => Some(id.clone()),
                (Caller::Operator, None) => None,
            };
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
                parent_id,
                max_children: a.max_children,
                max_depth: a.max_depth,
                end_policy: a.end_policy,
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
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: SendArgs = parse("send_message", raw)?;
            let timeout = wait_timeout(a.timeout_s)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let turn = self
                .sup
                .send(&id, a.text, a.enter.unwrap_or(true))
                .await
                .map_err(|e| e.to_string())?;
            if a.wait.unwrap_or(false) {
                return self.wait_reply(&id, turn, timeout, &meta, &peer).await;
            }
            let info = self.sup.get(&id).await.map_err(|e| e.to_string())?;
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
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: WaitArgs = parse("wait_for_reply", raw)?;
            let timeout = wait_timeout(a.timeout_s)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let turn = match a.turn {
                Some(t) => t,
                None => self.sup.latest_turn(&id).await.map_err(|e| e.to_string())?,
            };
            if turn == 0 {
                return Err(format!(
                    "instance {:?} has not been sent any message yet",
                    a.instance
                ));
            }
            self.wait_reply(&id, turn, timeout, &meta, &peer).await
        }
        .await;
        self.finish("wait_for_reply", r)
    }

    #[tool(
        description = "Read an instance's recent output, bounded by lines and bytes. source \"log\" (default) is the output stream, also for instances that have ended; \"screen\" is what its terminal shows now (tmux instances). Terminal escape sequences are removed unless strip_ansi is false.",
        input_schema = schema::<OutputArgs>()
    )]
    async fn get_output(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: OutputArgs = parse("get_output", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let lines = bounded("lines", a.lines, 100, 5000)?;
            let max_bytes = bounded("max_bytes", a.max_bytes, 16 * 1024, crate::supervisor::MAX_OUTPUT_BYTES)?;
            match a.source.as_deref().unwrap_or("log") {
                "log" => {
                    let out = self
                        .sup
                        .output(&id, max_bytes, Some(lines), a.strip_ansi.unwrap_or(true))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(json!(out))
                }
                "screen" => {
                    let screen = self.sup.screen(&id, lines as u32).await.map_err(|e| e.to_string())?;
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
    async fn get_instance(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("get_instance", raw)?;
            Ok(json!(self.target(&parts, &a.instance).await?))
        }
        .await;
        self.finish("get_instance", r)
    }

    #[tool(
        description = "List instances: the running ones, or with all: true every instance this server has known. Optionally only those in one state.",
        input_schema = schema::<ListArgs>()
    )]
    async fn list_instances(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: ListArgs = parse("list_instances", raw)?;
            let who = caller(&parts)?;
            let state = match a.state.as_deref() {
                None => None,
                Some(s) => Some(StateName::parse(s).ok_or_else(|| {
                    format!("state = {s:?}: must be one of starting, ready, busy, paused, stopping, exited, killed, failed, lost")
                })?),
            };
            let parent = match &a.parent {
                Some(p) => Some(self.sup.resolve_self_or_below(&who, p).await.map_err(|e| e.to_string())?.id),
                None => None,
            };
            let all = a.all.unwrap_or(false) || state.is_some_and(|s| !s.is_live());
            let list = self.sup.list_for(&who, all).await.map_err(|e| e.to_string())?;
            let list: Vec<InstanceInfo> = list
                .into_iter()
                .filter(|i| state.is_none_or(|s| i.state == s))
                .filter(|i| parent.is_none() || i.parent_id == parent)
                .collect();
            if a.tree.unwrap_or(false) {
                return Ok(json!({ "count": list.len(), "tree": nest(&list) }));
            }
            Ok(json!({ "count": list.len(), "instances": list }))
        }
        .await;
        self.finish("list_instances", r)
    }

    #[tool(
        description = "Interrupt what an instance is doing by sending Ctrl-C to its terminal. The instance keeps running (unless the program itself exits on Ctrl-C).",
        input_schema = schema::<InstanceArgs>()
    )]
    async fn interrupt(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("interrupt", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            Ok(json!(self
                .sup
                .interrupt(&id)
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
    async fn terminate(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: TerminateArgs = parse("terminate", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let grace = a.grace_s.unwrap_or(self.sup.config().instance.stop_grace_s);
            if a.cascade.unwrap_or(false) {
                let (info, below) = self
                    .sup
                    .terminate_tree(&id, a.grace_s)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut v = json!(info);
                v["cascade"] = json!(below);
                return Ok(v);
            }
            Ok(json!(self
                .sup
                .stop(&id, a.grace_s, grace <= 40.0)
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
    async fn resume(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("resume", raw)?;
            let who = caller(&parts)?;
            Ok(json!(self
                .sup
                .resume(&who, &a.instance)
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
    async fn set_budget(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: BudgetArgs = parse("set_budget", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let info = self
                .sup
                .set_budget(&id, a.max_cost_usd, a.max_tokens)
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
    async fn get_usage(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: UsageArgs = parse("get_usage", raw)?;
            let who = caller(&parts)?;
            if let Some(inst) = a.instance {
                let i = self.target(&parts, &inst).await?;
                let below = self.sup.list_for(&Caller::Agent { id: i.id.clone() }, true).await.map_err(|e| e.to_string())?;
                let mut v = usage_row(&i);
                v["subtree"] = totals(std::iter::once(&i).chain(below.iter()));
                return Ok(v);
            }
            let mut all = self.sup.list_for(&who, true).await.map_err(|e| e.to_string())?;
            match &who {
                Caller::Operator => {
                    let cap = self.sup.config().limits.max_total_cost_usd;
                    let mut fleet = totals(all.iter());
                    fleet["live"] = json!(all.iter().filter(|i| i.state.is_live()).count());
                    fleet["max_total_cost_usd"] = json!((cap > 0.0).then_some(cap));
                    Ok(json!({ "fleet": fleet, "instances": all.iter().map(usage_row).collect::<Vec<_>>() }))
                }
                Caller::Agent { id } => {
                    let me = self.sup.get(id).await.map_err(|e| e.to_string())?;
                    all.insert(0, me.clone());
                    let mut sub = totals(all.iter());
                    sub["live"] = json!(all.iter().filter(|i| i.state.is_live()).count());
                    sub["max_cost_usd"] = json!(me.max_cost_usd);
                    Ok(json!({ "subtree": sub, "instances": all.iter().map(usage_row).collect::<Vec<_>>() }))
                }
            }
        }
        .await;
        self.finish("get_usage", r)
    }

    #[tool(
        description = "List a directory inside an instance's workspace. Paths are relative to the workspace; absolute paths, '..' and symlinks leading outside are refused.",
        input_schema = schema::<ListFilesArgs>()
    )]
    async fn list_files(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: ListFilesArgs = parse("list_files", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let max = bounded(
                "max_entries",
                a.max_entries,
                200,
                crate::supervisor::files::MAX_ENTRIES,
            )?;
            let path = a.path.unwrap_or_else(|| ".".into());
            Ok(json!(self
                .sup
                .list_files(&id, &path, max)
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
    async fn read_file(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: ReadFileArgs = parse("read_file", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let max = bounded(
                "max_bytes",
                a.max_bytes,
                64 * 1024,
                crate::supervisor::files::MAX_READ_BYTES,
            )?;
            let chunk = self
                .sup
                .read_file(&id, &a.path, a.offset.unwrap_or(0), max)
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
    async fn attach_command(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: InstanceArgs = parse("attach_command", raw)?;
            let id = self.target(&parts, &a.instance).await?.id;
            let at = self.sup.attach(&id).await.map_err(|e| e.to_string())?;
            let command = at.argv.iter().map(|s| crate::backend::tmux::shell_quote(s)).collect::<Vec<_>>().join(" ");
            Ok(json!({ "id": at.id, "name": at.name, "argv": at.argv, "command": command, "via_cli": format!("corral attach {}", at.name) }))
        }
        .await;
        self.finish("attach_command", r)
    }
}

/// One instance's usage and caps.
fn usage_row(i: &InstanceInfo) -> Value {
    json!({ "id": i.id, "name": i.name, "kind": i.kind, "state": i.state, "model": i.model,
            "parent_id": i.parent_id, "cost_usd": i.cost_usd, "tokens": i.tokens,
            "max_cost_usd": i.max_cost_usd, "max_tokens": i.max_tokens })
}

/// Summed cost and tokens of some instances.
fn totals<'a>(list: impl Iterator<Item = &'a InstanceInfo>) -> Value {
    let mut tokens = crate::agent::prices::Tokens::default();
    let (mut cost, mut n) = (0.0, 0);
    for i in list {
        tokens.add(&i.tokens);
        cost += i.cost_usd;
        n += 1;
    }
    json!({ "instances": n, "cost_usd": cost, "tokens": tokens })
}

/// Instances as a forest: each with its `children`; roots are those whose parent is not in
/// the list.
fn nest(list: &[InstanceInfo]) -> Vec<Value> {
    fn node(i: &InstanceInfo, list: &[InstanceInfo], depth: usize) -> Value {
        let mut v = json!(i);
        let children: Vec<Value> = if depth < 256 {
            list.iter()
                .filter(|c| c.parent_id.as_deref() == Some(i.id.as_str()))
                .map(|c| node(c, list, depth + 1))
                .collect()
        } else {
            Vec::new()
        };
        v["children"] = json!(children);
        v
    }
    list.iter()
        .filter(|i| {
            i.parent_id
                .as_deref()
                .is_none_or(|p| !list.iter().any(|o| o.id == p))
        })
        .map(|i| node(i, list, 0))
        .collect()
}
