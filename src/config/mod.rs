//! Configuration: one serde tree with defaults, loaded from TOML, overridden by environment
//! variables, validated once into an immutable [`Config`].
//!
//! Precedence, lowest first: built-in defaults, the TOML file, the Madrox-compatible names
//! (`ORCHESTRATOR_PORT`, ...), then `CORRAL_<SECTION>_<KEY>`. Every key also has a
//! `CORRAL_<SECTION>_<KEY>_FILE` variant that reads the value from a file (for secrets).
//! The env names are derived from the default tree itself, so a new key gets its override
//! without extra code. Every key is documented in CONFIG.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod env;
mod validate;

pub use env::env_name;
use env::{apply_madrox_env, collect_leaves, merge, parse_env_value, set_path};

/// The default config file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/corral/corral.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub paths: PathsConfig,
    pub limits: LimitsConfig,
    pub instance: InstanceConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub tmux: TmuxConfig,
    pub agent: AgentConfig,
    pub isolation: IsolationConfig,
    pub agents: AgentsConfig,
    /// Price overrides and additions, per model: USD per million tokens.
    pub prices: std::collections::BTreeMap<String, crate::agent::prices::Price>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    pub claude: AgentKindConfig,
    pub codex: AgentKindConfig,
    /// Milliseconds between pasting a message into an interactive agent and pressing Enter:
    /// Claude Code drops an Enter that arrives while it is still taking in the paste.
    pub enter_delay_ms: u64,
    /// Seconds an interactive agent may take to report ready (SessionStart hook, or the banner
    /// for Codex) before the spawn counts as failed.
    pub start_timeout_s: f64,
    /// Milliseconds an agent whose readiness is read off the screen (Codex's banner) must
    /// stay up after it before it counts as ready: the TUI draws before it takes input.
    pub ready_settle_ms: u64,
    /// Milliseconds an interactive agent has to report a submitted message (Claude's
    /// UserPromptSubmit hook or transcript line, Codex's rollout) before Enter is pressed
    /// again (at most 3 times); 0 disables.
    pub submit_check_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AgentKindConfig {
    /// The CLI (a name on PATH or a path). Default `claude` / `codex`.
    pub binary: String,
    /// The credential given to this kind only (ANTHROPIC_API_KEY / OPENAI_API_KEY). Empty:
    /// taken from the daemon's own environment variable of that name, if set.
    pub api_key: String,
    /// Claude: ANTHROPIC_BASE_URL; Codex: the `base_url` of a seeded Responses-API provider
    /// (a proxy or a local mock). Empty: the CLI's default.
    pub base_url: String,
    /// Default model; a spawn may choose another.
    pub model: String,
    /// Claude: `--permission-mode` (default, acceptEdits, plan, bypassPermissions). Empty:
    /// the seeded allow-list of tools applies.
    pub permission_mode: String,
    /// Extra arguments for every launch of this kind.
    pub extra_args: Vec<String>,
    /// Extra environment variables for this kind's instances.
    pub env: std::collections::BTreeMap<String, String>,
    /// Codex: TOML appended to the seeded config.toml (e.g. a `[model_providers.x]` table).
    pub config_toml: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind. Loopback by default; any other address requires `token`.
    pub host: String,
    /// TCP port; 0 picks a free port (written to `<run_dir>/daemon.json`).
    pub port: u16,
    /// Bearer token for /api and /mcp. Empty means no auth (allowed on loopback only).
    pub token: String,
    /// Extra Origins allowed to call the API from a browser (loopback origins always are).
    pub allowed_origins: Vec<String>,
    /// Extra `Host` header values accepted (loopback names and `host` always are). With a
    /// token and a non-loopback bind, an empty list accepts any Host (the token protects).
    pub allowed_hosts: Vec<String>,
    /// The `/mcp` URL agents are given to reach corral. Empty: derived from the bound address
    /// (a wildcard bind becomes 127.0.0.1).
    pub mcp_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Root of everything corral writes. Empty: `/var/lib/corral` for root, else
    /// `$XDG_STATE_HOME/corral` (or `~/.local/state/corral`).
    pub state_dir: String,
    /// SQLite database directory. Empty: `<state_dir>/data`.
    pub data_dir: String,
    /// Audit and instance logs. Empty: `<state_dir>/logs`.
    pub log_dir: String,
    /// Instance workspaces. Empty: `<state_dir>/workspaces`.
    pub workspace_root: String,
    /// Sockets and FIFOs (tmux socket, output pipes). Empty: `<state_dir>/run`.
    pub run_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Live instances at most; a spawn past it is refused.
    pub max_instances: u32,
    /// Fleet spending cap in USD over all instances ever recorded (0: none).
    pub max_total_cost_usd: f64,
    /// Default per-instance caps for agents (0: none); a spawn or set_budget may change them.
    pub max_cost_usd_per_instance: f64,
    pub max_tokens_per_instance: u64,
    /// What reaching a cap does: `pause` (interrupt the turn, refuse messages until the
    /// budget is raised) or `terminate`.
    pub on_cap: String,
    /// Live children one instance may have at once (a spawn may lower it per instance).
    pub max_children: u32,
    /// Levels below an operator-spawned instance (1: its children may not spawn).
    pub max_depth: u32,
    /// Per-instance cgroup memory (`memory.max` / `memory.limit_in_bytes`); "max" or "0": none.
    pub memory_max: String,
    /// Per-instance cgroup swap (`memory.swap.max`; v1: memsw = memory + swap); "max": none.
    pub memory_swap_max: String,
    /// Per-instance cgroup `pids.max`; 0: none.
    pub pids_max: u64,
    /// Per-instance cgroup CPU: CPUs ("1.5") or "QUOTA PERIOD" in µs; "" or "max": none.
    pub cpu_max: String,
    /// RLIMIT_NOFILE (soft = hard); 0: inherit.
    pub nofile: u64,
    /// RLIMIT_NPROC (counted per user); 0: inherit.
    pub nproc: u64,
    /// RLIMIT_AS; "max" or "0": none.
    #[serde(rename = "as")]
    pub as_: String,
    /// RLIMIT_DATA; "max" or "0": none.
    pub data: String,
    /// RLIMIT_FSIZE; "max" or "0": none.
    pub fsize: String,
    /// RLIMIT_CPU in seconds; 0: none.
    pub cpu_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// `tmux` or `pty`.
    pub backend: String,
    /// Stop an instance after this many seconds with no output and no input; 0 disables.
    pub idle_timeout_s: u64,
    /// Stop an instance this many seconds after it started; 0 disables.
    pub wall_timeout_s: u64,
    /// Seconds between the polite signal and SIGKILL when stopping.
    pub stop_grace_s: f64,
    /// The polite signal: SIGTERM, SIGHUP, SIGINT or SIGQUIT.
    pub stop_signal: String,
    /// Seconds an instance may stay `starting` before it is a failed spawn.
    pub start_timeout_s: f64,
    /// Milliseconds of output silence after which a busy `command` instance is ready again.
    pub turn_quiet_ms: u64,
    /// Milliseconds a `command` without `ready_pattern` must stay alive to count as ready;
    /// dying sooner is a failed spawn.
    pub settle_ms: u64,
    /// Bytes of recent output kept in memory per instance.
    pub ring_bytes: usize,
    /// Size at which an instance log is rotated.
    pub log_max_bytes: u64,
    /// Rotated instance logs kept (`<id>.log.1` .. `<id>.log.N`).
    pub log_keep: u32,
    /// Terminal size for new instances.
    pub cols: u16,
    pub rows: u16,
    /// What happens to an instance's live children when it ends: `cascade` (they are
    /// stopped) or `orphan` (they keep running as the operator's). A spawn may choose.
    pub end_policy: String,
    /// Seconds a `repo_url` clone (and the checkout of its `ref`) may take.
    pub clone_timeout_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// `terminate`: stop every instance on shutdown; `detach`: leave tmux instances running for
    /// the next daemon to adopt (PTY instances are stopped either way).
    pub agents: String,
    /// Grace period per instance when terminating on shutdown.
    pub grace_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `corral=debug,tower_http=info`.
    pub level: String,
    /// `pretty` or `json`.
    pub format: String,
    /// Audit files older than this many days are deleted (at start and daily); 0 keeps all.
    pub audit_retention_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database file. Empty: `<data_dir>/corral.db`.
    pub path: String,
    /// SQLite `synchronous` in WAL mode: `full` (durable across power loss) or `normal`
    /// (durable across a daemon crash, not a power loss).
    pub synchronous: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The user agents run as (the daemon, as root, switches to it in the `__exec` shim).
    pub user: String,
    /// Allow `user` to be root (refused otherwise).
    pub allow_root: bool,
    /// "FIRST-LAST": give each instance its own UID (= GID) from this range instead of
    /// `user`'s, so instances cannot read each other's files. Empty: off.
    pub uid_range: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// Landlock: instances may write only under their workspace, HOME and private tmp.
    pub landlock: bool,
    /// `auto`: a cgroup per instance where one is writable, else rlimits only; `required`:
    /// refuse to start without writable cgroups; `off`: no cgroups.
    pub cgroups: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TmuxConfig {
    /// The tmux binary (a name on PATH or a path).
    pub binary: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8001,
            token: String::new(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            mcp_url: String::new(),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            claude: AgentKindConfig::default(),
            codex: AgentKindConfig::default(),
            enter_delay_ms: 300,
            start_timeout_s: 60.0,
            ready_settle_ms: 500,
            submit_check_ms: 2000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_instances: 50,
            max_total_cost_usd: 0.0,
            max_cost_usd_per_instance: 0.0,
            max_tokens_per_instance: 0,
            on_cap: "pause".into(),
            max_children: 10,
            max_depth: 3,
            memory_max: "4G".into(),
            memory_swap_max: "0".into(),
            pids_max: 1024,
            cpu_max: String::new(),
            nofile: 8192,
            nproc: 0,
            as_: "max".into(),
            data: "max".into(),
            fsize: "max".into(),
            cpu_s: 0,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            user: "corral".into(),
            allow_root: false,
            uid_range: String::new(),
        }
    }
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            landlock: false,
            cgroups: "auto".into(),
        }
    }
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            backend: "tmux".into(),
            idle_timeout_s: 1800,
            wall_timeout_s: 0,
            stop_grace_s: 10.0,
            stop_signal: "SIGTERM".into(),
            start_timeout_s: 30.0,
            turn_quiet_ms: 800,
            settle_ms: 300,
            ring_bytes: 1 << 20,
            log_max_bytes: 10 << 20,
            log_keep: 3,
            cols: 200,
            rows: 50,
            end_policy: "cascade".into(),
            clone_timeout_s: 300,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            agents: "terminate".into(),
            grace_s: 10.0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "pretty".into(),
            audit_retention_days: 90,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            synchronous: "full".into(),
        }
    }
}

impl Default for TmuxConfig {
    fn default() -> Self {
        Self {
            binary: "tmux".into(),
        }
    }
}

/// Resolved directories, all absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    pub workspace_root: PathBuf,
    pub run_dir: PathBuf,
    pub db_path: PathBuf,
}

impl Paths {
    pub fn instance_log_dir(&self) -> PathBuf {
        self.log_dir.join("instances")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.log_dir.join("audit")
    }
    /// Per-workspace HOME directories of the agents (`<state_dir>/homes/<workspace>`).
    pub fn homes_dir(&self) -> PathBuf {
        self.state_dir.join("homes")
    }
    /// Per-instance private tmp directories (`<state_dir>/tmp/<id>`), removed at the end.
    pub fn agent_tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }
    /// Isolation plans handed to the `__exec` shim (0600, deleted by the shim).
    pub fn plans_dir(&self) -> PathBuf {
        self.run_dir.join("plans")
    }
    pub fn tmux_socket(&self) -> PathBuf {
        self.run_dir.join("tmux.sock")
    }
    /// Written by the daemon once it listens: `{"addr": "...", "pid": N}`.
    pub fn daemon_file(&self) -> PathBuf {
        self.run_dir.join("daemon.json")
    }
}

impl Config {
    /// Loads the config: file (explicit, or the default file when present), then env.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, &|k| std::env::var(k).ok())
    }

    /// As [`Config::load`], with the environment injected (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env("CORRAL_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                p.exists().then_some(p)
            });
        let defaults = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(format!("defaults do not serialise: {e}")))?;
        let mut tree = defaults.clone();
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let user: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            merge(&mut tree, user);
        }
        apply_madrox_env(&mut tree, &defaults, env)?;
        let mut leaves = Vec::new();
        collect_leaves(&defaults, String::new(), &mut leaves);
        for (key, default) in &leaves {
            let var = env_name(key);
            let file_var = format!("{var}_FILE");
            let raw = match (env(&var), env(&file_var)) {
                (Some(v), _) => Some((var.clone(), v)),
                (None, Some(p)) => {
                    let v = std::fs::read_to_string(&p).map_err(|e| {
                        ConfigError::Invalid(format!("{file_var}={p}: cannot read file: {e}"))
                    })?;
                    Some((
                        file_var.clone(),
                        v.trim_end_matches(['\n', '\r']).to_string(),
                    ))
                }
                _ => None,
            };
            if let Some((name, value)) = raw {
                let parsed = parse_env_value(key, default, &value, &name)?;
                set_path(&mut tree, key, parsed);
            }
        }
        let config: Config = tree.try_into().map_err(|e: toml::de::Error| {
            let message = e.to_string();
            match &file {
                Some(path) => ConfigError::Parse {
                    path: path.clone(),
                    message,
                },
                None => ConfigError::Invalid(message),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The resolved directory layout.
    pub fn paths(&self) -> Paths {
        let state_dir = if self.paths.state_dir.is_empty() {
            default_state_dir()
        } else {
            PathBuf::from(&self.paths.state_dir)
        };
        let or = |v: &str, sub: &str| {
            if v.is_empty() {
                state_dir.join(sub)
            } else {
                PathBuf::from(v)
            }
        };
        let data_dir = or(&self.paths.data_dir, "data");
        let db_path = if self.store.path.is_empty() {
            data_dir.join("corral.db")
        } else {
            PathBuf::from(&self.store.path)
        };
        Paths {
            log_dir: or(&self.paths.log_dir, "logs"),
            workspace_root: or(&self.paths.workspace_root, "workspaces"),
            run_dir: or(&self.paths.run_dir, "run"),
            data_dir,
            db_path,
            state_dir,
        }
    }

    /// Whether `server.host` is a loopback address.
    pub fn loopback_bind(&self) -> bool {
        self.server.host == "localhost"
            || self
                .server
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Host names (without port) that requests may carry in `Host`, or `None` for any.
    pub fn allowed_hosts(&self) -> Option<Vec<String>> {
        if !self.loopback_bind()
            && !self.server.token.is_empty()
            && self.server.allowed_hosts.is_empty()
        {
            return None;
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let h = self.server.host.as_str();
        if h != "0.0.0.0" && h != "::" && !hosts.iter().any(|x| x == h) {
            hosts.push(h.to_string());
        }
        hosts.extend(self.server.allowed_hosts.iter().cloned());
        Some(hosts)
    }

    /// The base URL a local client uses to reach this daemon's configured address.
    pub fn local_url(&self) -> String {
        let host = match self.server.host.as_str() {
            "0.0.0.0" => "127.0.0.1".to_string(),
            "::" => "[::1]".to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        format!("http://{host}:{}", self.server.port)
    }
}

fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/corral");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("corral");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/corral")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(file.map(|_| path.as_path()), &|k| env.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 8001);
        assert_eq!(c.local_url(), "http://127.0.0.1:8001");
    }

    #[test]
    fn precedence_file_then_madrox_then_corral_env() {
        let c = load(
            Some("[server]\nport = 9000\n[limits]\nmax_instances = 3\n"),
            &[
                ("MAX_INSTANCES", "7"),
                ("ORCHESTRATOR_PORT", "9100"),
                ("CORRAL_SERVER_PORT", "9200"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.port, 9200);
        assert_eq!(c.limits.max_instances, 7);
        let c = load(
            None,
            &[
                ("INSTANCE_TIMEOUT_MINUTES", "2"),
                ("DATABASE_URL", "sqlite:////x/y.db"),
            ],
        )
        .unwrap();
        assert_eq!(c.instance.idle_timeout_s, 120);
        assert_eq!(c.paths().db_path, PathBuf::from("/x/y.db"));
    }

    #[test]
    fn file_variant_reads_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        let c = load(None, &[("CORRAL_SERVER_TOKEN_FILE", p.to_str().unwrap())]).unwrap();
        assert_eq!(c.server.token, "0123456789abcdef0123");
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = load(None, &[("CORRAL_SERVER_PORT", "abc")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CORRAL_SERVER_PORT") && e.contains("abc") && e.contains("server.port"),
            "{e}"
        );
        let e = load(Some("[instance]\nbackend = \"docker\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("instance.backend") && e.contains("docker"),
            "{e}"
        );
        let e = load(Some("[server]\nprot = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("prot"), "{e}");
        let e = load(None, &[("CORRAL_SERVER_HOST", "0.0.0.0")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.host") && e.contains("requires server.token"),
            "{e}"
        );
        let ok = load(
            None,
            &[
                ("CORRAL_SERVER_HOST", "0.0.0.0"),
                ("CORRAL_SERVER_TOKEN", "0123456789abcdef"),
            ],
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn isolation_keys_are_validated_by_name() {
        let c = load(
            Some("[agent]\nuid_range = \"200000-200999\"\n[limits]\nmemory_max = \"512M\"\nas = \"2G\"\n"),
            &[("CORRAL_LIMITS_PIDS_MAX", "64"), ("CORRAL_ISOLATION_LANDLOCK", "true")],
        )
        .unwrap();
        assert_eq!(c.limits.pids_max, 64);
        assert_eq!(c.limits.as_, "2G");
        assert!(c.isolation.landlock);
        for (file, key) in [
            ("[agent]\nuid_range = \"5-1\"\n", "agent.uid_range"),
            ("[agent]\nuser = \"a b\"\n", "agent.user"),
            ("[limits]\nmemory_max = \"lots\"\n", "limits.memory_max"),
            ("[limits]\ncpu_max = \"fast\"\n", "limits.cpu_max"),
            ("[isolation]\ncgroups = \"maybe\"\n", "isolation.cgroups"),
        ] {
            let e = load(Some(file), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{file}: {e}");
        }
    }

    #[test]
    fn every_default_leaf_has_an_env_name() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut leaves = Vec::new();
        collect_leaves(&defaults, String::new(), &mut leaves);
        let names: Vec<String> = leaves.iter().map(|(k, _)| env_name(k)).collect();
        assert!(names.contains(&"CORRAL_INSTANCE_IDLE_TIMEOUT_S".to_string()));
        assert!(names.contains(&"CORRAL_PATHS_STATE_DIR".to_string()));
    }
}
