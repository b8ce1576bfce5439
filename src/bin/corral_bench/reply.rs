//! Reply latency with the fake Claude: from the reply's transcript record (its `timestamp`,
//! written by the fake as it writes the line) to the client receiving `send_message(wait)`'s
//! answer. Floor: a bench thread polling the same transcript every 0.5 ms, from the same
//! timestamp to the moment it reads the line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::daemon::Daemon;
use super::mcp::Mcp;

fn find_jsonl(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.ends_with("subagents") {
            find_jsonl(&p, out);
        } else if p.extension().is_some_and(|x| x == "jsonl")
            && p.to_string_lossy().contains("/projects/")
        {
            out.push(p);
        }
    }
}

/// ms from an assistant line's `timestamp` to now; `None` for other lines.
fn since_record(line: &str, now: SystemTime) -> Option<f64> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["type"] != "assistant" {
        return None;
    }
    let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(now);
    Some((now - ts.with_timezone(&chrono::Utc)).num_microseconds()? as f64 / 1000.0)
}

fn last_assistant(path: &Path, now: SystemTime) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| since_record(l, now))
}

/// Returns (corral samples, floor samples) in ms.
pub async fn run(n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bin");
    let d = Daemon::start(
        &format!(
            "[agents.claude]\nbinary = \"{}/claude\"\napi_key = \"sk-ant-bench-0123456789abcdefghijkl\"\n\
             [agents]\nenter_delay_ms = 50\nstart_timeout_s = 20.0\n",
            fx.display()
        ),
        2.0,
    )?;
    let c = Mcp::connect(&d.mcp_url()).await?;
    let v = c
        .tool(
            "spawn_agent",
            json!({"kind": "claude", "name": "c", "wait_ready": true}),
        )
        .await
        .with_context(|| d.log())?;
    if v["state"] != "ready" {
        bail!("claude not ready: {v}");
    }
    let send = |i: usize| {
        c.tool(
            "send_message",
            json!({"instance": "c", "text": format!("ping {i}"), "wait": true, "timeout_s": 30}),
        )
    };
    send(0).await?; // warm-up; creates the transcript
    let mut files = vec![];
    find_jsonl(&d.state_dir().join("agents"), &mut files);
    let path = files.into_iter().next().context("no transcript found")?;
    let stop = Arc::new(AtomicBool::new(false));
    let floor = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (stop, floor, path) = (stop.clone(), floor.clone(), path.clone());
        std::thread::spawn(move || {
            let mut off = std::fs::metadata(&path)
                .map(|m| m.len() as usize)
                .unwrap_or(0);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&path) {
                    let now = SystemTime::now();
                    if bytes.len() > off {
                        let new = &bytes[off..];
                        if let Some(end) = new.iter().rposition(|b| *b == b'\n') {
                            for l in String::from_utf8_lossy(&new[..end]).lines() {
                                if let Some(x) = since_record(l, now) {
                                    floor.lock().expect("lock").push(x);
                                }
                            }
                            off += end + 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut corral = vec![];
    for i in 1..=n {
        let r = send(i).await?;
        let now = SystemTime::now();
        if r.to_string().contains("timed out") {
            bail!("turn {i} timed out: {r}");
        }
        corral.push(last_assistant(&path, now).context("no assistant record")?);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let floor = floor.lock().expect("lock").clone();
    c.tool("terminate", json!({"instance": "c", "grace_s": 1.0}))
        .await?;
    Ok((corral, floor))
}
