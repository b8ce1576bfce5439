//! Hierarchical fleets: agents spawn and steer their own sub-agents through corral's MCP
//! server with their own per-instance tokens. The fake CLIs call MCP tools the way the real
//! ones do (a prompt `mcp: TOOL {args}` makes the fake call TOOL on the server registered in
//! its config: `--mcp-config` for claude, `[mcp_servers]` + `bearer_token_env_var` for codex).
// Test helpers outside #[test] fns unwrap; the test process may spawn directly.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
#![allow(deprecated)] // MCP logging is part of protocol versions 2025-06-18 and 2025-11-25

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{group_members, wait_until, TestDaemon};
use rmcp::model::{CallToolRequestParams, LoggingMessageNotificationParam};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};

const OPERATOR: &str = "operator-token-0123456789";
const SECS20: Duration = Duration::from_secs(20);
/// Claude usage small enough that only the spender below moves budgets.
const CHEAP: &str = "10,1,0,0";
/// One fake Claude call at its default usage on claude-opus-4-8 (see tests/agents.rs).
const CLAUDE_CALL: f64 = 0.1179625;

fn config(extra: &str) -> String {
    config_on(0, extra)
}

/// With a fixed port: agents keep the /mcp URL they were given across a daemon restart.
fn config_on(port: u16, extra: &str) -> String {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bin");
    format!(
        "[server]\nport = {port}\ntoken = \"{OPERATOR}\"\n\
         [agents.claude]\nbinary = \"{fx}/claude\"\napi_key = \"sk-ant-test-0123456789abcdefghijkl\"\n\
         [agents.codex]\nbinary = \"{fx}/codex\"\napi_key = \"sk-openai-test-0123456789\"\n\
         [agents]\nenter_delay_ms = 50\nstart_timeout_s = 20.0\n{extra}"
    )
}

/// Sends a message as the operator and returns the agent's reply.
fn ask(d: &TestDaemon, name: &str, text: &str) -> String {
    let (status, v) = d.post(
        &format!("/api/v1/instances/{name}/send"),
        &json!({"text": text, "wait": true, "timeout_s": 60}),
    );
    assert_eq!(status, 200, "send to {name}: {v}");
    assert_eq!(v["outcome"]["done"], true, "{name} did not answer: {v}");
    v["outcome"]["reply"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An MCP call made by agent `name` (the fake calls it with its own token): Ok(result) for
/// `MCP OK`, Err(message) for `MCP ERROR`.
fn agent_call(d: &TestDaemon, name: &str, tool: &str, args: Value) -> Result<Value, String> {
    let reply = ask(d, name, &format!("mcp: {tool} {args}"));
    if let Some(ok) = reply.strip_prefix("MCP OK ") {
        return Ok(serde_json::from_str(ok).unwrap_or(Value::String(ok.to_string())));
    }
    match reply.strip_prefix("MCP ERROR ") {
        Some(e) => Err(e.to_string()),
        None => panic!("{name}: not an MCP reply: {reply:?}"),
    }
}

fn refused(r: Result<Value, String>, needle: &str) -> String {
    match r {
        Ok(v) => panic!("expected a refusal containing {needle:?}, got {v}"),
        Err(e) => {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
            e
        }
    }
}

/// A Claude instance's MCP token, from the private config corral wrote for it.
fn claude_token(d: &TestDaemon, id: &str) -> String {
    let f = d.state_dir().join(format!("agents/{id}/mcp-{id}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let h = v["mcpServers"]["corral"]["headers"]["Authorization"]
        .as_str()
        .unwrap();
    h.strip_prefix("Bearer ").unwrap().to_string()
}

fn env_var(pid: i64, var: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .find_map(|e| e.strip_prefix(&format!("{var}=")).map(str::to_string))
}

/// An MCP client that records log notifications.
#[derive(Clone, Default)]
struct Listener {
    logs: Arc<Mutex<Vec<Value>>>,
}

impl ClientHandler for Listener {
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _ctx: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.logs.lock().unwrap().push(params.data);
    }
}

async fn connect(d: &TestDaemon, token: &str) -> RunningService<RoleClient, Listener> {
    let cfg = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.url))
        .auth_header(token.to_string());
    Listener::default()
        .serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .unwrap()
}

async fn tool(c: &RunningService<RoleClient, Listener>, name: &str, args: Value) -> Value {
    let r = c
        .call_tool(
            CallToolRequestParams::new(name.to_string())
                .with_arguments(args.as_object().cloned().unwrap_or_default()),
        )
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{name} {args}: {:?}", r.content);
    r.structured_content.unwrap()
}

fn http_status(d: &TestDaemon, method: &str, path: &str, token: &str) -> u16 {
    let c = reqwest::blocking::Client::new();
    let url = format!("{}{path}", d.url);
    let req = match method {
        "GET" => c.get(url),
        _ => c
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}}),
            ),
    };
    req.bearer_auth(token).send().unwrap().status().as_u16()
}

#[test]
fn a_lead_agent_runs_a_scoped_tree_with_rolled_up_budgets() {
    let d = TestDaemon::start_with(&config("[limits]\nmax_depth = 2\n"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lead = d.spawn(
        json!({"name": "lead", "kind": "claude", "max_cost_usd": 0.2,
        "max_children": 2, "env": {"FAKE_USAGE": CHEAP}, "wait_ready": true}),
    );
    let lead_id = lead["id"].as_str().unwrap().to_string();
    assert_eq!(lead["tree"]["depth"], 0);
    assert_eq!(lead["tree"]["max_depth"], 2);

    // A child never gets more budget than its parent has left.
    refused(
        agent_call(
            &d,
            "lead",
            "spawn_agent",
            json!({"name": "w1", "kind": "claude", "max_cost_usd": 5}),
        ),
        "has left of its budget",
    );
    // The lead spawns two workers; they are its children.
    let w1 = agent_call(
        &d,
        "lead",
        "spawn_agent",
        json!({"name": "w1", "kind": "claude", "wait_ready": true, "env": {"FAKE_USAGE": CHEAP}}),
    )
    .unwrap();
    assert_eq!(w1["parent_id"], lead_id.as_str(), "{w1}");
    assert_eq!(w1["tree"]["depth"], 1);
    let w2 = agent_call(&d, "lead", "spawn_agent",
        json!({"name": "w2", "kind": "codex", "wait_ready": true, "env": {"FAKE_USAGE": "10,0,0,1,0"}}))
    .unwrap();
    assert_eq!(w2["parent_id"], lead_id.as_str(), "{w2}");
    refused(
        agent_call(
            &d,
            "lead",
            "spawn_agent",
            json!({"name": "w3", "kind": "claude"}),
        ),
        "max_children",
    );
    // w1 spawns a grandchild when the lead tells it to (a message relayed over MCP).
    let inner = "mcp: spawn_agent {\"name\":\"g1\",\"kind\":\"claude\",\"wait_ready\":true,\"env\":{\"FAKE_USAGE\":\"10,1,0,0\"}}";
    let relayed = agent_call(
        &d,
        "lead",
        "send_message",
        json!({"instance": "w1", "text": inner, "wait": true, "timeout_s": 40}),
    )
    .unwrap();
    assert!(
        relayed["reply"].as_str().unwrap().starts_with("MCP OK "),
        "{relayed}"
    );
    let g1 = d.instance("g1");
    assert_eq!(g1["parent_id"], w1["id"], "{g1}");
    assert_eq!(g1["tree"]["depth"], 2);
    // max_depth = 2: the grandchild may not spawn.
    refused(
        agent_call(
            &d,
            "g1",
            "spawn_agent",
            json!({"name": "gg", "kind": "claude"}),
        ),
        "max_depth",
    );

    // Scoping, both ways.
    refused(
        agent_call(&d, "w2", "get_instance", json!({"instance": "w1"})),
        "in your subtree",
    );
    refused(
        agent_call(&d, "g1", "terminate", json!({"instance": "lead"})),
        "in your subtree",
    );
    refused(
        agent_call(
            &d,
            "w1",
            "send_message",
            json!({"instance": "w2", "text": "hi"}),
        ),
        "in your subtree",
    );
    refused(
        agent_call(&d, "w1", "get_output", json!({"instance": "lead"})),
        "in your subtree",
    );
    assert_eq!(
        agent_call(&d, "w2", "list_instances", json!({})).unwrap()["count"],
        0
    );
    let mine = agent_call(&d, "w1", "list_instances", json!({})).unwrap();
    assert_eq!(mine["count"], 1, "{mine}");
    assert_eq!(mine["instances"][0]["name"], "g1");
    assert_eq!(
        agent_call(&d, "w1", "get_instance", json!({"instance": "g1"})).unwrap()["name"],
        "g1"
    );
    let tree = agent_call(&d, "lead", "list_instances", json!({"tree": true})).unwrap();
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&tree["tree"]), ["w1", "w2"], "{tree}");
    let w1_node = tree["tree"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "w1")
        .unwrap();
    assert_eq!(names(&w1_node["children"]), ["g1"]);
    let under_w1 = agent_call(&d, "lead", "list_instances", json!({"parent": "w1"})).unwrap();
    assert_eq!(names(&under_w1["instances"]), ["g1"], "{under_w1}");
    refused(
        agent_call(&d, "w2", "list_instances", json!({"parent": "w1"})),
        "in your subtree",
    );
    // The operator sees everything; the list for the operator has all four.
    assert_eq!(d.get("/api/v1/instances").1.as_array().unwrap().len(), 4);

    // Tokens: per instance, valid at /mcp only, kept out of argv.
    let w1_id = w1["id"].as_str().unwrap();
    let w1_token = claude_token(&d, w1_id);
    let tokens = vec![
        claude_token(&d, &lead_id),
        w1_token.clone(),
        claude_token(&d, g1["id"].as_str().unwrap()),
        env_var(
            d.instance("w2")["pid"].as_i64().unwrap(),
            "CORRAL_MCP_TOKEN",
        )
        .expect("codex token in its environment"),
    ];
    assert_eq!(http_status(&d, "GET", "/api/v1/instances", &w1_token), 403);
    assert_eq!(http_status(&d, "GET", "/metrics", &w1_token), 403);
    assert_eq!(http_status(&d, "POST", "/mcp", &w1_token), 200);
    assert_eq!(
        http_status(
            &d,
            "POST",
            "/mcp",
            "crl_forged0000000000000000000000000000000000"
        ),
        401
    );

    // A child reports to its parent: inbox + a notification on the parent's open session.
    let parent_session = rt.block_on(connect(&d, &w1_token));
    let sent = agent_call(
        &d,
        "g1",
        "reply_to_parent",
        json!({"text": "g1 finished: 42"}),
    )
    .unwrap();
    assert_eq!(sent["delivered_to"], "parent");
    let logs = parent_session.service().logs.clone();
    wait_until("the inbox notification on w1's session", SECS20, || {
        logs.lock()
            .unwrap()
            .iter()
            .find(|l| l["event"] == "inbox")
            .cloned()
    });
    let inbox = agent_call(&d, "w1", "read_inbox", json!({})).unwrap();
    assert_eq!(inbox["count"], 1, "{inbox}");
    assert_eq!(inbox["messages"][0]["text"], "g1 finished: 42");
    assert_eq!(inbox["messages"][0]["from_name"], "g1");
    assert_eq!(
        agent_call(&d, "w1", "read_inbox", json!({})).unwrap()["count"],
        0,
        "read once"
    );
    refused(
        agent_call(&d, "w1", "read_inbox", json!({"instance": "lead"})),
        "own inbox",
    );

    // Spend rolls up: a second grandchild spends at full price against the lead's $0.20 cap.
    let g1_id = g1["id"].as_str().unwrap().to_string();
    let g2 = agent_call(
        &d,
        "w1",
        "spawn_agent",
        json!({"name": "g2", "kind": "claude", "wait_ready": true}),
    )
    .unwrap();
    let g2_id = g2["id"].as_str().unwrap().to_string();
    let usage = |name: &str| ask(&d, name, "mcp: get_usage {}");
    assert!(usage("lead").starts_with("MCP OK "));
    let first = ask(&d, "g2", "work");
    if !first.contains("Hello from the fake Claude") {
        let evs = d.get("/api/v1/events?instance=g2").1;
        panic!(
            "g2's reply: {first:?}; output: {}; events: {evs}",
            d.output("g2")
        );
    }
    assert_eq!(
        d.instance("lead")["state"],
        "ready",
        "59% of the cap: not yet"
    );
    let _ = d.post(
        "/api/v1/instances/g2/send",
        &json!({"text": "more work", "wait": true, "timeout_s": 30}),
    );
    for name in ["lead", "w1", "w2", "g1", "g2"] {
        d.wait_state(name, "paused", SECS20);
    }
    let all: Vec<Value> = d.get("/api/v1/instances").1.as_array().unwrap().clone();
    let sum: f64 = all.iter().map(|i| i["cost_usd"].as_f64().unwrap()).sum();
    let lead_now = d.instance("lead");
    let rolled = lead_now["tree"]["subtree_cost_usd"].as_f64().unwrap();
    assert!(
        (rolled - sum).abs() < 1e-9,
        "lead's subtree spend {rolled} = sum of the tree's {sum}"
    );
    assert!((d.instance("g2")["cost_usd"].as_f64().unwrap() - 2.0 * CLAUDE_CALL).abs() < 1e-9);
    assert!(rolled >= 0.2, "{rolled}");
    let (status, v) = d.post("/api/v1/instances/w2/send", &json!({"text": "more"}));
    assert_eq!(status, 409, "a paused subtree takes no messages: {v}");
    let warned = d.get(&format!("/api/v1/events?instance={lead_id}")).1;
    assert!(
        warned
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "mcp_session" && e["data"]["client"] == "fake-cli"),
        "the lead's MCP sessions are audited: {warned}"
    );
    assert!(
        warned
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "cap_warning"),
        "{warned}"
    );

    // The operator raises the lead's budget: the whole subtree resumes.
    let operator = rt.block_on(connect(&d, OPERATOR));
    rt.block_on(tool(
        &operator,
        "set_budget",
        json!({"instance": "lead", "max_cost_usd": 5.0}),
    ));
    for name in ["lead", "w1", "w2", "g1", "g2"] {
        d.wait_state(name, "ready", SECS20);
    }
    let sub = rt.block_on(tool(&operator, "get_usage", json!({"instance": "w1"})));
    let w1_sub = sub["subtree"]["cost_usd"].as_f64().unwrap();
    let expect: f64 = ["w1", "g1", "g2"]
        .iter()
        .map(|n| d.instance(n)["cost_usd"].as_f64().unwrap())
        .sum();
    assert!((w1_sub - expect).abs() < 1e-9, "{sub}");
    // A parent may give a child budget only out of what it has left, and never itself.
    refused(
        agent_call(
            &d,
            "lead",
            "set_budget",
            json!({"instance": "w1", "max_cost_usd": 100}),
        ),
        "left of its budget",
    );
    let w1_capped = agent_call(
        &d,
        "lead",
        "set_budget",
        json!({"instance": "w1", "max_cost_usd": 1.0}),
    )
    .unwrap();
    assert_eq!(w1_capped["max_cost_usd"], 1.0);
    refused(
        agent_call(
            &d,
            "lead",
            "set_budget",
            json!({"instance": "lead", "max_cost_usd": 100}),
        ),
        "in your subtree",
    );
    // An agent's fleet view is its subtree.
    let lead_usage: Value =
        serde_json::from_str(usage("lead").strip_prefix("MCP OK ").unwrap()).unwrap();
    assert_eq!(lead_usage["subtree"]["instances"], 5, "{lead_usage}");

    // w1's session heard about its subtree only.
    for l in logs.lock().unwrap().iter() {
        let about = l["instance_id"].as_str().or(l["message"]["to_id"].as_str());
        assert!(
            [Some(w1_id), Some(g1_id.as_str()), Some(g2_id.as_str())].contains(&about),
            "w1's session got {l}"
        );
    }

    // No token anywhere it should not be: screens, events, audit, instance logs, daemon log.
    let mut haystack = d.log_text();
    for name in ["lead", "w1", "w2", "g1", "g2"] {
        let out = d.tmux(&["capture-pane", "-p", "-S", "-", "-t", &format!("={name}:")]);
        haystack.push_str(&String::from_utf8_lossy(&out.stdout));
        haystack.push_str(&d.get_text(&format!("/api/v1/instances/{name}")));
    }
    haystack.push_str(&d.get_text("/api/v1/events?limit=10000"));
    for dir in ["logs/audit", "logs/instances"] {
        for e in std::fs::read_dir(d.state_dir().join(dir))
            .unwrap()
            .flatten()
        {
            haystack.push_str(&String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()));
        }
    }
    for t in &tokens {
        assert!(t.starts_with("crl_") && t.len() > 40);
        assert!(!haystack.contains(t.as_str()), "a token leaked");
    }

    // Cascade: children first, nothing of the subtree left, tokens revoked.
    let pids: Vec<i32> = ["lead", "w1", "w2", "g1", "g2"]
        .iter()
        .map(|n| d.instance(n)["pid"].as_i64().unwrap() as i32)
        .collect();
    let done = rt.block_on(tool(
        &operator,
        "terminate",
        json!({"instance": "lead", "cascade": true, "grace_s": 3}),
    ));
    assert_eq!(done["cascade"].as_array().unwrap().len(), 4, "{done}");
    let ended = |n: &str| {
        let v = d.instance(n);
        assert_eq!(v["state"], "killed", "{v}");
        v["ended_at"].as_i64().unwrap()
    };
    let (l, a, b, g, h) = (
        ended("lead"),
        ended("w1"),
        ended("w2"),
        ended("g1"),
        ended("g2"),
    );
    assert!(
        g.max(h) <= a && a <= l && b <= l,
        "children end first: g1 {g} g2 {h} w1 {a} w2 {b} lead {l}"
    );
    for pid in pids {
        assert!(group_members(pid).is_empty(), "process group {pid} is gone");
    }
    assert_eq!(
        http_status(&d, "POST", "/mcp", &w1_token),
        401,
        "revoked with its instance"
    );
    rt.block_on(async {
        let _ = parent_session.cancel().await;
        let _ = operator.cancel().await;
    });
}

#[test]
fn end_policies_cascade_or_orphan_the_children() {
    let d = TestDaemon::start_with(&config(""));
    let sleep = |name: &str, parent: Option<&str>, policy: Option<&str>| {
        let mut body = json!({"name": name, "argv": ["sleep", "600"], "wait_ready": true});
        if let Some(p) = parent {
            body["parent_id"] = json!(p);
        }
        if let Some(p) = policy {
            body["end_policy"] = json!(p);
        }
        d.spawn(body)
    };
    // cascade (the default): the children end with reason parent_ended
    sleep("p1", None, None);
    let c1 = sleep("c1", Some("p1"), None);
    let gc1 = sleep("gc1", Some("c1"), None);
    assert_eq!(gc1["tree"]["depth"], 2);
    let (status, _) = d.post("/api/v1/instances/p1/stop", &json!({"grace_s": 1}));
    assert_eq!(status, 200);
    for n in ["c1", "gc1"] {
        let v = d.wait_state(n, "killed", SECS20);
        assert_eq!(v["reason"], "parent_ended", "{v}");
    }
    assert!(group_members(c1["pid"].as_i64().unwrap() as i32).is_empty());

    // orphan: the child keeps running and becomes the operator's
    sleep("p2", None, Some("orphan"));
    sleep("c2", Some("p2"), None);
    let (status, _) = d.post("/api/v1/instances/p2/stop", &json!({"grace_s": 1}));
    assert_eq!(status, 200);
    let c2 = wait_until("c2 orphaned", SECS20, || {
        let v = d.instance("c2");
        v["parent_id"].is_null().then_some(v)
    });
    assert_eq!(c2["state"], "ready", "{c2}");
    let evs = d.get("/api/v1/events?instance=c2").1;
    assert!(
        evs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "orphaned"),
        "{evs}"
    );

    // the CLI: --parent, kill --cascade
    d.ok(&["spawn", "--name", "p3", "--", "sleep", "600"]);
    d.ok(&[
        "spawn", "--name", "c3", "--parent", "p3", "--", "sleep", "600",
    ]);
    assert_eq!(d.instance("c3")["parent_id"], d.instance("p3")["id"]);
    let out = d.ok(&["kill", "--cascade", "--grace", "1", "p3"]);
    assert!(out.contains("(+1 descendant(s) stopped)"), "{out}");
    assert_eq!(d.instance("c3")["reason"], "requested");

    // a parent must be live; limits are checked against the config
    let (status, v) = d.post(
        "/api/v1/instances",
        &json!({"argv": ["true"], "parent_id": "p1"}),
    );
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not running"), "{v}");
    let (status, v) = d.post(
        "/api/v1/instances",
        &json!({"argv": ["true"], "max_children": 99}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("limits.max_children"),
        "{v}"
    );
}

#[test]
fn without_an_operator_token_agents_still_need_their_own() {
    if common::skip(
        "without_an_operator_token_agents_still_need_their_own",
        (!common::is_root())
            .then(|| "agents run as the daemon's own user unless it is root".into()),
    ) {
        return;
    }
    // No server.token: loopback is the operator's, but not for the agents' UIDs.
    let d = TestDaemon::start();
    let script = r#"
import json, os, urllib.error, urllib.request
mcp = os.environ["CORRAL_MCP_URL"]
api = mcp[: -len("/mcp")] + "/api/v1/instances"
init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).encode()
def status(url, token=None, body=None):
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    req.add_header("Accept", "application/json, text/event-stream")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
t = os.environ["CORRAL_MCP_TOKEN"]
print("STATUS", status(api), status(mcp, None, init), status(mcp, t, init), status(api, t), "END", flush=True)
__import__("time").sleep(600)
"#;
    d.spawn(json!({"name": "probe", "argv": ["python3", "-c", script]}));
    let out = d.wait_output("probe", " END");
    assert!(
        out.contains("STATUS 401 401 200 403 END"),
        "tokenless: API and MCP refused; own token: MCP only. Got: {out}"
    );
    // the operator (the daemon's own UID here) is unaffected
    assert_eq!(d.get("/api/v1/instances").0, 200);
}

#[test]
fn an_adopted_tree_keeps_its_tokens_and_its_shape() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut d = TestDaemon::start_with(&config_on(port, "[shutdown]\nagents = \"detach\"\n"));
    d.spawn(
        json!({"name": "lead", "kind": "claude", "env": {"FAKE_USAGE": CHEAP}, "wait_ready": true}),
    );
    agent_call(
        &d,
        "lead",
        "spawn_agent",
        json!({"name": "w", "kind": "claude", "wait_ready": true, "env": {"FAKE_USAGE": CHEAP}}),
    )
    .unwrap();
    assert!(d.stop().success());
    d.launch();
    for n in ["lead", "w"] {
        assert_eq!(d.instance(n)["state"], "ready", "{n} adopted");
    }
    // the same tokens work, with the same scope
    let mine = agent_call(&d, "lead", "list_instances", json!({})).unwrap();
    assert_eq!(mine["count"], 1, "{mine}");
    assert_eq!(mine["instances"][0]["name"], "w");
    refused(
        agent_call(&d, "w", "get_instance", json!({"instance": "lead"})),
        "in your subtree",
    );
    // and the end policy still holds
    let (status, _) = d.post("/api/v1/instances/lead/stop", &json!({"grace_s": 1}));
    assert_eq!(status, 200);
    let w = d.wait_state("w", "killed", SECS20);
    assert_eq!(w["reason"], "parent_ended", "{w}");
}
