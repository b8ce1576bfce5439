//! Tool arguments. Doc comments become the JSON-schema descriptions that MCP clients (and the
//! models behind them) read, so they say what a value means and what is accepted.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnArgs {
    /// Name for the new instance: lowercase letters, digits, '-' and '_', starting with a
    /// letter or digit, at most 63 characters, unique among running instances. Default: made
    /// from the kind and the id.
    pub name: Option<String>,
    /// What to run: "claude" (Claude Code), "codex" (Codex CLI), or "command" (any program
    /// given in `argv`). Default "command".
    pub kind: Option<String>,
    /// For kind "command": the program and its arguments, e.g. ["python3", "worker.py"]. The
    /// program is looked up on PATH. Not used for claude/codex.
    #[serde(default)]
    pub argv: Vec<String>,
    /// "tmux" (default: an operator can attach to it) or "pty".
    pub backend: Option<String>,
    /// Extra environment variables for the instance (names like FOO_BAR).
    pub env: Option<BTreeMap<String, String>>,
    /// Run in this existing directory directly under the workspace root (a plain name, e.g.
    /// the id of an earlier instance). Default: a fresh, empty workspace.
    pub workspace: Option<String>,
    /// Clone this git repository into the instance's fresh workspace before it starts:
    /// https://, http://, ssh://, user@host:path, file:///absolute/path or an absolute path.
    /// Not together with `workspace`. Credentials in the URL are never shown back.
    pub repo_url: Option<String>,
    /// With repo_url: the branch, tag or commit to check out. Default: the remote's default
    /// branch.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Stop the instance after this many seconds without output or input. 0 disables.
    /// Default from the server's config (1800).
    pub idle_timeout_s: Option<u64>,
    /// Stop the instance this many seconds after it started. 0 disables (the default).
    pub wall_timeout_s: Option<u64>,
    /// Regular expression that marks the instance ready when it appears in its output.
    pub ready_pattern: Option<String>,
    /// Milliseconds of output silence after which a message's turn counts as finished (for
    /// commands that print nothing while they work, raise it). Default from the server (800).
    pub turn_quiet_ms: Option<u64>,
    /// claude/codex: "interactive" (default: the agent's terminal UI, attachable) or
    /// "headless" (one `claude -p` / `codex exec` run per message, same conversation).
    pub mode: Option<String>,
    /// claude/codex: the model, e.g. "claude-sonnet-4-6" or "gpt-5.5". Default from the server.
    pub model: Option<String>,
    /// claude/codex: a first message, sent as soon as the agent is ready.
    pub prompt: Option<String>,
    /// claude/codex: extra instructions appended to the agent's system prompt.
    pub system_prompt: Option<String>,
    /// claude: permission mode: default, acceptEdits, plan or bypassPermissions.
    pub permission_mode: Option<String>,
    /// claude/codex: extra command-line arguments for the CLI.
    pub extra_args: Option<Vec<String>>,
    /// claude/codex: stop (or pause) the agent when it has spent this many US dollars.
    pub max_cost_usd: Option<f64>,
    /// claude/codex: stop (or pause) the agent when it has used this many tokens.
    pub max_tokens: Option<u64>,
    /// Wait (up to the start timeout) until the instance is ready or has failed before
    /// answering. Default false: answer at once with state "starting".
    pub wait_ready: Option<bool>,
    /// Resource limits for this instance (memory_max, pids_max, cpu_max, nofile, nproc, as,
    /// data, fsize, cpu_s). Each may only lower the server's limit. Past memory_max the
    /// instance is killed with reason "oom".
    pub limits: Option<crate::model::LimitsRequest>,
    /// true: the instance may write only in its workspace, HOME and private tmp (Landlock).
    /// Default from the server's config; a server that confines every instance cannot be
    /// overridden with false.
    pub landlock: Option<bool>,
    /// The instance the new one belongs to (id or name). An agent calling with its own token
    /// spawns under itself by default and may name only itself or a descendant; the operator
    /// may name any running instance. Default for the operator: none (a root).
    pub parent_id: Option<String>,
    /// Live children the new instance may have at once. Default and maximum: the server's
    /// limits.max_children.
    pub max_children: Option<u32>,
    /// Levels of descendants the new instance may have below it (1: children but no
    /// grandchildren). At most what its parent has left.
    pub max_depth: Option<u32>,
    /// What happens to the new instance's running children when it ends: "cascade" (they are
    /// stopped, children first; the default) or "orphan" (they keep running and become the
    /// operator's).
    pub end_policy: Option<crate::model::EndPolicy>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceArgs {
    /// The instance's id or name.
    pub instance: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// The instance's id or name.
    pub instance: String,
    /// The message to type into the instance's terminal.
    pub text: String,
    /// Press Enter after the text. Default true.
    pub enter: Option<bool>,
    /// Wait for the reply (the turn's output) before answering. Default false: answer at
    /// once with a turn number for wait_for_reply.
    pub wait: Option<bool>,
    /// With wait: seconds to wait, 0-50, default 30. A wait that times out says so; the turn
    /// keeps running and wait_for_reply can pick it up.
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// The instance's id or name.
    pub instance: String,
    /// The turn number send_message returned. Default: the newest turn.
    pub turn: Option<u64>,
    /// Seconds to wait, 0-50, default 30.
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputArgs {
    /// The instance's id or name.
    pub instance: String,
    /// "log" (default): the most recent output stream; "screen": what the terminal shows now
    /// (tmux instances only).
    pub source: Option<String>,
    /// At most this many lines from the end, 1-5000. Default 100.
    pub lines: Option<usize>,
    /// At most this many bytes from the end, 1-1048576. Default 16384.
    pub max_bytes: Option<usize>,
    /// Remove terminal escape sequences (colours, cursor movement). Default true.
    pub strip_ansi: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Include instances that have ended. Default false.
    pub all: Option<bool>,
    /// Only instances in this state (starting, ready, busy, paused, stopping, exited, killed,
    /// failed, lost).
    pub state: Option<String>,
    /// Only the direct children of this instance (id or name).
    pub parent: Option<String>,
    /// Return the instances as a tree: each with a "children" list, roots at the top level
    /// (for an agent: its own children). Default false: a flat list.
    pub tree: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminateArgs {
    /// The instance's id or name.
    pub instance: String,
    /// Seconds between the polite signal (SIGTERM to its process group) and SIGKILL, 0-3600.
    /// Default from the server's config (10).
    pub grace_s: Option<f64>,
    /// Stop its whole subtree, deepest descendants first, and wait for all of it. Default
    /// false (its running children then follow its end policy).
    pub cascade: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetArgs {
    /// The instance's id or name.
    pub instance: String,
    /// Most US dollars the instance may spend.
    pub max_cost_usd: Option<f64>,
    /// Most tokens the instance may use.
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageArgs {
    /// One instance's id or name. Default: the whole fleet (for an agent: its subtree).
    pub instance: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyArgs {
    /// The message for the parent (at most 65536 bytes): a result, a question, a status.
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxArgs {
    /// Operator only: read this instance's inbox (id or name) instead of the operator's own.
    pub instance: Option<String>,
    /// Only messages with an id greater than this. Default 0.
    pub after_id: Option<i64>,
    /// Only messages not read before. Default true. Reading marks messages read.
    pub unread_only: Option<bool>,
    /// At most this many messages, 1-500. Default 50.
    pub max: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// The instance's id or name.
    pub instance: String,
    /// Directory relative to the instance's workspace. Default "." (the workspace itself).
    pub path: Option<String>,
    /// At most this many entries, 1-1000. Default 200.
    pub max_entries: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// The instance's id or name.
    pub instance: String,
    /// File path relative to the instance's workspace.
    pub path: String,
    /// Byte offset to start reading at. Default 0.
    pub offset: Option<u64>,
    /// At most this many bytes, 1-1048576. Default 65536.
    pub max_bytes: Option<usize>,
}
