//! `corral-bench`: measures corral and a floor for each figure in the same run and prints
//! ratios (issue 8). See BENCHMARKS.md. `cargo run --release --bin corral-bench [-- --quick]
//! [--json PATH]`.
// The bench is a separate process, not the subreaper daemon: it may spawn directly
// (clippy.toml forbids that in the daemon only because the daemon reaps unknown children).
#![allow(clippy::disallowed_methods)]

#[path = "corral_bench/daemon.rs"]
mod daemon;
#[path = "corral_bench/mcp.rs"]
mod mcp;
#[path = "corral_bench/reply.rs"]
mod reply;
#[path = "corral_bench/scale.rs"]
mod scale;
#[path = "corral_bench/spawn.rs"]
mod spawn;
#[path = "corral_bench/stats.rs"]
mod stats;
#[path = "corral_bench/usage.rs"]
mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use daemon::Daemon;
use stats::{ms, Row, Target};

struct Plan {
    quick: bool,
    spawns: usize,
    mcp_requests: usize,
    replies: usize,
    scale: [usize; 2],
    shutdown: usize,
    usage_mb: usize,
    window: Duration,
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut json_path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench.json"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json_path = args.next().context("--json needs a path")?.into(),
            "-h" | "--help" => {
                println!("usage: corral-bench [--quick] [--json PATH]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let plan = if quick {
        Plan {
            quick,
            spawns: 10,
            mcp_requests: 300,
            replies: 5,
            scale: [20, 50],
            shutdown: 20,
            usage_mb: 8,
            window: Duration::from_secs(2),
        }
    } else {
        Plan {
            quick,
            spawns: 100,
            mcp_requests: 4000,
            replies: 40,
            scale: [100, 500],
            shutdown: 100,
            usage_mb: 64,
            window: Duration::from_secs(10),
        }
    };
    build_daemon()?;
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows: Vec<Row> = vec![];
    let mut errors: Vec<String> = vec![];
    let mut section = |name: &str, r: Result<Vec<Row>>| match r {
        Ok(mut v) => {
            for row in &v {
                eprintln!("  {} done", row.metric);
            }
            rows.append(&mut v);
        }
        Err(e) => {
            eprintln!("  {name} FAILED: {e:#}");
            errors.push(format!("{name}: {e:#}"));
        }
    };
    eprintln!(
        "corral-bench ({} mode)",
        if quick { "quick" } else { "full" }
    );
    section("usage", usage::run(plan.usage_mb));
    section("spawn", rt.block_on(spawn_rows(&plan)));
    section("mcp", rt.block_on(mcp_rows(&plan)));
    section("reply", rt.block_on(reply_rows(&plan)));
    section("scale", rt.block_on(scale_rows(&plan)));
    section("shutdown", rt.block_on(shutdown_rows(&plan)));
    let table = stats::table(&rows);
    println!("{table}");
    for e in &errors {
        println!("ERROR {e}");
    }
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    let report = json!({
        "mode": if quick { "quick" } else { "full" },
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "total_s": started.elapsed().as_secs_f64(),
        "rows": rows,
        "errors": errors,
    });
    if let Some(p) = json_path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", json_path.display());
    Ok(())
}

/// Under `cargo run`, makes sure the release daemon next to us is current.
fn build_daemon() -> Result<()> {
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    let profile = if cfg!(debug_assertions) {
        vec![]
    } else {
        vec!["--release"]
    };
    let st = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--bin", "corral"])
        .args(profile)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    anyhow::ensure!(st.success(), "building the corral binary failed");
    Ok(())
}

async fn spawn_rows(p: &Plan) -> Result<Vec<Row>> {
    let d = Daemon::start("", 2.0)?;
    let n = p.spawns;
    let t = spawn::corral(&d, "tmux", n).await?;
    let tf = tokio::task::spawn_blocking(move || spawn::raw_tmux(n)).await??;
    let y = spawn::corral(&d, "pty", n).await?;
    let yf = tokio::task::spawn_blocking(move || spawn::raw_pty(n)).await??;
    Ok(vec![
        Row::new(
            "spawn→ready, tmux (MCP spawn_agent)",
            "ms",
            &t,
            &tf,
            Target::RatioAtMost(2.0),
        ),
        Row::new(
            "spawn→ready, pty (MCP spawn_agent)",
            "ms",
            &y,
            &yf,
            Target::RatioAtMost(2.0),
        ),
    ])
}

/// Latencies (ms) and requests per second of `clients` concurrent clients, `total` calls.
async fn hammer(url: &str, clients: usize, total: usize) -> Result<(Vec<f64>, f64)> {
    let mut cs = vec![];
    for _ in 0..clients {
        cs.push(Arc::new(mcp::Mcp::connect(url).await?));
    }
    let per = (total / clients).max(10);
    let call =
        |c: Arc<mcp::Mcp>| async move { c.tool("get_instance", json!({"instance": "g"})).await };
    for c in &cs {
        call(c.clone()).await?; // warm-up
    }
    let t = Instant::now();
    let tasks: Vec<_> = cs
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let s = Instant::now();
                    call(c.clone()).await?;
                    lat.push(ms(s.elapsed()));
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await??);
    }
    let rps = all.len() as f64 / t.elapsed().as_secs_f64();
    Ok((all, rps))
}

async fn mcp_rows(p: &Plan) -> Result<Vec<Row>> {
    let d = Daemon::start("", 2.0)?;
    let c = mcp::Mcp::connect(&d.mcp_url()).await?;
    let payload = c
        .tool(
            "spawn_agent",
            json!({"name": "g", "argv": ["sleep", "3600"], "wait_ready": true}),
        )
        .await?;
    let payload = c
        .tool("get_instance", json!({"instance": payload["id"]}))
        .await?;
    let floor = mcp::floor_server(payload).await?;
    let mut rows = vec![];
    for clients in [1, 16, 64] {
        let (lat, rps) = hammer(&d.mcp_url(), clients, p.mcp_requests).await?;
        let (flat, frps) = hammer(&floor, clients, p.mcp_requests).await?;
        rows.push(Row::new(
            &format!("MCP get_instance, {clients} clients"),
            "ms",
            &lat,
            &flat,
            Target::RatioAtMost(3.0),
        ));
        rows.push(Row::new(
            &format!("MCP get_instance, {clients} clients"),
            "req/s",
            &[rps],
            &[frps],
            Target::None,
        ));
    }
    Ok(rows)
}

async fn reply_rows(p: &Plan) -> Result<Vec<Row>> {
    let (c, f) = reply::run(p.replies).await?;
    Ok(vec![Row::new(
        "reply record→send_message(wait) answer (fake claude)",
        "ms",
        &c,
        &f,
        Target::Below(10.0),
    )])
}

async fn scale_rows(p: &Plan) -> Result<Vec<Row>> {
    let [a, b] = p.scale;
    let d = Daemon::start(&format!("[limits]\nmax_instances = {}\n", b + 10), 2.0)?;
    let w = Duration::from_secs(1);
    tokio::time::sleep(w).await;
    let r0 = scale::rss_samples(d.pid, w).await;
    scale::fill(&d, "m", 0, a, a).await?;
    tokio::time::sleep(w).await;
    let ra = scale::rss_samples(d.pid, w).await;
    scale::fill(&d, "m", a, b, b).await?;
    tokio::time::sleep(p.window / 2).await;
    let rb = scale::rss_samples(d.pid, w).await;
    let cpu = scale::idle_cpu(d.pid, p.window)
        .await
        .context("reading /proc/PID/stat")?;
    let note = if p.quick {
        " (quick: fewer instances)"
    } else {
        ""
    };
    Ok(vec![
        Row::new("daemon RSS, 0 instances", "MiB", &r0, &[], Target::None),
        Row::new(
            &format!("daemon RSS, {a} instances{note}"),
            "MiB",
            &ra,
            &[],
            Target::None,
        ),
        Row::new(
            &format!("daemon RSS, {b} instances{note}"),
            "MiB",
            &rb,
            &[],
            Target::AtMost(30.0),
        ),
        Row::new(
            &format!(
                "idle daemon CPU, {b} instances, {:.0} s window",
                p.window.as_secs_f64()
            ),
            "% core",
            &[cpu],
            &[],
            Target::Below(1.0),
        ),
    ])
}

async fn shutdown_rows(p: &Plan) -> Result<Vec<Row>> {
    let grace = 2.0;
    let (gone, exited) = scale::shutdown(p.shutdown, grace).await?;
    let n = p.shutdown;
    let floor = tokio::task::spawn_blocking(move || scale::shutdown_floor(n)).await??;
    let target = Target::AtMost(grace * 1000.0 + 200.0);
    Ok(vec![
        Row::new(
            &format!("SIGTERM→{n} instances gone (grace {grace} s)"),
            "ms",
            &[gone],
            &[floor],
            target,
        ),
        Row::new(
            &format!("SIGTERM→daemon exited ({n} instances)"),
            "ms",
            &[exited],
            &[],
            Target::None,
        ),
    ])
}
