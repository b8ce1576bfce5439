//! `/mcp` driven by a real MCP client (rmcp's Streamable HTTP client) against the real daemon.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{alive, TestDaemon};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, Request,
};
use rmcp::service::{PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};

const TOOLS: [&str; 16] = [
    "spawn_agent",
    "send_message",
    "wait_for_reply",
    "get_output",
    "get_instance",
    "list_instances",
    "interrupt",
    "terminate",
    "resume",
    "set_budget",
    "get_usage",
    "list_files",
    "read_file",
    "attach_command",
    "reply_to_parent",
    "read_inbox",
];

/// A client that records progress notifications.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

async fn connect(
    d: &TestDaemon,
    token: Option<&str>,
) -> anyhow::Result<RunningService<RoleClient, Recorder>> {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.url));
    if let Some(t) = token {
        cfg = cfg.auth_header(t.to_string());
    }
    let transport = StreamableHttpClientTransport::from_config(cfg);
    Ok(Recorder::default().serve(transport).await?)
}

async fn call(c: &RunningService<RoleClient, Recorder>, tool: &str, args: Value) -> CallToolResult {
    let args = args.as_object().cloned().unwrap_or_default();
    c.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"))
}

/// Calls a tool that must succeed; returns its structured content.
async fn ok(c: &RunningService<RoleClient, Recorder>, tool: &str, args: Value) -> Value {
    let r = call(c, tool, args.clone()).await;
    assert_ne!(
        r.is_error,
        Some(true),
        "{tool} {args} failed: {:?}",
        r.content
    );
    r.structured_content.expect("structured content")
}

/// Calls a tool that must fail as a tool error; returns the message.
async fn tool_err(c: &RunningService<RoleClient, Recorder>, tool: &str, args: Value) -> String {
    let r = call(c, tool, args.clone()).await;
    assert_eq!(
        r.is_error,
        Some(true),
        "{tool} {args} should be a tool error: {:?}",
        r.structured_content
    );
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tools_are_listed_with_described_schemas() {
    let d = TestDaemon::start();
    rt().block_on(async {
        let c = connect(&d, None).await.unwrap();
        let info = c.peer_info().expect("server info");
        assert_eq!(
            info.server_info.as_ref().map(|s| s.name.as_str()),
            Some("corral")
        );
        let tools = c.list_all_tools().await.unwrap();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort();
        let mut want = TOOLS.to_vec();
        want.sort();
        assert_eq!(names, want);
        for t in &tools {
            assert!(
                t.description.as_ref().is_some_and(|d| d.len() > 40),
                "{} needs a real description",
                t.name
            );
            let props = t
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .expect("properties");
            for (p, schema) in props {
                assert!(
                    schema
                        .get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()),
                    "{}.{p} lacks a description",
                    t.name
                );
            }
        }
        c.cancel().await.unwrap();
    });
}

#[test]
fn a_fleet_runs_through_mcp() {
    let d = TestDaemon::start();
    rt().block_on(async {
        let c = connect(&d, None).await.unwrap();
        let echo = "echo made > made.txt; while read l; do echo \"got:$l\"; done";
        let mut ids = Vec::new();
        for (name, backend) in [("t1", "tmux"), ("t2", "tmux"), ("p1", "pty")] {
            let v = ok(&c, "spawn_agent", json!({"name": name, "backend": backend, "argv": ["sh", "-c", echo]})).await;
            assert_eq!(v["name"], name);
            assert_eq!(v["state"], "starting", "spawn returns at once");
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        let list = ok(&c, "list_instances", json!({})).await;
        assert_eq!(list["count"], 3);
        for name in ["t1", "t2", "p1"] {
            let v = ok(&c, "send_message", json!({"instance": name, "text": format!("hi {name}"), "wait": true, "timeout_s": 20})).await;
            assert_eq!(v["done"], true, "{v}");
            assert!(v["reply"].as_str().unwrap().contains(&format!("got:hi {name}")), "{v}");
            let out = ok(&c, "get_output", json!({"instance": name, "lines": 5})).await;
            assert!(out["text"].as_str().unwrap().contains(&format!("got:hi {name}")), "{out}");
        }
        // send without wait, then wait_for_reply with the handle
        let v = ok(&c, "send_message", json!({"instance": "t1", "text": "later"})).await;
        let turn = v["turn"].as_u64().unwrap();
        assert_eq!(turn, 2);
        let r = ok(&c, "wait_for_reply", json!({"instance": "t1", "turn": turn, "timeout_s": 20})).await;
        assert!(r["reply"].as_str().unwrap().contains("got:later"), "{r}");
        // screen of a tmux instance
        let s = ok(&c, "get_output", json!({"instance": "t2", "source": "screen"})).await;
        assert!(s["text"].as_str().unwrap().contains("got:hi t2"), "{s}");
        // workspace files
        let files = ok(&c, "list_files", json!({"instance": "p1"})).await;
        assert!(files["entries"].as_array().unwrap().iter().any(|e| e["name"] == "made.txt"), "{files}");
        let f = ok(&c, "read_file", json!({"instance": "p1", "path": "made.txt"})).await;
        assert_eq!(f["text"], "made\n");
        // attach command for tmux
        let a = ok(&c, "attach_command", json!({"instance": "t1"})).await;
        assert!(a["command"].as_str().unwrap().contains("attach-session"), "{a}");
        let g = ok(&c, "get_instance", json!({"instance": ids[0]})).await;
        assert_eq!(g["name"], "t1");
        // interrupt keeps it running: Ctrl-C ends `read`, the shell loop's read fails... so use a
        // fresh instance that traps INT
        ok(&c, "spawn_agent", json!({"name": "intr", "argv": ["sh", "-c", "trap 'echo caught-int' INT; while :; do sleep 0.1; done"], "wait_ready": true})).await;
        ok(&c, "interrupt", json!({"instance": "intr"})).await;
        let mut caught = false;
        for _ in 0..100 {
            let out = ok(&c, "get_output", json!({"instance": "intr"})).await;
            if out["text"].as_str().unwrap().contains("caught-int") {
                caught = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(caught, "the trap saw SIGINT from Ctrl-C");
        assert_eq!(ok(&c, "get_instance", json!({"instance": "intr"})).await["state"], "ready");
        // usage is reported (commands use no tokens)
        let u = ok(&c, "get_usage", json!({})).await;
        assert_eq!(u["fleet"]["instances"], 4);
        // terminate everything: nothing left running
        let mut pids = Vec::new();
        for name in ["t1", "t2", "p1", "intr"] {
            pids.push(ok(&c, "get_instance", json!({"instance": name})).await["pid"].as_i64().unwrap() as i32);
            let v = ok(&c, "terminate", json!({"instance": name, "grace_s": 2})).await;
            assert_eq!(v["state"], "killed", "{v}");
            assert_eq!(v["reason"], "requested");
        }
        assert!(pids.iter().all(|p| !alive(*p)));
        assert_eq!(ok(&c, "list_instances", json!({})).await["count"], 0);
        assert_eq!(ok(&c, "list_instances", json!({"state": "killed"})).await["count"], 4);
        // resume starts the same command again, in the same workspace, under the same name
        let r = ok(&c, "resume", json!({"instance": "p1"})).await;
        assert_ne!(r["id"], ids[2]);
        assert_eq!(r["name"], "p1");
        let old_ws = ok(&c, "get_instance", json!({"instance": ids[2]})).await["workspace"].clone();
        assert_eq!(r["workspace"], old_ws);
        c.cancel().await.unwrap();
    });
    // metrics saw it
    let m = d
        .http
        .get(format!("{}/metrics", d.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("corral_spawns_total{kind=\"command\",backend=\"tmux\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("corral_mcp_requests_total{tool=\"spawn_agent\",outcome=\"ok\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("corral_exits_total{state=\"killed\",reason=\"requested\"} 4"),
        "{m}"
    );
    assert!(m.contains("corral_spawn_to_ready_seconds_count"), "{m}");
    // the status page lists them
    let page = d.http.get(&d.url).send().unwrap().text().unwrap();
    assert!(
        page.contains("<td>t1</td>") && page.contains("killed"),
        "{page}"
    );
}

#[test]
fn bad_arguments_are_tool_errors_with_precise_messages() {
    let d = TestDaemon::start();
    rt().block_on(async {
        let c = connect(&d, None).await.unwrap();
        ok(&c, "spawn_agent", json!({"name": "w", "argv": ["sh", "-c", "while read l; do echo $l; done"], "wait_ready": true})).await;
        let cases: Vec<(&str, Value, &str)> = vec![
            ("get_instance", json!({"instance": "ghost"}), "no instance with id or name \"ghost\""),
            ("spawn_agent", json!({"name": "Bad Name", "argv": ["true"]}), "invalid name"),
            ("spawn_agent", json!({"argv": []}), "argv must name a program"),
            ("spawn_agent", json!({"name": "w", "argv": ["true"]}), "already running"),
            ("spawn_agent", json!({"argv": "true"}), "invalid arguments for spawn_agent"),
            ("send_message", json!({"instance": "w"}), "missing field `text`"),
            ("send_message", json!({"instance": "w", "text": "x", "wait": true, "timeout_s": 60}), "timeout_s = 60"),
            ("send_message", json!({"instance": "w", "text": "x", "bogus": 1}), "unknown field `bogus`"),
            ("wait_for_reply", json!({"instance": "w", "turn": 99}), "no turn 99"),
            ("read_file", json!({"instance": "w", "path": "../../etc/passwd"}), "contains '..'"),
            ("read_file", json!({"instance": "w", "path": "/etc/passwd"}), "is absolute"),
            ("list_files", json!({"instance": "w", "path": "nope"}), "no such file"),
            ("get_output", json!({"instance": "w", "lines": 0}), "lines = 0"),
            ("get_output", json!({"instance": "w", "source": "tv"}), "source = \"tv\""),
            ("list_instances", json!({"state": "sleeping"}), "state = \"sleeping\""),
            ("terminate", json!({"instance": "w", "grace_s": -1}), "grace_s = -1"),
            ("set_budget", json!({"instance": "w", "max_cost_usd": 5}), "reports no token usage"),
            ("resume", json!({"instance": "w"}), "only an ended instance can be resumed"),
        ];
        for (tool, args, want) in cases {
            let msg = tool_err(&c, tool, args.clone()).await;
            assert!(msg.contains(want), "{tool} {args}: {msg:?} lacks {want:?}");
        }
        // the instance is untouched by all of that
        assert_eq!(ok(&c, "get_instance", json!({"instance": "w"})).await["state"], "ready");
        c.cancel().await.unwrap();
    });
}

#[test]
fn a_long_wait_sends_progress_and_a_short_one_times_out_cleanly() {
    let d = TestDaemon::start();
    rt().block_on(async {
        let c = connect(&d, None).await.unwrap();
        // prints nothing for 2.5 s while it works; a 4 s quiet window keeps the turn open
        ok(&c, "spawn_agent", json!({"name": "slow", "argv": ["sh", "-c", "while read l; do sleep 2.5; echo done-$l; done"], "turn_quiet_ms": 4000, "wait_ready": true})).await;
        let mut args = serde_json::Map::new();
        args.insert("instance".into(), json!("slow"));
        args.insert("text".into(), json!("a"));
        args.insert("wait".into(), json!(true));
        args.insert("timeout_s".into(), json!(20));
        let handle = c
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(CallToolRequestParams::new("send_message").with_arguments(args))),
                PeerRequestOptions::no_options(),
            )
            .await
            .unwrap();
        let resp = handle.await_response().await.unwrap();
        let v = serde_json::to_value(&resp).unwrap();
        assert!(v.to_string().contains("done-a"), "{v}");
        let progress = c.service().progress.lock().unwrap().clone();
        assert!(progress.len() >= 2, "expected progress while waiting ~2.5 s, got {progress:?}");
        assert!(progress.windows(2).all(|w| w[1].progress > w[0].progress), "progress increases");
        // a wait that times out says so and leaves the turn running
        let v = ok(&c, "send_message", json!({"instance": "slow", "text": "b", "wait": true, "timeout_s": 1})).await;
        assert_eq!(v["done"], false, "{v}");
        assert!(v["message"].as_str().unwrap().contains("wait_for_reply"), "{v}");
        let r = ok(&c, "wait_for_reply", json!({"instance": "slow", "timeout_s": 20})).await;
        assert_eq!(r["done"], true);
        assert!(r["reply"].as_str().unwrap().contains("done-b"), "{r}");
        c.cancel().await.unwrap();
    });
}

#[test]
fn mcp_requires_the_bearer_token_when_configured() {
    let d = TestDaemon::start_with("[server]\nport = 0\ntoken = \"mcp-token-0123456789\"\n");
    rt().block_on(async {
        assert!(
            connect(&d, None).await.is_err(),
            "no token: the handshake must fail"
        );
        assert!(connect(&d, Some("wrong-token-0123456789")).await.is_err());
        let c = connect(&d, Some("mcp-token-0123456789")).await.unwrap();
        assert_eq!(ok(&c, "list_instances", json!({})).await["count"], 0);
        c.cancel().await.unwrap();
    });
    let r = d
        .http
        .post(format!("{}/mcp", d.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Bearer"));
}

#[test]
fn streamable_http_protocol_rules_hold_on_the_wire() {
    let d = TestDaemon::start();
    let url = format!("{}/mcp", d.url);
    let post = |body: &str, extra: &[(&str, &str)]| {
        let mut r = d
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.body(body.to_string()).send().unwrap()
    };
    for version in ["2025-06-18", "2025-11-25"] {
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"raw","version":"1"}}}}}}"#
        );
        let r = post(&init, &[]);
        assert_eq!(r.status().as_u16(), 200);
        let sid = r
            .headers()
            .get("mcp-session-id")
            .expect("session id")
            .to_str()
            .unwrap()
            .to_string();
        let body = r.text().unwrap();
        assert!(
            body.contains(&format!("\"protocolVersion\":\"{version}\"")),
            "{body}"
        );
        let h = [
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", version),
        ];
        let r = post(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            &h,
        );
        assert_eq!(r.status().as_u16(), 202, "notifications are answered 202");
        let r = post(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#, &h);
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.text().unwrap().contains("spawn_agent"));
        let r = post(
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
            &[
                ("mcp-session-id", sid.as_str()),
                ("mcp-protocol-version", "1999-01-01"),
            ],
        );
        assert_eq!(r.status().as_u16(), 400, "unsupported MCP-Protocol-Version");
        // the GET stream for server-initiated messages
        let g = d
            .http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", version)
            .send()
            .unwrap();
        assert_eq!(g.status().as_u16(), 200);
        assert!(g.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        drop(g);
        let del = d
            .http
            .delete(&url)
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", version)
            .send()
            .unwrap();
        assert_eq!(del.status().as_u16(), 200, "DELETE ends the session");
        let r = post(r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#, &h);
        assert_eq!(r.status().as_u16(), 404, "a deleted session is gone");
    }
    let r = post(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#,
        &[
            ("mcp-session-id", "no-such-session"),
            ("mcp-protocol-version", "2025-06-18"),
        ],
    );
    assert_eq!(r.status().as_u16(), 404, "unknown session");
    assert_eq!(
        post("{}", &[("origin", "http://evil.example")])
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        post("{}", &[("host", "evil.example")]).status().as_u16(),
        403,
        "DNS rebinding guard"
    );
    assert_ne!(
        post("{}", &[("origin", "http://localhost:3000")])
            .status()
            .as_u16(),
        403,
        "a loopback origin is allowed"
    );
}
