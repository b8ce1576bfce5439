//! Per-instance isolation without Docker: a non-root user (or a UID of its own), a private
//! workspace, HOME and tmp, a clean environment, rlimits, a cgroup, optionally Landlock.
//!
//! Everything is computed in the daemon ([`Isolation::prepare`] builds an [`IsolationPlan`])
//! and applied by the [`shim`] in the instance's first process, in a fixed order, before the
//! agent's program is executed. The daemon keeps a [`Guard`] per instance to kill its cgroup,
//! read its OOM count and clean up at the end.
//!
//! - [`user`]: who the agent runs as; dropping privileges.
//! - [`limits`]: configured limits, lowered per spawn.
//! - [`rlimit`], [`cgroup`], [`landlock`]: the three kinds of limits.
//! - [`workspace`]: directories owned by the instance.

pub mod cgroup;
pub mod landlock;
pub mod limits;
pub mod rlimit;
pub mod shim;
pub mod user;
pub mod workspace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::config::{Config, Paths};
use limits::Limits;

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The configuration does not allow the spawn (no such user, root refused, ...).
    #[error("{0}")]
    Refused(String),
    /// Preparing the instance failed.
    #[error("preparing the instance's isolation: {0}")]
    Prepare(String),
}

/// What the shim applies. It holds environment values, so it only ever lives in a 0600 file
/// that the shim deletes, and is never logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IsolationPlan {
    pub cgroup_procs: Vec<PathBuf>,
    pub rlimits: Vec<rlimit::Setting>,
    pub landlock: Option<landlock::Rules>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub credentials: Option<user::Credentials>,
}

/// The daemon's isolation state, set up once at start.
pub struct Isolation {
    policy: user::Policy,
    cgroups: Result<cgroup::Manager, String>,
    landlock_abi: Result<i32, String>,
    landlock_default: bool,
    limits: Limits,
    paths: Paths,
    exe: PathBuf,
    agent_user: String,
    uid_range: String,
}

/// One instance's request, as the supervisor validated it.
pub struct InstanceSpec<'a> {
    pub id: &'a str,
    pub workspace: &'a Path,
    /// Names the instance's HOME (`<state_dir>/homes/<name>`), so a resumed instance that
    /// reuses a workspace also finds its HOME again.
    pub workspace_name: &'a str,
    pub limits: &'a Limits,
    pub landlock: bool,
    /// Environment without the identity variables (HOME, USER, LOGNAME, SHELL, TMPDIR are
    /// added unless the spawn set them).
    pub env: BTreeMap<String, String>,
    pub argv: &'a [String],
}

pub struct Prepared {
    /// The instance's command line: the shim, its plan, then the program.
    pub argv: Vec<String>,
    pub guard: Guard,
    /// What was applied, for the `started` event (no secrets).
    pub summary: serde_json::Value,
}

/// An instance's isolation resources, released by [`Guard::release`].
pub struct Guard {
    pub cgroup: Option<cgroup::InstanceCgroup>,
    plan_file: PathBuf,
    tmp: PathBuf,
    _identity: user::Identity,
}

impl Isolation {
    /// Resolves the agent user, sets up corral's cgroup subtree (per `isolation.cgroups`) and
    /// probes Landlock. Fails only when cgroups are `required` and none is writable.
    pub fn start(cfg: &Config, paths: &Paths) -> Result<Isolation, String> {
        let euid = nix::unistd::geteuid().as_raw();
        let policy = user::policy(&cfg.agent, &user::SystemUsers, euid);
        if let user::Policy::Refused(why) = &policy {
            warn!(%why, "agents cannot be started until this is fixed");
        }
        let cgroups = match cfg.isolation.cgroups.as_str() {
            "off" => Err("off (isolation.cgroups = \"off\")".to_string()),
            _ => cgroup::detect().and_then(|h| cgroup::Manager::setup(&h, std::process::id())),
        };
        match &cgroups {
            Ok(m) => info!(cgroups = %m.describe(), "a cgroup per instance"),
            Err(e) if cfg.isolation.cgroups == "required" => {
                return Err(format!("isolation.cgroups = \"required\", but {e}"))
            }
            Err(e) => warn!(reason = %e, "no cgroups: instances get rlimits only"),
        }
        for dir in [paths.homes_dir(), paths.agent_tmp_dir()] {
            workspace::ensure_parent(&dir).map_err(|e| e.to_string())?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let plans = paths.plans_dir();
            std::fs::create_dir_all(&plans)
                .and_then(|()| {
                    std::fs::set_permissions(&plans, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| format!("preparing {}: {e}", plans.display()))?;
        }
        Ok(Isolation {
            policy,
            cgroups,
            landlock_abi: landlock::abi(),
            landlock_default: cfg.isolation.landlock,
            limits: Limits::from_config(&cfg.limits)?,
            paths: paths.clone(),
            exe: PathBuf::from(format!("/proc/{}/exe", std::process::id())),
            agent_user: cfg.agent.user.clone(),
            uid_range: cfg.agent.uid_range.clone(),
        })
    }

    /// The configured limits (a spawn may lower them).
    /// Whether processes of `uid` are agents (the agent user, or a UID of `agent.uid_range`).
    pub fn is_agent_uid(&self, uid: u32) -> bool {
        self.policy.is_agent_uid(uid)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether instances get Landlock unless a spawn asks for it.
    pub fn landlock_default(&self) -> bool {
        self.landlock_default
    }

    /// For /health: what isolation instances get (no paths or names of instances).
    pub fn status(&self) -> serde_json::Value {
        let cgroups = match &self.cgroups {
            Ok(m) => {
                let mut d = m.describe();
                if let Some(o) = d.as_object_mut() {
                    o.remove("dirs");
                    o.remove("notes");
                }
                d
            }
            Err(e) => json!({ "available": false, "reason": e }),
        };
        json!({
            "agents": {
                "user": self.agent_user,
                "uid_range": (!self.uid_range.is_empty()).then_some(&self.uid_range),
                "ok": !matches!(self.policy, user::Policy::Refused(_)),
                "problem": match &self.policy { user::Policy::Refused(m) => Some(m), _ => None },
            },
            "cgroups": cgroups,
            "landlock": match &self.landlock_abi {
                Ok(abi) => json!({ "available": true, "abi": abi, "default": self.landlock_default }),
                Err(e) => json!({ "available": false, "reason": e }),
            },
            "rlimits": true,
        })
    }

    /// Allocates the identity, prepares the directories, the cgroup and the plan file.
    pub fn prepare(&self, spec: InstanceSpec<'_>) -> Result<Prepared, IsolationError> {
        let identity = match &self.policy {
            user::Policy::Range { .. } => {
                let busy = user::uids_in_use();
                self.policy.identity(&|u| busy.contains(&u))
            }
            p => p.identity(&|_| false),
        }
        .map_err(IsolationError::Refused)?;
        let owner = identity.creds.as_ref().map(|c| (c.uid, c.gid));
        let is_agent = |u: u32| self.policy.is_agent_uid(u);
        let prep = |e: std::io::Error| IsolationError::Prepare(e.to_string());
        let home = self.paths.homes_dir().join(spec.workspace_name);
        let tmp = self.paths.agent_tmp_dir().join(spec.id);
        workspace::ensure_private_dir(spec.workspace, owner, &is_agent).map_err(prep)?;
        workspace::ensure_private_dir(&home, owner, &is_agent).map_err(prep)?;
        workspace::ensure_private_dir(&tmp, owner, &is_agent).map_err(prep)?;
        let cgroup = match &self.cgroups {
            Ok(m) => match m.create(spec.id, spec.limits) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    let _ = workspace::remove_tree(&tmp);
                    return Err(IsolationError::Prepare(format!("cgroup: {e}")));
                }
            },
            Err(_) => None,
        };
        let landlock = match (spec.landlock, &self.landlock_abi) {
            (false, _) => "off".to_string(),
            (true, Ok(abi)) => format!("active (ABI {abi})"),
            (true, Err(e)) => format!("unavailable: {e}"),
        };
        let mut env = spec.env;
        for (k, v) in [
            ("HOME", home.display().to_string()),
            ("USER", identity.name.clone()),
            ("LOGNAME", identity.name.clone()),
            ("SHELL", identity.shell.clone()),
            ("TMPDIR", tmp.display().to_string()),
        ] {
            env.entry(k.to_string()).or_insert(v);
        }
        let plan = IsolationPlan {
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            rlimits: rlimit::settings(spec.limits),
            landlock: (spec.landlock && self.landlock_abi.is_ok())
                .then(|| landlock::rules(spec.workspace, &home, &tmp)),
            env: env.into_iter().collect(),
            cwd: spec.workspace.to_path_buf(),
            credentials: identity.creds.clone(),
        };
        let plan_file = self.paths.plans_dir().join(format!("{}.plan", spec.id));
        let summary = json!({
            "user": identity.name,
            "uid": identity.uid,
            "gid": identity.gid,
            "cgroup": cgroup.is_some(),
            "limits": spec.limits,
            "landlock": landlock,
        });
        let guard = Guard {
            cgroup,
            plan_file: plan_file.clone(),
            tmp,
            _identity: identity,
        };
        if let Err(e) = shim::write_plan(&plan_file, &plan) {
            guard.release();
            return Err(IsolationError::Prepare(format!(
                "writing {}: {e}",
                plan_file.display()
            )));
        }
        Ok(Prepared {
            argv: shim::command_line(&self.exe, &plan_file, spec.argv),
            guard,
            summary,
        })
    }

    /// Kills and removes what a previous daemon left of instance `id` (its cgroup, tmp and
    /// plan), e.g. for an instance found `lost` at start.
    pub async fn reap_stale(&self, id: &str) {
        if let Ok(m) = &self.cgroups {
            let cg = m.instance(id);
            if cg.dirs.iter().any(|d| d.exists()) {
                if !kill_until_empty(&cg, Duration::from_secs(5)).await {
                    warn!(%id, "processes of a lost instance survived its cgroup kill");
                }
                let _ = cg.remove();
            }
        }
        let _ = workspace::remove_tree(&self.paths.agent_tmp_dir().join(id));
        let _ = std::fs::remove_file(self.paths.plans_dir().join(format!("{id}.plan")));
    }
}

/// Kills the cgroup until nothing is left in it, or `limit` passes. True when empty.
async fn kill_until_empty(cg: &cgroup::InstanceCgroup, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Err(e) = cg.kill() {
            warn!(error = %e, "killing the cgroup failed");
        }
        // A zombie is dead already; its parent (tmux, for a pane) reaps it in its own time.
        if cg
            .pids()
            .iter()
            .all(|p| crate::backend::pidfd::zombie_status(*p).is_some())
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl Guard {
    /// One pass of SIGKILL to everything in the cgroup (without cgroups: nothing to do; the
    /// caller signals the process group).
    pub fn kill(&self) {
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.kill() {
                warn!(error = %e, "killing the instance's cgroup failed");
            }
        }
    }

    /// Kills the whole cgroup and waits (bounded) until it is empty.
    pub async fn kill_all(&self) {
        if let Some(cg) = &self.cgroup {
            if !kill_until_empty(cg, Duration::from_secs(5)).await {
                warn!(left = ?cg.pids(), "processes survived the cgroup kill for 5 s");
            }
        }
    }

    /// Processes of the instance the kernel's OOM killer ended.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |c| c.oom_kills())
    }

    /// Removes the cgroup, the private tmp and a plan the shim never read; returns a range
    /// UID to the pool.
    pub fn release(self) {
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.remove() {
                warn!(error = %e, "removing the instance's cgroup failed");
            }
        }
        if let Err(e) = workspace::remove_tree(&self.tmp) {
            warn!(error = %e, "removing the instance's tmp failed");
        }
        let _ = std::fs::remove_file(&self.plan_file);
    }
}
