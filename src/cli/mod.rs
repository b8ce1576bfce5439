//! Command-line interface: `corral serve` runs the daemon; the other commands are clients of
//! the local daemon's `/api/v1` (see [`client`]).

mod client;
mod doctor;
pub(crate) mod table;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "Supervise AI coding agents (and any command) in tmux or PTYs"
)]
pub struct Cli {
    /// Config file (default: /etc/corral/corral.toml when it exists).
    #[arg(long, short = 'c', global = true, env = "CORRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Daemon URL for client commands (default: from the run dir, else the configured address).
    #[arg(long, global = true, env = "CORRAL_URL")]
    pub url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of its largest variant (spawn's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (as PID 1, under a tiny init loop: see `corral init`).
    Serve,
    /// Run CMD under a minimal init: forward signals to it, reap every zombie, exit with its
    /// code (128 + signal when it is killed). For containers whose entrypoint is not corral.
    Init {
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<std::ffi::OsString>,
    },
    /// Validate the configuration and print it (secrets redacted).
    CheckConfig,
    /// List instances.
    Ls {
        /// Include ended instances.
        #[arg(long, short)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start an instance running CMD.
    Spawn {
        #[arg(long, short)]
        name: Option<String>,
        /// tmux or pty.
        #[arg(long, short)]
        backend: Option<String>,
        /// Seconds without output or input before it is stopped (0: never).
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// Seconds it may run in all (0: no limit).
        #[arg(long)]
        wall_timeout: Option<u64>,
        /// Regex on the output that marks it ready.
        #[arg(long)]
        ready_pattern: Option<String>,
        /// Extra environment variable (repeatable).
        #[arg(long, short, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Run in this existing directory under the workspace root.
        #[arg(long, conflicts_with = "repo_url")]
        workspace: Option<String>,
        /// Clone this git repository into the fresh workspace first (https://, ssh://,
        /// user@host:path, file:///path or an absolute path).
        #[arg(long, value_name = "URL")]
        repo_url: Option<String>,
        /// With --repo-url: the branch, tag or commit to check out.
        #[arg(long = "ref", value_name = "REF", requires = "repo_url")]
        git_ref: Option<String>,
        /// Lower a resource limit for this instance (repeatable), e.g. memory_max=512M,
        /// pids_max=64, cpu_max=0.5, nofile=1024, fsize=100M, cpu_s=600.
        #[arg(long, value_name = "KEY=VALUE")]
        limit: Vec<String>,
        /// Confine its writes to its workspace, HOME and tmp with Landlock.
        #[arg(long)]
        landlock: bool,
        /// Start it as a child of this running instance (id or name): it counts against the
        /// parent's max_children and ends with it under the parent's end policy.
        #[arg(long)]
        parent: Option<String>,
        /// Return as soon as the process runs instead of waiting until it is ready.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Type a message into an instance (followed by Enter).
    Send {
        name: String,
        /// The text; several words are joined with spaces.
        #[arg(required = true)]
        text: Vec<String>,
        /// Do not press Enter after the text.
        #[arg(long)]
        no_enter: bool,
        /// Wait for the turn to finish and print its output.
        #[arg(long, short)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Print an instance's output.
    Logs {
        name: String,
        /// Keep printing new output until the instance ends.
        #[arg(long, short)]
        follow: bool,
        /// Bytes of existing output to print first.
        #[arg(long, default_value_t = 65536)]
        tail: usize,
    },
    /// Attach this terminal to an instance's tmux session (detach: Ctrl-b d).
    Attach {
        name: String,
        /// Print the tmux command instead of running it.
        #[arg(long)]
        print: bool,
    },
    /// Stop an instance: polite signal, grace period, then SIGKILL.
    Kill {
        name: String,
        /// Seconds between the polite signal and SIGKILL.
        #[arg(long)]
        grace: Option<f64>,
        /// Return without waiting for it to end.
        #[arg(long)]
        no_wait: bool,
        /// Stop its whole subtree, deepest descendants first (always waits).
        #[arg(long, conflicts_with = "no_wait")]
        cascade: bool,
    },
    /// Tokens and cost per instance and for the fleet.
    Usage {
        /// Include ended instances.
        #[arg(long, short)]
        all: bool,
    },
    /// Start an ended instance again (same command, workspace and name; new id).
    Resume { name: String },
    /// Copy the database to PATH with SQLite's online backup (safe while the daemon runs).
    Backup { path: PathBuf },
    /// Check this host for what corral needs (tmux, agent user, cgroups, Landlock, state
    /// directories) and say how to fix what is missing; exits non-zero when something
    /// required is broken.
    Doctor,
    /// Print the version.
    Version,
    /// Used by agents' hooks: append the hook's JSON (stdin) to FILE as one line.
    #[command(name = "__hook", hide = true)]
    Hook { file: PathBuf },
}

/// Runs the CLI; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    // Normally split off in `main` already; kept here so this entry point is complete.
    if let Command::Init { argv } = &cli.command {
        return crate::pid1::init(argv);
    }
    // Run by agents' hooks: must not depend on (or fail over) the config.
    if let Command::Hook { file } = &cli.command {
        return crate::agent::watch::append_hook(file);
    }
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral: {e}");
            return 2;
        }
    };
    let result = match cli.command {
        Command::Serve => serve(cfg),
        Command::CheckConfig => check_config(&cfg),
        Command::Backup { path } => backup(&cfg, &path),
        Command::Hook { .. } => Ok(()),
        Command::Doctor => return doctor::run(&cfg),
        Command::Version => {
            println!("corral {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => client::run(&cfg, cli.url, other),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("corral: {e:#}");
            1
        }
    }
}

fn backup(cfg: &Config, dest: &std::path::Path) -> anyhow::Result<()> {
    let src = cfg.paths().db_path;
    if !src.exists() {
        anyhow::bail!("no database at {} (store.path)", src.display());
    }
    crate::store::backup(&src, dest)?;
    let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    println!(
        "backed up {} to {} ({size} bytes, integrity ok)",
        src.display(),
        dest.display()
    );
    Ok(())
}

fn check_config(cfg: &Config) -> anyhow::Result<()> {
    let mut shown = cfg.clone();
    if !shown.server.token.is_empty() {
        shown.server.token = "<redacted>".into();
    }
    println!("{}", toml::to_string_pretty(&shown)?);
    let p = cfg.paths();
    println!(
        "# resolved paths\n# database: {}\n# logs: {}\n# workspaces: {}\n# run: {}",
        p.db_path.display(),
        p.log_dir.display(),
        p.workspace_root.display(),
        p.run_dir.display()
    );
    Ok(())
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    crate::telemetry::init(&cfg);
    let cfg = Arc::new(cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("corral")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let bind = format!("{}:{}", cfg.server.host, cfg.server.port);
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("binding {bind} (server.host / server.port)"))?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        crate::signals::spawn_handler(shutdown.clone()).context("installing signal handlers")?;
        adopt_orphans();
        crate::app::run(cfg, listener, shutdown).await
    })
}

/// Orphaned descendants (the tmux server, what agents double-fork) come back to the daemon,
/// which reaps them without `waitpid(-1)` (see `backend::children`). Under a PID-1 corral
/// the parent does that instead.
fn adopt_orphans() {
    if crate::pid1::under_pid1_parent() {
        tracing::info!("running under corral's PID-1 init: it reaps orphans");
        return;
    }
    match crate::backend::children::adopt_orphans() {
        Ok(()) => tracing::debug!("child subreaper: orphaned descendants come back to corral"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot become a child subreaper; orphaned descendants (the tmux server) go to init"
        ),
    }
}
