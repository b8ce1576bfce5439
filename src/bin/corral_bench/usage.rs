//! Usage ingestion: MB/s of corral's transcript and rollout parsers over generated lines in
//! memory. Floor: `serde_json::from_str::<Value>` of the same lines (parsing alone).

use std::time::Instant;

use anyhow::{ensure, Result};
use corral::agent::usage::{claude_transcript, codex_rollout};
use serde_json::{json, Value};

use super::stats::Row;
use super::stats::Target;

fn claude_lines(bytes: usize) -> Vec<String> {
    let mut out = vec![];
    let mut total = 0;
    let mut i = 0u64;
    while total < bytes {
        let v = if i.is_multiple_of(3) {
            json!({"parentUuid": null, "isSidechain": false, "userType": "external", "cwd": "/w",
                "sessionId": "5f0c4c7e-1b7a-4f7e-9a57-2d7c1d2f0a11", "version": "2.1.197",
                "type": "user", "message": {"role": "user", "content": format!("prompt {i} {}", "x".repeat(120))},
                "uuid": format!("u-{i}"), "timestamp": "2026-11-22T09:00:00.000Z"})
        } else {
            json!({"parentUuid": format!("u-{}", i - 1), "isSidechain": false, "userType": "external",
                "cwd": "/w", "sessionId": "5f0c4c7e-1b7a-4f7e-9a57-2d7c1d2f0a11", "version": "2.1.197",
                "gitBranch": "", "type": "assistant", "message": {"id": format!("msg_{i}"), "type": "message",
                "role": "assistant", "model": "claude-opus-4-8",
                "content": [{"type": "text", "text": format!("reply {i} {}", "y".repeat(300))}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 1655, "cache_creation_input_tokens": 17454,
                    "cache_read_input_tokens": 0, "output_tokens": 24, "service_tier": "standard"}},
                "requestId": format!("req_{i}"), "uuid": format!("a-{i}"), "timestamp": "2026-11-22T09:00:01.000Z"})
        };
        let l = v.to_string();
        total += l.len() + 1;
        out.push(l);
        i += 1;
    }
    out
}

fn codex_lines(bytes: usize) -> Vec<String> {
    let mut out = vec![];
    let mut total = 0;
    let mut i = 0u64;
    while total < bytes {
        let v = if i.is_multiple_of(2) {
            json!({"timestamp": "2026-11-22T09:00:00.000Z", "ordinal": i, "type": "response_item",
                "payload": {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": format!("reply {i} {}", "z".repeat(300))}]}})
        } else {
            let u = json!({"input_tokens": 9416, "cached_input_tokens": 0, "cache_write_input_tokens": 2313,
                "output_tokens": 60, "reasoning_output_tokens": 0, "total_tokens": 9476});
            json!({"timestamp": "2026-11-22T09:00:01.000Z", "ordinal": i, "type": "token_usage_record",
                "payload": {"thread_id": "01a2b3c4-0000-7000-8000-000000000000", "turn_id": format!("t{i}"),
                "session_id": "s", "root_turn_id": format!("t{i}"), "response_id": format!("resp_{i}"),
                "usage": u, "turn_token_usage": u, "thread_token_usage": u}})
        };
        let l = v.to_string();
        total += l.len() + 1;
        out.push(l);
        i += 1;
    }
    out
}

/// MB/s of `f` over `lines`, best of 3 passes... reported as every pass.
fn passes(lines: &[String], mut f: impl FnMut(&str) -> usize) -> Result<Vec<f64>> {
    let mb = lines.iter().map(|l| l.len() + 1).sum::<usize>() as f64 / 1e6;
    let mut out = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let mut seen = 0;
        for l in lines {
            seen += f(l);
        }
        ensure!(seen > 0, "the parser saw nothing in the generated lines");
        out.push(mb / t.elapsed().as_secs_f64());
    }
    Ok(out)
}

fn floor(lines: &[String]) -> Result<Vec<f64>> {
    passes(lines, |l| {
        serde_json::from_str::<Value>(l).map(|_| 1).unwrap_or(0)
    })
}

pub fn run(mb: usize) -> Result<Vec<Row>> {
    let cl = claude_lines(mb * 1_000_000);
    let c = passes(&cl, |l| claude_transcript(l).len())?;
    let cf = floor(&cl)?;
    let xl = codex_lines(mb * 1_000_000);
    let mut has = false;
    let x = passes(&xl, |l| codex_rollout(l, "gpt-5.5", &mut has).len())?;
    let xf = floor(&xl)?;
    // Throughput: higher is better, so the ratio is corral / floor (1.0 = as fast as parsing).
    Ok(vec![
        Row::new(
            &format!("usage ingestion, claude transcript ({mb} MB)"),
            "MB/s",
            &c,
            &cf,
            Target::None,
        ),
        Row::new(
            &format!("usage ingestion, codex rollout ({mb} MB)"),
            "MB/s",
            &x,
            &xf,
            Target::None,
        ),
    ])
}
