//! Daemon memory and idle CPU at scale, and shutdown time of many instances.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use super::daemon::{alive, cpu_ticks, rss_kib, Daemon};
use super::stats::ms;

/// Spawns `sleep 3600` instances named `{prefix}{i}` (tmux backend, HTTP API, 4 at a time),
/// then waits until the daemon lists `total` ready instances.
pub async fn fill(d: &Daemon, prefix: &str, from: usize, to: usize, total: usize) -> Result<()> {
    stream::iter(from..to)
        .map(|i| {
            d.spawn_http(json!({"name": format!("{prefix}{i}"), "backend": "tmux",
                "argv": ["sleep", "3600"]}))
        })
        .buffer_unordered(4)
        .try_collect::<Vec<Value>>()
        .await?;
    let start = Instant::now();
    loop {
        let ready = d
            .list()
            .await?
            .iter()
            .filter(|v| v["state"] == "ready")
            .count();
        if ready >= total {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("only {ready} of {total} instances became ready");
        }
        // deadline-bounded poll of the live count (bench harness)
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// RSS samples (MiB) of the daemon over `window`, every 100 ms.
pub async fn rss_samples(pid: i32, window: Duration) -> Vec<f64> {
    let mut out = vec![];
    let start = Instant::now();
    while start.elapsed() < window {
        if let Some(k) = rss_kib(pid) {
            out.push(k / 1024.0);
        }
        // the sampling interval of the RSS measurement
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// CPU use of the daemon (percent of one core) over `window`.
pub async fn idle_cpu(pid: i32, window: Duration) -> Option<f64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()? as f64;
    let a = cpu_ticks(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let b = cpu_ticks(pid)?;
    Some((b - a) as f64 / hz / t.elapsed().as_secs_f64() * 100.0)
}

/// Shutdown: SIGTERM to a daemon with `n` live instances until every instance process is gone
/// from /proc (ms), and until the daemon itself has exited (ms).
pub async fn shutdown(n: usize, grace_s: f64) -> Result<(f64, f64)> {
    let mut d = Daemon::start(&format!("[limits]\nmax_instances = {}\n", n + 10), grace_s)?;
    fill(&d, "x", 0, n, n).await?;
    let pids: Vec<i32> = d
        .list()
        .await?
        .iter()
        .filter_map(|v| v["pid"].as_i64().map(|p| p as i32))
        .collect();
    if pids.len() != n {
        bail!("expected {n} pids, got {}", pids.len());
    }
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let mut gone = None;
    let mut exited = None;
    while t.elapsed() < Duration::from_secs(60) && (gone.is_none() || exited.is_none()) {
        if gone.is_none() && pids.iter().all(|p| !alive(*p)) {
            gone = Some(ms(t.elapsed()));
        }
        if exited.is_none() && d.exited() {
            exited = Some(ms(t.elapsed()));
        }
        // 1 ms poll: the resolution of the shutdown measurement
        std::thread::sleep(Duration::from_millis(1));
    }
    match (gone, exited) {
        (Some(g), Some(e)) => Ok((g, e)),
        _ => bail!("shutdown did not finish in 60 s: {}", d.log()),
    }
}

/// Floor for shutdown: `n` `sleep 3600` children of the bench, SIGTERM to each, wait for all.
pub fn shutdown_floor(n: usize) -> Result<f64> {
    let mut kids = (0..n)
        .map(|_| {
            Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    for k in &kids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(k.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for k in &mut kids {
        k.wait()?;
    }
    Ok(ms(t.elapsed()))
}
