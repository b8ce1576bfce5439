//! The daemon as a service: the child subreaper that adopts and reaps orphaned descendants
//! without ever taking an exit status that the daemon's own children owe their owners.

// The test process is no subreaper: it may spawn directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{ppid, wait_until, TestDaemon};
use serde_json::json;

const SECS10: Duration = Duration::from_secs(10);

/// The pid of the private tmux server.
fn tmux_server_pid(d: &TestDaemon) -> i32 {
    let out = d.tmux(&["display-message", "-p", "#{pid}"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tmux server pid")
}

#[test]
fn orphans_are_adopted_by_the_daemon_and_reaped() {
    let d = TestDaemon::start();
    let daemon = d.pid();
    assert_eq!(
        ppid(tmux_server_pid(&d)),
        Some(daemon),
        "the tmux server daemonizes away from its client; as subreaper we get it back"
    );
    for backend in ["tmux", "pty"] {
        let name = format!("forker-{backend}");
        // The subshell starts a sleep and exits at once: the sleep is orphaned.
        let script = "(sleep 1000 & echo \"orphan:$!\"); echo started; exec sleep 1000";
        d.spawn(json!({"name": name, "backend": backend, "argv": ["sh", "-c", script], "wait_ready": true}));
        let out = d.wait_output(&name, "started");
        let orphan: i32 = out
            .split("orphan:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("orphan pid in {out:?}"));
        wait_until("the orphan to be reparented to the daemon", SECS10, || {
            (ppid(orphan) == Some(daemon)).then_some(())
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(orphan),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the orphan");
        // A zombie child of the daemon stays in /proc until the daemon reaps it.
        wait_until("the dead orphan to be reaped", SECS10, || {
            (!std::path::Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
        });
        d.ok(&["kill", &name, "--grace", "1"]);
    }
}

#[test]
fn the_orphan_reaper_never_takes_an_instance_exit_status() {
    let d = TestDaemon::start();
    // Orphans keep dying (each one a SIGCHLD and a reaper pass) while instances exit with
    // their own codes: every code must still reach its owner.
    let n = 8;
    for i in 0..n {
        let backend = if i % 2 == 0 { "pty" } else { "tmux" };
        let script = format!(
            "for j in 1 2 3; do (sleep 0.0$j &); done; read x; for j in 1 2 3; do (true &); done; exit {}",
            10 + i
        );
        d.spawn(json!({"name": format!("c{i}"), "backend": backend, "argv": ["sh", "-c", script], "wait_ready": true}));
    }
    for i in 0..n {
        d.ok(&["send", &format!("c{i}"), "go"]);
    }
    for i in 0..n {
        let v = d.wait_state(&format!("c{i}"), "exited", SECS10);
        assert_eq!(v["exit_code"], 10 + i, "{v}");
        assert_eq!(v["reason"], "crashed", "{v}");
    }
    assert!(
        children_zombies(d.pid()).is_empty(),
        "no zombie children left: {:?}",
        children_zombies(d.pid())
    );
}

/// Zombie children of `pid` that stay for a moment (allowing the reaper its pass).
fn children_zombies(pid: i32) -> Vec<i32> {
    let zombies = || {
        common::children_of(pid)
            .into_iter()
            .filter(|c| common::stat(*c).is_some_and(|(s, _)| s == 'Z'))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + SECS10;
    loop {
        let z = zombies();
        if z.is_empty() || std::time::Instant::now() > deadline {
            return z;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
