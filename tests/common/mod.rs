//! Test harness: runs the real `corral` binary as a daemon in a temp state dir on a free port,
//! with its own private tmux server, and drives it through the CLI and HTTP.
//!
//! Every wait has a deadline ([`wait_until`]); on a failed assertion the daemon's log is
//! printed (set `CORRAL_KEEP_TEST_DIRS=1` to keep the state dir).
#![allow(dead_code)]
// The test process is no subreaper: it may spawn directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// How the daemon process is started, besides its config.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Extra environment variables for the daemon.
    pub env: Vec<(String, String)>,
    /// A command the daemon runs under, e.g. `unshare --pid --fork --mount-proc`. The pid in
    /// `daemon.json` is then not the pid of our child, so it is not checked.
    pub wrapper: Vec<String>,
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    /// Used by every (re)launch; tests may change it between launches.
    pub launch: Launch,
    pub config: PathBuf,
    pub url: String,
    child: Option<Child>,
    pub http: reqwest::blocking::Client,
    pub token: Option<String>,
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The agent user for tests: `corral` as root (the default; `scripts/dev setup` creates it),
/// else the user running the tests (a non-root daemon cannot switch users).
pub fn agent_section() -> String {
    if is_root() {
        assert!(
            nix::unistd::User::from_name("corral").ok().flatten().is_some(),
            "the tests run agents as the user `corral`, which does not exist: run `scripts/dev setup` (it creates it)"
        );
        return String::new();
    }
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .expect("the current user has a passwd entry");
    format!("[agent]\nuser = \"{}\"\n", me.name)
}

/// Prints a SKIP line (visible with `--nocapture` and in CI logs) and returns true when
/// `missing` names something the test needs.
pub fn skip(test: &str, missing: Option<String>) -> bool {
    match missing {
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            println!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

/// Polls `f` with backoff until it returns `Some`, or panics after `deadline`.
pub fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        Self::start_with("")
    }

    /// `extra` is TOML appended to the test config (sections allowed).
    pub fn start_with(extra: &str) -> TestDaemon {
        Self::start_launch(extra, Launch::default())
    }

    /// Like [`TestDaemon::start_with`], with extra environment or a wrapper command.
    pub fn start_launch(extra: &str, launch: Launch) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("corral-t")
            .tempdir()
            .expect("tempdir");
        // Agents run as another user and must pass through to their workspace and HOME.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod test dir");
        }
        let config = dir.path().join("corral.toml");
        let state = dir.path().join("state");
        let token = extra
            .lines()
            .find_map(|l| l.trim().strip_prefix("token = \""))
            .map(|t| t.trim_end_matches('"').to_string());
        let mut text = format!(
            "[paths]\nstate_dir = \"{}\"\n[log]\nlevel = \"debug\"\n",
            state.display()
        );
        // the test's own [server] section, or port 0
        if !extra.contains("[server]") {
            text.push_str("[server]\nport = 0\n");
        }
        if !extra.contains("[shutdown]") {
            text.push_str("[shutdown]\ngrace_s = 2.0\n");
        }
        if !extra.contains("[agent]") {
            text.push_str(&agent_section());
        }
        text.push_str(extra);
        std::fs::write(&config, text).expect("write config");
        let mut d = TestDaemon {
            dir,
            launch,
            config,
            url: String::new(),
            child: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            token,
        };
        d.launch();
        d
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.state_dir().join("run/tmux.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// The events of one instance (id or name), oldest first.
    pub fn events(&self, r: &str) -> Vec<Value> {
        let (status, v) = self.get(&format!("/api/v1/events?instance={r}"));
        assert_eq!(status, 200, "events of {r}: {v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// `corral logs -f NAME` as a child process with its stdout piped (not read until the
    /// caller reads it).
    pub fn follower(&self, name: &str) -> Child {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(["logs", "-f", name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("corral logs -f")
    }

    /// Everything a `follower` printed, once it has ended.
    pub fn follower_output(child: &mut Child) -> String {
        use std::io::Read;
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .expect("read follower");
        out
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the daemon (again) and waits for its address file.
    pub fn launch(&mut self) {
        let daemon_file = self.state_dir().join("run/daemon.json");
        let _ = std::fs::remove_file(&daemon_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = match self.launch.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let wrapped = !self.launch.wrapper.is_empty();
        let child = cmd
            .args(["--config", self.config.to_str().expect("utf8"), "serve"])
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        let pid = child.id() as i32;
        self.child = Some(child);
        let addr = wait_until("daemon address file", Duration::from_secs(20), || {
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(&daemon_file).ok()?).ok()?;
            (wrapped || v["pid"].as_i64()? as i32 == pid)
                .then(|| v["addr"].as_str().map(str::to_string))?
        });
        self.url = format!("http://{addr}");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_until("daemon exit after SIGTERM", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        })
    }

    /// Waits for the daemon process (our child) to exit on its own; returns its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until("daemon exit", deadline, || child.try_wait().ok().flatten())
        }));
        match found {
            Ok(status) => status,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit within {deadline:?}");
            }
        }
    }

    /// SIGKILL, as a crash.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("CORRAL_URL").env_remove("CORRAL_TOKEN");
        cmd.stdin(Stdio::null());
        cmd.output().expect("run corral cli")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            self.dump();
            panic!(
                "corral {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "corral {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn with_auth(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .with_auth(self.http.get(format!("{}{path}", self.url)))
            .send()
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn get_text(&self, path: &str) -> String {
        self.with_auth(self.http.get(format!("{}{path}", self.url)))
            .send()
            .expect("GET")
            .text()
            .unwrap_or_default()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .with_auth(self.http.post(format!("{}{path}", self.url)).json(body))
            .send()
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .with_auth(
                self.http
                    .post(format!("{}{path}", self.url))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .send()
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Spawns through the API and returns the instance JSON.
    pub fn spawn(&self, body: Value) -> Value {
        let (status, v) = self.post("/api/v1/instances", &body);
        if status != 201 {
            self.dump();
            panic!("spawn {body} failed: {status} {v}");
        }
        v
    }

    pub fn instance(&self, r: &str) -> Value {
        let (status, v) = self.get(&format!("/api/v1/instances/{r}"));
        assert_eq!(status, 200, "get {r}: {v}");
        v
    }

    /// Waits until the instance's state is `state` and returns it.
    pub fn wait_state(&self, r: &str, state: &str, deadline: Duration) -> Value {
        let mut last = Value::Null;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("{r} to be {state}"), deadline, || {
                let v = self.instance(r);
                last = v.clone();
                (v["state"] == state).then_some(v)
            })
        }));
        match found {
            Ok(v) => v,
            Err(_) => {
                self.dump();
                panic!("{r} did not reach {state} within {deadline:?}; last: {last}");
            }
        }
    }

    /// Output text of an instance (escapes stripped).
    pub fn output(&self, r: &str) -> String {
        let (status, v) = self.get(&format!("/api/v1/instances/{r}/output"));
        assert_eq!(status, 200, "{v}");
        v["text"].as_str().unwrap_or("").to_string()
    }

    pub fn wait_output(&self, r: &str, needle: &str) -> String {
        wait_until(
            &format!("{needle:?} in the output of {r}"),
            Duration::from_secs(10),
            || {
                let t = self.output(r);
                t.contains(needle).then_some(t)
            },
        )
    }

    pub fn dump(&self) {
        eprintln!(
            "---- daemon log ({}) ----\n{}\n---- end ----",
            self.log_path().display(),
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    pub fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("tmux")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        // A clean shutdown stops the instances and removes their cgroups (a SIGKILLed daemon
        // would leave them behind, and the temp state that could reap them is deleted).
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // The tmux server daemonizes away from the daemon: stop it explicitly.
        let _ = self.tmux(&["kill-server"]);
        if std::env::var_os("CORRAL_KEEP_TEST_DIRS").is_some() {
            let p = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("kept test dir {}", p.display());
        }
    }
}

/// Processes whose process group is `pgid` (zombies excluded).
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, pg)) = stat(pid) {
            if pg == pgid && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out
}

/// Parent pid from /proc/PID/stat.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Pids of the processes whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| ppid(*p) == Some(parent))
        .collect()
}

/// (state, pgid) from /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z')
}

pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}
