//! Spawn-to-ready latency: corral through MCP `spawn_agent` (`wait_ready`, `ready_pattern`)
//! against raw tmux `new-session -d` on a warm private server and a raw forkpty + exec.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::daemon::{tmux_kill_server, Daemon, TempDir};
use super::mcp::Mcp;
use super::stats::ms;

/// The program both sides start: prints a prompt, then waits.
pub const PROMPT: &str = "READY> ";
pub fn program() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("printf '{PROMPT}'; exec sleep 3600"),
    ]
}

/// corral: `spawn_agent` with `wait_ready` until the answer (state ready); then terminate.
pub async fn corral(d: &Daemon, backend: &str, n: usize) -> Result<Vec<f64>> {
    let c = Mcp::connect(&d.mcp_url()).await?;
    let mut out = vec![];
    for i in 0..n + 2 {
        let name = format!("{backend}{i}");
        let t = Instant::now();
        let v = c
            .tool(
                "spawn_agent",
                json!({"name": name, "backend": backend, "argv": program(),
                    "ready_pattern": PROMPT, "wait_ready": true}),
            )
            .await?;
        let dt = ms(t.elapsed());
        if v["state"] != "ready" {
            bail!("spawn {name}: {v}");
        }
        if i >= 2 {
            out.push(dt); // the first two warm up
        }
        c.tool("terminate", json!({"instance": name, "grace_s": 1.0}))
            .await?;
    }
    Ok(out)
}

fn tmux(sock: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// Floor: `tmux -S sock new-session -d` of the same program on a warm private server, then
/// `capture-pane` polled every 1 ms until the prompt shows.
pub fn raw_tmux(n: usize) -> Result<Vec<f64>> {
    let dir = TempDir::new("corral-bench-tmux")?;
    let sock = dir.0.join("tmux.sock");
    let cmd = program()
        .iter()
        .map(|a| corral::backend::tmux::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    tmux(&sock, &["new-session", "-d", "-s", "warm", "sleep 3600"])?;
    let mut out = vec![];
    let result = (|| -> Result<()> {
        for i in 0..n + 2 {
            let name = format!("f{i}");
            let target = format!("={name}:");
            let t = Instant::now();
            let o = tmux(
                &sock,
                &[
                    "new-session",
                    "-d",
                    "-s",
                    &name,
                    "-x",
                    "80",
                    "-y",
                    "24",
                    &cmd,
                ],
            )?;
            if !o.status.success() {
                bail!("tmux new-session: {}", String::from_utf8_lossy(&o.stderr));
            }
            loop {
                let o = tmux(&sock, &["capture-pane", "-p", "-t", &target])?;
                if String::from_utf8_lossy(&o.stdout).contains(PROMPT.trim_end()) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("raw tmux: no prompt");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if i >= 2 {
                out.push(ms(t.elapsed()));
            }
            tmux(&sock, &["kill-session", "-t", &format!("={name}")])?;
        }
        Ok(())
    })();
    tmux_kill_server(&sock);
    result.map(|_| out)
}

/// Floor: forkpty + exec of the same program (portable-pty), until its first output holds
/// the prompt.
pub fn raw_pty(n: usize) -> Result<Vec<f64>> {
    use portable_pty::{native_pty_system, CommandBuilder, PtySize};
    let argv = program();
    let mut out = vec![];
    for i in 0..n + 2 {
        let t = Instant::now();
        let pair = native_pty_system().openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })?;
        let mut cmd = CommandBuilder::new(&argv[0]);
        cmd.args(&argv[1..]);
        let mut child = pair.slave.spawn_command(cmd)?;
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader()?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(PROMPT.trim_end()) {
            let k = reader.read(&mut buf)?;
            if k == 0 {
                bail!("raw pty: EOF before the prompt");
            }
            seen.extend_from_slice(&buf[..k]);
        }
        if i >= 2 {
            out.push(ms(t.elapsed()));
        }
        child.kill()?;
        child.wait()?;
    }
    Ok(out)
}
