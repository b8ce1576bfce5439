//! The daemon as a service: systemd's readiness protocol against a fake `NOTIFY_SOCKET`,
//! and the child subreaper that adopts and reaps orphaned descendants without ever taking an
//! exit status that the daemon's own children owe their owners.

// The test process is no subreaper: it may spawn directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{ppid, wait_until, Launch, TestDaemon};
use serde_json::json;

const SECS10: Duration = Duration::from_secs(10);

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the deadline");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sd_notify_ready_once_serving_and_stopping_at_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut d = TestDaemon::start_launch(
        "",
        Launch {
            env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
            ..Launch::default()
        },
    );
    let ready = recv(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&d.url["http://".len()..]),
        "STATUS names the address: {ready:?}"
    );
    // READY=1 means serving: the API answers.
    let (status, health) = d.get("/health");
    assert_eq!(status, 200, "{health}");
    d.spawn(json!({"name": "w", "argv": ["sleep", "1000"], "wait_ready": true}));

    let status = d.stop();
    let stopping = recv(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(status.success(), "{status}");
    // Exactly one READY and one STOPPING.
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err(), "no further notification");
}

#[test]
fn sd_notify_accepts_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("corral-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _d = TestDaemon::start_launch(
        "",
        Launch {
            env: vec![("NOTIFY_SOCKET".into(), format!("@{name}"))],
            ..Launch::default()
        },
    );
    assert!(recv(&sock).starts_with("READY=1"));
}

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
