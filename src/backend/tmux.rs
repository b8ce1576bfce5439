//! The tmux backend: one session per instance on corral's private tmux server
//! (`tmux -S <run_dir>/tmux.sock -f <run_dir>/tmux.conf`), never the user's default server.
//!
//! Argument vectors are built by pure functions (tested as data); [`Tmux`] runs them.
//! Targets always use exact matching (`=NAME`), so `worker-1` can never address `worker-10`.
//!
//! - The server runs with `remain-on-exit on`, so a dead pane keeps its exit status
//!   (`pane_dead_status` / `pane_dead_signal`) until corral reads it and kills the session.
//! - Output reaches corral through `pipe-pane` into a FIFO that corral reads; the pipe is set
//!   in the same tmux command as `new-session`, before tmux reads any output of the pane.
//! - The server is started with a clean environment (no secrets in its global environment),
//!   and sessions get no `-e` variables: the instance's environment reaches it only through
//!   the isolation shim's plan file, so `show-environment` never shows a secret.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LaunchSpec;
use crate::model::ExitStatus;

/// Variables the tmux server itself may inherit from the daemon.
const SERVER_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME"];

const TMUX_CONF: &str = "\
# Written by corral: settings of corral's private tmux server.
set -g exit-empty off
set -g remain-on-exit on
set -g status off
set -g history-limit 50000
set -g default-terminal screen-256color
set -g escape-time 0
set -g destroy-unattached off
";

#[derive(Debug, Clone)]
pub struct Tmux {
    bin: PathBuf,
    socket: PathBuf,
    conf: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaneStatus {
    pub pid: i32,
    pub dead: bool,
    pub exit: ExitStatus,
}

impl Tmux {
    pub fn new(bin: impl Into<PathBuf>, run_dir: &Path) -> Tmux {
        Tmux {
            bin: bin.into(),
            socket: run_dir.join("tmux.sock"),
            conf: run_dir.join("tmux.conf"),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `-S socket -f conf` prefix of every invocation.
    fn base_args(&self) -> Vec<String> {
        vec![
            "-S".into(),
            self.socket.display().to_string(),
            "-f".into(),
            self.conf.display().to_string(),
        ]
    }

    /// The command an operator runs to attach to a session.
    pub fn attach_argv(&self, session: &str) -> Vec<String> {
        vec![
            self.bin.display().to_string(),
            "-S".into(),
            self.socket.display().to_string(),
            "attach-session".into(),
            "-t".into(),
            exact(session),
        ]
    }

    /// Writes the config and starts the server (idempotent).
    pub async fn ensure_server(&self) -> io::Result<()> {
        if let Some(dir) = self.conf.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.conf, TMUX_CONF)?;
        self.run(&["start-server".to_string()]).await.map(|_| ())
    }

    /// Runs one tmux invocation and returns its stdout.
    pub async fn run(&self, args: &[String]) -> io::Result<String> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(self.base_args()).args(args);
        cmd.env_clear();
        for k in SERVER_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let spawned = super::children::spawn_owned(|| {
            #[allow(clippy::disallowed_methods)] // inside spawn_owned
            let child = cmd.spawn()?;
            let pid = child
                .id()
                .ok_or_else(|| io::Error::other("spawned tmux has no pid"))?;
            Ok((child, pid as i32))
        });
        let running =
            |e: io::Error| io::Error::new(e.kind(), format!("running {}: {e}", self.bin.display()));
        let (child, owned) = spawned.map_err(running)?;
        let out = child.wait_with_output().await.map_err(running)?;
        // Reaped by Tokio: from here on the orphan reaper may treat the pid as anyone's.
        drop(owned);
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "tmux {}: {}",
                args.first().map(String::as_str).unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the session running `spec.argv`, pipes its output into `fifo`, and returns the
    /// pane's pid (the leader of the instance's process group and session).
    pub async fn new_session(&self, spec: &LaunchSpec, fifo: &Path) -> io::Result<i32> {
        let out = self.run(&new_session_args(spec, fifo)).await?;
        out.trim()
            .parse()
            .map_err(|_| io::Error::other(format!("tmux new-session printed {out:?}, not a pid")))
    }

    /// Closes the pane's current output pipe and opens a new one into `fifo`.
    pub async fn repipe(&self, session: &str, fifo: &Path) -> io::Result<()> {
        let target = pane_target(session);
        self.run(&[
            "pipe-pane".into(),
            "-t".into(),
            target.clone(),
            ";".into(),
            "pipe-pane".into(),
            "-O".into(),
            "-t".into(),
            target,
            format!("exec cat > {}", shell_quote(&fifo.display().to_string())),
        ])
        .await
        .map(|_| ())
    }

    pub async fn pane_status(&self, session: &str) -> io::Result<PaneStatus> {
        let out = self
            .run(&[
                "display-message".into(),
                "-p".into(),
                "-t".into(),
                pane_target(session),
                "#{pane_pid} #{pane_dead} #{pane_dead_status} #{pane_dead_signal}".into(),
            ])
            .await?;
        parse_pane_status(&out)
            .ok_or_else(|| io::Error::other(format!("unexpected tmux pane status {out:?}")))
    }

    /// Waits until tmux has recorded the death of the pane (it reaps on SIGCHLD, a moment
    /// after the pidfd fired), with a deadline.
    pub async fn dead_status(&self, session: &str) -> io::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut backoff = Duration::from_millis(1);
        loop {
            let st = self.pane_status(session).await?;
            // tmux marks the pane dead when its pty closes and fills in the status when it
            // reaps the process; wait for both.
            let known = st.exit.code.is_some() || st.exit.signal.is_some();
            if st.dead && known {
                return Ok(st.exit);
            }
            if tokio::time::Instant::now() >= deadline {
                if st.dead {
                    return Ok(st.exit);
                }
                return Err(io::Error::other(
                    "tmux did not report the pane dead within 5 s",
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    pub async fn send_literal(&self, session: &str, text: &str) -> io::Result<()> {
        self.run(&send_literal_args(session, text))
            .await
            .map(|_| ())
    }

    /// Loads `text` into a buffer named for the session and pastes it with `-p` (bracketed
    /// paste, as the TUIs request), deleting the buffer after.
    pub async fn paste(&self, session: &str, text: &str) -> io::Result<()> {
        let buffer = format!("corral-{session}");
        self.run(&[
            "set-buffer".into(),
            "-b".into(),
            buffer.clone(),
            "--".into(),
            text.into(),
            ";".into(),
            "paste-buffer".into(),
            "-p".into(),
            "-r".into(),
            "-d".into(),
            "-b".into(),
            buffer,
            "-t".into(),
            pane_target(session),
        ])
        .await
        .map(|_| ())
    }

    pub async fn send_keys(&self, session: &str, keys: &[&str]) -> io::Result<()> {
        let mut args = vec!["send-keys".into(), "-t".into(), pane_target(session)];
        args.extend(keys.iter().map(|k| k.to_string()));
        self.run(&args).await.map(|_| ())
    }

    pub async fn resize(&self, session: &str, cols: u16, rows: u16) -> io::Result<()> {
        self.run(&[
            "resize-window".into(),
            "-t".into(),
            window_target(session),
            "-x".into(),
            cols.to_string(),
            "-y".into(),
            rows.to_string(),
        ])
        .await
        .map(|_| ())
    }

    /// The last `lines` lines of the pane (history and screen), without trailing blank rows
    /// and without tmux's own "Pane is dead" notice.
    pub async fn capture(&self, session: &str, lines: u32) -> io::Result<String> {
        let out = self
            .run(&[
                "capture-pane".into(),
                "-p".into(),
                "-J".into(),
                "-S".into(),
                format!("-{lines}"),
                "-t".into(),
                pane_target(session),
            ])
            .await?;
        Ok(clean_capture(&out))
    }

    /// Kills the session; a session that is already gone is success.
    pub async fn kill_session(&self, session: &str) -> io::Result<()> {
        match self
            .run(&["kill-session".into(), "-t".into(), exact(session)])
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn has_session(&self, session: &str) -> io::Result<bool> {
        match self
            .run(&["has-session".into(), "-t".into(), exact(session)])
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stops the private server (used when nothing is left running in it).
    pub async fn kill_server(&self) -> io::Result<()> {
        match self.run(&["kill-server".into()]).await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn is_missing(e: &io::Error) -> bool {
    let m = e.to_string();
    m.contains("can't find session")
        || m.contains("no server running")
        || m.contains("session not found")
        || m.contains("error connecting")
}

/// `=NAME`: exact session match.
pub fn exact(session: &str) -> String {
    format!("={session}")
}

/// `=NAME:` — the session's current window (for window commands).
pub fn window_target(session: &str) -> String {
    format!("={session}:")
}

/// `=NAME:.` — the session's current pane (for pane commands).
pub fn pane_target(session: &str) -> String {
    format!("={session}:.")
}

/// `new-session` that prints the pane pid, followed in the same invocation by `pipe-pane`.
pub fn new_session_args(spec: &LaunchSpec, fifo: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "new-session".into(),
        "-d".into(),
        "-P".into(),
        "-F".into(),
        "#{pane_pid}".into(),
        "-s".into(),
        spec.session.clone(),
        "-x".into(),
        spec.cols.to_string(),
        "-y".into(),
        spec.rows.to_string(),
        "-c".into(),
        spec.cwd.display().to_string(),
    ];
    args.push("--".into());
    args.extend(spec.argv.iter().cloned());
    args.push(";".into());
    args.extend([
        "pipe-pane".into(),
        "-O".into(),
        "-t".into(),
        pane_target(&spec.session),
        format!("exec cat > {}", shell_quote(&fifo.display().to_string())),
    ]);
    args
}

pub fn send_literal_args(session: &str, text: &str) -> Vec<String> {
    vec![
        "send-keys".into(),
        "-t".into(),
        pane_target(session),
        "-l".into(),
        "--".into(),
        text.into(),
    ]
}

pub fn parse_pane_status(out: &str) -> Option<PaneStatus> {
    let line = out.lines().next()?;
    let mut it = line.split(' ');
    let pid = it.next()?.parse().ok()?;
    let dead = it.next()? == "1";
    let status = it.next().unwrap_or("");
    let signal = it.next().unwrap_or("");
    Some(PaneStatus {
        pid,
        dead,
        exit: ExitStatus {
            code: status.parse().ok(),
            signal: signal.parse().ok(),
        },
    })
}

/// Drops tmux's remain-on-exit notice and trailing blank rows from a capture.
pub fn clean_capture(out: &str) -> String {
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("Pane is dead"))
        .collect();
    let end = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    let mut s = lines[..end].join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// Single-quotes a string for `sh -c` (pipe-pane runs its command through the shell).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            argv: vec!["sh".into(), "-c".into(), "echo hi; sleep 1".into()],
            cwd: PathBuf::from("/w/x"),
            cols: 120,
            rows: 40,
            session: "worker-1".into(),
        }
    }

    #[test]
    fn new_session_is_exact_and_pipes_in_the_same_invocation() {
        let args = new_session_args(&spec(), Path::new("/run/o'1.fifo"));
        let semi = args.iter().position(|a| a == ";").unwrap();
        assert_eq!(&args[..2], &["new-session", "-d"]);
        assert!(args[..semi].windows(2).any(|w| w == ["-s", "worker-1"]));
        assert!(!args.iter().any(|a| a == "-e"), "no session environment");
        let dd = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(&args[dd + 1..semi], &["sh", "-c", "echo hi; sleep 1"]);
        assert_eq!(args[semi + 1], "pipe-pane");
        assert_eq!(args[semi + 4], "=worker-1:.");
        assert_eq!(args.last().unwrap(), r"exec cat > '/run/o'\''1.fifo'");
    }

    #[test]
    fn targets_are_exact() {
        assert_eq!(exact("a"), "=a");
        assert_eq!(pane_target("a"), "=a:.");
        let t = Tmux::new("tmux", Path::new("/r"));
        assert_eq!(
            t.attach_argv("w1"),
            ["tmux", "-S", "/r/tmux.sock", "attach-session", "-t", "=w1"]
        );
        assert_eq!(
            send_literal_args("w", "-x; y"),
            ["send-keys", "-t", "=w:.", "-l", "--", "-x; y"]
        );
    }

    #[test]
    fn capture_is_cleaned() {
        let raw = "boom\n\n\nPane is dead (status 7, Sun Nov 22 07:28:53 2026)\n\n";
        assert_eq!(clean_capture(raw), "boom\n");
        assert_eq!(clean_capture("\n\n"), "");
    }

    #[test]
    fn pane_status_parsing() {
        assert_eq!(
            parse_pane_status("123 1 3 \n"),
            Some(PaneStatus {
                pid: 123,
                dead: true,
                exit: ExitStatus {
                    code: Some(3),
                    signal: None
                }
            })
        );
        assert_eq!(
            parse_pane_status("9 1  15\n").unwrap().exit,
            ExitStatus {
                code: None,
                signal: Some(15)
            }
        );
        assert!(!parse_pane_status("9 0  \n").unwrap().dead);
        assert_eq!(parse_pane_status("garbage"), None);
    }
}
