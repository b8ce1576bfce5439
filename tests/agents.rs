//! Claude Code and Codex as instance kinds, driven with the fake CLIs in `fixtures/` (which
//! reproduce the real ones' formats, files, hooks and screens): replies, usage and cost, caps,
//! credentials, resume.
// Test helpers outside #[test] fns unwrap; the test process may spawn directly.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, TestDaemon};
use serde_json::{json, Value};

const SECS10: Duration = Duration::from_secs(10);
/// One fake Claude model call at its default usage (1655 in, 24 out, 17454 cache write) on
/// claude-opus-4-8: (1655×5 + 24×25 + 17454×6.25) / 10⁶, the CLI's own figure.
const CLAUDE_CALL: f64 = 0.1179625;

fn agents_config(extra: &str) -> String {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bin");
    format!(
        "[agents.claude]\nbinary = \"{fx}/claude\"\napi_key = \"sk-ant-test-0123456789abcdefghijkl\"\n\
         [agents.codex]\nbinary = \"{fx}/codex\"\napi_key = \"sk-openai-test-0123456789\"\n\
         [agents]\nenter_delay_ms = 50\nstart_timeout_s = 20.0\n{extra}"
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn send_wait(d: &TestDaemon, name: &str, text: &str) -> Value {
    let (status, v) = d.post(
        &format!("/api/v1/instances/{name}/send"),
        &json!({"text": text, "wait": true, "timeout_s": 20}),
    );
    assert_eq!(status, 200, "{v}");
    v["outcome"].clone()
}

fn environ(pid: i64) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn claude_replies_and_its_cost_matches_the_cli_in_both_backends() {
    let d = TestDaemon::start_with(&agents_config(""));
    for backend in ["tmux", "pty"] {
        let name = format!("cl-{backend}");
        let v = d
            .spawn(json!({"name": name, "kind": "claude", "backend": backend, "wait_ready": true}));
        assert_eq!(v["state"], "ready", "{v}");
        let ready = d
            .events(&name)
            .into_iter()
            .find(|e| e["kind"] == "ready")
            .unwrap();
        assert_eq!(
            ready["data"]["via"], "session_start_hook",
            "readiness comes from the hook, not the screen"
        );
        let out = send_wait(&d, &name, "say hi");
        assert_eq!(
            out["reply"], "Hello from the fake Claude. (say hi)",
            "{out}"
        );
        assert_eq!(out["state"], "ready");
        let v = d.instance(&name);
        assert!(close(v["cost_usd"].as_f64().unwrap(), CLAUDE_CALL), "{v}");
        assert_eq!(
            v["tokens"],
            json!({"input": 1655, "output": 24, "cache_write": 17454, "cache_read": 0})
        );
        assert_eq!(v["session_id"].as_str().unwrap().len(), 36);
        // credentials: this kind's only
        let env = environ(v["pid"].as_i64().unwrap());
        assert!(env
            .iter()
            .any(|e| e == "ANTHROPIC_API_KEY=sk-ant-test-0123456789abcdefghijkl"));
        assert!(
            !env.iter().any(|e| e.starts_with("OPENAI_API_KEY=")),
            "no other kind's credential"
        );
        assert!(env
            .iter()
            .any(|e| e == "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"));
        let turn_done = d
            .events(&name)
            .into_iter()
            .find(|e| e["kind"] == "turn_completed")
            .unwrap();
        assert!(
            close(turn_done["data"]["cost_usd"].as_f64().unwrap(), CLAUDE_CALL),
            "{turn_done}"
        );
    }
}

#[test]
fn tool_steps_and_subagents_count_once_each() {
    let d = TestDaemon::start_with(&agents_config(""));
    // 3 model calls (2 tool steps, whose transcript lines repeat the message id) and a
    // subagent with 2 calls of 800 in, 40 out, 1200 cache write
    d.spawn(json!({"name": "steps", "kind": "claude", "env": {"FAKE_CALLS": "3", "FAKE_SUBAGENT": "1"}, "wait_ready": true}));
    let out = send_wait(&d, "steps", "work");
    assert!(
        out["reply"]
            .as_str()
            .unwrap()
            .contains("Hello from the fake Claude"),
        "{out}"
    );
    let sub = (800.0 * 5.0 + 40.0 * 25.0 + 1200.0 * 6.25) / 1e6;
    let want = 3.0 * CLAUDE_CALL + 2.0 * sub;
    let v = wait_until("all usage recorded", SECS10, || {
        let v = d.instance("steps");
        close(v["cost_usd"].as_f64().unwrap(), want).then_some(v)
    });
    assert_eq!(v["tokens"]["input"], 3 * 1655 + 2 * 800);
    let usage = d
        .events("steps")
        .into_iter()
        .filter(|e| e["kind"] == "usage")
        .count();
    assert_eq!(
        usage, 5,
        "3 main calls + 2 subagent calls, duplicates dropped"
    );
}

#[test]
fn codex_replies_priced_by_table_and_leaves_no_daemon() {
    let d = TestDaemon::start_with(&agents_config(""));
    for backend in ["tmux", "pty"] {
        let name = format!("cx-{backend}");
        d.spawn(json!({"name": name, "kind": "codex", "backend": backend, "wait_ready": true}));
        let out = send_wait(&d, &name, "say hi");
        assert_eq!(out["reply"], "Hello from the fake Codex. (say hi)", "{out}");
        let v = wait_until("codex usage", SECS10, || {
            let v = d.instance(&name);
            (v["cost_usd"].as_f64().unwrap() > 0.0).then_some(v)
        });
        // 9416 in (of which 2313 cache writes), 60 out on gpt-5.5 ($1.25 / $10 per M)
        let want = (7103.0 * 1.25 + 2313.0 * 1.25 + 60.0 * 10.0) / 1e6;
        assert!(close(v["cost_usd"].as_f64().unwrap(), want), "{v}");
        assert_eq!(
            v["tokens"],
            json!({"input": 7103, "output": 60, "cache_write": 2313, "cache_read": 0})
        );
        let env = environ(v["pid"].as_i64().unwrap());
        assert!(env
            .iter()
            .any(|e| e == "OPENAI_API_KEY=sk-openai-test-0123456789"));
        assert!(!env.iter().any(|e| e.starts_with("ANTHROPIC_API_KEY=")));
        let home = env
            .iter()
            .find_map(|e| e.strip_prefix("CODEX_HOME="))
            .unwrap()
            .to_string();
        assert!(
            !std::path::Path::new(&home)
                .join("app-server-daemon/daemon-updater.pid")
                .exists(),
            "daemon_auto_start = false was seeded"
        );
    }
}

/// A client that records MCP log notifications.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<Value>>>);

#[allow(deprecated)]
impl rmcp::ClientHandler for Logs {
    async fn on_logging_message(
        &self,
        p: rmcp::model::LoggingMessageNotificationParam,
        _c: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.0.lock().unwrap().push(p.data);
    }
}

#[test]
fn a_cost_cap_warns_pauses_mid_turn_and_lifts_when_raised() {
    let d = TestDaemon::start_with(&agents_config(""));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use rmcp::model::CallToolRequestParams;
        use rmcp::ServiceExt;
        let logs = Logs::default();
        let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                format!("{}/mcp", d.url),
            ),
        );
        let c = logs.clone().serve(transport).await.unwrap();
        let call = |tool: &'static str, args: Value| {
            let c = &c;
            async move {
                c.call_tool(
                    CallToolRequestParams::new(tool)
                        .with_arguments(args.as_object().cloned().unwrap()),
                )
                .await
                .unwrap()
            }
        };
        // 3 calls of $0.118 each, 400 ms apart; the cap of $0.14 is 84% after the first and
        // crossed by the second, so the third must never happen
        let r = call(
            "spawn_agent",
            json!({"name": "capped", "kind": "claude", "max_cost_usd": 0.14, "wait_ready": true,
                                            "env": {"FAKE_CALLS": "3", "FAKE_DELAY_MS": "400"}}),
        )
        .await;
        assert_ne!(r.is_error, Some(true), "{r:?}");
        let r = call(
            "send_message",
            json!({"instance": "capped", "text": "spend", "wait": true, "timeout_s": 20}),
        )
        .await;
        let out = r.structured_content.unwrap();
        assert_eq!(out["state"], "paused", "{out}");
        assert!(
            out["error"]
                .as_str()
                .unwrap()
                .contains("max_cost_usd reached"),
            "{out}"
        );
        let v = call("get_instance", json!({"instance": "capped"}))
            .await
            .structured_content
            .unwrap();
        assert!(
            close(v["cost_usd"].as_f64().unwrap(), 2.0 * CLAUDE_CALL),
            "stopped after the crossing call: {v}"
        );
        // a paused instance refuses messages
        let r = call(
            "send_message",
            json!({"instance": "capped", "text": "more"}),
        )
        .await;
        assert_eq!(r.is_error, Some(true));
        assert!(format!("{:?}", r.content).contains("paused"), "{r:?}");
        // the warning and the pause reached the MCP client as log notifications
        let got = wait_until_async(|| {
            let l = logs.0.lock().unwrap().clone();
            let kinds: Vec<String> = l
                .iter()
                .filter_map(|v| v["event"].as_str().map(str::to_string))
                .collect();
            (kinds.contains(&"cap_warning".to_string()) && kinds.contains(&"paused".to_string()))
                .then_some(l)
        })
        .await;
        let warn = got.iter().find(|v| v["event"] == "cap_warning").unwrap();
        assert_eq!(warn["data"]["cap"], "max_cost_usd");
        assert!(warn["data"]["percent"].as_f64().unwrap() >= 80.0);
        // raising the budget resumes it
        let r = call(
            "set_budget",
            json!({"instance": "capped", "max_cost_usd": 10.0}),
        )
        .await;
        assert_eq!(r.structured_content.unwrap()["state"], "ready");
        let r = call(
            "send_message",
            json!({"instance": "capped", "text": "again", "wait": true, "timeout_s": 20}),
        )
        .await;
        assert_eq!(
            r.structured_content.unwrap()["reply"],
            "Hello from the fake Claude. (again)"
        );
        let u = call("get_usage", json!({"instance": "capped"}))
            .await
            .structured_content
            .unwrap();
        assert!(
            close(u["cost_usd"].as_f64().unwrap(), 5.0 * CLAUDE_CALL),
            "{u}"
        );
        c.cancel().await.unwrap();
    });
    let kinds: Vec<String> = d
        .events("capped")
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} missing from {kinds:?}"))
    };
    assert!(
        pos("cap_warning") < pos("paused")
            && pos("paused") < pos("budget_set")
            && pos("budget_set") < pos("resumed"),
        "{kinds:?}"
    );
}

async fn wait_until_async<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + SECS10;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn terminate_on_cap_and_the_fleet_cap() {
    let d = TestDaemon::start_with(&agents_config(
        "[limits]\non_cap = \"terminate\"\nmax_total_cost_usd = 0.3\n",
    ));
    d.spawn(json!({"name": "t1", "kind": "claude", "max_cost_usd": 0.1, "wait_ready": true}));
    d.ok(&["send", "t1", "go"]);
    let v = d.wait_state("t1", "killed", SECS10);
    assert_eq!(v["reason"], "cost_cap", "{v}");
    // the fleet has spent 0.118; two more calls cross 0.3
    d.spawn(json!({"name": "t2", "kind": "claude", "wait_ready": true}));
    send_wait(&d, "t2", "one");
    d.ok(&["send", "t2", "two"]);
    let v = d.wait_state("t2", "killed", SECS10);
    assert_eq!(v["reason"], "cost_cap", "the fleet cap stops it: {v}");
    let (status, v) = d.post("/api/v1/instances", &json!({"kind": "claude"}));
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("max_total_cost_usd"),
        "{v}"
    );
    // commands are not agents: they still start
    d.ok(&["spawn", "--", "sleep", "10"]);
}

#[test]
fn idle_agents_stop_and_resume_continues_the_conversation() {
    let d = TestDaemon::start_with(&agents_config("[instance]\nstop_grace_s = 1.0\n"));
    // the fake runs as the agent user: give it a log file it may write
    let logdir = tempfile::Builder::new()
        .prefix("corral-fakelog")
        .tempdir()
        .unwrap();
    let log = logdir.path().join("fake.log");
    std::fs::write(&log, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(logdir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    d.spawn(json!({"name": "idler", "kind": "claude", "idle_timeout_s": 2, "wait_ready": true, "env": {"FAKE_LOG": log.display().to_string()}}));
    assert_eq!(
        send_wait(&d, "idler", "remember me")["reply"],
        "Hello from the fake Claude. (remember me)"
    );
    let v = d.wait_state("idler", "killed", SECS10);
    assert_eq!(v["reason"], "idle_timeout");
    let session = v["session_id"].as_str().unwrap().to_string();
    d.ok(&["resume", "idler"]);
    let v = d.wait_state("idler", "ready", Duration::from_secs(20));
    assert_eq!(v["session_id"], session.as_str(), "same conversation");
    let launches: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = launches.last().unwrap().to_string();
    assert!(
        last.contains("--resume") && last.contains(&session),
        "{last}"
    );
    assert_eq!(
        send_wait(&d, "idler", "again")["reply"],
        "Hello from the fake Claude. (again)"
    );
}

#[test]
fn agent_arguments_are_validated() {
    let d = TestDaemon::start_with(&agents_config(""));
    for (body, want) in [
        (
            json!({"kind": "claude", "argv": ["x"]}),
            "argv is for kind \"command\"",
        ),
        (
            json!({"kind": "claude", "mode": "batch"}),
            "mode = \"batch\"",
        ),
        (
            json!({"kind": "codex", "permission_mode": "plan"}),
            "permission_mode applies to claude",
        ),
        (
            json!({"kind": "claude", "max_cost_usd": -1}),
            "max_cost_usd = -1",
        ),
        (
            json!({"argv": ["true"], "model": "x"}),
            "model applies to claude and codex",
        ),
        (json!({"kind": "gemini"}), "kind = \"gemini\""),
    ] {
        let (status, v) = d.post("/api/v1/instances", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body}: {v}");
    }
}

/// CPU time (utime + stime, clock ticks) of a process.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_agent_costs_the_daemon_no_cpu() {
    // Regression: the file watcher once woke on the access events of its own reads and
    // rescanned forever (two cores busy per agent).
    let d = TestDaemon::start_with(&agents_config(""));
    d.spawn(json!({"name": "calm", "kind": "claude", "wait_ready": true}));
    send_wait(&d, "calm", "hi");
    let before = cpu_ticks(d.pid());
    let t = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2)); // a measurement window, not a wait for a condition
    let used = cpu_ticks(d.pid()) - before;
    let ticks_per_s = 100.0; // USER_HZ
    let share = used as f64 / ticks_per_s / t.elapsed().as_secs_f64();
    assert!(
        share < 0.05,
        "the idle daemon used {:.0}% of a core",
        share * 100.0
    );
}

fn shared_log() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("corral-fakelog")
        .tempdir()
        .unwrap();
    let log = dir.path().join("fake.log");
    std::fs::write(&log, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    (dir, log)
}

#[test]
fn headless_agents_run_one_cli_call_per_message_and_keep_the_conversation() {
    let d = TestDaemon::start_with(&agents_config(""));
    let (_keep, log) = shared_log();
    for kind in ["claude", "codex"] {
        let name = format!("h-{kind}");
        d.spawn(json!({"name": name, "kind": kind, "mode": "headless", "wait_ready": true, "env": {"FAKE_LOG": log.display().to_string()}}));
        let fake = if kind == "claude" { "Claude" } else { "Codex" };
        assert_eq!(
            send_wait(&d, &name, "one")["reply"],
            format!("Hello from the fake {fake}. (one)")
        );
        assert_eq!(
            send_wait(&d, &name, "two")["reply"],
            format!("Hello from the fake {fake}. (two)")
        );
        let v = d.instance(&name);
        assert_eq!(v["mode"], "headless");
        let session = v["session_id"].as_str().unwrap().to_string();
        let runs: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| {
                l.contains(&format!(
                    "\"{}",
                    if kind == "claude" { "-p" } else { "exec" }
                )) && l.contains(&session)
            })
            .map(str::to_string)
            .collect();
        assert!(
            !runs.is_empty(),
            "the follow-up continued session {session}"
        );
        if kind == "claude" {
            // headless Claude reports its own cost in the result line; it is used as is
            assert!(
                close(v["cost_usd"].as_f64().unwrap(), 2.0 * CLAUDE_CALL),
                "{v}"
            );
            let priced: Vec<String> = d
                .events(&name)
                .iter()
                .filter(|e| e["kind"] == "usage")
                .map(|e| e["data"]["priced_by"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(priced, ["cli", "cli"]);
        } else {
            assert_eq!(v["tokens"]["output"], 120);
        }
    }
    // Ctrl-C interrupts a headless turn (SIGINT to the CLI); the agent stays ready
    d.spawn(json!({"name": "slowh", "kind": "claude", "mode": "headless", "wait_ready": true, "env": {"FAKE_DELAY_MS": "3000"}}));
    let (status, v) = d.post("/api/v1/instances/slowh/send", &json!({"text": "long job"}));
    assert_eq!(status, 200, "{v}");
    wait_until("the CLI running", SECS10, || {
        d.output("slowh").contains("> long job").then_some(())
    });
    let (status, v) = d.post("/api/v1/instances/slowh/interrupt", &json!({}));
    assert_eq!(status, 200, "{v}");
    let (_, out) = d.get("/api/v1/instances/slowh/turns/1?timeout_s=10");
    assert_eq!(out["done"], true, "{out}");
    assert!(
        out["error"].is_string(),
        "an interrupted turn ends with an error: {out}"
    );
    assert_eq!(d.instance("slowh")["state"], "ready");
    assert_eq!(
        d.instance("slowh")["cost_usd"],
        0.0,
        "the aborted call cost nothing"
    );
}

#[test]
fn interrupting_interactive_claude_ends_the_turn_and_clears_the_restored_prompt() {
    // Claude Code 2.1.197, interrupted before it answered, runs no hook and puts the prompt
    // back into its input box (the fake does the same): the turn ends on the interrupt, and
    // the next message must not be appended to the old prompt.
    let d = TestDaemon::start_with(&agents_config(""));
    d.spawn(json!({"name": "ci", "kind": "claude", "wait_ready": true, "env": {"FAKE_DELAY_MS": "2000"}}));
    let (status, v) = d.post(
        "/api/v1/instances/ci/send",
        &json!({"text": "long job\nsecond line"}),
    );
    assert_eq!(status, 200, "{v}");
    wait_until("the turn running", SECS10, || {
        d.output("ci").contains("Thinking").then_some(())
    });
    let (status, v) = d.post("/api/v1/instances/ci/interrupt", &json!({}));
    assert_eq!(status, 200, "{v}");
    let (_, out) = d.get("/api/v1/instances/ci/turns/1?timeout_s=10");
    assert_eq!(out["done"], true, "{out}");
    assert_eq!(out["error"], "interrupted", "{out}");
    assert_eq!(d.instance("ci")["state"], "ready");
    let out = send_wait(&d, "ci", "next");
    assert_eq!(out["reply"], "Hello from the fake Claude. (next)", "{out}");
}

#[test]
fn a_message_sent_right_after_an_interrupt_waits_for_the_cli_to_settle() {
    // The interrupted turn's end (Codex's turn_aborted, a headless runner's) can arrive after
    // the next message was sent: it must not end the new turn, and the new message must not
    // reach the CLI while it is still winding the old turn down.
    let d = TestDaemon::start_with(&agents_config(""));
    for (kind, mode, busy) in [
        ("claude", "interactive", "Thinking"),
        ("codex", "interactive", "Working"),
        ("claude", "headless", "> long job"),
        ("codex", "headless", "> long job"),
    ] {
        let name = format!("now-{kind}-{mode}");
        d.spawn(json!({"name": name, "kind": kind, "mode": mode, "wait_ready": true, "env": {"FAKE_DELAY_MS": "1500"}}));
        let (status, v) = d.post(
            &format!("/api/v1/instances/{name}/send"),
            &json!({"text": "long job"}),
        );
        assert_eq!(status, 200, "{v}");
        wait_until("the turn running", SECS10, || {
            d.output(&name).contains(busy).then_some(())
        });
        let (status, v) = d.post(&format!("/api/v1/instances/{name}/interrupt"), &json!({}));
        assert_eq!(status, 200, "{v}");
        let out = send_wait(&d, &name, "next");
        let fake = if kind == "claude" { "Claude" } else { "Codex" };
        assert_eq!(
            out["reply"],
            format!("Hello from the fake {fake}. (next)"),
            "{name}: {out}"
        );
    }
}

#[test]
fn an_enter_the_tui_drops_is_pressed_again() {
    // The real TUIs lose an Enter that arrives while they finish starting up (seen with Claude
    // Code 2.1.197 under load): corral presses Enter again until the agent reports the prompt.
    let d = TestDaemon::start_with(&agents_config("submit_check_ms = 700\n"));
    for kind in ["claude", "codex"] {
        let name = format!("grace-{kind}");
        d.spawn(json!({"name": name, "kind": kind, "wait_ready": true, "env": {"FAKE_ENTER_GRACE_MS": "1500"}}));
        let out = send_wait(&d, &name, "hi");
        let fake = if kind == "claude" { "Claude" } else { "Codex" };
        assert_eq!(
            out["reply"],
            format!("Hello from the fake {fake}. (hi)"),
            "{out}"
        );
    }
}
