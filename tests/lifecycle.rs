//! The core supervisor end to end: the real daemon, real tmux on a private socket, real PTYs,
//! real SQLite, driven through the CLI and the HTTP API.
// Test helpers outside #[test] fns unwrap; the test process is no subreaper, so it may spawn
// directly (see clippy.toml).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{alive, group_members, wait_until, TestDaemon};
use serde_json::{json, Value};

const ECHO_LOOP: &str = "while read l; do echo \"got:$l\"; done";
const SECS10: Duration = Duration::from_secs(10);

#[test]
fn spawn_send_and_read_output_in_both_backends() {
    let d = TestDaemon::start();
    for backend in ["tmux", "pty"] {
        let name = format!("echo-{backend}");
        let out = d.ok(&[
            "spawn",
            "--name",
            &name,
            "--backend",
            backend,
            "--",
            "sh",
            "-c",
            ECHO_LOOP,
        ]);
        assert!(out.starts_with(&format!("{name}\t")), "{out}");
        assert!(
            out.trim_end().ends_with("ready"),
            "spawn waits for ready: {out}"
        );
        let reply = d.ok(&[
            "send",
            &name,
            "--wait",
            "--timeout",
            "10",
            "hello",
            &format!("from-{backend}"),
        ]);
        assert!(
            reply.contains(&format!("got:hello from-{backend}")),
            "{backend}: {reply:?}"
        );
        d.wait_output(&name, &format!("got:hello from-{backend}"));
        let v = d.instance(&name);
        assert_eq!(v["backend"], backend);
        assert_eq!(v["state"], "ready", "a finished turn returns to ready: {v}");
        assert_eq!(v["turns"], 1);
        assert!(v["output_bytes"].as_u64().unwrap() > 0);
    }
    let ls = d.ok(&["ls"]);
    assert!(ls.starts_with("NAME"), "{ls}");
    for col in ["KIND", "BACKEND", "STATE", "AGE", "IDLE", "COST"] {
        assert!(ls.lines().next().unwrap().contains(col), "{ls}");
    }
    assert!(ls.contains("echo-tmux") && ls.contains("echo-pty"), "{ls}");
}

#[test]
fn exit_codes_and_signals_are_recorded() {
    let d = TestDaemon::start();
    for backend in ["tmux", "pty"] {
        let code = format!("code-{backend}");
        d.spawn(json!({"name": code, "backend": backend, "argv": ["sh", "-c", "read x; exit 3"], "wait_ready": true}));
        d.ok(&["send", &code, "go"]);
        let v = d.wait_state(&code, "exited", SECS10);
        assert_eq!(v["reason"], "crashed", "{v}");
        assert_eq!(v["exit_code"], 3, "{v}");

        let sig = format!("sig-{backend}");
        d.spawn(json!({"name": sig, "backend": backend, "argv": ["sh", "-c", "read x; kill -USR1 $$"], "wait_ready": true}));
        d.ok(&["send", &sig, "go"]);
        let v = d.wait_state(&sig, "exited", SECS10);
        assert_eq!(v["exit_signal"], 10, "SIGUSR1 is 10: {v}");
        assert_eq!(v["reason"], "crashed");

        let ok = format!("ok-{backend}");
        d.spawn(json!({"name": ok, "backend": backend, "argv": ["sh", "-c", "read x; echo bye"], "wait_ready": true}));
        d.ok(&["send", &ok, "go"]);
        let v = d.wait_state(&ok, "exited", SECS10);
        assert_eq!(v["reason"], "completed");
        assert_eq!(v["exit_code"], 0);
        // the tmux session of an ended instance is gone
        if backend == "tmux" {
            let has = d.tmux(&["has-session", "-t", &format!("={ok}")]);
            assert!(
                !has.status.success(),
                "session {ok} should be killed after exit"
            );
        }
    }
}

#[test]
fn kill_stops_the_whole_process_group_and_leaves_nothing_in_proc() {
    let d = TestDaemon::start();
    for backend in ["tmux", "pty"] {
        let name = format!("tree-{backend}");
        // sh ignores SIGTERM here, so the stop must escalate to SIGKILL after the grace.
        let script = "trap '' TERM; sleep 1000 & sleep 1000 & echo started; wait";
        let v = d.spawn(json!({"name": name, "backend": backend, "argv": ["sh", "-c", script], "wait_ready": true}));
        let pgid = v["pid"].as_i64().unwrap() as i32;
        d.wait_output(&name, "started");
        let members = wait_until("three processes in the group", SECS10, || {
            let m = group_members(pgid);
            (m.len() >= 3).then_some(m)
        });
        let out = d.ok(&["kill", &name, "--grace", "0.5"]);
        assert!(out.contains("killed") && out.contains("requested"), "{out}");
        let v = d.instance(&name);
        assert_eq!(v["state"], "killed");
        assert_eq!(v["exit_signal"], 9, "escalated to SIGKILL: {v}");
        wait_until("every process of the tree gone from /proc", SECS10, || {
            members.iter().all(|p| !alive(*p)).then_some(())
        });
        assert!(group_members(pgid).is_empty());
        // killing again is not an error: already gone counts as success
        let again = d.ok(&["kill", &name]);
        assert!(again.contains("killed"), "{again}");
    }
    let (_, events) = d.get("/api/v1/events?instance=tree-pty");
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"kill_escalated"), "{kinds:?}");
}

#[test]
fn idle_and_wall_timeouts_fire_with_their_reasons() {
    let d = TestDaemon::start_with("[instance]\nstop_grace_s = 1.0\n");
    d.ok(&[
        "spawn",
        "--name",
        "idle",
        "--idle-timeout",
        "1",
        "--",
        "sleep",
        "1000",
    ]);
    d.ok(&[
        "spawn",
        "--name",
        "idle-pty",
        "--backend",
        "pty",
        "--idle-timeout",
        "1",
        "--",
        "sleep",
        "1000",
    ]);
    // keeps printing, so it is never idle; only the wall clock can stop it
    let ticker = "while :; do echo tick; sleep 0.2; done";
    d.ok(&[
        "spawn",
        "--name",
        "wall",
        "--idle-timeout",
        "1",
        "--wall-timeout",
        "2",
        "--",
        "sh",
        "-c",
        ticker,
    ]);
    for name in ["idle", "idle-pty"] {
        let v = d.wait_state(name, "killed", SECS10);
        assert_eq!(v["reason"], "idle_timeout", "{v}");
    }
    let v = d.wait_state("wall", "killed", SECS10);
    assert_eq!(
        v["reason"], "wall_timeout",
        "output keeps it from idling: {v}"
    );
    let ran = v["ended_at"].as_i64().unwrap() - v["created_at"].as_i64().unwrap();
    assert!(
        (1900..6000).contains(&ran),
        "wall timeout after ~2 s, took {ran} ms"
    );
}

#[test]
fn input_resets_the_idle_timer() {
    let d = TestDaemon::start_with("[instance]\nstop_grace_s = 0.5\n");
    d.ok(&[
        "spawn",
        "--name",
        "quiet",
        "--idle-timeout",
        "2",
        "--",
        "sh",
        "-c",
        "while read l; do :; done",
    ]);
    let start = std::time::Instant::now();
    // input every ~0.5 s for 3 s: past the 2 s idle timeout, yet it must stay alive
    while start.elapsed() < Duration::from_secs(3) {
        d.ok(&["send", "quiet", "x"]);
        assert!(d.instance("quiet")["state"].as_str().unwrap() != "killed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = d.wait_state("quiet", "killed", SECS10);
    assert_eq!(v["reason"], "idle_timeout");
}

#[test]
fn names_are_validated_and_unique_among_live_instances() {
    let d = TestDaemon::start();
    for bad in ["Bad", "-x", "a b", "a/b", "..", &"x".repeat(64)] {
        let err = d.fails(&["spawn", &format!("--name={bad}"), "--", "true"]);
        assert!(err.contains("invalid name"), "{bad}: {err}");
    }
    d.ok(&["spawn", "--name", "one", "--", "sleep", "100"]);
    let err = d.fails(&["spawn", "--name", "one", "--", "sleep", "100"]);
    assert!(err.contains("already running"), "{err}");
    d.ok(&["kill", "one", "--grace", "0"]);
    // once it ended the name is free again
    d.ok(&["spawn", "--name", "one", "--", "sleep", "100"]);
}

#[test]
fn failed_spawns_are_errors_with_the_output_tail() {
    let d = TestDaemon::start_with("[instance]\nstart_timeout_s = 1.0\nstop_grace_s = 0.5\n");
    for backend in ["tmux", "pty"] {
        let err = d.fails(&[
            "spawn",
            "--name",
            &format!("boom-{backend}"),
            "--backend",
            backend,
            "--",
            "sh",
            "-c",
            "echo boom-output >&2; exit 7",
        ]);
        assert!(
            err.contains("exit code 7") && err.contains("boom-output"),
            "{backend}: {err}"
        );
        let v = d.instance(&format!("boom-{backend}"));
        assert_eq!(v["state"], "failed");
        assert_eq!(v["reason"], "spawn_failed");
    }
    let err = d.fails(&["spawn", "--", "definitely-not-a-program"]);
    assert!(err.contains("command not found"), "{err}");
    let err = d.fails(&[
        "spawn",
        "--name",
        "never",
        "--ready-pattern",
        "NEVER-PRINTED",
        "--",
        "sh",
        "-c",
        "echo waiting; sleep 100",
    ]);
    assert!(
        err.contains("not ready within 1.0 s") && err.contains("waiting"),
        "{err}"
    );
    assert_eq!(d.instance("never")["state"], "failed");
    // a ready pattern that appears makes it ready
    let out = d.ok(&[
        "spawn",
        "--name",
        "pat",
        "--ready-pattern",
        "READY [0-9]+",
        "--",
        "sh",
        "-c",
        "echo READY 42; sleep 100",
    ]);
    assert!(out.trim_end().ends_with("ready"), "{out}");
}

#[test]
fn bad_api_input_gets_a_precise_error() {
    let d = TestDaemon::start();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"argv": []}), "argv must name a program"),
        (
            json!({"argv": ["true"], "backend": "docker"}),
            "backend = \"docker\"",
        ),
        (json!({"argv": ["true"], "kind": "nope"}), "kind = \"nope\""),
        (json!({"argv": ["true"], "name": "UPPER"}), "invalid name"),
        (
            json!({"argv": ["true"], "env": {"1BAD": "x"}}),
            "env key \"1BAD\"",
        ),
        (
            json!({"argv": ["true"], "ready_pattern": "(unclosed"}),
            "not a valid regex",
        ),
        (json!({"argv": ["true"], "cols": 5}), "cols = 5"),
        (
            json!({"argv": ["true"], "workspace": "../etc"}),
            "workspace \"../etc\"",
        ),
        (
            json!({"argv": ["true"], "workspace": "missing"}),
            "does not exist",
        ),
        (
            json!({"argv": ["true"], "idle_timeout_s": 99999999}),
            "idle_timeout_s = 99999999",
        ),
        (
            json!({"argv": ["true"], "surprise": 1}),
            "unknown field `surprise`",
        ),
    ];
    for (body, want) in cases {
        let (status, v) = d.post("/api/v1/instances", &body);
        assert_eq!(status, 400, "{body} -> {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    }
    let (status, v) = d.post_raw("/api/v1/instances", "{not json");
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("invalid request body"),
        "{v}"
    );
    let (status, v) = d.get("/api/v1/instances/ghost");
    assert_eq!(status, 404);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no instance with id or name \"ghost\""),
        "{v}"
    );
    let err = d.fails(&["kill", "ghost"]);
    assert!(
        err.contains("no instance with id or name \"ghost\""),
        "{err}"
    );
    let err = d.fails(&["send", "ghost", "hi"]);
    assert!(err.contains("ghost"), "{err}");
    // nothing was created by the rejected requests
    let (_, all) = d.get("/api/v1/instances?all=true");
    assert_eq!(all.as_array().unwrap().len(), 0, "{all}");
    // sending to an ended instance says so
    d.spawn(json!({"name": "done", "argv": ["sh", "-c", "read x"], "wait_ready": true}));
    d.ok(&["send", "done", "x"]);
    d.wait_state("done", "exited", SECS10);
    let err = d.fails(&["send", "done", "again"]);
    assert!(err.contains("has ended (exited: completed)"), "{err}");
}

#[test]
fn state_survives_a_restart_and_a_crash_leaves_nothing_running() {
    let mut d = TestDaemon::start_with("[instance]\nstop_grace_s = 1.0\n");
    d.spawn(
        json!({"name": "finished", "argv": ["sh", "-c", "read x; exit 0"], "wait_ready": true}),
    );
    d.ok(&["send", "finished", "x"]);
    d.wait_state("finished", "exited", SECS10);
    let live = d.spawn(json!({"name": "running", "argv": ["sleep", "1000"], "wait_ready": true}));
    let pid = live["pid"].as_i64().unwrap() as i32;
    let status = d.stop();
    assert!(status.success(), "clean shutdown exits 0: {status}");
    assert!(!alive(pid), "terminate-on-shutdown stops the instance");
    d.launch();
    let v = d.instance("finished");
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("exited"), Some("completed"))
    );
    let v = d.instance("running");
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("killed"), Some("supervisor_shutdown")),
        "{v}"
    );
    assert_eq!(v["exit_signal"], 15);

    // crash: the daemon dies with live instances; the next start adopts the tmux one (its
    // pane is still the recorded process) and settles the PTY one, whose master died, as lost
    let v = d.spawn(json!({"name": "orphan", "argv": ["sleep", "1000"], "wait_ready": true}));
    let pid = v["pid"].as_i64().unwrap() as i32;
    let v2 = d.spawn(json!({"name": "orphan-pty", "backend": "pty", "argv": ["sleep", "1000"], "wait_ready": true}));
    let pid2 = v2["pid"].as_i64().unwrap() as i32;
    d.crash();
    d.launch();
    let v = d.instance("orphan");
    assert_eq!(v["state"], "ready", "adopted: {v}");
    assert_eq!(v["pid"], pid);
    assert!(alive(pid));
    let v = d.instance("orphan-pty");
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("lost"), Some("lost")),
        "{v}"
    );
    wait_until("the PTY orphan gone", SECS10, || {
        (!alive(pid2)).then_some(())
    });
    let ls = d.ok(&["ls", "--all"]);
    for name in ["finished", "running", "orphan", "orphan-pty"] {
        assert!(ls.contains(name), "{ls}");
    }
}

#[test]
fn attach_targets_the_exact_session_on_the_private_socket() {
    let d = TestDaemon::start();
    d.ok(&["spawn", "--name", "w1", "--", "sleep", "100"]);
    d.ok(&["spawn", "--name", "w10", "--", "sleep", "100"]);
    let cmd = d.ok(&["attach", "--print", "w1"]);
    let sock = d.socket();
    assert!(cmd.contains(&format!("-S {}", sock.display())), "{cmd}");
    assert!(cmd.trim_end().ends_with("attach-session -t =w1"), "{cmd}");
    assert!(d.tmux(&["has-session", "-t", "=w1"]).status.success());
    // the user's default tmux server is not involved
    assert!(sock.starts_with(d.state_dir()));
    d.ok(&[
        "spawn",
        "--name",
        "p",
        "--backend",
        "pty",
        "--",
        "sleep",
        "100",
    ]);
    let err = d.fails(&["attach", "p"]);
    assert!(err.contains("pty backend"), "{err}");
}

#[test]
fn logs_follow_streams_until_the_instance_ends() {
    let d = TestDaemon::start();
    d.spawn(json!({"name": "talker", "argv": ["sh", "-c", "echo first; read x; echo second; read y; echo third"], "wait_ready": true}));
    d.wait_output("talker", "first");
    let mut follower = d.follower("talker");
    d.ok(&["send", "talker", "a"]);
    d.ok(&["send", "talker", "b"]);
    d.wait_state("talker", "exited", SECS10);
    let status = wait_until("logs -f to end with the instance", SECS10, || {
        follower.try_wait().ok().flatten()
    });
    assert!(status.success());
    let out = TestDaemon::follower_output(&mut follower);
    let (a, b, c) = (
        out.find("first").unwrap(),
        out.find("second").unwrap(),
        out.find("third").unwrap(),
    );
    assert!(a < b && b < c, "{out}");
    assert_eq!(
        out.matches("second").count(),
        1,
        "no repeats between tail and stream: {out}"
    );
    // after the end, logs reads the instance log file
    let again = d.ok(&["logs", "talker"]);
    assert!(again.contains("third"), "{again}");
    let log = d.state_dir().join(format!(
        "logs/instances/{}.log",
        d.instance("talker")["id"].as_str().unwrap()
    ));
    assert!(common::file_contains(&log, "second"));
}

#[test]
fn pty_resize_reaches_the_terminal() {
    let d = TestDaemon::start();
    for backend in ["pty", "tmux"] {
        let name = format!("size-{backend}");
        d.spawn(json!({"name": name, "backend": backend, "argv": ["sh", "-c", "while read l; do stty size; done"], "cols": 120, "rows": 40, "wait_ready": true}));
        let r = d.ok(&["send", &name, "--wait", "x"]);
        assert!(r.contains("40 120"), "{backend}: {r:?}");
        let (status, v) = d.post(
            &format!("/api/v1/instances/{name}/resize"),
            &json!({"cols": 100, "rows": 30}),
        );
        assert_eq!(status, 200, "{v}");
        let r = d.ok(&["send", &name, "--wait", "y"]);
        assert!(r.contains("30 100"), "{backend}: {r:?}");
    }
}

#[test]
fn every_change_is_in_the_store_events_and_the_audit_log() {
    let d = TestDaemon::start();
    d.spawn(json!({"name": "audited", "argv": ["sh", "-c", "read x"], "env": {"SECRET_TOKEN": "hunter2-do-not-log"}, "wait_ready": true}));
    d.ok(&["send", "audited", "x"]);
    d.wait_state("audited", "exited", SECS10);
    let (_, events) = d.get("/api/v1/events?instance=audited");
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["spawn", "started", "ready", "message", "exit"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let audit = d.state_dir().join(format!("logs/audit/audit_{day}.jsonl"));
    let text = std::fs::read_to_string(&audit).unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("every audit line is JSON");
        assert!(
            v["event"].is_string() && v["ts"].is_string() && v["seq"].is_i64(),
            "{line}"
        );
    }
    let seqs: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    for s in seqs {
        assert!(
            text.contains(&format!("\"seq\":{s},")),
            "event {s} missing from the audit log"
        );
    }
    assert!(text.contains("SECRET_TOKEN"), "env keys are recorded");
    assert!(
        !text.contains("hunter2"),
        "env values never reach the audit log"
    );
    let log = std::fs::read_to_string(d.dir.path().join("daemon.log")).unwrap();
    assert!(
        !log.contains("hunter2"),
        "env values never reach the daemon log"
    );
    let (_, v) = d.get("/api/v1/instances/audited");
    assert!(!v.to_string().contains("hunter2"));
}

#[test]
fn auth_and_origin_are_enforced_when_configured() {
    let d = TestDaemon::start_with("[server]\nport = 0\ntoken = \"test-token-0123456789\"\n");
    let r = d
        .http
        .get(format!("{}/api/v1/instances", d.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let r = d
        .http
        .get(format!("{}/api/v1/instances", d.url))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, _) = d.get("/api/v1/instances");
    assert_eq!(status, 200);
    let r = d
        .http
        .get(format!("{}/api/v1/instances", d.url))
        .bearer_auth("test-token-0123456789")
        .header("origin", "http://evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // /health needs no token and says nothing about instances' names or commands
    let r = d.http.get(format!("{}/health", d.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // the CLI takes the token from the config
    d.ok(&["spawn", "--name", "authed", "--", "sleep", "100"]);
    let health: Value = d
        .http
        .get(format!("{}/health", d.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["instances"]["live"], 1);
    assert!(!health.to_string().contains("authed") && !health.to_string().contains("sleep"));
}

#[test]
fn clients_get_a_clear_error_when_no_daemon_runs() {
    let d = TestDaemon::start();
    let url = "http://127.0.0.1:9"; // discard port: nothing listens
    let out = std::process::Command::new(common::BIN)
        .args(["--config", d.config.to_str().unwrap(), "--url", url, "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the corral daemon") && err.contains("corral serve"),
        "{err}"
    );
}

#[test]
fn max_instances_is_enforced() {
    let d = TestDaemon::start_with("[limits]\nmax_instances = 2\n");
    d.ok(&["spawn", "--", "sleep", "100"]);
    d.ok(&["spawn", "--backend", "pty", "--", "sleep", "100"]);
    let err = d.fails(&["spawn", "--", "sleep", "100"]);
    assert!(err.contains("limits.max_instances = 2"), "{err}");
}

#[test]
fn a_follower_that_falls_behind_catches_up_from_the_ring() {
    // ~11 MB of numbered lines: more than the socket buffers between daemon and follower
    // absorb, thousands of chunks (the queue holds 64), less than this ring: nothing may be lost.
    let d = TestDaemon::start_with("[instance]\nring_bytes = 33554432\n");
    d.spawn(json!({"name": "gush", "argv": ["sh", "-c", "read x; seq 1 1500000; read y"], "wait_ready": true}));
    let mut follower = d.follower("gush");
    // Nobody reads the follower's pipe while the instance writes: it falls behind.
    d.ok(&["send", "gush", "go"]);
    d.wait_output("gush", "\n1500000");
    d.ok(&["send", "gush", "end"]);
    let out = TestDaemon::follower_output(&mut follower);
    assert!(follower.wait().unwrap().success());
    assert!(!out.contains("skipped"), "the ring still held it all");
    let numbers: Vec<u32> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 1500000, "every line once, in order");
    assert!(numbers.iter().enumerate().all(|(i, n)| *n == i as u32 + 1));
}
