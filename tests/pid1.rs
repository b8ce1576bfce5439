//! PID-1 mode for real, without Docker: `unshare --pid --fork --mount-proc` makes corral
//! PID 1 of a new PID namespace (with its own /proc), as a container runtime would.
//!
//! These tests need root (or unprivileged user namespaces); where `unshare` cannot create the
//! namespace they print `SKIP` and pass. The `corral init` tests that do not need PID 1 run
//! everywhere. Observations come from /proc and exit codes; every wait has a deadline.

// The test process is no subreaper: it may spawn directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{children_of, wait_until, Launch, TestDaemon, BIN};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

/// The wrapper that makes its command PID 1 of a new PID namespace, or `None` (after
/// printing why) when this machine cannot create one.
fn unshare() -> Option<Vec<String>> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let argv: Vec<String> = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        .map(String::from)
        .to_vec();
    let probe =
        PROBE.get_or_init(
            || match Command::new(&argv[0]).args(&argv[1..]).arg("true").output() {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "{}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(e.to_string()),
            },
        );
    match probe {
        Ok(()) => Some(argv),
        Err(why) => {
            eprintln!(
                "SKIP: `unshare --pid --fork --mount-proc` is not available here ({why}); \
                 PID-1 tests need root or user namespaces"
            );
            None
        }
    }
}

/// One run of `corral init -- CMD...`, its output in files.
struct InitRun {
    child: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl InitRun {
    /// Starts `corral init -- argv` under `wrapper` (empty: a plain child of the test).
    fn start(wrapper: &[String], argv: &[&str]) -> InitRun {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::fs::File::create(dir.path().join("out")).expect("out");
        let err = std::fs::File::create(dir.path().join("err")).expect("err");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("init")
            .arg("--")
            .args(argv)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start corral init");
        InitRun {
            child,
            dir,
            started: Instant::now(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.path("out")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("err")).unwrap_or_default()
    }

    fn wait_stdout(&self, needle: &str) {
        wait_until(&format!("{needle:?} on stdout"), DEADLINE, || {
            self.stdout().contains(needle).then_some(())
        });
    }

    /// The host pid of the namespace's PID 1 (the child `unshare --fork` made).
    fn ns_init(&self) -> i32 {
        let unshare = self.child.id() as i32;
        wait_until("the namespace's PID 1", DEADLINE, || {
            children_of(unshare).first().copied()
        })
    }

    fn wait(&mut self) -> ExitStatus {
        let status = wait_until("corral init to exit", DEADLINE, || {
            self.child.try_wait().ok().flatten()
        });
        eprintln!(
            "corral init exited {status} after {:?}\n-- stdout --\n{}\n-- stderr --\n{}",
            self.started.elapsed(),
            self.stdout(),
            self.stderr()
        );
        status
    }
}

impl Drop for InitRun {
    fn drop(&mut self) {
        // --kill-child: killing unshare SIGKILLs the namespace's PID 1, and with it the rest.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts zombies and live `sleep` processes in the namespace's /proc; dash-compatible.
const PROC_COUNTS: &str = r#"
counts() {
  z=0; s=0
  for f in /proc/[0-9]*/stat; do
    { read -r l < "$f"; } 2>/dev/null || continue
    st=${l##*) }; st=${st%% *}
    case "$st" in Z) z=$((z+1)) ;; *) case "$l" in *"(sleep)"*) s=$((s+1)) ;; esac ;; esac
  done
  echo "$z $s"
}
until_counts() { # until_counts TEST-ON-"z s" WHAT: polls for 10 s at most
  n=0
  while :; do
    set -- "$1" "$2" $(counts)
    if eval "$1"; then return 0; fi
    n=$((n+1)); [ $n -gt 200 ] && { echo "timeout: $2 (zombies=$3 sleeps=$4)"; exit 2; }
    sleep 0.05
  done
}
"#;

#[test]
fn pid1_reaps_every_orphan_and_zombie() {
    let Some(unshare) = unshare() else { return };
    let script = format!(
        r#"{PROC_COUNTS}
[ $$ = 2 ] || {{ echo "expected to be pid 2 under corral init, am $$"; exit 3; }}
# A holder whose two children become zombies: it execs into sleep and never waits for them.
sh -c 'sleep 0.1 & sleep 0.1 & exec sleep 1' &
# Double-forked orphans: their parent exits at once, so they are reparented to PID 1.
for i in 1 2 3 4 5; do (sleep 0.3 &); done
until_counts '[ "$3" -ge 2 ]' "the holder's zombies to appear"
echo "saw zombies: $(counts)"
wait  # the holder ends: its zombies now belong to PID 1
until_counts '[ "$3" -eq 0 ] && [ "$4" -eq 0 ]' "every zombie reaped and every sleep gone"
echo "zombies_left=0"
"#
    );
    let mut run = InitRun::start(&unshare, &["sh", "-c", &script]);
    let status = run.wait();
    assert_eq!(status.code(), Some(0), "{}", run.stdout());
    let out = run.stdout();
    assert!(out.contains("saw zombies"), "{out}");
    assert!(out.contains("zombies_left=0"), "{out}");
}

#[test]
fn pid1_forwards_signals_to_the_child() {
    let Some(unshare) = unshare() else { return };
    let script = r#"
trap 'echo got-usr1' USR1
trap 'echo got-hup' HUP
trap 'echo got-term; exit 42' TERM
echo ready
while :; do sleep 5 & wait $!; done
"#;
    let mut run = InitRun::start(&unshare, &["sh", "-c", script]);
    run.wait_stdout("ready");
    let init = Pid::from_raw(run.ns_init());
    kill(init, Signal::SIGUSR1).expect("signal PID 1");
    run.wait_stdout("got-usr1");
    kill(init, Signal::SIGHUP).expect("signal PID 1");
    run.wait_stdout("got-hup");
    kill(init, Signal::SIGTERM).expect("signal PID 1");
    let status = run.wait();
    assert!(run.stdout().contains("got-term"), "{}", run.stdout());
    assert_eq!(status.code(), Some(42), "the child's own exit code");
}

/// Exit codes and exec failures, as PID 1 (when possible) and as a plain process.
fn exit_code_cases(wrapper: &[String]) {
    let cases: [(&[&str], i32); 4] = [
        (&["sh", "-c", "exit 7"], 7),
        (&["sh", "-c", "exit 0"], 0),
        (&["sh", "-c", "kill -KILL $$"], 137),
        (&["sh", "-c", "kill -TERM $$"], 143),
    ];
    for (argv, want) in cases {
        let mut run = InitRun::start(wrapper, argv);
        assert_eq!(run.wait().code(), Some(want), "{argv:?}");
    }
    let mut run = InitRun::start(wrapper, &["/nonexistent/agent", "--flag"]);
    assert_eq!(run.wait().code(), Some(127));
    let err = run.stderr();
    assert!(
        err.contains("corral init: cannot run /nonexistent/agent")
            && err.contains("No such file or directory"),
        "{err}"
    );
    let mut run = InitRun::start(wrapper, &["no-such-command-on-path"]);
    assert_eq!(run.wait().code(), Some(127));

    // Exists but is not executable (even root needs an x bit).
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    let path = file.path().to_str().expect("utf8").to_string();
    let mut run = InitRun::start(wrapper, &[&path]);
    assert_eq!(run.wait().code(), Some(126));
    assert!(
        run.stderr().contains("Permission denied"),
        "{}",
        run.stderr()
    );
}

#[test]
fn pid1_propagates_exit_codes_and_exec_failures() {
    let Some(unshare) = unshare() else { return };
    exit_code_cases(&unshare);
}

#[test]
fn init_outside_pid1_propagates_exit_codes_and_exec_failures() {
    exit_code_cases(&[]);
}

#[test]
fn init_outside_pid1_adopts_and_reaps_orphans_as_a_subreaper() {
    // The orphan's parent must become corral init ($PPID of the script), then, once it
    // ends, it must not stay a zombie.
    let script = r#"
(sleep 30 & echo $! > orphan)
o=$(cat orphan)
n=0
while :; do
  read -r l < /proc/$o/stat; p=${l##*) }; set -- $p
  [ "$2" = "$PPID" ] && break
  n=$((n+1)); [ $n -gt 200 ] && { echo "orphan $o has parent $2, not corral init $PPID"; exit 2; }
  sleep 0.05
done
echo "adopted by $PPID"
kill -KILL $o
n=0
while [ -e /proc/$o ]; do
  n=$((n+1)); [ $n -gt 200 ] && { echo "orphan $o was not reaped: $(cat /proc/$o/stat)"; exit 3; }
  sleep 0.05
done
echo reaped
"#;
    let mut run = InitRun::start(&[], &["sh", "-c", script]);
    let status = run.wait();
    let out = run.stdout();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("adopted by") && out.contains("reaped"),
        "{out}"
    );
}

/// The pid-namespace identity of a process (`/proc/PID/ns/pid`).
fn pid_ns(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Host pids of the processes in PID namespace `ns`.
fn ns_members(ns: &PathBuf) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| pid_ns(*p).as_ref() == Some(ns))
        .collect()
}

#[test]
fn serve_as_pid1_shuts_down_cleanly_on_sigterm_and_leaves_nothing() {
    let Some(unshare) = unshare() else { return };
    let grace = 2.0;
    let mut d = TestDaemon::start_launch(
        &format!("[shutdown]\ngrace_s = {grace}\n"),
        Launch {
            wrapper: unshare,
            ..Launch::default()
        },
    );
    let names = ["t1", "t2", "t3", "stubborn", "p1"];
    for name in &names[..3] {
        d.spawn(json!({"name": name, "argv": ["sleep", "1000"], "wait_ready": true}));
    }
    // Ignores SIGTERM: the shutdown has to escalate to SIGKILL after the grace period.
    d.spawn(json!({"name": "stubborn", "argv": ["sh", "-c", "trap '' TERM; echo up; sleep 1000 & wait"], "wait_ready": true}));
    d.spawn(json!({"name": "p1", "backend": "pty", "argv": ["sleep", "1000"], "wait_ready": true}));

    let init = wait_until("the namespace's PID 1", DEADLINE, || {
        children_of(d.pid()).first().copied()
    });
    let ns = pid_ns(init).expect("pid namespace of PID 1");
    assert_ne!(pid_ns(d.pid()), Some(ns.clone()), "a new PID namespace");
    // PID 1, the daemon child, the tmux server, 5 instances (+ the stubborn one's sleep)
    let members = wait_until("every process in the namespace", DEADLINE, || {
        let m = ns_members(&ns);
        (m.len() >= 9).then_some(m)
    });
    let daemon = children_of(init);
    assert!(
        daemon.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("serve") && c.starts_with(BIN))
        }),
        "PID 1 re-executed itself as the daemon child: {daemon:?}"
    );
    let tmux_server = members.iter().copied().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("tmux"))
    });
    let tmux_server = tmux_server.expect("the tmux server runs in the namespace");
    assert_eq!(
        common::ppid(tmux_server),
        Some(init),
        "the double-forked tmux server is reparented to PID 1"
    );

    let t0 = Instant::now();
    kill(Pid::from_raw(init), Signal::SIGTERM).expect("SIGTERM to PID 1");
    let status = d.wait_exit(DEADLINE);
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "a clean shutdown exits 0: {status}");
    assert!(
        took < Duration::from_secs_f64(grace + 8.0),
        "shutdown within the grace period (+ margin), took {took:?}"
    );
    assert!(
        ns_members(&ns).is_empty(),
        "nothing of the namespace is left: {:?}",
        ns_members(&ns)
    );

    // The daemon stopped every instance itself (not the kernel tearing down the namespace).
    d.launch = Launch::default();
    d.launch();
    for name in names {
        let v = d.instance(name);
        assert_eq!(
            (v["state"].as_str(), v["reason"].as_str()),
            (Some("killed"), Some("supervisor_shutdown")),
            "{name}: {v}"
        );
    }
    assert_eq!(d.instance("stubborn")["exit_signal"], 9, "escalated");
}
