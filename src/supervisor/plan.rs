//! Validates a spawn request into a launch plan: everything the backend needs, computed and
//! checked before anything is created, with an error that names the bad argument.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::SupervisorError;
use crate::agent::launch::{new_uuid, AgentPlan, Mode};
use crate::backend::parse_signal;
use crate::config::{Config, Paths};
use crate::isolation::limits::Limits;
use crate::model::{BackendKind, Kind, LimitsRequest, SpawnRequest};

pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
const MAX_TIMEOUT_S: u64 = 30 * 24 * 3600;
const MAX_ARGV_BYTES: usize = 128 * 1024;
const MAX_ENV_VARS: usize = 256;

/// Variables passed through from the daemon's environment; everything else is dropped.
/// HOME, USER, LOGNAME, SHELL and TMPDIR describe the agent, not the daemon: the isolation
/// plan sets them.
pub const ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

pub struct Plan {
    pub name: Option<String>,
    pub kind: Kind,
    pub backend: BackendKind,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workspace: Option<String>,
    /// Clone this repository into the fresh workspace (validated; may hold credentials, so
    /// shown only through `clone::redact`).
    pub repo: Option<Repo>,
    pub idle_timeout_s: u64,
    pub wall_timeout_s: u64,
    pub ready_re: Option<regex::bytes::Regex>,
    pub ready_pattern: Option<String>,
    pub cols: u16,
    pub rows: u16,
    pub turn_quiet_ms: u64,
    pub stop_signal: Signal,
    /// Agents: what to launch and how (claude/codex); `None` for commands.
    pub agent: Option<AgentPlan>,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    /// Effective limits (the configured ones, lowered by the request).
    pub limits: Limits,
    pub landlock: bool,
    /// The parent (None: the operator's) and the place in the tree (set by the supervisor).
    pub parent_id: Option<String>,
    pub tree: crate::model::TreeInfo,
    /// As requested, for `resume`.
    limits_req: Option<LimitsRequest>,
    landlock_req: Option<bool>,
}

/// A git repository to clone into the instance's fresh workspace.
#[derive(Debug, Clone)]
pub struct Repo {
    pub url: String,
    pub git_ref: Option<String>,
}

fn invalid(msg: String) -> SupervisorError {
    SupervisorError::InvalidArgument(msg)
}

pub fn check_size(cols: u16, rows: u16) -> Result<(), SupervisorError> {
    if !(10..=1000).contains(&cols) {
        return Err(invalid(format!("cols = {cols}: must be 10-1000")));
    }
    if !(5..=500).contains(&rows) {
        return Err(invalid(format!("rows = {rows}: must be 5-500")));
    }
    Ok(())
}

pub fn plan(
    cfg: &Config,
    base_limits: &Limits,
    req: SpawnRequest,
) -> Result<Plan, SupervisorError> {
    if let Some(name) = &req.name {
        crate::ids::validate_name(name).map_err(|e| invalid(format!("invalid name: {e}")))?;
    }
    let kind_name = req.kind.as_deref().unwrap_or("command");
    let kind = Kind::parse(kind_name).ok_or_else(|| {
        invalid(format!(
            "kind = {kind_name:?}: must be \"command\", \"claude\" or \"codex\""
        ))
    })?;
    let backend_name = req.backend.as_deref().unwrap_or(&cfg.instance.backend);
    let backend = BackendKind::parse(backend_name).ok_or_else(|| {
        invalid(format!(
            "backend = {backend_name:?}: must be \"tmux\" or \"pty\""
        ))
    })?;
    let agent = agent_plan(cfg, kind, &req)?;
    if agent.is_some() {
        if !req.argv.is_empty() {
            return Err(invalid(format!(
                "argv is for kind \"command\"; a {kind_name} instance runs its CLI (use extra_args for more arguments)"
            )));
        }
    } else {
        for (field, set) in [
            ("mode", req.mode.is_some()),
            ("model", req.model.is_some()),
            ("prompt", req.prompt.is_some()),
            ("system_prompt", req.system_prompt.is_some()),
            ("permission_mode", req.permission_mode.is_some()),
            ("extra_args", !req.extra_args.is_empty()),
            ("max_cost_usd", req.max_cost_usd.is_some()),
            ("max_tokens", req.max_tokens.is_some()),
        ] {
            if set {
                return Err(invalid(format!(
                    "{field} applies to claude and codex instances, not to kind \"command\""
                )));
            }
        }
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(invalid(
                "argv must name a program to run (argv[0] is empty)".into(),
            ));
        }
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("argv contains a NUL byte".into()));
    }
    if req.argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES {
        return Err(invalid(format!(
            "argv is longer than {MAX_ARGV_BYTES} bytes"
        )));
    }
    if req.env.len() > MAX_ENV_VARS {
        return Err(invalid(format!(
            "env has {} variables; the limit is {MAX_ENV_VARS}",
            req.env.len()
        )));
    }
    for (k, v) in &req.env {
        let ok_key = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok_key {
            return Err(invalid(format!(
                "env key {k:?}: must match [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
        if v.contains('\0') {
            return Err(invalid(format!("env {k}: value contains a NUL byte")));
        }
    }
    let idle_timeout_s = req.idle_timeout_s.unwrap_or(cfg.instance.idle_timeout_s);
    let wall_timeout_s = req.wall_timeout_s.unwrap_or(cfg.instance.wall_timeout_s);
    for (key, v) in [
        ("idle_timeout_s", idle_timeout_s),
        ("wall_timeout_s", wall_timeout_s),
    ] {
        if v > MAX_TIMEOUT_S {
            return Err(invalid(format!(
                "{key} = {v}: must be at most {MAX_TIMEOUT_S} (30 days); 0 disables"
            )));
        }
    }
    let ready_re = match &req.ready_pattern {
        None => None,
        Some(p) if p.len() > 4096 => {
            return Err(invalid("ready_pattern is longer than 4096 bytes".into()))
        }
        Some(p) => Some(
            regex::bytes::Regex::new(p)
                .map_err(|e| invalid(format!("ready_pattern {p:?} is not a valid regex: {e}")))?,
        ),
    };
    let cols = req.cols.unwrap_or(cfg.instance.cols);
    let rows = req.rows.unwrap_or(cfg.instance.rows);
    check_size(cols, rows)?;
    if let Some(ws) = &req.workspace {
        check_workspace_name(ws)?;
    }
    let repo = match (&req.repo_url, &req.git_ref) {
        (Some(_), _) if req.workspace.is_some() => {
            return Err(invalid(
                "workspace and repo_url exclude each other: repo_url clones into a fresh workspace, workspace reuses an existing one".into(),
            ))
        }
        (Some(url), r) => {
            super::clone::validate_url(url).map_err(invalid)?;
            if let Some(r) = r {
                super::clone::validate_ref(r).map_err(invalid)?;
            }
            Some(Repo {
                url: url.clone(),
                git_ref: r.clone(),
            })
        }
        (None, Some(_)) => {
            return Err(invalid(
                "ref applies to repo_url (the branch, tag or commit to check out)".into(),
            ))
        }
        (None, None) => None,
    };
    let turn_quiet_ms = req.turn_quiet_ms.unwrap_or(cfg.instance.turn_quiet_ms);
    if !(1..=600_000).contains(&turn_quiet_ms) {
        return Err(invalid(format!(
            "turn_quiet_ms = {turn_quiet_ms}: must be 1-600000"
        )));
    }
    let stop_signal = parse_signal(&cfg.instance.stop_signal).unwrap_or(Signal::SIGTERM);
    let (max_cost_usd, max_tokens) = match &agent {
        None => (None, None),
        Some(_) => {
            let cost = req
                .max_cost_usd
                .or((cfg.limits.max_cost_usd_per_instance > 0.0)
                    .then_some(cfg.limits.max_cost_usd_per_instance));
            let tokens = req.max_tokens.or((cfg.limits.max_tokens_per_instance > 0)
                .then_some(cfg.limits.max_tokens_per_instance));
            if let Some(c) = cost {
                if !(c.is_finite() && c > 0.0) {
                    return Err(invalid(format!(
                        "max_cost_usd = {c}: must be a positive number of dollars"
                    )));
                }
            }
            if tokens == Some(0) {
                return Err(invalid("max_tokens = 0: must be positive".into()));
            }
            (cost, tokens)
        }
    };
    let argv = match &agent {
        Some(a) => vec![crate::agent::launch::binary(cfg, a.kind)],
        None => req.argv,
    };
    let limits = match &req.limits {
        Some(l) => base_limits.lowered(l).map_err(invalid)?,
        None => base_limits.clone(),
    };
    let landlock = match req.landlock {
        Some(false) if cfg.isolation.landlock => {
            return Err(invalid(
                "landlock = false: the server confines every instance (isolation.landlock = true); a spawn cannot turn it off".into(),
            ))
        }
        Some(on) => on,
        None => cfg.isolation.landlock,
    };
    let plan = Plan {
        name: req.name,
        kind,
        backend,
        argv,
        env: req.env,
        workspace: req.workspace,
        repo,
        idle_timeout_s,
        wall_timeout_s,
        ready_re,
        ready_pattern: req.ready_pattern,
        cols,
        rows,
        turn_quiet_ms,
        stop_signal,
        agent,
        max_cost_usd,
        max_tokens,
        limits,
        landlock,
        parent_id: req.parent_id,
        tree: Default::default(),
        limits_req: req.limits,
        landlock_req: req.landlock,
    };
    plan.check_program()?;
    Ok(plan)
}

fn agent_plan(
    cfg: &Config,
    kind: Kind,
    req: &SpawnRequest,
) -> Result<Option<AgentPlan>, SupervisorError> {
    if !kind.is_agent() {
        return Ok(None);
    }
    let mode = match req.mode.as_deref() {
        None => Mode::Interactive,
        Some(m) => Mode::parse(m).ok_or_else(|| {
            invalid(format!(
                "mode = {m:?}: must be \"interactive\" or \"headless\""
            ))
        })?,
    };

    if let Some(p) = &req.permission_mode {
        if kind != Kind::Claude {
            return Err(invalid(
                "permission_mode applies to claude instances".into(),
            ));
        }
        if !matches!(
            p.as_str(),
            "default" | "acceptEdits" | "plan" | "bypassPermissions"
        ) {
            return Err(invalid(format!(
                "permission_mode = {p:?}: must be default, acceptEdits, plan or bypassPermissions"
            )));
        }
    }
    for (field, v) in [
        ("model", &req.model),
        ("prompt", &req.prompt),
        ("system_prompt", &req.system_prompt),
    ] {
        if let Some(v) = v {
            if v.contains('\0') || v.len() > MAX_MESSAGE_BYTES {
                return Err(invalid(format!(
                    "{field}: must be at most {MAX_MESSAGE_BYTES} bytes without NUL"
                )));
            }
        }
    }
    if let Some(m) = &req.model {
        if m.is_empty() || m.starts_with('-') || m.contains(char::is_whitespace) {
            return Err(invalid(format!("model = {m:?}: not a model name")));
        }
    }
    let _ = cfg;
    let session_id = match (&req.resume_session, kind) {
        (Some(s), _) => Some(s.clone()),
        (None, Kind::Claude) => Some(new_uuid()),
        (None, _) => None,
    };
    Ok(Some(AgentPlan {
        kind,
        mode,
        model: req.model.clone(),
        prompt: req.prompt.clone(),
        system_prompt: req.system_prompt.clone(),
        permission_mode: req.permission_mode.clone(),
        extra_args: req.extra_args.clone(),
        resuming: req.resume_session.is_some(),
        session_id,
    }))
}

/// A workspace given by name must be one plain directory name under the root.
fn check_workspace_name(ws: &str) -> Result<(), SupervisorError> {
    let ok = !ws.is_empty()
        && ws != "."
        && ws != ".."
        && !ws.contains('/')
        && !ws.contains('\0')
        && ws.len() <= 255;
    if !ok {
        return Err(invalid(format!(
            "workspace {ws:?}: must be the name of a directory directly under the workspace root (no '/', '.' or '..')"
        )));
    }
    Ok(())
}

impl Plan {
    /// Resolves argv[0] on the instance's PATH so a typo is a clear error, not a dead pane.
    fn check_program(&self) -> Result<(), SupervisorError> {
        let prog = &self.argv[0];
        if prog.contains('/') {
            let p = Path::new(prog);
            return if is_executable(p) {
                Ok(())
            } else {
                Err(invalid(format!("{prog}: no such executable file")))
            };
        }
        let path = self
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        if std::env::split_paths(&path).any(|d| is_executable(&d.join(prog))) {
            Ok(())
        } else {
            Err(invalid(format!(
                "{prog}: command not found on PATH ({path})"
            )))
        }
    }

    /// The instance's workspace and its name: a named existing directory under the root, or
    /// `<root>/<id>` (created, with its owner, by the isolation step).
    pub fn workspace_path(
        &self,
        paths: &Paths,
        id: &str,
    ) -> Result<(PathBuf, String), SupervisorError> {
        let root = &paths.workspace_root;
        crate::isolation::workspace::ensure_parent(root)
            .map_err(|e| SupervisorError::Backend(format!("workspace root: {e}")))?;
        match &self.workspace {
            Some(name) => {
                let p = root.join(name);
                let meta = std::fs::symlink_metadata(&p).map_err(|_| {
                    invalid(format!(
                        "workspace {name:?} does not exist under {}",
                        root.display()
                    ))
                })?;
                if !meta.is_dir() {
                    return Err(invalid(format!(
                        "workspace {name:?} is not a directory (symlinks are refused)"
                    )));
                }
                Ok((p, name.clone()))
            }
            None => Ok((root.join(id), id.to_string())),
        }
    }

    /// The instance's environment, without the identity variables the isolation plan adds:
    /// the allowlist from the daemon, corral's own variables, then the request's variables.
    pub fn instance_env(&self, name: &str, id: &str) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for k in ENV_ALLOWLIST {
            if let Ok(v) = std::env::var(k) {
                env.insert(k.to_string(), v);
            }
        }
        // tmux's panes emulate its default-terminal (see backend/tmux.rs).
        let term = match self.backend {
            BackendKind::Pty => "xterm-256color",
            BackendKind::Tmux => "screen-256color",
        };
        env.insert("TERM".into(), term.into());
        env.insert("CORRAL_INSTANCE_ID".into(), id.into());
        env.insert("CORRAL_INSTANCE_NAME".into(), name.into());
        for (k, v) in &self.env {
            env.insert(k.clone(), v.clone());
        }
        env
    }

    /// What the store keeps of the request, as a `SpawnRequest` (so `resume` can replay it).
    /// It holds environment values: the database is private to the daemon (0600) and this
    /// column is never returned by the API or written to events or logs.
    pub fn spec_json(&self) -> String {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "backend": self.backend.as_str(),
            "argv": if self.agent.is_some() { Vec::new() } else { self.argv.clone() },
            "env": self.env,
            "workspace": self.workspace,
            // for the record only (resume reuses the workspace); never with credentials
            "repo_url": self.repo.as_ref().map(|r| super::clone::redact(&r.url)),
            "ref": self.repo.as_ref().and_then(|r| r.git_ref.clone()),
            "idle_timeout_s": self.idle_timeout_s,
            "wall_timeout_s": self.wall_timeout_s,
            "ready_pattern": self.ready_pattern,
            "cols": self.cols,
            "rows": self.rows,
            "turn_quiet_ms": self.turn_quiet_ms,
            "mode": self.agent.as_ref().map(|a| a.mode.as_str()),
            "model": self.agent.as_ref().and_then(|a| a.model.clone()),
            "system_prompt": self.agent.as_ref().and_then(|a| a.system_prompt.clone()),
            "permission_mode": self.agent.as_ref().and_then(|a| a.permission_mode.clone()),
            "extra_args": self.agent.as_ref().map(|a| a.extra_args.clone()).unwrap_or_default(),
            "max_cost_usd": self.max_cost_usd,
            "max_tokens": self.max_tokens,
            "limits": self.limits_req,
            "landlock": self.landlock_req,
            "parent_id": self.parent_id,
            "max_children": self.tree.max_children,
            "max_depth": self.tree.max_depth,
            "end_policy": self.tree.end_policy,
        })
        .to_string()
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Size;

    fn req(json: serde_json::Value) -> SpawnRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn limits_are_lowered_and_landlock_cannot_be_turned_off() {
        let mut cfg = Config::default();
        let base = Limits::from_config(&cfg.limits).unwrap();
        let p = plan(
            &cfg,
            &base,
            req(
                serde_json::json!({"argv": ["sh"], "limits": {"memory_max": "64M", "pids_max": 8}}),
            ),
        )
        .unwrap();
        assert_eq!(p.limits.memory_max, Some(64 << 20));
        assert_eq!(p.limits.pids_max, Some(8));
        assert!(!p.landlock);
        let spec: SpawnRequest = serde_json::from_str(&p.spec_json()).unwrap();
        assert_eq!(
            spec.limits.unwrap().memory_max,
            Some(Size::Text("64M".into())),
            "resume replays the request"
        );
        let e = plan(
            &cfg,
            &base,
            req(serde_json::json!({"argv": ["sh"], "limits": {"memory_max": "64G"}})),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("memory_max") && e.contains("only lower"), "{e}");
        cfg.isolation.landlock = true;
        let e = plan(
            &cfg,
            &base,
            req(serde_json::json!({"argv": ["sh"], "landlock": false})),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("cannot turn it off"), "{e}");
        assert!(
            plan(&cfg, &base, req(serde_json::json!({"argv": ["sh"]})))
                .unwrap()
                .landlock
        );
    }
}
