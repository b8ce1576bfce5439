//! Wiring: store → supervisor → HTTP server, and the ordered shutdown.
//!
//! `run` takes its listener and shutdown token from the caller, so tests (and the PID-1 and
//! systemd modes) can drive it. Once serving it tells systemd `READY=1` (when
//! `NOTIFY_SOCKET` is set). Shutdown order: `STOPPING=1`, stop accepting connections, stop
//! every instance (recording `supervisor_shutdown`), let open responses finish, close the
//! store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, Paths};
use crate::http::{self, AppState};
use crate::model::{now_ms, Event};
use crate::store::Store;
use crate::supervisor::Supervisor;

pub fn prepare_dirs(paths: &Paths) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        &paths.state_dir,
        &paths.data_dir,
        &paths.log_dir,
        &paths.workspace_root,
        &paths.run_dir,
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The run dir holds the tmux socket, output pipes and isolation plans, the data and log
    // dirs the database and everything instances printed: owner only. (An agent that could
    // reach the socket of corral's tmux server could run commands as the daemon.)
    for dir in [&paths.run_dir, &paths.data_dir, &paths.log_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    // Agents reach their own workspace by name but cannot list the others.
    crate::isolation::workspace::ensure_parent(&paths.workspace_root)
        .with_context(|| format!("preparing {}", paths.workspace_root.display()))?;
    Ok(())
}

pub async fn run(
    cfg: Arc<Config>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let paths = cfg.paths();
    prepare_dirs(&paths)?;
    let store = Store::open(
        &paths.db_path,
        &cfg.store.synchronous,
        paths.audit_dir(),
        cfg.log.audit_retention_days,
    )
    .with_context(|| format!("opening the store at {}", paths.db_path.display()))?;
    let sup = Supervisor::start(cfg.clone(), store.clone()).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    write_daemon_file(&paths, &addr.to_string()).context("writing the daemon file")?;
    sup.set_mcp_url(mcp_url(&cfg, addr));
    store
        .event(daemon_event("daemon_started", json!({ "addr": addr.to_string(), "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION") })))
        .await?;
    info!(%addr, state_dir = %paths.state_dir.display(), "corral serving");

    spawn_audit_pruner(
        paths.audit_dir(),
        cfg.log.audit_retention_days,
        shutdown.clone(),
    );
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    metrics.spawn_observer(&sup);
    let app = http::router(AppState {
        sup: sup.clone(),
        cfg: cfg.clone(),
        metrics,
        started: Instant::now(),
        shutdown: shutdown.clone(),
    });
    let stop_accepting = shutdown.clone();
    let server = tokio::spawn(async move {
        // TCP_NODELAY on every connection; the peer lets the guard tell agents' connections
        // from the operator's.
        let listener = http::NoDelay(listener);
        let app = app.into_make_service_with_connect_info::<http::PeerConn>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
            .await
    });
    // The listener was bound before `run`, and the server task now accepts on it.
    notify(&format!("READY=1\nSTATUS=serving on {addr}"));

    shutdown.cancelled().await;
    notify("STOPPING=1\nSTATUS=stopping instances");
    info!("shutdown: stopping instances");
    sup.shutdown(
        Duration::from_secs_f64(cfg.shutdown.grace_s),
        cfg.shutdown.agents == "detach",
    )
    .await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "http server error"),
        Ok(Err(e)) => warn!(error = %e, "http server task failed"),
        Err(_) => warn!("open HTTP responses did not finish within 5 s; closing them"),
    }
    store
        .event(daemon_event(
            "daemon_stopped",
            json!({ "pid": std::process::id() }),
        ))
        .await?;
    let _ = std::fs::remove_file(paths.daemon_file());
    info!("corral stopped");
    Ok(())
}

/// Deletes expired audit files now and once a day.
fn spawn_audit_pruner(dir: std::path::PathBuf, days: u32, shutdown: CancellationToken) {
    if days == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
        loop {
            tokio::select! {
                _ = daily.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let today = chrono::Utc::now().date_naive();
            match crate::audit::prune(&dir, days, today) {
                Ok(removed) if !removed.is_empty() => {
                    info!(files = removed.len(), "pruned old audit files")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "pruning audit files failed"),
            }
        }
    });
}

/// Tells a notify-aware supervisor (systemd `Type=notify`) about our state; a failure is
/// logged, never fatal.
fn notify(state: &str) {
    match crate::sdnotify::notify(state) {
        Ok(true) => debug!(state, "sd_notify sent"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, state, "sd_notify failed"),
    }
}

fn daemon_event(kind: &str, data: serde_json::Value) -> Event {
    Event {
        seq: 0,
        ts: now_ms(),
        instance_id: None,
        name: None,
        kind: kind.into(),
        data,
    }
}

/// `<run_dir>/daemon.json`, written to a `.partial` file and renamed into place.
fn write_daemon_file(paths: &Paths, addr: &str) -> std::io::Result<()> {
    let path = paths.daemon_file();
    let partial = path.with_extension("json.partial");
    let body =
        json!({ "addr": addr, "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION") });
    std::fs::write(&partial, body.to_string())?;
    std::fs::rename(&partial, &path)
}

/// The `/mcp` URL agents are given: `server.mcp_url`, else the bound address (a wildcard bind
/// is reached on loopback).
fn mcp_url(cfg: &Config, addr: std::net::SocketAddr) -> String {
    if !cfg.server.mcp_url.is_empty() {
        return cfg.server.mcp_url.clone();
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}/mcp", std::net::SocketAddr::new(ip, addr.port()))
}
