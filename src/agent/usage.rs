//! Usage records as the agents report them, and parsers for each source (agent-clis.md):
//! Claude's `result` line (headless) and transcript `assistant` records (interactive); Codex's
//! rollout `token_usage_record` / `token_count` (both modes: `turn.completed` of a resumed
//! `codex exec` is the thread's running total).
//! Parsers are tolerant: unknown fields and line types are ignored.

use serde::Serialize;
use serde_json::Value;

use super::prices::Tokens;

/// One usage record. `key` deduplicates: the same record seen twice (a transcript line repeated
/// for each content block, a file re-read after a restart) counts once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    pub key: String,
    pub model: String,
    pub tokens: Tokens,
    /// The CLI's own USD figure, when it gives one (Claude's `total_cost_usd`).
    pub cost_usd: Option<f64>,
    /// `claude_result`, `claude_transcript`, `codex_turn`, `codex_rollout`.
    pub source: &'static str,
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Claude's usage object → tokens.
pub fn claude_tokens(usage: &Value) -> Tokens {
    Tokens {
        input: u(usage, "input_tokens"),
        output: u(usage, "output_tokens"),
        cache_write: u(usage, "cache_creation_input_tokens"),
        cache_read: u(usage, "cache_read_input_tokens"),
    }
}

/// Codex's usage object → tokens. `input_tokens` includes cached reads and cache writes, and
/// `output_tokens` includes `reasoning_output_tokens`, as in the Responses API's usage: the
/// real codex 0.169.0 copies the API's `input_tokens`, `cached_tokens`, `cache_write_tokens`,
/// `output_tokens` and `reasoning_tokens` unchanged, its `total_tokens` is input + output,
/// and its own "input" figure is `input_tokens - cached_input_tokens` (tests/realcli/README.md).
pub fn codex_tokens(usage: &Value) -> Tokens {
    let input = u(usage, "input_tokens");
    let cached = u(usage, "cached_input_tokens");
    let written = u(usage, "cache_write_input_tokens");
    Tokens {
        input: input.saturating_sub(cached).saturating_sub(written),
        output: u(usage, "output_tokens"),
        cache_write: written,
        cache_read: cached,
    }
}

/// What a line of an agent's output or files means to corral.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// The agent's session (Claude) or thread (Codex) id.
    Session(String),
    Usage(UsageRecord),
    /// Assistant text of the current turn (interactive transcripts).
    Text(String),
    /// A new user prompt began a turn (transcripts): earlier text belongs to the last turn.
    Prompt,
    /// The turn ended; `reply` when the source carries it, `error` when it failed.
    TurnEnd {
        reply: Option<String>,
        error: Option<String>,
    },
}

fn parse(line: &str) -> Option<Value> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str(line).ok()
}

/// `claude -p --output-format stream-json --verbose` lines. Per-block `assistant` lines are
/// ignored (they carry `message_start` usage); the `result` line is the cost line.
pub fn claude_stream(line: &str) -> Vec<Seen> {
    let Some(v) = parse(line) else { return vec![] };
    match (v["type"].as_str(), v["subtype"].as_str()) {
        (Some("system"), Some("init")) => v["session_id"]
            .as_str()
            .map(|s| vec![Seen::Session(s.into())])
            .unwrap_or_default(),
        (Some("result"), _) => {
            let session = v["session_id"].as_str().unwrap_or("").to_string();
            let model = v["modelUsage"]
                .as_object()
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_default();
            let mut out = vec![];
            if !session.is_empty() {
                out.push(Seen::Session(session.clone()));
            }
            out.push(Seen::Usage(UsageRecord {
                key: format!("result:{}", v["uuid"].as_str().unwrap_or(&session)),
                model,
                tokens: claude_tokens(&v["usage"]),
                cost_usd: v["total_cost_usd"].as_f64(),
                source: "claude_result",
            }));
            let text = v["result"].as_str().map(str::to_string);
            let failed = v["is_error"].as_bool() == Some(true);
            out.push(Seen::TurnEnd {
                reply: if failed { None } else { text.clone() },
                error: failed.then(|| {
                    text.unwrap_or_else(|| v["subtype"].as_str().unwrap_or("error").to_string())
                }),
            });
            out
        }
        _ => vec![],
    }
}

/// A Claude transcript line (`<config>/projects/<esc>/<session>.jsonl`, subagents included).
pub fn claude_transcript(line: &str) -> Vec<Seen> {
    let Some(v) = parse(line) else { return vec![] };
    match v["type"].as_str() {
        Some("assistant") => {
            let msg = &v["message"];
            let model = msg["model"].as_str().unwrap_or("");
            let mut out = vec![];
            if v["isApiErrorMessage"].as_bool() == Some(true) {
                let text = content_text(&msg["content"]);
                return vec![Seen::TurnEnd {
                    reply: None,
                    error: Some(if text.is_empty() {
                        "API error".into()
                    } else {
                        text
                    }),
                }];
            }
            if let (Some(id), false) = (msg["id"].as_str(), model == "<synthetic>") {
                out.push(Seen::Usage(UsageRecord {
                    key: format!("msg:{id}"),
                    model: model.to_string(),
                    tokens: claude_tokens(&msg["usage"]),
                    cost_usd: None,
                    source: "claude_transcript",
                }));
            }
            let text = content_text(&msg["content"]);
            if !text.is_empty() && v["isSidechain"].as_bool() != Some(true) {
                out.push(Seen::Text(text));
            }
            out
        }
        Some("user") => {
            // a prompt (string content), not a tool result (array of tool_result blocks)
            let c = &v["message"]["content"];
            let is_prompt = c.is_string()
                || c.as_array()
                    .is_some_and(|a| a.iter().any(|b| b["type"] == "text"));
            if is_prompt && v["isSidechain"].as_bool() != Some(true) {
                vec![Seen::Prompt]
            } else {
                vec![]
            }
        }
        _ => vec![],
    }
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            // Claude's blocks are "text", Codex's AgentMessage items "Text"
            .filter(|b| b["type"] == "text" || b["type"] == "Text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `codex exec --json` lines: the thread id, the reply and the turn's end (no usage).
pub fn codex_exec(line: &str) -> Vec<Seen> {
    let Some(v) = parse(line) else { return vec![] };
    match v["type"].as_str() {
        Some("thread.started") => v["thread_id"]
            .as_str()
            .map(|s| vec![Seen::Session(s.into())])
            .unwrap_or_default(),
        Some("item.completed") if v["item"]["type"] == "agent_message" => v["item"]["text"]
            .as_str()
            .map(|t| vec![Seen::Text(t.into())])
            .unwrap_or_default(),
        // Its usage is not a record of this turn: codex-cli 0.169.0 prints the thread's
        // running total there (every earlier run of a resumed thread included). Usage comes
        // from the rollout's per-call records instead (see `codex_rollout`).
        Some("turn.completed") => vec![Seen::TurnEnd {
            reply: None,
            error: None,
        }],
        Some("turn.failed") => vec![Seen::TurnEnd {
            reply: None,
            error: Some(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("turn failed")
                    .to_string(),
            ),
        }],
        _ => vec![],
    }
}

/// A Codex rollout line. Usage comes from `token_usage_record` (one per model call, keyed by
/// its response id); `event_msg` `token_count` repeats it and is used only when a rollout has
/// no usage records (`has_records` tells).
pub fn codex_rollout(line: &str, model: &str, has_records: &mut bool) -> Vec<Seen> {
    let Some(v) = parse(line) else { return vec![] };
    let p = &v["payload"];
    match v["type"].as_str() {
        Some("session_meta") => p["id"]
            .as_str()
            .map(|s| vec![Seen::Session(s.into())])
            .unwrap_or_default(),
        Some("token_usage_record") => {
            *has_records = true;
            let key = p["response_id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("ord:{}", v["ordinal"]));
            vec![Seen::Usage(UsageRecord {
                key: format!("resp:{key}"),
                model: model.to_string(),
                tokens: codex_tokens(&p["usage"]),
                cost_usd: None,
                source: "codex_rollout",
            })]
        }
        Some("event_msg") => match p["type"].as_str() {
            Some("token_count") if !*has_records && p["info"].is_object() => {
                let info = &p["info"];
                vec![Seen::Usage(UsageRecord {
                    key: format!(
                        "tc:{}:{}",
                        v["timestamp"].as_str().unwrap_or(""),
                        v["ordinal"]
                    ),
                    model: model.to_string(),
                    tokens: codex_tokens(&info["last_token_usage"]),
                    cost_usd: None,
                    source: "codex_rollout",
                })]
            }
            Some("user_message") => vec![Seen::Prompt],
            // 0.169.0 writes no `user_message` / `agent_message`: items of their own
            Some("item_completed") if p["item"]["type"] == "UserMessage" => vec![Seen::Prompt],
            Some("item_completed") if p["item"]["type"] == "AgentMessage" => {
                let text = content_text(&p["item"]["content"]);
                if text.is_empty() {
                    vec![]
                } else {
                    vec![Seen::Text(text)]
                }
            }
            Some("agent_message") => p["message"]
                .as_str()
                .map(|t| vec![Seen::Text(t.into())])
                .unwrap_or_default(),
            Some("task_complete") => vec![Seen::TurnEnd {
                reply: p["last_agent_message"].as_str().map(str::to_string),
                error: p["last_agent_message"]
                    .is_null()
                    .then(|| "the turn ended without a reply".to_string()),
            }],
            Some("turn_aborted") => vec![Seen::TurnEnd {
                reply: None,
                error: Some(format!(
                    "turn aborted: {}",
                    p["reason"].as_str().unwrap_or("unknown")
                )),
            }],
            _ => vec![],
        },
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::prices::PriceTable;

    // Verbatim from agent-clis.md.
    const CLAUDE_RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"api_error_status":null,"duration_ms":81,"duration_api_ms":15,"ttft_ms":75,"ttft_stream_ms":73,"time_to_request_ms":68,"num_turns":1,"result":"Hello from the mock Anthropic API. (say hi)","stop_reason":"end_turn","session_id":"a7a9b365-e9fb-4d02-9cc8-a1198994f9d5","total_cost_usd":0.1179625,"usage":{"input_tokens":1655,"cache_creation_input_tokens":17454,"cache_read_input_tokens":0,"output_tokens":24,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":17454},"inference_geo":"","iterations":[],"speed":"standard"},"modelUsage":{"claude-opus-4-8[1m]":{"inputTokens":1655,"outputTokens":24,"cacheReadInputTokens":0,"cacheCreationInputTokens":17454,"webSearchRequests":0,"costUSD":0.1179625,"contextWindow":1000000,"maxOutputTokens":64000}},"permission_denials":[],"terminal_reason":"completed","fast_mode_state":"off","uuid":"3fc2db8c-7a38-4872-945b-f1c2f53d33d6"}"#;
    const CLAUDE_ASSISTANT: &str = r#"{"parentUuid":"0641086f-x","isSidechain":false,"message":{"id":"msg_mock_010bba959e9b401fb90e","type":"message","role":"assistant","model":"claude-opus-4-8","content":[{"type":"text","text":"Hello from the mock Anthropic API. (say hi again)"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1957,"cache_creation_input_tokens":0,"cache_read_input_tokens":20507,"output_tokens":25,"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard","cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"","iterations":[],"speed":"standard"},"stop_details":null},"requestId":"req_mock_301693a9813b488dbdd9","type":"assistant","uuid":"b2509501-x","timestamp":"2026-11-22T06:39:29.936Z","userType":"external","entrypoint":"cli","cwd":"/srv/work","sessionId":"2d72a8fb-4aca-4820-a64f-c675a559f9ed","version":"2.1.197","gitBranch":"HEAD"}"#;
    const CODEX_TURN: &str = r#"{"type":"turn.completed","usage":{"input_tokens":9416,"cached_input_tokens":0,"cache_write_input_tokens":2313,"output_tokens":60,"reasoning_output_tokens":0}}"#;
    const CODEX_RECORD: &str = r#"{"timestamp":"2026-11-22T06:39:35.879Z","ordinal":26,"type":"token_usage_record","payload":{"thread_id":"01a201fb-4358","turn_id":"01a201fb-4bab","session_id":"01a201fb-4358","root_turn_id":"01a201fb-4bab","response_id":"resp_mock_54c1e000d00943768326","usage":{"input_tokens":10455,"cached_input_tokens":2800,"cache_write_input_tokens":0,"output_tokens":62,"reasoning_output_tokens":0,"total_tokens":10517},"turn_token_usage":{},"thread_token_usage":{"input_tokens":31093,"cached_input_tokens":5600,"cache_write_input_tokens":2800,"output_tokens":166,"reasoning_output_tokens":0,"total_tokens":31259}}}"#;
    const CODEX_COUNT: &str = r#"{"timestamp":"2026-11-22T06:39:35.880Z","ordinal":27,"type":"event_msg","payload":{"type":"token_count","info":{"total_token_usage":{"input_tokens":31093,"cached_input_tokens":5600,"cache_write_input_tokens":2800,"output_tokens":166,"reasoning_output_tokens":0,"total_tokens":31259},"last_token_usage":{"input_tokens":10455,"cached_input_tokens":2800,"cache_write_input_tokens":0,"output_tokens":62,"reasoning_output_tokens":0,"total_tokens":10517},"last_usage_includes_reasoning":false,"model_context_window":258400},"rate_limits":{"limit_id":"codex"}}}"#;

    #[test]
    fn claude_result_line_is_the_cost_line() {
        let seen = claude_stream(CLAUDE_RESULT);
        let Seen::Usage(u) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert_eq!(
            u.tokens,
            Tokens {
                input: 1655,
                output: 24,
                cache_write: 17454,
                cache_read: 0
            }
        );
        assert_eq!(u.cost_usd, Some(0.1179625));
        assert_eq!(u.model, "claude-opus-4-8[1m]");
        let ours = PriceTable::default().cost(&u.model, &u.tokens).unwrap();
        assert!(
            (ours - 0.1179625).abs() < 1e-12,
            "our table agrees with the CLI: {ours}"
        );
        assert_eq!(
            seen[0],
            Seen::Session("a7a9b365-e9fb-4d02-9cc8-a1198994f9d5".into())
        );
        assert!(
            matches!(&seen[2], Seen::TurnEnd { reply: Some(r), error: None } if r.contains("say hi"))
        );
        assert!(
            claude_stream(r#"{"type":"assistant","message":{"usage":{"output_tokens":1}}}"#)
                .is_empty()
        );
    }

    #[test]
    fn claude_transcript_records_carry_final_usage_keyed_by_message_id() {
        let seen = claude_transcript(CLAUDE_ASSISTANT);
        let Seen::Usage(u) = &seen[0] else { panic!() };
        assert_eq!(u.key, "msg:msg_mock_010bba959e9b401fb90e");
        assert_eq!(
            u.tokens,
            Tokens {
                input: 1957,
                output: 25,
                cache_write: 0,
                cache_read: 20507
            }
        );
        assert_eq!(
            seen[1],
            Seen::Text("Hello from the mock Anthropic API. (say hi again)".into())
        );
        let synthetic =
            CLAUDE_ASSISTANT.replace("\"model\":\"claude-opus-4-8\"", "\"model\":\"<synthetic>\"");
        assert!(claude_transcript(&synthetic)
            .iter()
            .all(|s| !matches!(s, Seen::Usage(_))));
        assert!(claude_transcript(r#"{"type":"ai-title","aiTitle":"x"}"#).is_empty());
        assert_eq!(
            claude_transcript(r#"{"type":"user","message":{"role":"user","content":"do it"}}"#),
            vec![Seen::Prompt]
        );
        assert!(claude_transcript(
            r#"{"type":"user","message":{"content":[{"type":"tool_result"}]}}"#
        )
        .is_empty());
    }

    #[test]
    fn codex_usage_splits_cached_input() {
        assert_eq!(
            codex_exec(CODEX_TURN),
            vec![Seen::TurnEnd {
                reply: None,
                error: None
            }],
            "turn.completed carries the thread's running total: not a usage record"
        );
        let t = codex_tokens(&serde_json::from_str::<Value>(CODEX_TURN).unwrap()["usage"]);
        assert_eq!(
            t,
            Tokens {
                input: 9416 - 2313,
                output: 60,
                cache_write: 2313,
                cache_read: 0
            }
        );
        let mut has = false;
        let seen = codex_rollout(CODEX_RECORD, "gpt-5.5", &mut has);
        let Seen::Usage(u) = &seen[0] else { panic!() };
        assert!(has);
        assert_eq!(u.key, "resp:resp_mock_54c1e000d00943768326");
        assert_eq!(
            u.tokens,
            Tokens {
                input: 10455 - 2800,
                output: 62,
                cache_write: 0,
                cache_read: 2800
            }
        );
        assert_eq!(
            u.tokens.total(),
            10517,
            "the split adds up to the record's total"
        );
        // reasoning tokens are part of output_tokens (codex's total_tokens = input + output)
        let reasoning = serde_json::json!({"input_tokens": 9416, "cached_input_tokens": 1000,
            "cache_write_input_tokens": 2313, "output_tokens": 60, "reasoning_output_tokens": 7,
            "total_tokens": 9476});
        let t = codex_tokens(&reasoning);
        assert_eq!(
            (t.input, t.output, t.cache_write, t.cache_read),
            (6103, 60, 2313, 1000)
        );
        assert_eq!(t.total(), 9476);
        assert!(
            codex_rollout(CODEX_COUNT, "gpt-5.5", &mut has).is_empty(),
            "token_count repeats the record"
        );
        let mut none = false;
        assert_eq!(
            codex_rollout(CODEX_COUNT, "gpt-5.5", &mut none).len(),
            1,
            "used when there are no records"
        );
        // 0.169.0's prompt record (no `user_message` event)
        let prompt = r#"{"timestamp":"t","ordinal":18,"type":"event_msg","payload":{"type":"item_completed","thread_id":"x","turn_id":"y","item":{"type":"UserMessage","id":"z","content":[{"type":"text","text":"hi"}]}}}"#;
        assert_eq!(codex_rollout(prompt, "m", &mut has), vec![Seen::Prompt]);
        let said = r#"{"timestamp":"t","ordinal":19,"type":"event_msg","payload":{"type":"item_completed","item":{"type":"AgentMessage","id":"m","content":[{"type":"Text","text":"R1"}]}}}"#;
        assert_eq!(
            codex_rollout(said, "m", &mut has),
            vec![Seen::Text("R1".into())]
        );
        let done = r#"{"timestamp":"t","ordinal":28,"type":"event_msg","payload":{"type":"task_complete","turn_id":"x","last_agent_message":"Hi there"}}"#;
        assert_eq!(
            codex_rollout(done, "m", &mut has),
            vec![Seen::TurnEnd {
                reply: Some("Hi there".into()),
                error: None
            }]
        );
    }
}
