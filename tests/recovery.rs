//! Restarts, crashes and upgrades lose nothing and orphan nothing.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{alive, wait_until, TestDaemon};
use serde_json::{json, Value};

const SECS10: Duration = Duration::from_secs(10);
const ECHO: &str = "while read l; do echo \"got:$l\"; done";

fn events_of(d: &TestDaemon, name: &str) -> Vec<String> {
    let (_, v) = d.get(&format!("/api/v1/events?instance={name}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn detached_tmux_agents_survive_a_restart_and_are_adopted() {
    let mut d = TestDaemon::start_with("[shutdown]\nagents = \"detach\"\n");
    let v = d.spawn(json!({"name": "keeper", "argv": ["sh", "-c", ECHO], "idle_timeout_s": 3600, "wait_ready": true}));
    let pid = v["pid"].as_i64().unwrap() as i32;
    d.spawn(
        json!({"name": "ptyone", "backend": "pty", "argv": ["sh", "-c", ECHO], "wait_ready": true}),
    );
    assert!(d
        .ok(&["send", "keeper", "--wait", "before"])
        .contains("got:before"));
    assert!(d.stop().success());
    assert!(
        alive(pid),
        "a detached tmux agent keeps running while the daemon is down"
    );
    assert!(d.tmux(&["has-session", "-t", "=keeper"]).status.success());
    d.launch();
    let v = d.instance("keeper");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("ready"), Some(pid as i64)),
        "{v}"
    );
    let kinds = events_of(&d, "keeper");
    assert!(
        kinds.contains(&"detached".into()) && kinds.contains(&"adopted".into()),
        "{kinds:?}"
    );
    let v = d.instance("ptyone");
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("killed"), Some("supervisor_shutdown")),
        "PTYs cannot be detached: {v}"
    );
    // it keeps working through the new daemon: input, output, turns
    assert!(d
        .ok(&["send", "keeper", "--wait", "after"])
        .contains("got:after"));
    let out = d.output("keeper");
    assert!(
        out.contains("got:before") && out.contains("got:after"),
        "output from before and after the restart: {out}"
    );
    let logs = d.ok(&["logs", "keeper"]);
    assert!(
        logs.contains("got:before") && logs.contains("got:after"),
        "{logs}"
    );
    // and it is stopped like any other instance
    d.ok(&["kill", "keeper", "--grace", "1"]);
    wait_until("adopted instance gone", SECS10, || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn a_session_killed_while_the_daemon_was_down_is_lost_and_can_be_resumed() {
    let mut d = TestDaemon::start_with("[shutdown]\nagents = \"detach\"\n");
    d.spawn(json!({"name": "victim", "argv": ["sh", "-c", ECHO], "env": {"MARK": "m1"}, "wait_ready": true}));
    let old_id = d.instance("victim")["id"].as_str().unwrap().to_string();
    assert!(d.stop().success());
    assert!(d.tmux(&["kill-session", "-t", "=victim"]).status.success());
    d.launch();
    let v = d.instance(&old_id);
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("lost"), Some("lost")),
        "{v}"
    );
    assert!(
        v["reason_detail"].as_str().unwrap().contains("found dead"),
        "{v}"
    );
    assert!(v["ended_at"].is_i64());
    // resume runs the same command (and environment) again under the same name
    let out = d.ok(&["resume", "victim"]);
    assert!(out.starts_with("victim\t"), "{out}");
    let v = d.wait_state("victim", "ready", SECS10);
    assert_ne!(v["id"], old_id.as_str());
    assert_eq!(v["env_keys"], json!(["MARK"]));
    assert!(d
        .ok(&["send", "victim", "--wait", "again"])
        .contains("got:again"));
    let err = d.fails(&["resume", "victim"]);
    assert!(
        err.contains("only an ended instance can be resumed"),
        "{err}"
    );
}

#[test]
fn a_recycled_pid_is_never_adopted() {
    let mut d = TestDaemon::start_with("[shutdown]\nagents = \"detach\"\n");
    let v = d.spawn(json!({"name": "imposter", "argv": ["sleep", "1000"], "wait_ready": true}));
    let pid = v["pid"].as_i64().unwrap() as i32;
    assert!(d.stop().success());
    // make the record disagree with the live process: as if the pid had been reused
    let db = rusqlite::Connection::open(d.state_dir().join("data/corral.db")).unwrap();
    db.execute(
        "UPDATE instances SET pid_start = pid_start + 1 WHERE name = 'imposter'",
        [],
    )
    .unwrap();
    drop(db);
    d.launch();
    let v = d.instance("imposter");
    assert_eq!(v["state"], "lost", "{v}");
    assert!(
        !d.tmux(&["has-session", "-t", "=imposter"]).status.success(),
        "the unverified session on our socket is stopped"
    );
    wait_until("its process gone", SECS10, || (!alive(pid)).then_some(()));
}

#[test]
fn backup_while_serving_and_restore() {
    let mut d = TestDaemon::start();
    d.spawn(json!({"name": "b1", "argv": ["sh", "-c", ECHO], "wait_ready": true}));
    d.ok(&["send", "b1", "--wait", "x"]);
    let dest = d.dir.path().join("backup.db");
    let out = d.ok(&["backup", dest.to_str().unwrap()]);
    assert!(out.contains("integrity ok"), "{out}");
    let err = d.fails(&["backup", dest.to_str().unwrap()]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    let b = rusqlite::Connection::open(&dest).unwrap();
    let n: i64 = b
        .query_row(
            "SELECT count(*) FROM instances WHERE name = 'b1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let msgs: i64 = b
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'message'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(msgs, 1);
    drop(b);
    // restore (as HACKING.md documents): stop, replace the database, start
    d.ok(&["kill", "b1", "--grace", "0"]);
    d.spawn(json!({"name": "after-backup", "argv": ["true"]}));
    assert!(d.stop().success());
    let db = d.state_dir().join("data/corral.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    std::fs::copy(&dest, &db).unwrap();
    d.launch();
    let (status, _) = d.get("/api/v1/instances/after-backup");
    assert_eq!(status, 404, "the restored database predates it");
    let v = d.instance("b1");
    assert_eq!(
        v["state"], "lost",
        "b1 was live in the backup and is settled on start: {v}"
    );
}

/// A tiny deterministic generator, so a failing run can be replayed with CORRAL_CRASH_SEED.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Processes carrying `CRASH_MARK=<mark>` in their environment, with their instance id.
fn marked_processes(mark: &str) -> Vec<(i32, String)> {
    let needle = format!("CRASH_MARK={mark}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if vars.contains(&needle) && alive(pid) {
            let id = vars
                .iter()
                .find_map(|v| v.strip_prefix("CORRAL_INSTANCE_ID="))
                .unwrap_or("")
                .to_string();
            out.push((pid, id));
        }
    }
    out
}

#[test]
fn kill_9_at_random_points_loses_nothing_and_orphans_nothing() {
    let seed: u64 = std::env::var("CORRAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (replay with CORRAL_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let mark = format!("m{seed}");
    let mut d = TestDaemon::start_with(
        "[instance]\nstop_grace_s = 0.5\nsettle_ms = 50\nturn_quiet_ms = 100\n",
    );
    let kills = 10;
    let mut acked_spawns: Vec<String> = Vec::new();
    let mut acked_messages: Vec<(String, u64)> = Vec::new();
    let mut acked_stops: Vec<String> = Vec::new();
    let mut n = 0u32;
    for round in 0..kills {
        // a burst of mixed load, then kill -9 at a random point in it (possibly mid-request)
        let deadline = Instant::now() + Duration::from_millis(150 + rng.below(400));
        let kill_at = Instant::now() + Duration::from_millis(rng.below(500));
        let pid = d.pid();
        let killer = std::thread::spawn(move || {
            if let Some(wait) = kill_at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait); // the random kill point, not a wait for a condition
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        while Instant::now() < deadline {
            n += 1;
            let live: Vec<String> = acked_spawns
                .iter()
                .filter(|id| !acked_stops.contains(id))
                .cloned()
                .collect();
            let op = if live.len() < 3 { 0 } else { rng.below(4) };
            let r = match op {
                0 => {
                    let backend = if rng.below(2) == 0 { "tmux" } else { "pty" };
                    d.http
                        .post(format!("{}/api/v1/instances", d.url))
                        .json(&json!({"name": format!("c{round}-{n}"), "backend": backend, "argv": ["sh", "-c", ECHO], "env": {"CRASH_MARK": mark}}))
                        .send()
                        .ok()
                        .filter(|r| r.status().as_u16() == 201)
                        .and_then(|r| r.json::<Value>().ok())
                        .map(|v| acked_spawns.push(v["id"].as_str().unwrap().to_string()))
                }
                1 | 2 => {
                    let id = &live[rng.below(live.len() as u64) as usize];
                    d.http
                        .post(format!("{}/api/v1/instances/{id}/send", d.url))
                        .json(&json!({"text": format!("msg{n}")}))
                        .send()
                        .ok()
                        .filter(|r| r.status().is_success())
                        .and_then(|r| r.json::<Value>().ok())
                        .map(|v| acked_messages.push((id.clone(), v["turn"].as_u64().unwrap())))
                }
                _ => {
                    let id = live[rng.below(live.len() as u64) as usize].clone();
                    d.http
                        .post(format!("{}/api/v1/instances/{id}/stop", d.url))
                        .json(&json!({"grace_s": 0.2}))
                        .send()
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| acked_stops.push(id))
                }
            };
            if r.is_none() && d.http.get(format!("{}/health", d.url)).send().is_err() {
                break; // the daemon is dead
            }
        }
        killer.join().unwrap();
        d.crash();
        d.launch();
    }
    // Every acknowledged write is in the store; every instance is adopted-and-running or ended
    // with a reason; no marked process runs that the store does not know as live.
    let (_, all) = d.get("/api/v1/instances?all=true");
    let all: HashMap<String, Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    for id in &acked_spawns {
        assert!(
            all.contains_key(id),
            "acknowledged spawn {id} missing from the store"
        );
    }
    for id in &acked_stops {
        let v = &all[id];
        assert!(
            !v["state"].as_str().unwrap().eq("ready"),
            "acknowledged stop of {id} but it is {v}"
        );
    }
    let (_, events) = d.get("/api/v1/events?limit=10000");
    let events = events.as_array().unwrap();
    let messages: HashSet<(String, u64)> = events
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| {
            (
                e["instance_id"].as_str().unwrap().to_string(),
                e["data"]["turn"].as_u64().unwrap(),
            )
        })
        .collect();
    for m in &acked_messages {
        assert!(
            messages.contains(m),
            "acknowledged message {m:?} missing from the events"
        );
    }
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let audit =
        std::fs::read_to_string(d.state_dir().join(format!("logs/audit/audit_{day}.jsonl")))
            .unwrap();
    let mut audit_seqs = HashSet::new();
    for line in audit.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("partial or bad audit line {line:?}: {e}"));
        audit_seqs.insert(v["seq"].as_i64().unwrap());
    }
    for e in events {
        assert!(
            audit_seqs.contains(&e["seq"].as_i64().unwrap()),
            "event {e} missing from the audit log"
        );
    }
    let mut live = 0;
    for (id, v) in &all {
        let state = v["state"].as_str().unwrap();
        if ["ready", "busy", "starting", "stopping", "paused"].contains(&state) {
            live += 1;
            assert!(
                alive(v["pid"].as_i64().unwrap() as i32),
                "{id} is {state} but its process is gone"
            );
        } else {
            assert!(v["reason"].is_string(), "{id} ended without a reason: {v}");
        }
    }
    let procs = wait_until("no unknown marked processes", SECS10, || {
        let p = marked_processes(&mark);
        p.iter()
            .all(|(_, id)| {
                all.get(id).is_some_and(|v| {
                    ["ready", "busy", "starting", "stopping", "paused"]
                        .contains(&v["state"].as_str().unwrap())
                })
            })
            .then_some(p)
    });
    let db = rusqlite::Connection::open(d.state_dir().join("data/corral.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    println!(
        "crash test: {kills} kill -9s survived, {} requests, {} instances checked ({live} live, {} processes), {} acknowledged spawns, {} messages and {} stops verified, {} events in store and audit log, integrity ok",
        n, all.len(), procs.len(), acked_spawns.len(), acked_messages.len(), acked_stops.len(), events.len()
    );
}
