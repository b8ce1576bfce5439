//! Plain data shared by the supervisor, the store, the HTTP API and the CLI client.
//!
//! These types are the wire format of `/api/v1` and the rows of the store, so they carry no
//! handles, no PIDs to act on, and no secrets (environment values never appear here).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What runs in an instance. Only `command` exists today; agent kinds build on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Command,
    Claude,
    Codex,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Claude => "claude",
            Kind::Codex => "codex",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Command, Kind::Claude, Kind::Codex]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
    pub fn is_agent(self) -> bool {
        self != Kind::Command
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Tmux,
    Pty,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tmux => "tmux",
            BackendKind::Pty => "pty",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tmux" => Some(BackendKind::Tmux),
            "pty" => Some(BackendKind::Pty),
            _ => None,
        }
    }
}

/// The flat name of a lifecycle state (the rich form lives in `supervisor::instance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Starting,
    Ready,
    Busy,
    Paused,
    Stopping,
    Exited,
    Killed,
    Failed,
    Lost,
}

impl StateName {
    pub const ALL: [StateName; 9] = [
        StateName::Starting,
        StateName::Ready,
        StateName::Busy,
        StateName::Paused,
        StateName::Stopping,
        StateName::Exited,
        StateName::Killed,
        StateName::Failed,
        StateName::Lost,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Starting => "starting",
            StateName::Ready => "ready",
            StateName::Busy => "busy",
            StateName::Paused => "paused",
            StateName::Stopping => "stopping",
            StateName::Exited => "exited",
            StateName::Killed => "killed",
            StateName::Failed => "failed",
            StateName::Lost => "lost",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
    /// Live states hold a process (or are about to); their names are reserved.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            StateName::Starting
                | StateName::Ready
                | StateName::Busy
                | StateName::Paused
                | StateName::Stopping
        )
    }
}

/// Why an instance stopped (or is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// A client asked for the stop.
    Requested,
    /// The process exited with code 0 on its own.
    Completed,
    IdleTimeout,
    WallTimeout,
    /// The process exited non-zero or was killed by a signal nobody in corral sent.
    Crashed,
    /// It never became ready: exec failed, it died during start, or start timed out.
    SpawnFailed,
    SupervisorShutdown,
    /// Found dead after a daemon restart.
    Lost,
    /// The instance's or the fleet's USD cap was reached (with `limits.on_cap = "terminate"`).
    CostCap,
    /// The instance's token cap was reached (with `limits.on_cap = "terminate"`).
    TokenCap,
    /// The kernel's OOM killer ended it: its cgroup went over `memory_max`.
    Oom,
    /// Its parent ended with end policy `cascade`.
    ParentEnded,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Requested => "requested",
            ReasonCode::Completed => "completed",
            ReasonCode::IdleTimeout => "idle_timeout",
            ReasonCode::WallTimeout => "wall_timeout",
            ReasonCode::Crashed => "crashed",
            ReasonCode::SpawnFailed => "spawn_failed",
            ReasonCode::SupervisorShutdown => "supervisor_shutdown",
            ReasonCode::Lost => "lost",
            ReasonCode::CostCap => "cost_cap",
            ReasonCode::TokenCap => "token_cap",
            ReasonCode::Oom => "oom",
            ReasonCode::ParentEnded => "parent_ended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            ReasonCode::Requested,
            ReasonCode::Completed,
            ReasonCode::IdleTimeout,
            ReasonCode::WallTimeout,
            ReasonCode::Crashed,
            ReasonCode::SpawnFailed,
            ReasonCode::SupervisorShutdown,
            ReasonCode::Lost,
            ReasonCode::CostCap,
            ReasonCode::TokenCap,
            ReasonCode::Oom,
            ReasonCode::ParentEnded,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// How the process ended, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "killed by signal {sig}"),
            (Some(code), None) => write!(f, "exit code {code}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

/// The view of an instance that the API returns and the store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub backend: BackendKind,
    pub parent_id: Option<String>,
    pub state: StateName,
    /// Set once a stop is decided (stopping) and on every end state.
    pub reason: Option<ReasonCode>,
    /// Human detail for the reason: a spawn error with the output tail, a signal name.
    pub reason_detail: Option<String>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// Process group leader while live.
    pub pid: Option<i32>,
    /// Start time of `pid` (clock ticks after boot, /proc/PID/stat field 22) and the boot id:
    /// together they identify the process, so a recycled pid is never adopted.
    pub pid_start: Option<u64>,
    pub boot_id: Option<String>,
    pub argv: Vec<String>,
    /// Names of the extra environment variables (values are never exposed).
    pub env_keys: Vec<String>,
    pub workspace: String,
    /// tmux session name on corral's private socket (tmux backend only).
    pub tmux_session: Option<String>,
    pub idle_timeout_s: u64,
    pub wall_timeout_s: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub last_activity_at: i64,
    /// Bytes of output seen so far (this daemon run).
    pub output_bytes: u64,
    /// Turns started by input (messages sent).
    pub turns: u64,
    pub cost_usd: f64,
    /// Tokens the agent reported (input, output, cache writes, cache reads).
    pub tokens: crate::agent::prices::Tokens,
    /// Caps; `None` means no cap.
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    /// `interactive` or `headless` (agents); `None` for commands.
    pub mode: Option<String>,
    pub model: Option<String>,
    /// The agent's own session (Claude) or thread (Codex) id, for resuming its conversation.
    pub session_id: Option<String>,
    /// Its place in a hierarchy of agents (depth, limits, end policy, subtree spend).
    #[serde(default)]
    pub tree: TreeInfo,
}

/// What happens to an instance's live children when it ends.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EndPolicy {
    /// The children are stopped (and theirs, children first).
    #[default]
    Cascade,
    /// The children keep running and become the operator's (their `parent_id` is cleared).
    Orphan,
}

impl EndPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndPolicy::Cascade => "cascade",
            EndPolicy::Orphan => "orphan",
        }
    }
}

/// An instance's place in its tree. Roots (spawned by the operator) have depth 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TreeInfo {
    pub depth: u32,
    /// Live children it may have at once.
    pub max_children: u32,
    /// Levels of descendants it may have below it (1: children only).
    pub max_depth: u32,
    pub end_policy: EndPolicy,
    /// USD and tokens of this instance and all its descendants (what its caps count).
    pub subtree_cost_usd: f64,
    pub subtree_tokens: crate::agent::prices::Tokens,
}

/// What a client asks for when spawning.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// Unique among live instances; default `<kind>-<id>`.
    pub name: Option<String>,
    /// `command` (the default).
    pub kind: Option<String>,
    /// `tmux` or `pty`; default from config.
    pub backend: Option<String>,
    /// The program and its arguments (kind `command`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// An existing directory name under the workspace root to run in; default a fresh one.
    pub workspace: Option<String>,
    /// A git repository to clone into the fresh workspace (not with `workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// With `repo_url`: the branch, tag or commit to check out (default: the remote's HEAD).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    pub idle_timeout_s: Option<u64>,
    pub wall_timeout_s: Option<u64>,
    /// Regex on the output that marks the instance ready; default: first output or
    /// `turn_quiet_ms` alive, whichever is first.
    pub ready_pattern: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// Output silence (ms) that ends a turn; default `instance.turn_quiet_ms`.
    pub turn_quiet_ms: Option<u64>,
    /// Agents: `interactive` (default) or `headless`.
    pub mode: Option<String>,
    /// Agents: the model (default from `agents.<kind>.model`, else the CLI's own).
    pub model: Option<String>,
    /// Agents: a first message, sent once the agent is ready.
    pub prompt: Option<String>,
    /// Agents: extra system prompt / instructions.
    pub system_prompt: Option<String>,
    /// Claude: `--permission-mode`.
    pub permission_mode: Option<String>,
    /// Agents: extra CLI arguments.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Agents: spending caps for this instance.
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    /// Agents being resumed: the conversation to continue (set by `resume`).
    pub resume_session: Option<String>,
    /// The instance this one belongs to (set by the supervisor for agents' own spawns).
    pub parent_id: Option<String>,
    /// Live children this instance may have at once (at most `limits.max_children`).
    pub max_children: Option<u32>,
    /// Levels of descendants this instance may have below it (bounded by its ancestors and
    /// `limits.max_depth`).
    pub max_depth: Option<u32>,
    /// What happens to its live children when it ends (default `cascade`).
    pub end_policy: Option<EndPolicy>,
    /// Wait until the instance is ready (or failed) before answering.
    #[serde(default)]
    pub wait_ready: bool,
    /// Resource limits for this instance; each may only lower the configured one.
    #[serde(default)]
    pub limits: Option<LimitsRequest>,
    /// Confine the instance's writes with Landlock (it cannot turn off a configured one).
    #[serde(default)]
    pub landlock: Option<bool>,
}

/// A size in bytes: a number, or a string with a suffix (`"512M"`, `"4G"`, `"64KiB"`), or
/// `"max"` for no limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// Per-spawn resource limits. Every field is optional; a value may only lower (never raise)
/// the server's configured limit of the same name (see CONFIG.md, `[limits]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Memory of the instance's cgroup (e.g. "512M"); past it the kernel's OOM killer ends
    /// the instance (end reason "oom").
    pub memory_max: Option<Size>,
    /// Swap the instance's cgroup may use ("0": none).
    pub memory_swap_max: Option<Size>,
    /// Processes and threads in the instance's cgroup at most (forks fail past it).
    pub pids_max: Option<u64>,
    /// CPU time: a number of CPUs ("1.5") or "QUOTA_US PERIOD_US" ("50000 100000").
    pub cpu_max: Option<String>,
    /// Open files per process (RLIMIT_NOFILE).
    pub nofile: Option<u64>,
    /// Processes of the agent's user (RLIMIT_NPROC; counted per user, not per instance).
    pub nproc: Option<u64>,
    /// Address space per process (RLIMIT_AS).
    #[serde(rename = "as")]
    pub as_: Option<Size>,
    /// Data segment per process (RLIMIT_DATA).
    pub data: Option<Size>,
    /// Largest file a process may write (RLIMIT_FSIZE; past it SIGXFSZ).
    pub fsize: Option<Size>,
    /// CPU seconds per process (RLIMIT_CPU; past it SIGXCPU, then SIGKILL).
    pub cpu_s: Option<u64>,
}

/// One audit/store event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the store (0 until then).
    pub seq: i64,
    /// Unix milliseconds.
    pub ts: i64,
    pub instance_id: Option<String>,
    pub name: Option<String>,
    pub kind: String,
    pub data: serde_json::Value,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
