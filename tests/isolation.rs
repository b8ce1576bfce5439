//! Isolation, proven by observation: what an instance can see and do, and what is left of it
//! afterwards. Tests that need root (switching users) or writable cgroups print a `SKIP` line
//! and return when this machine cannot run them; CI runs them as root.
// The test process is no subreaper: it may spawn directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{alive, group_members, is_root, skip, wait_until, TestDaemon};
use serde_json::{json, Value};

const SECS10: Duration = Duration::from_secs(10);

fn health(d: &TestDaemon) -> Value {
    d.get("/health").1
}

fn need_root() -> Option<String> {
    (!is_root()).then(|| "needs root (the daemon switches agents to another user)".into())
}

fn need_cgroups(d: &TestDaemon) -> Option<String> {
    let cg = &health(d)["isolation"]["cgroups"];
    (cg["available"] != true).then(|| format!("no writable cgroup on this host: {}", cg["reason"]))
}

fn corral_user() -> nix::unistd::User {
    nix::unistd::User::from_name("corral").unwrap().unwrap()
}

fn workspace(d: &TestDaemon, name: &str) -> std::path::PathBuf {
    d.instance(name)["workspace"].as_str().unwrap().into()
}

fn wait_output_for(d: &TestDaemon, name: &str, needle: &str, deadline: Duration) -> String {
    wait_until(
        &format!("{needle:?} in the output of {name}"),
        deadline,
        || {
            let t = d.output(name);
            t.contains(needle).then_some(t)
        },
    )
}

#[test]
fn agents_run_as_the_agent_user_without_privileges() {
    if skip(
        "agents_run_as_the_agent_user_without_privileges",
        need_root(),
    ) {
        return;
    }
    let d = TestDaemon::start();
    let u = corral_user();
    let script = "echo \"ids=$(id -u):$(id -g)\"; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; echo \"home=$HOME\"; read x";
    for backend in ["tmux", "pty"] {
        let name = format!("who-{backend}");
        d.spawn(json!({"name": name, "backend": backend, "argv": ["sh", "-c", script], "wait_ready": true}));
        let out = wait_output_for(&d, &name, "home=", SECS10);
        assert!(
            out.contains(&format!("ids={}:{}", u.uid, u.gid)),
            "{backend}: {out}"
        );
        assert!(out.contains("NoNewPrivs:\t1"), "{backend}: {out}");
        assert!(
            out.contains("CapEff:\t0000000000000000"),
            "{backend}: {out}"
        );
        let ws = workspace(&d, &name);
        let meta = std::fs::metadata(&ws).unwrap();
        assert_eq!(meta.uid(), u.uid.as_raw(), "the workspace is the agent's");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let home = out
            .lines()
            .find_map(|l| l.strip_prefix("home="))
            .unwrap()
            .trim();
        assert_eq!(std::fs::metadata(home).unwrap().uid(), u.uid.as_raw());
    }
}

#[test]
fn root_agents_are_refused_unless_allowed() {
    if skip("root_agents_are_refused_unless_allowed", need_root()) {
        return;
    }
    let d = TestDaemon::start_with("[agent]\nuser = \"root\"\n");
    let (status, v) = d.post("/api/v1/instances", &json!({"argv": ["true"]}));
    assert_eq!(status, 422, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("refuses to run agents as root") && msg.contains("agent.allow_root = true"),
        "{msg}"
    );
    assert_eq!(health(&d)["isolation"]["agents"]["ok"], false);
    drop(d);
    let d = TestDaemon::start_with("[agent]\nuser = \"root\"\nallow_root = true\n");
    d.spawn(
        json!({"name": "r", "argv": ["sh", "-c", "echo uid=$(id -u); read x"], "wait_ready": true}),
    );
    wait_output_for(&d, "r", "uid=0", SECS10);
}

#[test]
fn a_uid_per_instance_keeps_workspaces_apart() {
    if skip("a_uid_per_instance_keeps_workspaces_apart", need_root()) {
        return;
    }
    let d = TestDaemon::start_with("[agent]\nuid_range = \"231000-231009\"\n");
    d.spawn(json!({"name": "a", "argv": ["sh", "-c", "echo private-a > secret.txt; echo uid=$(id -u); read x"], "wait_ready": true}));
    d.spawn(json!({"name": "b", "argv": ["sh", "-c", "echo uid=$(id -u); read p; cat \"$p\" && echo READ-OK || echo READ-FAILED; read y"], "wait_ready": true}));
    let uid = |name: &str| -> u32 {
        let out = wait_output_for(&d, name, "uid=", SECS10);
        out.lines()
            .find_map(|l| l.trim().strip_prefix("uid="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (ua, ub) = (uid("a"), uid("b"));
    assert_ne!(ua, ub, "each instance has its own UID");
    assert!((231000..=231009).contains(&ua) && (231000..=231009).contains(&ub));
    let secret = workspace(&d, "a").join("secret.txt");
    wait_until("a's file", SECS10, || secret.exists().then_some(()));
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), ua);
    d.ok(&["send", "b", secret.to_str().unwrap()]);
    let out = wait_output_for(&d, "b", "READ-", SECS10);
    assert!(
        out.contains("READ-FAILED") && out.contains("Permission denied"),
        "{out}"
    );
    assert!(!out.contains("private-a"), "{out}");
}

#[test]
fn landlock_confines_writes_to_workspace_home_and_tmp() {
    let d = TestDaemon::start();
    let ll = health(&d)["isolation"]["landlock"].clone();
    let missing =
        (ll["available"] != true).then(|| format!("Landlock unavailable: {}", ll["reason"]));
    if skip(
        "landlock_confines_writes_to_workspace_home_and_tmp",
        missing,
    ) {
        return;
    }
    // /tmp is world-writable, so only Landlock can stop the write there.
    let outside = std::path::PathBuf::from(format!("/tmp/corral-landlock-{}", std::process::id()));
    let _ = std::fs::remove_file(&outside);
    let script = format!(
        "read x; for f in ./in-ws \"$HOME/in-home\" \"$TMPDIR/in-tmp\" /dev/null {o}; do \
         if echo x > \"$f\"; then echo \"wrote $f\"; else echo \"denied $f\"; fi; done; echo finished; read y",
        o = outside.display()
    );
    let o = outside.display().to_string();
    d.spawn(json!({"name": "free", "argv": ["sh", "-c", script], "wait_ready": true}));
    d.ok(&["send", "free", "go"]);
    let out = wait_output_for(&d, "free", "finished", SECS10);
    assert!(
        out.contains(&format!("wrote {o}")),
        "without Landlock the write works: {out}"
    );
    std::fs::remove_file(&outside).unwrap();

    d.spawn(json!({"name": "boxed", "argv": ["sh", "-c", script], "landlock": true, "wait_ready": true}));
    d.ok(&["send", "boxed", "go"]);
    let out = wait_output_for(&d, "boxed", "finished", SECS10);
    assert!(out.contains(&format!("denied {o}")), "{out}");
    for inside in ["./in-ws", "/in-home", "/in-tmp", "/dev/null"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("wrote") && l.contains(inside)),
            "{inside}: {out}"
        );
    }
    assert!(!outside.exists());
    let (_, events) = d.get("/api/v1/events?instance=boxed");
    let started = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "started")
        .unwrap();
    assert!(
        started["data"]["isolation"]["landlock"]
            .as_str()
            .unwrap()
            .starts_with("active"),
        "{started}"
    );
}

#[test]
fn memory_hog_is_oom_killed_alone() {
    let d = TestDaemon::start();
    if skip("memory_hog_is_oom_killed_alone", need_cgroups(&d)) {
        return;
    }
    d.spawn(json!({"name": "bystander", "argv": ["sh", "-c", "while read l; do echo \"got:$l\"; done"], "wait_ready": true}));
    // Command substitution keeps 300 MB in the shell's memory, far past 64 MiB.
    let hog = "read x; x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived";
    d.spawn(json!({"name": "hog", "argv": ["sh", "-c", hog], "limits": {"memory_max": "64M"}, "wait_ready": true}));
    d.ok(&["send", "hog", "go"]);
    let v = d.wait_state("hog", "killed", Duration::from_secs(30));
    assert_eq!(v["reason"], "oom", "{v}");
    assert!(
        v["reason_detail"].as_str().unwrap().contains("OOM killer"),
        "{v}"
    );
    assert!(!d.output("hog").contains("survived"));
    let reply = d.ok(&["send", "bystander", "--wait", "still-here"]);
    assert!(reply.contains("got:still-here"), "{reply}");
    assert_eq!(d.instance("bystander")["state"], "ready");
    assert_eq!(health(&d)["status"], "ok");
}

#[test]
fn fork_bomb_stops_at_pids_max_and_the_daemon_stays_responsive() {
    let d = TestDaemon::start();
    if skip(
        "fork_bomb_stops_at_pids_max_and_the_daemon_stays_responsive",
        need_cgroups(&d),
    ) {
        return;
    }
    // Bounded: at most 200 sleeps; the inner shell dies once fork fails. The outer shell
    // then uses builtins only (and exec), since it cannot fork either.
    let bomb = "read x; sh -c 'i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); echo $i > count; done'; \
                echo bomb-over; read n < count; echo forks=$n; exec sleep 1000";
    let v = d.spawn(json!({"name": "bomb", "argv": ["sh", "-c", bomb], "limits": {"pids_max": 24}, "wait_ready": true}));
    let pgid = v["pid"].as_i64().unwrap() as i32;
    d.ok(&["send", "bomb", "go"]);
    let out = wait_output_for(&d, "bomb", "forks=", Duration::from_secs(30));
    let forks: u32 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("forks="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(forks < 24, "fork stopped below pids.max: {forks}\n{out}");
    assert!(
        out.contains("fork"),
        "the shell reports the failed fork: {out}"
    );
    assert!(group_members(pgid).len() <= 24, "{:?}", group_members(pgid));
    // The daemon and other instances are unaffected.
    let t = Instant::now();
    assert_eq!(health(&d)["status"], "ok");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "health took {:?}",
        t.elapsed()
    );
    d.spawn(json!({"name": "after", "argv": ["sh", "-c", "echo alive-after; read x"], "wait_ready": true}));
    wait_output_for(&d, "after", "alive-after", SECS10);
    let members = group_members(pgid);
    d.ok(&["kill", "bomb", "--grace", "0.5"]);
    wait_until("every process of the bomb gone", SECS10, || {
        members.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn fsize_stops_a_runaway_file() {
    let d = TestDaemon::start();
    let script = "read x; head -c 5000000 /dev/zero > big; echo \"rc=$?\"; read y";
    d.spawn(json!({"name": "writer", "argv": ["sh", "-c", script], "limits": {"fsize": "1M"}, "wait_ready": true}));
    d.ok(&["send", "writer", "go"]);
    let out = wait_output_for(&d, "writer", "rc=", SECS10);
    assert!(
        out.contains("rc=153"),
        "head died of SIGXFSZ (128 + 25): {out}"
    );
    let size = std::fs::metadata(workspace(&d, "writer").join("big"))
        .unwrap()
        .len();
    assert_eq!(size, 1 << 20);
}

fn grandchild(d: &TestDaemon, name: &str) -> i32 {
    let f = workspace(d, name).join("gc.pid");
    wait_until("gc.pid", SECS10, || {
        std::fs::read_to_string(&f).ok()?.trim().parse::<i32>().ok()
    })
}

#[test]
fn killing_an_instance_leaves_no_process_of_its_tree() {
    let d = TestDaemon::start();
    if skip(
        "killing_an_instance_leaves_no_process_of_its_tree",
        need_cgroups(&d),
    ) {
        return;
    }
    // A daemonized grandchild: its own session, out of the instance's process group.
    let script = "setsid sh -c 'sleep 1000 & echo $! > gc.pid; wait' & echo started; sleep 1000";
    for backend in ["tmux", "pty"] {
        let name = format!("tree-{backend}");
        let v = d.spawn(json!({"name": name, "backend": backend, "argv": ["sh", "-c", script], "wait_ready": true}));
        let pgid = v["pid"].as_i64().unwrap() as i32;
        let gc = grandchild(&d, &name);
        assert!(alive(gc));
        let (_, gc_pgid) = common::stat(gc).unwrap();
        assert_ne!(gc_pgid, pgid, "the grandchild escaped the process group");
        d.ok(&["kill", &name, "--grace", "0.5"]);
        wait_until("the daemonized grandchild gone", SECS10, || {
            (!alive(gc)).then_some(())
        });
    }
    // A leader that exits on its own takes its daemonized children with it.
    d.spawn(json!({"name": "leaver", "argv": ["sh", "-c", "setsid sleep 1000 & echo $! > gc.pid; read x"], "wait_ready": true}));
    let gc = grandchild(&d, "leaver");
    d.ok(&["send", "leaver", "bye"]);
    d.wait_state("leaver", "exited", SECS10);
    wait_until("the leaver's grandchild gone", SECS10, || {
        (!alive(gc)).then_some(())
    });
}

#[test]
fn secrets_stay_in_their_instance() {
    let d = TestDaemon::start();
    let secret = format!(
        "s3cr3t-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let a = d.spawn(json!({"name": "sa", "argv": ["sh", "-c", "while read l; do echo \"a:$l\"; done"], "env": {"API_TOKEN": secret}, "wait_ready": true}));
    let b = d.spawn(json!({"name": "sb", "argv": ["sh", "-c", "while read l; do echo \"b:$l\"; done"], "wait_ready": true}));
    let c = d.spawn(
        json!({"name": "sc", "backend": "pty", "argv": ["sleep", "1000"], "wait_ready": true}),
    );
    let environ = |v: &Value| {
        let pid = v["pid"].as_i64().unwrap();
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_owned()
    };
    assert!(
        environ(&a).contains(&format!("API_TOKEN={secret}")),
        "A gets its variable"
    );
    for other in [&b, &c] {
        let env = environ(other);
        assert!(
            !env.contains(&secret) && !env.contains("API_TOKEN"),
            "{env}"
        );
    }
    let reply = d.ok(&["send", "sa", "--wait", "hello"]);
    assert!(reply.contains("a:hello"), "{reply}");
    d.ok(&["send", "sb", "--wait", "hello"]);
    let tmux = |args: &[&str]| {
        let o = d.tmux(args);
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for args in [
        &["show-environment", "-g"][..],
        &["show-environment", "-t", "=sa"],
        &["show-environment", "-t", "=sb"],
        &["list-panes", "-a", "-F", "#{pane_start_command}"],
    ] {
        let out = tmux(args);
        assert!(
            !out.contains(&secret) && !out.contains("API_TOKEN"),
            "tmux {args:?}: {out}"
        );
    }
    for name in ["sa", "sb", "sc"] {
        let (_, out) = d.get(&format!("/api/v1/instances/{name}/output?strip=false"));
        assert!(!out.to_string().contains(&secret), "{name}: {out}");
        let (_, info) = d.get(&format!("/api/v1/instances/{name}"));
        assert!(!info.to_string().contains(&secret));
    }
    let (_, events) = d.get("/api/v1/events");
    assert!(!events.to_string().contains(&secret));
    assert!(
        events.to_string().contains("API_TOKEN"),
        "the key is recorded, not the value"
    );
    d.ok(&["kill", "sa", "--grace", "0"]);
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let audit =
        std::fs::read_to_string(d.state_dir().join(format!("logs/audit/audit_{day}.jsonl")))
            .unwrap();
    assert!(!audit.contains(&secret));
    let log = std::fs::read_to_string(d.dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains(&secret));
    // The plan files that carried the environment were deleted by the shim.
    let plans: Vec<_> = std::fs::read_dir(d.state_dir().join("run/plans"))
        .unwrap()
        .collect();
    assert!(plans.is_empty(), "{plans:?}");
}

#[test]
fn doctor_explains_the_host_and_fails_on_broken_requirements() {
    let d = TestDaemon::start();
    let out = d.ok(&["doctor"]);
    for what in [
        "tmux:",
        "agent user:",
        "cgroups:",
        "landlock:",
        "state dir:",
        "run dir:",
    ] {
        assert!(out.contains(what), "{what} missing from:\n{out}");
    }
    assert!(out.contains("corral doctor: ready"), "{out}");
    let bad = d.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[paths]\nstate_dir = \"{}\"\n[agent]\nuser = \"no-such-user-corral\"\n",
            d.state_dir().display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(common::BIN)
        .args(["--config", bad.to_str().unwrap(), "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  agent user") && text.contains("no such user"),
        "{text}"
    );
}
