//! Preparing an agent's launch: a private HOME and `CLAUDE_CONFIG_DIR` / `CODEX_HOME` under
//! `<state_dir>/agents/<id>/`, seeded so that no first-run screen blocks (agent-clis.md lists
//! them: onboarding, folder trust, API-key approval, the bypass warning, the model-migration
//! notice), the Claude hooks that report readiness and turn ends, the command line, and an
//! environment that carries this kind's credential and no other.
//!
//! Hooks run `corral __hook <agent_dir>/hooks.jsonl`, which appends the hook's JSON as one
//! line; the instance's watcher reads that file (see `watch.rs`). Nothing is typed into the
//! terminal and no secret is written into the seeded files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::{AgentKindConfig, Config};
use crate::model::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Interactive,
    Headless,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Interactive => "interactive",
            Mode::Headless => "headless",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "interactive" => Some(Mode::Interactive),
            "headless" => Some(Mode::Headless),
            _ => None,
        }
    }
}

/// What a spawn asked of an agent, validated.
#[derive(Debug, Clone)]
pub struct AgentPlan {
    pub kind: Kind,
    pub mode: Mode,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub system_prompt: Option<String>,
    pub permission_mode: Option<String>,
    pub extra_args: Vec<String>,
    /// Claude: fixed at spawn (`--session-id`), so the transcript path is known; a resumed
    /// agent continues this one. Codex: known once its rollout names it (or when resuming).
    pub session_id: Option<String>,
    pub resuming: bool,
}

/// Where the watcher looks, and how to read what it finds.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub kind: Kind,
    pub mode: Mode,
    pub agent_dir: PathBuf,
    /// `CLAUDE_CONFIG_DIR` or `CODEX_HOME`.
    pub config_dir: PathBuf,
    /// Interactive Claude: the hook log. Headless: the runner's turns file.
    pub hooks_file: PathBuf,
    /// The model usage is priced at when the record does not name one (Codex).
    pub model: String,
    /// Claude: only this session's transcript (and its subagents') is read, so instances
    /// that share a workspace do not count each other's usage.
    pub session_id: Option<String>,
}

pub struct Prepared {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub watch: WatchSpec,
    /// A regex on the screen that marks readiness where the agent has no hook (Codex).
    pub ready_pattern: Option<String>,
}

/// The variable that holds an instance's MCP token (every kind gets it, with
/// `CORRAL_MCP_URL`).
pub const MCP_TOKEN_VAR: &str = "CORRAL_MCP_TOKEN";

/// How an agent reaches corral's own MCP server: the URL and its per-instance token.
pub struct McpAccess {
    pub url: String,
    pub token: String,
}

/// Writes a file only its owner may read (it holds a token).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

pub fn agent_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("agents").join(id)
}

/// Headless mode: the instance runs `corral __headless`, which runs the CLI once per message.
fn headless_argv(
    kind: Kind,
    corral_exe: &Path,
    turns_file: &Path,
    plan: &AgentPlan,
    base: Vec<String>,
) -> Vec<String> {
    let mut argv = vec![
        corral_exe.display().to_string(),
        super::headless::SUBCOMMAND.to_string(),
        "--kind".into(),
        kind.as_str().into(),
        "--file".into(),
        turns_file.display().to_string(),
    ];
    if let Some(s) = &plan.session_id {
        argv.extend(["--session".into(), s.clone()]);
    }
    if plan.resuming {
        argv.push("--resume".into());
    }
    argv.push("--".into());
    argv.extend(base);
    argv
}

/// A random RFC 4122 version-4 UUID.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn agent_config(cfg: &Config, kind: Kind) -> &AgentKindConfig {
    if kind == Kind::Codex {
        &cfg.agents.codex
    } else {
        &cfg.agents.claude
    }
}

/// The CLI for a kind: `agents.<kind>.binary`, else the kind's name on PATH.
pub fn binary(cfg: &Config, kind: Kind) -> String {
    let b = &agent_config(cfg, kind).binary;
    if b.is_empty() {
        kind.as_str().to_string()
    } else {
        b.clone()
    }
}

/// The credential for a kind: from the config, else the daemon's environment.
fn credential(cfg: &Config, kind: Kind) -> Option<(&'static str, String)> {
    let var = if kind == Kind::Codex {
        "OPENAI_API_KEY"
    } else {
        "ANTHROPIC_API_KEY"
    };
    let configured = &agent_config(cfg, kind).api_key;
    let value = if configured.is_empty() {
        std::env::var(var).ok()?
    } else {
        configured.clone()
    };
    (!value.is_empty()).then_some((var, value))
}

fn write_json(path: &Path, v: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// Creates and seeds the agent's directories and returns its command line and environment.
pub fn prepare(
    cfg: &Config,
    plan: &AgentPlan,
    dir: &Path,
    id: &str,
    workspace: &Path,
    corral_exe: &Path,
    mcp: Option<&McpAccess>,
) -> std::io::Result<Prepared> {
    std::fs::create_dir_all(dir)?;
    let hooks_file = dir.join(format!("hooks-{id}.jsonl"));
    let ac = agent_config(cfg, plan.kind);
    let model = plan
        .model
        .clone()
        .or_else(|| (!ac.model.is_empty()).then(|| ac.model.clone()));
    // HOME, USER, TMPDIR come from the isolation plan (the agent user's private dirs).
    let mut env = BTreeMap::new();
    if let Some((var, value)) = credential(cfg, plan.kind) {
        env.insert(var.to_string(), value);
    }
    for (k, v) in &ac.env {
        env.insert(k.clone(), v.clone());
    }
    let ws = workspace.display().to_string();
    match plan.kind {
        Kind::Claude => {
            let config_dir = dir.join("claude");
            std::fs::create_dir_all(&config_dir)?;
            let key_tail = env.get("ANTHROPIC_API_KEY").map(|k| {
                k.chars()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            });
            write_json(
                &config_dir.join(".claude.json"),
                &json!({
                    "hasCompletedOnboarding": true,
                    "projects": { ws.clone(): { "hasTrustDialogAccepted": true, "hasCompletedProjectOnboarding": true } },
                    "customApiKeyResponses": { "approved": key_tail.into_iter().collect::<Vec<_>>(), "rejected": [] },
                }),
            )?;
            write_json(
                &config_dir.join("settings.json"),
                &json!({
                    "skipDangerousModePermissionPrompt": true,
                    "permissions": { "allow": ["Bash", "Edit", "Write", "Read", "Glob", "Grep", "NotebookEdit", "TodoWrite", "mcp__corral"] },
                }),
            )?;
            let hook = format!(
                "{} __hook {}",
                crate::backend::tmux::shell_quote(&corral_exe.display().to_string()),
                crate::backend::tmux::shell_quote(&hooks_file.display().to_string())
            );
            let group =
                json!([{ "hooks": [{ "type": "command", "command": hook, "timeout": 10 }] }]);
            let hook_settings = dir.join(format!("hooks-{id}.json"));
            write_json(
                &hook_settings,
                &json!({ "hooks": {
                    "SessionStart": group, "UserPromptSubmit": group, "Stop": group,
                    "StopFailure": group, "Notification": group, "SessionEnd": group,
                } }),
            )?;
            env.insert("CLAUDE_CONFIG_DIR".into(), config_dir.display().to_string());
            for (k, v) in [
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("DISABLE_TELEMETRY", "1"),
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_ERROR_REPORTING", "1"),
                ("CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL", "1"),
            ] {
                env.insert(k.into(), v.into());
            }
            if !ac.base_url.is_empty() {
                env.insert("ANTHROPIC_BASE_URL".into(), ac.base_url.clone());
            }
            let permission = plan
                .permission_mode
                .clone()
                .or_else(|| (!ac.permission_mode.is_empty()).then(|| ac.permission_mode.clone()));
            if permission.as_deref() == Some("bypassPermissions")
                && nix::unistd::geteuid().is_root()
            {
                // Claude refuses bypass mode as root unless told it runs in a sandbox.
                env.insert("IS_SANDBOX".into(), "1".into());
            }
            let mut argv = vec![binary(cfg, Kind::Claude)];
            if let Some(m) = mcp {
                // corral's MCP server, with this instance's token, in a file only the agent
                // reads: the token never appears on a command line or a screen.
                let file = dir.join(format!("mcp-{id}.json"));
                let conf = json!({ "mcpServers": { "corral": {
                    "type": "http", "url": m.url,
                    "headers": { "Authorization": format!("Bearer {}", m.token) },
                } } });
                write_private(&file, &conf.to_string())?;
                argv.extend(["--mcp-config".into(), file.display().to_string()]);
            }
            let sid = plan.session_id.clone().unwrap_or_default();
            if plan.mode == Mode::Interactive {
                // headless: the runner adds the session flags to each `-p` run
                if plan.resuming {
                    argv.extend(["--resume".into(), sid]);
                } else {
                    argv.extend(["--session-id".into(), sid]);
                }
                argv.extend(["--settings".into(), hook_settings.display().to_string()]);
            }
            if let Some(m) = &model {
                argv.extend(["--model".into(), m.clone()]);
            }
            if let Some(p) = &plan.system_prompt {
                argv.extend(["--append-system-prompt".into(), p.clone()]);
            }
            if let Some(p) = &permission {
                argv.extend(["--permission-mode".into(), p.clone()]);
            }
            argv.extend(ac.extra_args.iter().cloned());
            argv.extend(plan.extra_args.iter().cloned());
            let turns_file = dir.join(format!("turns-{id}.jsonl"));
            let (argv, hooks_file) = match plan.mode {
                Mode::Interactive => (argv, hooks_file),
                Mode::Headless => (
                    headless_argv(Kind::Claude, corral_exe, &turns_file, plan, argv),
                    turns_file,
                ),
            };
            Ok(Prepared {
                argv,
                env,
                watch: WatchSpec {
                    kind: Kind::Claude,
                    mode: plan.mode,
                    agent_dir: dir.to_path_buf(),
                    config_dir,
                    hooks_file,
                    model: model.unwrap_or_else(|| "claude-opus-4-8".into()),
                    session_id: plan.session_id.clone(),
                },
                ready_pattern: None,
            })
        }
        _ => {
            let config_dir = dir.join("codex");
            std::fs::create_dir_all(&config_dir)?;
            let model_name = model.clone().unwrap_or_else(|| "gpt-5.5".into());
            let mut toml_text = format!(
                "# Written by corral for one instance: no first-run screen, no background daemon, no telemetry.\n\
                 model = {model:?}\napproval_policy = \"never\"\nsandbox_mode = \"workspace-write\"\ncheck_for_update_on_startup = false\n\n\
                 [analytics]\nenabled = false\n\n[feedback]\nenabled = false\n\n\
                 [features]\nplugins = false\ndaemon_auto_start = false\n\n\
                 [notice.model_migrations]\n\"gpt-5.5\" = \"gpt-6-sol\"\n\n\
                 [tui]\nshow_tooltips = false\n\n[tui.model_availability_nux]\n\"gpt-6.1-sol\" = 1\n\n\
                 [projects.{ws:?}]\ntrust_level = \"trusted\"\n",
                model = model_name,
            );
            if let Some(m) = mcp {
                // The token stays in the environment (Codex refuses one inline in the file).
                toml_text.push_str(&format!(
                    "\n[mcp_servers.corral]\nurl = {:?}\nbearer_token_env_var = \"{MCP_TOKEN_VAR}\"\n",
                    m.url
                ));
            }
            if !ac.base_url.is_empty() {
                // A provider of our own: the same Responses API at another address, with the
                // instance's OPENAI_API_KEY as its bearer token. Top-level keys must precede
                // the first table, so `model_provider` goes on top.
                toml_text = format!(
                    "model_provider = \"corral\"\n{toml_text}\n\
                     [model_providers.corral]\nname = \"corral: agents.codex.base_url\"\n\
                     base_url = {url}\nenv_key = \"OPENAI_API_KEY\"\nwire_api = \"responses\"\n",
                    url = toml::Value::String(ac.base_url.clone()),
                );
            }
            if !ac.config_toml.is_empty() {
                toml_text.push('\n');
                toml_text.push_str(&ac.config_toml);
                toml_text.push('\n');
            }
            std::fs::write(config_dir.join("config.toml"), toml_text)?;
            env.insert("CODEX_HOME".into(), config_dir.display().to_string());
            let mut argv = vec![binary(cfg, Kind::Codex)];
            match plan.mode {
                Mode::Headless => argv.extend([
                    "exec".into(),
                    "--json".into(),
                    "--skip-git-repo-check".into(),
                ]),
                Mode::Interactive => {
                    if let (true, Some(sid)) = (plan.resuming, &plan.session_id) {
                        argv.extend(["resume".into(), sid.clone()]);
                    }
                }
            }
            if let Some(m) = &model {
                argv.extend(["-m".into(), m.clone()]);
            }
            if let Some(p) = &plan.system_prompt {
                argv.extend([
                    "-c".into(),
                    format!("developer_instructions={}", toml::Value::String(p.clone())),
                ]);
            }
            argv.extend(ac.extra_args.iter().cloned());
            argv.extend(plan.extra_args.iter().cloned());
            let turns_file = dir.join(format!("turns-{id}.jsonl"));
            let (argv, hooks_file, ready_pattern) = match plan.mode {
                Mode::Interactive => (argv, hooks_file, Some(r"OpenAI Codex \(v".to_string())),
                Mode::Headless => (
                    headless_argv(Kind::Codex, corral_exe, &turns_file, plan, argv),
                    turns_file,
                    None,
                ),
            };
            Ok(Prepared {
                argv,
                env,
                watch: WatchSpec {
                    kind: Kind::Codex,
                    mode: plan.mode,
                    agent_dir: dir.to_path_buf(),
                    config_dir,
                    hooks_file,
                    model: model_name,
                    session_id: plan.session_id.clone(),
                },
                ready_pattern,
            })
        }
    }
}

/// Gives `dir` and everything in it to the agent user (symlinks are not followed), so the
/// agent can write its transcripts and hook lines; the directories become 0700.
pub fn hand_over(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{lchown, PermissionsExt};
    let meta = std::fs::symlink_metadata(dir)?;
    lchown(dir, Some(uid), Some(gid))?;
    if meta.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(dir)? {
            hand_over(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, new_uuid());
    }

    #[test]
    fn claude_is_seeded_and_gets_only_its_credential() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.agents.claude.api_key = "sk-ant-test-0123456789abcdefghij".into();
        cfg.agents.codex.api_key = "sk-openai-secret".into();
        let plan = AgentPlan {
            kind: Kind::Claude,
            mode: Mode::Interactive,
            model: Some("claude-sonnet-4-6".into()),
            prompt: None,
            system_prompt: Some("be brief".into()),
            permission_mode: None,
            extra_args: vec![],
            session_id: Some("11111111-2222-4333-8444-555555555555".into()),
            resuming: false,
        };
        let ws = dir.path().join("ws");
        let p = prepare(
            &cfg,
            &plan,
            &dir.path().join("a"),
            "i1",
            &ws,
            Path::new("/usr/bin/corral"),
            Some(&McpAccess {
                url: "http://127.0.0.1:8001/mcp".into(),
                token: "crl_secret-token".into(),
            }),
        )
        .unwrap();
        assert_eq!(
            p.env["ANTHROPIC_API_KEY"],
            "sk-ant-test-0123456789abcdefghij"
        );
        assert!(!p.env.contains_key("OPENAI_API_KEY"));
        assert_eq!(p.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        let seeded: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("a/claude/.claude.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(seeded["hasCompletedOnboarding"], true);
        assert_eq!(
            seeded["projects"][ws.display().to_string()]["hasTrustDialogAccepted"],
            true
        );
        assert_eq!(
            seeded["customApiKeyResponses"]["approved"][0],
            "0123456789abcdefghij"
        );
        assert!(p
            .argv
            .windows(2)
            .any(|w| w == ["--session-id", "11111111-2222-4333-8444-555555555555"]));
        assert!(p
            .argv
            .windows(2)
            .any(|w| w == ["--model", "claude-sonnet-4-6"]));
        let hooks = std::fs::read_to_string(dir.path().join("a/hooks-i1.json")).unwrap();
        assert!(
            hooks.contains("__hook")
                && hooks.contains("SessionStart")
                && hooks.contains("\"Stop\"")
        );
        assert!(!hooks.contains("sk-ant"), "no secret in seeded files");
        // corral's MCP server: registered through a private file, the token in no argument
        let i = p.argv.iter().position(|a| a == "--mcp-config").unwrap();
        let file = Path::new(&p.argv[i + 1]);
        assert!(p.argv.iter().all(|a| !a.contains("crl_secret")));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let conf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(
            conf["mcpServers"]["corral"]["headers"]["Authorization"],
            "Bearer crl_secret-token"
        );
        assert_eq!(conf["mcpServers"]["corral"]["type"], "http");
    }

    #[test]
    fn codex_config_prevents_the_daemon_and_the_screens() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.agents.codex.config_toml = "[model_providers.mock]\nname = \"m\"\n".into();
        let plan = AgentPlan {
            kind: Kind::Codex,
            mode: Mode::Interactive,
            model: None,
            prompt: None,
            system_prompt: None,
            permission_mode: None,
            extra_args: vec![],
            session_id: None,
            resuming: false,
        };
        let p = prepare(
            &cfg,
            &plan,
            dir.path(),
            "i2",
            Path::new("/w/x"),
            Path::new("corral"),
            Some(&McpAccess {
                url: "http://127.0.0.1:8001/mcp".into(),
                token: "crl_secret-token".into(),
            }),
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("codex/config.toml")).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["features"]["daemon_auto_start"].as_bool(), Some(false));
        assert_eq!(
            v["notice"]["model_migrations"]["gpt-5.5"].as_str(),
            Some("gpt-6-sol")
        );
        assert_eq!(
            v["projects"]["/w/x"]["trust_level"].as_str(),
            Some("trusted")
        );
        assert!(v["model_providers"]["mock"].is_table());
        assert_eq!(
            v["mcp_servers"]["corral"]["url"].as_str(),
            Some("http://127.0.0.1:8001/mcp")
        );
        assert_eq!(
            v["mcp_servers"]["corral"]["bearer_token_env_var"].as_str(),
            Some(MCP_TOKEN_VAR)
        );
        assert!(
            !text.contains("crl_secret"),
            "the token stays out of the file"
        );
        assert_eq!(p.argv, ["codex"]);
        assert!(p.ready_pattern.is_some());
        // agents.codex.base_url: a provider of corral's own at that address
        cfg.agents.codex.config_toml.clear();
        cfg.agents.codex.base_url = "http://127.0.0.1:9/v1".into();
        prepare(
            &cfg,
            &plan,
            dir.path(),
            "i3",
            Path::new("/w/x"),
            Path::new("corral"),
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("codex/config.toml")).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["model_provider"].as_str(), Some("corral"));
        let p = &v["model_providers"]["corral"];
        assert_eq!(p["base_url"].as_str(), Some("http://127.0.0.1:9/v1"));
        assert_eq!(p["env_key"].as_str(), Some("OPENAI_API_KEY"));
        assert_eq!(p["wire_api"].as_str(), Some("responses"));
    }
}
