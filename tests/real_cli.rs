//! Opt-in: the REAL `claude` and `codex` CLIs (npm: @anthropic-ai/claude-code,
//! @openai/codex) driven by the real daemon against `tests/realcli/mock_api.py`, the project's
//! own mock of the Anthropic Messages API and the OpenAI Responses API.
//!
//! Every test returns at once (printing `SKIP real_cli: ...`) unless `CORRAL_REAL_CLI=1` and
//! the binaries are found: `scripts/dev real-cli` installs them into `target/real-cli` and runs
//! this file (`CORRAL_REAL_CLI_BIN=DIR` points at another directory holding `claude` and
//! `codex`). The mock logs every request and the usage it sent, which is the ground truth:
//! corral's reply texts, tokens and cost must equal it, and for headless Claude the CLI's own
//! `total_cost_usd`. See tests/realcli/README.md for what the real CLIs did.
// Test helpers outside #[test] fns unwrap; the test process may spawn directly.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_until, TestDaemon};
use serde_json::{json, Value};

const TURN: Duration = Duration::from_secs(60);

struct Clis {
    claude: PathBuf,
    codex: PathBuf,
}

/// The CLIs, or `None` (with a SKIP line) when the suite is not asked for or not installed.
fn clis(test: &str) -> Option<Clis> {
    if std::env::var("CORRAL_REAL_CLI").as_deref() != Ok("1") {
        let msg = format!(
            "SKIP real_cli: set CORRAL_REAL_CLI=1 to run {test} (scripts/dev real-cli installs the CLIs from npm and runs it)"
        );
        println!("{msg}");
        eprintln!("{msg}");
        return None;
    }
    let dir = std::env::var_os("CORRAL_REAL_CLI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-cli/node_modules/.bin")
        });
    let (claude, codex) = (dir.join("claude"), dir.join("codex"));
    for b in [&claude, &codex] {
        if !b.exists() {
            let msg = format!(
                "SKIP real_cli: {} not found (run scripts/dev real-cli, or set CORRAL_REAL_CLI_BIN)",
                b.display()
            );
            println!("{msg}");
            eprintln!("{msg}");
            return None;
        }
    }
    Some(Clis { claude, codex })
}

/// The mock model APIs (a Python process), killed on drop.
struct Mock {
    child: Child,
    url: String,
    http: reqwest::blocking::Client,
    _dir: tempfile::TempDir,
}

impl Mock {
    fn start() -> Mock {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realcli/mock_api.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0", "--log"])
            .arg(dir.path().join("mock.jsonl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the mock");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("mock said {line:?}"))
            .to_string();
        Mock {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::new(),
            _dir: dir,
        }
    }

    /// Queues the answers of the next conversation requests of `api`.
    fn script(&self, api: &str, steps: Value) {
        let r = self
            .http
            .post(format!("{}/_mock/script", self.url))
            .json(&json!({ api: steps }))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }

    fn requests(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_mock/log", self.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["requests"].as_array().unwrap().clone()
    }

    fn holding(&self) -> u64 {
        let v: Value = self
            .http
            .get(format!("{}/_mock/state", self.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["holding"].as_u64().unwrap()
    }

    /// Conversation requests of `api` that completed (the ones that reach the agents' records).
    fn completed(&self, api: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r["api"] == api
                    && r["role"] == "conversation"
                    && r["status"] == 200
                    && r["aborted"] == false
            })
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tokens as corral splits them, and USD at corral's built-in prices (per million tokens),
/// computed here from the mock's log: the ground truth.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Truth {
    input: u64,
    output: u64,
    cache_write: u64,
    cache_read: u64,
    cost: f64,
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn truth(api: &str, reqs: &[Value]) -> Truth {
    let mut t = Truth::default();
    for r in reqs {
        let us = &r["usage"];
        let (i, o, w, c, price) = if api == "anthropic" {
            // claude-opus-4-8: $5 in, $25 out, writes ×1.25, reads ×0.1
            assert!(
                r["model"].as_str().unwrap().starts_with("claude-opus-4-8"),
                "{r}"
            );
            (
                u(us, "input_tokens"),
                u(us, "output_tokens"),
                u(us, "cache_creation_input_tokens"),
                u(us, "cache_read_input_tokens"),
                [5.0, 25.0, 6.25, 0.5],
            )
        } else {
            // gpt-5.5: $1.25 in (and cache writes), $10 out, $0.125 cached; input_tokens
            // includes cached reads and cache writes, output_tokens includes reasoning
            assert_eq!(r["model"], "gpt-5.5", "{r}");
            let d = &us["input_tokens_details"];
            let (cached, written) = (u(d, "cached_tokens"), u(d, "cache_write_tokens"));
            (
                u(us, "input_tokens") - cached - written,
                u(us, "output_tokens"),
                written,
                cached,
                [1.25, 10.0, 1.25, 0.125],
            )
        };
        t.input += i;
        t.output += o;
        t.cache_write += w;
        t.cache_read += c;
        t.cost +=
            (i as f64 * price[0] + o as f64 * price[1] + w as f64 * price[2] + c as f64 * price[3])
                / 1e6;
    }
    t
}

fn seen(v: &Value) -> Truth {
    let tk = &v["tokens"];
    Truth {
        input: u(tk, "input"),
        output: u(tk, "output"),
        cache_write: u(tk, "cache_write"),
        cache_read: u(tk, "cache_read"),
        cost: v["cost_usd"].as_f64().unwrap_or(0.0),
    }
}

fn same(a: &Truth, b: &Truth) -> bool {
    (a.input, a.output, a.cache_write, a.cache_read)
        == (b.input, b.output, b.cache_write, b.cache_read)
        && (a.cost - b.cost).abs() < 1e-9
}

fn daemon(mock: &Mock, clis: &Clis) -> TestDaemon {
    // Agents run as the `corral` user when the daemon is root: it must reach node and the CLIs.
    TestDaemon::start_with(&format!(
        "[agents.claude]\nbinary = \"{}\"\napi_key = \"sk-ant-test-0123456789abcdefghijkl\"\nbase_url = \"{url}\"\n\
         env = {{ CLAUDE_CODE_MAX_RETRIES = \"0\" }}\n\
         [agents.codex]\nbinary = \"{}\"\napi_key = \"sk-openai-test-0123456789\"\nbase_url = \"{url}/v1\"\n\
         [agents]\nstart_timeout_s = 90.0\n[instance]\nstart_timeout_s = 90.0\n",
        clis.claude.display(),
        clis.codex.display(),
        url = mock.url,
    ))
}

fn send_wait(d: &TestDaemon, name: &str, text: &str) -> Value {
    let (status, v) = d.post(
        &format!("/api/v1/instances/{name}/send"),
        &json!({"text": text, "wait": true, "timeout_s": TURN.as_secs()}),
    );
    assert_eq!(status, 200, "{v}");
    v["outcome"].clone()
}

/// Waits until corral's figures for `name` equal the mock's ground truth.
fn usage_matches(d: &TestDaemon, name: &str, want: Truth) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "corral's usage to match the mock's",
            Duration::from_secs(20),
            || {
                let v = d.instance(name);
                last = v.clone();
                same(&seen(&v), &want).then_some(v)
            },
        )
    }));
    found.unwrap_or_else(|_| {
        panic!(
            "usage of {name}: corral {:?} != mock {want:?}; {last}",
            seen(&last)
        )
    })
}

/// corral's `get_usage` MCP tool for one instance.
fn mcp_usage(d: &TestDaemon, name: &str) -> Value {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.url));
        let c = ().serve(StreamableHttpClientTransport::from_config(cfg)).await.unwrap();
        let args = json!({"instance": name}).as_object().cloned().unwrap();
        let r = c
            .call_tool(CallToolRequestParams::new("get_usage".to_string()).with_arguments(args))
            .await
            .unwrap();
        let _ = c.cancel().await;
        r.structured_content.unwrap()
    })
}

/// Processes that carry the instance's id in their environment (every process it started,
/// whatever its process group), zombies excluded.
fn processes_of(id: &str) -> Vec<i32> {
    let needle = format!("CORRAL_INSTANCE_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| common::alive(*p))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Claude's own `total_cost_usd`, summed over the `result` lines of a headless instance.
fn claude_own_cost(d: &TestDaemon, id: &str) -> f64 {
    let turns = d.state_dir().join(format!("agents/{id}/turns-{id}.jsonl"));
    std::fs::read_to_string(&turns)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "result")
        .filter_map(|v| v["total_cost_usd"].as_f64())
        .sum()
}

/// spawn → ready → two messages (their replies and usage, the conversation continued) →
/// an interrupted turn (nothing counted, the agent still answers) → terminate (no process
/// left).
fn scenario(kind: &str, mode: &str, backend: &str) {
    let Some(clis) = clis(&format!("{kind}_{mode}_{backend}")) else {
        return;
    };
    let api = if kind == "claude" {
        "anthropic"
    } else {
        "openai"
    };
    let mock = Mock::start();
    let d = daemon(&mock, &clis);
    let name = format!("{kind}-{mode}");
    let usage = |i: u64, o: u64, w: u64, r: u64| {
        if api == "anthropic" {
            json!({"input_tokens": i, "output_tokens": o, "cache_creation_input_tokens": w, "cache_read_input_tokens": r})
        } else {
            json!({"input_tokens": i + w + r, "cached_tokens": r, "cache_write_tokens": w, "output_tokens": o, "reasoning_tokens": o / 3})
        }
    };
    mock.script(
        api,
        json!([
            {"reply": format!("First reply from the mock to {name}."), "usage": usage(1655, 24, 17454, 0)},
            {"reply": "Second reply: {prompt}", "usage": usage(1957, 25, 312, 20507)},
        ]),
    );
    let v = d.spawn(
        json!({"name": name, "kind": kind, "mode": mode, "backend": backend, "wait_ready": true}),
    );
    assert_eq!(v["state"], "ready", "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    let out = send_wait(&d, &name, "say hi");
    assert_eq!(out["done"], true, "{out}");
    assert_eq!(
        out["reply"].as_str().map(str::trim),
        Some(format!("First reply from the mock to {name}.").as_str()),
        "{out}"
    );
    let want = truth(api, &mock.completed(api));
    assert_eq!(mock.completed(api).len(), 1, "{:?}", mock.requests());
    usage_matches(&d, &name, want);
    // The CLI reached corral's /mcp with its own token (the daemon records the session and
    // the client); Claude offers corral's tools to the model up front, Codex 0.169 defers MCP
    // tools behind its `tool_search` tool.
    let sessions: Vec<Value> = d
        .events(&id)
        .into_iter()
        .filter(|e| e["kind"] == "mcp_session")
        .collect();
    let client = if kind == "claude" {
        "claude-code"
    } else {
        "codex-mcp-client"
    };
    assert!(
        sessions.iter().any(|e| e["data"]["client"] == client),
        "{name}: no MCP session from {client} with the instance's token: {sessions:?}"
    );
    let offered = mock.completed(api)[0]["tool_names"].clone();
    let offers = |want: &dyn Fn(&str) -> bool| {
        offered
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n.as_str().is_some_and(want)))
    };
    if kind == "claude" {
        assert!(
            offers(&|n| n == "mcp__corral__spawn_agent"),
            "{name}: corral's MCP tools are not offered to the model: {offered}"
        );
    } else {
        assert!(offers(&|n| n == "tool_search"), "{name}: {offered}");
    }

    let out = send_wait(&d, &name, "and again");
    assert_eq!(
        out["reply"].as_str().map(str::trim),
        Some("Second reply: and again"),
        "{out}"
    );
    let done = mock.completed(api);
    assert_eq!(done.len(), 2, "{:?}", mock.requests());
    let history = done[1]["history"].to_string();
    assert!(
        history.contains("First reply from the mock"),
        "the second request continues the conversation: {}",
        done[1]
    );
    let want = truth(api, &done);
    let v = usage_matches(&d, &name, want);
    let m = mcp_usage(&d, &name);
    assert_eq!(m["tokens"], v["tokens"], "get_usage: {m}");
    assert!(
        (m["cost_usd"].as_f64().unwrap() - want.cost).abs() < 1e-9,
        "{m}"
    );
    if kind == "claude" && mode == "headless" {
        let own = claude_own_cost(&d, &id);
        assert!(
            (own - want.cost).abs() < 1e-9,
            "Claude's own total_cost_usd {own} != the price table's {}",
            want.cost
        );
    }

    // interrupt: a turn whose answer never comes; the agent hangs up and stays
    mock.script(api, json!([{"reply": "too late", "delay_ms": 120000}]));
    let (status, r) = d.post(
        &format!("/api/v1/instances/{name}/send"),
        &json!({"text": "take your time"}),
    );
    assert_eq!(status, 200, "{r}");
    let turn = r["turn"].as_u64().unwrap();
    wait_until("the slow request to reach the mock", TURN, || {
        (mock.holding() == 1).then_some(())
    });
    let (status, r) = d.post(&format!("/api/v1/instances/{name}/interrupt"), &json!({}));
    assert_eq!(status, 200, "{r}");
    wait_until("the CLI to hang up", TURN, || {
        (mock.holding() == 0).then_some(())
    });
    let (status, t) = d.get(&format!(
        "/api/v1/instances/{name}/turns/{turn}?timeout_s=30"
    ));
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["done"], true, "the interrupted turn ends: {t}");
    assert!(!t["error"].is_null(), "it says it was interrupted: {t}");
    d.wait_state(&name, "ready", Duration::from_secs(30));
    usage_matches(&d, &name, want);
    mock.script(
        api,
        json!([{"reply": "Still here.", "usage": usage(100, 5, 0, 0)}]),
    );
    let out = send_wait(&d, &name, "are you there?");
    assert_eq!(
        out["reply"].as_str().map(str::trim),
        Some("Still here."),
        "{out}"
    );
    let done = mock.completed(api);
    assert_eq!(
        done.last().unwrap()["prompt"],
        "are you there?",
        "the interrupted prompt is not left in the input box: {:?}",
        mock.requests()
    );
    usage_matches(&d, &name, truth(api, &done));

    // a message sent right after the interrupt, while the CLI is still winding down
    mock.script(
        api,
        json!([{"reply": "never", "delay_ms": 120000}, {"reply": "Right here.", "usage": usage(200, 6, 0, 0)}]),
    );
    let (status, r) = d.post(
        &format!("/api/v1/instances/{name}/send"),
        &json!({"text": "slow again"}),
    );
    assert_eq!(status, 200, "{r}");
    wait_until("the second slow request", TURN, || {
        (mock.holding() == 1).then_some(())
    });
    let (status, r) = d.post(&format!("/api/v1/instances/{name}/interrupt"), &json!({}));
    assert_eq!(status, 200, "{r}");
    let out = send_wait(&d, &name, "right away");
    assert_eq!(
        out["reply"].as_str().map(str::trim),
        Some("Right here."),
        "{out}"
    );
    let done = mock.completed(api);
    assert_eq!(
        done.last().unwrap()["prompt"],
        "right away",
        "{:?}",
        mock.requests()
    );
    usage_matches(&d, &name, truth(api, &done));
    let side: Vec<Value> = mock
        .requests()
        .into_iter()
        .filter(|r| r["role"] == "side")
        .collect();
    println!(
        "{name}: {} conversation requests, {} side requests (not in the agent's records): {:?}",
        done.len(),
        side.len(),
        side.iter().map(|r| r["usage"].clone()).collect::<Vec<_>>()
    );

    // terminate: nothing of it is left
    assert!(
        !processes_of(&id).is_empty(),
        "the instance's processes are visible"
    );
    let (status, v) = d.post(
        &format!("/api/v1/instances/{name}/stop"),
        &json!({"wait": true}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(!v["state"].as_str().unwrap().is_empty());
    wait_until(
        "no process of the instance",
        Duration::from_secs(15),
        || processes_of(&id).is_empty().then_some(()),
    );
    let unexpected: Vec<Value> = mock
        .requests()
        .into_iter()
        .filter(|r| r["role"] == "other")
        .collect();
    assert!(
        unexpected.is_empty(),
        "requests the mock does not serve: {unexpected:?}"
    );
}

#[test]
fn claude_interactive_tmux() {
    scenario("claude", "interactive", "tmux");
}

#[test]
fn claude_headless() {
    scenario("claude", "headless", "tmux");
}

#[test]
fn codex_interactive_tmux() {
    scenario("codex", "interactive", "tmux");
}

#[test]
fn codex_headless() {
    scenario("codex", "headless", "tmux");
}

#[test]
fn claude_interactive_pty() {
    scenario("claude", "interactive", "pty");
}

#[test]
fn codex_interactive_pty() {
    scenario("codex", "interactive", "pty");
}
