//! Starting the release `corral` daemon in a temp dir on port 0, and cleaning up after it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A temp dir (0711, so the agent user can pass through) removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `corral` binary next to this one (same target dir and profile).
pub fn corral_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("corral");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

pub fn tmux_kill_server(sock: &Path) {
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .arg("kill-server")
        .stderr(Stdio::null())
        .status();
}

pub struct Daemon {
    pub dir: TempDir,
    child: Option<Child>,
    pub pid: i32,
    pub url: String,
    pub http: reqwest::Client,
}

impl Daemon {
    /// `extra` is TOML appended to the config (its own sections).
    pub fn start(extra: &str, grace_s: f64) -> Result<Daemon> {
        let dir = TempDir::new("corral-bench")?;
        let state = dir.0.join("state");
        let mut cfg = format!(
            "[paths]\nstate_dir = \"{}\"\n[server]\nport = 0\n[log]\nlevel = \"warn\"\n\
             [shutdown]\ngrace_s = {grace_s:.1}\n",
            state.display()
        );
        if !nix::unistd::geteuid().is_root() {
            let me =
                nix::unistd::User::from_uid(nix::unistd::geteuid())?.context("no passwd entry")?;
            cfg.push_str(&format!("[agent]\nuser = \"{}\"\n", me.name));
        }
        cfg.push_str(extra);
        let config = dir.0.join("corral.toml");
        std::fs::write(&config, cfg)?;
        let log = std::fs::File::create(dir.0.join("daemon.log"))?;
        let child = Command::new(corral_bin()?)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let pid = child.id() as i32;
        let mut d = Daemon {
            dir,
            child: Some(child),
            pid,
            url: String::new(),
            http: reqwest::Client::new(),
        };
        let file = state.join("run/daemon.json");
        let start = Instant::now();
        loop {
            if let Some(addr) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|v| v["pid"].as_i64() == Some(pid as i64))
                .and_then(|v| v["addr"].as_str().map(str::to_string))
            {
                d.url = format!("http://{addr}");
                return Ok(d);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("daemon did not start: {}", d.log());
            }
            // deadline-bounded poll for the daemon file (bench harness, not the daemon)
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("daemon.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("state/run/tmux.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.url)
    }

    /// POST /api/v1/instances; returns the instance JSON.
    pub async fn spawn_http(&self, body: Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}/api/v1/instances", self.url))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if status.as_u16() != 201 {
            bail!("spawn {body}: {status} {v}");
        }
        Ok(v)
    }

    pub async fn list(&self) -> Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/instances", self.url))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// SIGTERM; waits (≤ 60 s) for the daemon to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                // deadline-bounded poll for the daemon to exit (bench harness)
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True once the daemon process has exited (reaped).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        tmux_kill_server(&self.socket());
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s.get(i + 2..i + 3))
            .is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}
