//! The spawn path: an id and a slot, the workspace, the agent's preparation, isolation, the
//! store row, the backend launch, and the task that owns the process from then on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::instance::State;
use super::task::{lock, Shared, Task, Timers};
use super::*;
use crate::isolation::IsolationError;

impl Supervisor {
    pub(super) async fn new_id(&self) -> Result<String, SupervisorError> {
        for _ in 0..8 {
            let id = crate::ids::new_id();
            if !self.inner.store.id_exists(id.clone()).await? {
                return Ok(id);
            }
        }
        Err(SupervisorError::Backend(
            "could not draw a unique instance id".into(),
        ))
    }

    /// Takes a live slot for a new instance: its name must be free, and the fleet's
    /// `max_instances` and (with `check_parent`) the parent's `max_children` must allow it.
    pub(super) fn reserve(
        &self,
        id: &str,
        name: &str,
        parent: Option<&str>,
        check_parent: bool,
    ) -> Result<(), SupervisorError> {
        let mut live = lock(&self.inner.live);
        if live.values().any(|s| s.name == name) {
            return Err(SupervisorError::Conflict(format!(
                "an instance named {name:?} is already running; pick another name or stop it first"
            )));
        }
        let max = self.inner.cfg.limits.max_instances as usize;
        if live.len() >= max {
            return Err(SupervisorError::LimitReached(format!(
                "limits.max_instances = {max} instances are already live; stop one first"
            )));
        }
        if let (Some(p), true) = (parent, check_parent) {
            let info = live
                .get(p)
                .and_then(|s| s.handle.as_ref())
                .map(|h| h.shared.info.borrow().clone())
                .ok_or_else(|| SupervisorError::State(format!("parent {p:?} is not running")))?;
            let children = live
                .values()
                .filter(|s| s.parent.as_deref() == Some(p))
                .count();
            if children >= info.tree.max_children as usize {
                return Err(SupervisorError::LimitReached(format!(
                    "max_children: {:?} already has {children} live child(ren) and may have at most {}; stop one first",
                    info.name, info.tree.max_children
                )));
            }
        }
        live.insert(
            id.to_string(),
            Slot {
                name: name.to_string(),
                parent: parent.map(str::to_string),
                handle: None,
            },
        );
        let n = live.len();
        drop(live);
        self.inner.live_count.send_replace(n);
        Ok(())
    }

    pub(super) async fn launch(
        &self,
        id: &str,
        name: &str,
        plan: plan::Plan,
    ) -> Result<InstanceInfo, SupervisorError> {
        let cfg = &self.inner.cfg;
        let (workspace, workspace_name) = plan.workspace_path(&self.inner.paths, id)?;
        // Its own MCP token (revoked when it ends), for reaching corral's /mcp.
        let mcp = self.inner.mcp_url.get().map(|url| {
            let (token, digest) = self.inner.tokens.issue(id);
            (
                crate::agent::launch::McpAccess {
                    url: url.clone(),
                    token,
                },
                digest,
            )
        });
        // Agents: seed their private config dir (keyed by workspace, so a resumed agent finds
        // its conversation) and get their command line and environment.
        let agent_dir =
            crate::agent::launch::agent_dir(&self.inner.paths.state_dir, &workspace_name);
        let agent_prep = match &plan.agent {
            None => None,
            Some(a) => {
                let exe = std::env::current_exe().map_err(|e| {
                    SupervisorError::Backend(format!("locating corral itself: {e}"))
                })?;
                let ws = workspace
                    .canonicalize()
                    .unwrap_or_else(|_| workspace.clone());
                Some(
                    crate::agent::launch::prepare(
                        cfg,
                        a,
                        &agent_dir,
                        id,
                        &ws,
                        &exe,
                        mcp.as_ref().map(|(m, _)| m),
                    )
                    .map_err(|e| {
                        SupervisorError::Backend(format!("preparing {}: {e}", agent_dir.display()))
                    })?,
                )
            }
        };
        let mut env = plan.instance_env(name, id);
        if let Some((m, _)) = &mcp {
            env.insert("CORRAL_MCP_URL".into(), m.url.clone());
            env.insert(crate::agent::launch::MCP_TOKEN_VAR.into(), m.token.clone());
        }
        let argv = match &agent_prep {
            Some(p) => {
                for (k, v) in &p.env {
                    // the request's own variables win over the agent defaults
                    if !plan.env.contains_key(k) {
                        env.insert(k.clone(), v.clone());
                    }
                }
                p.argv.clone()
            }
            None => plan.argv.clone(),
        };
        let prepared = self
            .inner
            .isolation
            .prepare(crate::isolation::InstanceSpec {
                id,
                workspace: &workspace,
                workspace_name: &workspace_name,
                limits: &plan.limits,
                landlock: plan.landlock,
                env,
                argv: &argv,
            })
            .map_err(|e| match e {
                IsolationError::Refused(m) => SupervisorError::SpawnFailed(m),
                other => SupervisorError::Backend(other.to_string()),
            })?;
        let cloned = match &plan.repo {
            None => None,
            Some(repo) => match self
                .clone_repo(id, repo, &workspace, &workspace_name, &prepared)
                .await
            {
                Ok(c) => Some(c),
                Err(msg) => {
                    prepared.guard.release();
                    // No half workspace: it was fresh (repo_url excludes an existing one).
                    for dir in [
                        workspace.clone(),
                        self.inner.paths.homes_dir().join(&workspace_name),
                        agent_dir.clone(),
                    ] {
                        if let Err(e) = crate::isolation::workspace::remove_tree(&dir) {
                            warn!(%id, error = %e, "cleaning up after a failed clone");
                        }
                    }
                    warn!(%id, %name, url = %clone::redact(&repo.url), error = %msg, "clone failed");
                    return Err(SupervisorError::SpawnFailed(format!(
                        "cloning {}: {msg}",
                        clone::redact(&repo.url)
                    )));
                }
            },
        };
        if agent_prep.is_some() {
            // The agent writes its transcripts and hook lines there as the agent user.
            let (uid, gid) = (
                prepared.summary["uid"].as_u64(),
                prepared.summary["gid"].as_u64(),
            );
            if let (Some(uid), Some(gid)) = (uid, gid) {
                if let Err(e) = crate::agent::launch::hand_over(&agent_dir, uid as u32, gid as u32)
                {
                    prepared.guard.release();
                    return Err(SupervisorError::Backend(format!(
                        "handing {} to the agent user: {e}",
                        agent_dir.display()
                    )));
                }
            }
        }
        let now = now_ms();
        let mut info = InstanceInfo {
            id: id.to_string(),
            name: name.to_string(),
            kind: plan.kind,
            backend: plan.backend,
            parent_id: plan.parent_id.clone(),
            state: StateName::Starting,
            reason: None,
            reason_detail: None,
            exit_code: None,
            exit_signal: None,
            pid: None,
            argv: argv.clone(),
            env_keys: plan.env.keys().cloned().collect(),
            workspace: workspace.display().to_string(),
            tmux_session: (plan.backend == BackendKind::Tmux).then(|| name.to_string()),
            idle_timeout_s: plan.idle_timeout_s,
            wall_timeout_s: plan.wall_timeout_s,
            created_at: now,
            started_at: None,
            ended_at: None,
            last_activity_at: now,
            output_bytes: 0,
            turns: 0,
            cost_usd: 0.0,
            pid_start: None,
            boot_id: None,
            tokens: Default::default(),
            max_cost_usd: plan.max_cost_usd,
            max_tokens: plan.max_tokens,
            mode: plan.agent.as_ref().map(|a| a.mode.as_str().to_string()),
            model: plan.agent.as_ref().and_then(|a| a.model.clone()),
            session_id: plan.agent.as_ref().and_then(|a| a.session_id.clone()),
            tree: plan.tree.clone(),
        };
        let spec_json = plan.spec_json();
        let mut spawn_data = json!({
            "kind": info.kind.as_str(),
            "backend": info.backend.as_str(),
            "argv": info.argv,
            "env_keys": info.env_keys,
            "workspace": info.workspace,
            "parent_id": info.parent_id,
            "depth": info.tree.depth,
        });
        if let (Some(repo), Some(c)) = (&plan.repo, &cloned) {
            spawn_data["repo"] = json!({
                "url": clone::redact(&repo.url),
                "ref": repo.git_ref,
                "commit": c.commit,
            });
        }
        let ev = self.event(&info, "spawn", spawn_data);
        let ev = match self
            .inner
            .store
            .insert_instance(info.clone(), spec_json, ev)
            .await
        {
            Ok(ev) => ev,
            Err(e) => {
                prepared.guard.release();
                return Err(e.into());
            }
        };
        self.inner.announce(ev);
        if let Some((_, digest)) = mcp {
            self.inner
                .store
                .set_token_sha256(id.to_string(), Some(digest))
                .await?;
        }

        let spec = backend::LaunchSpec {
            argv: prepared.argv.clone(),
            cwd: workspace.clone(),
            cols: plan.cols,
            rows: plan.rows,
            session: name.to_string(),
        };
        let launched = backend::launch(
            plan.backend,
            &spec,
            &self.inner.tmux,
            &self.inner.paths.run_dir.join("pipes"),
            &format!("{id}.out"),
        )
        .await;
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                info.state = StateName::Failed;
                info.reason = Some(ReasonCode::SpawnFailed);
                info.reason_detail = Some(msg.clone());
                info.ended_at = Some(now_ms());
                let ev = self.event(
                    &info,
                    "exit",
                    json!({ "state": "failed", "reason": "spawn_failed", "detail": msg }),
                );
                prepared.guard.release();
                let ev = self.inner.store.record(info, ev).await?;
                self.inner.announce(ev);
                return Err(SupervisorError::SpawnFailed(msg));
            }
        };
        info.pid = Some(launched.pid);
        info.pid_start = backend::pidfd::start_time(launched.pid);
        info.boot_id = backend::pidfd::boot_id();
        info.started_at = Some(now_ms());
        let now = Instant::now();
        let start_timeout = Duration::from_secs_f64(cfg.instance.start_timeout_s);
        let is_agent = plan.agent.is_some();
        let agent_start = Duration::from_secs_f64(cfg.agents.start_timeout_s);
        let mut ready_re = plan.ready_re;
        let mut agent = None;
        if let (Some(p), Some(a)) = (&agent_prep, &plan.agent) {
            if let Some(pat) = &p.ready_pattern {
                ready_re = regex::bytes::Regex::new(pat).ok();
            }
            agent = match self.link_agent(p.watch.clone(), false, a.prompt.clone()) {
                Ok(l) => Some(l),
                Err(e) => {
                    prepared.guard.release();
                    return Err(e);
                }
            };
        }
        let timers = Timers {
            idle: (plan.idle_timeout_s > 0).then(|| Duration::from_secs(plan.idle_timeout_s)),
            wall_deadline: (plan.wall_timeout_s > 0)
                .then(|| now + Duration::from_secs(plan.wall_timeout_s)),
            start_deadline: if is_agent {
                Some(now + agent_start)
            } else {
                ready_re.is_some().then(|| now + start_timeout)
            },
            settle_deadline: (!is_agent && ready_re.is_none())
                .then(|| now + Duration::from_millis(cfg.instance.settle_ms)),
            quiet: Duration::from_millis(plan.turn_quiet_ms),
            quiet_deadline: None,
            kill_deadline: None,
            enter_deadline: None,
            submit_deadline: None,
            paste_deadline: None,
            last_activity: now,
            idle_armed: false,
        };
        let pid = info.pid;
        self.start_task(TaskStart {
            info: info.clone(),
            state: State::Starting,
            launched,
            timers,
            ready_re,
            stop_signal: plan.stop_signal,
            first_event: ("started", json!({ "pid": pid })),
            ring_seed: Vec::new(),
            agent,
            iso: Some(prepared.guard),
            iso_summary: prepared.summary,
            memory_max: plan.limits.memory_max,
        });
        info!(%id, %name, pid = info.pid, backend = info.backend.as_str(), "spawned");
        Ok(info)
    }

    /// Clones `repo` into the fresh workspace as the instance's user (see `clone.rs`).
    async fn clone_repo(
        &self,
        id: &str,
        repo: &plan::Repo,
        workspace: &std::path::Path,
        workspace_name: &str,
        prepared: &crate::isolation::Prepared,
    ) -> Result<clone::Cloned, String> {
        let (uid, gid) = (
            prepared.summary["uid"].as_u64().map(|u| u as u32),
            prepared.summary["gid"].as_u64().map(|g| g as u32),
        );
        let me = nix::unistd::geteuid().as_raw();
        let as_user = match (uid, gid) {
            (Some(u), Some(g)) if me == 0 && u != 0 => Some((u, g)),
            _ => None,
        };
        let paths = &self.inner.paths;
        let started = std::time::Instant::now();
        let home = paths.homes_dir().join(workspace_name);
        let tmp = paths.agent_tmp_dir().join(id);
        let c = clone::clone(&clone::CloneSpec {
            url: &repo.url,
            git_ref: repo.git_ref.as_deref(),
            dest: workspace,
            home: &home,
            tmp: &tmp,
            as_user,
            timeout: Duration::from_secs(self.inner.cfg.instance.clone_timeout_s),
        })
        .await?;
        // git keeps the directory's mode; say so anyway: a fresh workspace is 0700.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(workspace, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("restricting {}: {e}", workspace.display()))?;
        }
        info!(%id, url = %clone::redact(&repo.url), commit = ?c.commit, ms = started.elapsed().as_millis() as u64, "cloned the workspace");
        Ok(c)
    }

    /// Starts watching an agent's files and returns the link its task reads.
    pub(super) fn link_agent(
        &self,
        spec: crate::agent::launch::WatchSpec,
        adopted: bool,
        prompt: Option<String>,
    ) -> Result<agent_task::AgentLink, SupervisorError> {
        let (tx, rx) = mpsc::channel(256);
        let watch = crate::agent::watch::spawn(spec, adopted, tx)
            .map_err(|e| SupervisorError::Backend(format!("watching the agent's files: {e}")))?;
        Ok(agent_task::AgentLink {
            watch,
            rx: Some(rx),
            pending_prompt: prompt,
            warned: Default::default(),
            turn_start: Default::default(),
            input: Default::default(),
        })
    }

    /// Hands a running process to a new task that owns it from now on.
    pub(super) fn start_task(&self, t: TaskStart) {
        let cfg = &self.inner.cfg;
        let id = t.info.id.clone();
        let shared = Arc::new(Shared::new(t.info.clone(), cfg.instance.ring_bytes));
        lock(&shared.ring).push(&t.ring_seed);
        let log = output::LogFile::open(
            self.log_path(&id),
            cfg.instance.log_max_bytes,
            cfg.instance.log_keep,
        )
        .map_err(|e| warn!(error = %e, "instance log unavailable"))
        .ok();
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let task = Task {
            inner: self.inner.clone(),
            shared: shared.clone(),
            info: t.info,
            state: t.state,
            control: t.launched.control,
            log,
            timers: t.timers,
            ready_re: t.ready_re,
            scan: Vec::new(),
            stop_signal: t.stop_signal,
            current_turn: None,
            start_timeout: Duration::from_secs_f64(cfg.instance.start_timeout_s),
            first_event: t.first_event,
            agent: t.agent,
            iso: t.iso,
            iso_summary: t.iso_summary,
            memory_max: t.memory_max,
        };
        {
            let mut live = lock(&self.inner.live);
            if let Some(slot) = live.get_mut(&id) {
                slot.handle = Some(Handle {
                    ctl: ctl_tx,
                    shared,
                });
            }
        }
        tokio::spawn(task.run(t.launched.output, t.launched.exit, ctl_rx));
    }

    pub(super) async fn wait_ready(&self, id: &str) -> Result<InstanceInfo, SupervisorError> {
        let Some(handle) = self.handle(id) else {
            return self.get(id).await.and_then(ready_or_error);
        };
        let mut rx = handle.shared.info.subscribe();
        let limit = Duration::from_secs_f64(self.inner.cfg.instance.start_timeout_s + 5.0);
        // Past `starting`, unless it is being stopped because it never became ready.
        let settled = |i: &InstanceInfo| match i.state {
            StateName::Starting => false,
            StateName::Stopping => i.reason != Some(ReasonCode::SpawnFailed),
            _ => true,
        };
        let _ = tokio::time::timeout(limit, rx.wait_for(settled)).await;
        let info = rx.borrow().clone();
        if info.state.is_live() && info.reason != Some(ReasonCode::SpawnFailed) {
            return Ok(info);
        }
        // The task commits the end state before it drops out of the live set.
        let _ = tokio::time::timeout(limit, rx.wait_for(|i| !i.state.is_live())).await;
        // It ended: read the committed end state (with its detail).
        self.get(id).await.and_then(ready_or_error)
    }
}
