//! Turns an agent's own files into events for its instance task.
//!
//! Watched (inotify, through `notify`, recursively under `<state_dir>/agents/<id>/`):
//! - Claude: transcripts `claude/projects/**/*.jsonl` (subagent transcripts included) and the
//!   hook log `hooks.jsonl` (SessionStart → ready, Stop → turn end, Notification → notice);
//! - Codex: rollouts `codex/sessions/**/rollout-*.jsonl` (usage, session id, task_complete →
//!   turn end); in headless mode only their usage (the runner's turns file has the rest).
//!
//! Every wake-up rescans the files and reads only what was appended since the last read, whole
//! lines only. Transcripts are read before the hook log, so when a Stop hook is seen, the
//! turn's transcript lines (written before the hook ran) have been read too.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use super::launch::Mode;
use super::launch::WatchSpec;
use super::usage::{
    claude_stream, claude_transcript, codex_exec, codex_rollout, Seen, UsageRecord,
};
use crate::model::Kind;

#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The agent can take a message (`via` says what showed it).
    Ready(&'static str),
    Usage(UsageRecord),
    TurnEnd {
        reply: Option<String>,
        error: Option<String>,
    },
    Session(String),
    /// Something the agent wants a human to see (Claude's Notification hook).
    Notice(String),
    /// The agent took a prompt (Claude's UserPromptSubmit hook or transcript prompt line,
    /// Codex's `user_message`): the Enter that submits a pasted message was not lost.
    Submitted,
}

/// Keeps the watch alive; dropping it stops the watcher.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    wake: mpsc::Sender<()>,
}

impl WatchHandle {
    /// Asks for a rescan. The instance task calls this when the agent prints: a write into a
    /// directory the agent has only just created (Codex's `sessions/YYYY/MM/DD/`) can come
    /// before inotify watches that directory, and the terminal output that goes with it is the
    /// next event we do see.
    pub fn nudge(&self) {
        let _ = self.wake.try_send(());
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Tail {
    spec: WatchSpec,
    offsets: HashMap<PathBuf, u64>,
    /// Claude: assistant text since the last prompt (the reply of the running turn).
    turn_text: Vec<String>,
    /// Codex: rollouts that carry token_usage_record lines.
    has_records: HashMap<PathBuf, bool>,
    /// Headless: whether the current turn has ended (the runner's own end marker then only
    /// covers a CLI that died silently).
    ended: bool,
    /// Headless: the CLI's verdict on the running turn, reported when the runner is back at
    /// its prompt (its end marker), so the next message cannot arrive mid-turn.
    verdict: Option<(Option<String>, Option<String>)>,
}

/// Starts watching. With `skip_old_hooks`, hook lines already in the file are not replayed
/// (an adopted instance must not re-live its past turns).
pub fn spawn(
    spec: WatchSpec,
    skip_old_hooks: bool,
    tx: mpsc::Sender<AgentEvent>,
) -> std::io::Result<WatchHandle> {
    std::fs::create_dir_all(&spec.agent_dir)?;
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let nudge = wake_tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Our own reads raise open/access/close events: waking on those would rescan forever.
        if let Ok(ev) = &res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
        }
        let _ = wake_tx.try_send(());
    })
    .map_err(std::io::Error::other)?;
    watcher
        .watch(&spec.agent_dir, RecursiveMode::Recursive)
        .map_err(std::io::Error::other)?;
    let mut tail = Tail {
        spec,
        offsets: HashMap::new(),
        turn_text: Vec::new(),
        has_records: HashMap::new(),
        ended: false,
        verdict: None,
    };
    if skip_old_hooks {
        let len = std::fs::metadata(&tail.spec.hooks_file)
            .map(|m| m.len())
            .unwrap_or(0);
        tail.offsets.insert(tail.spec.hooks_file.clone(), len);
    }
    let task = tokio::spawn(async move {
        loop {
            for ev in tail.scan() {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if wake_rx.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(WatchHandle {
        _watcher: watcher,
        task,
        wake: nudge,
    })
}

fn jsonl_files(dir: &Path, out: &mut Vec<PathBuf>, filter: &dyn Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => jsonl_files(&p, out, filter),
            Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "jsonl") && filter(&p) => {
                out.push(p)
            }
            _ => {}
        }
    }
}

impl Tail {
    /// New complete lines of `path` since the last read.
    fn new_lines(&mut self, path: &Path) -> Vec<String> {
        let off = self.offsets.get(path).copied().unwrap_or(0);
        let Ok(mut f) = std::fs::File::open(path) else {
            return vec![];
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len <= off || f.seek(SeekFrom::Start(off)).is_err() {
            return vec![];
        }
        let mut buf = Vec::new();
        if f.take(len - off).read_to_end(&mut buf).is_err() {
            return vec![];
        }
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return vec![];
        };
        self.offsets
            .insert(path.to_path_buf(), off + end as u64 + 1);
        String::from_utf8_lossy(&buf[..end])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn scan(&mut self) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        if self.spec.mode == Mode::Headless {
            if self.spec.kind == Kind::Codex {
                // Usage per model call from the rollout (keyed by response id), read before
                // the turns file so it is in before the turn ends: `turn.completed` of
                // `codex exec resume` is the thread's running total, not the turn's.
                for seen in self.codex_rollouts() {
                    if let Seen::Usage(u) = seen {
                        out.push(AgentEvent::Usage(u));
                    }
                }
            }
            let file = self.spec.hooks_file.clone();
            for l in self.new_lines(&file) {
                out.extend(self.headless_line(&l));
            }
            return out;
        }
        match self.spec.kind {
            Kind::Codex => {
                for seen in self.codex_rollouts() {
                    out.extend(self.map_seen(seen));
                }
            }
            _ => {
                self.read_transcripts(&mut out);
                let hooks = self.spec.hooks_file.clone();
                for l in self.new_lines(&hooks) {
                    // Claude flushes its transcript before it runs the Stop hook: read what it
                    // wrote since the read above, so the turn's reply is complete.
                    if l.contains("\"Stop") {
                        self.read_transcripts(&mut out);
                    }
                    out.extend(self.hook(&l));
                }
            }
        }
        out
    }

    /// What the new lines of Codex's rollouts say, oldest file first.
    fn codex_rollouts(&mut self) -> Vec<Seen> {
        let mut files = Vec::new();
        jsonl_files(&self.spec.config_dir.join("sessions"), &mut files, &|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rollout-"))
        });
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let lines = self.new_lines(&f);
            let mut has = self.has_records.get(&f).copied().unwrap_or(false);
            for l in lines {
                out.extend(codex_rollout(&l, &self.spec.model, &mut has));
            }
            self.has_records.insert(f, has);
        }
        out
    }

    /// New transcript lines: this session's transcript (and its subagents' under `<sid>/`)
    /// before others, oldest first. Other sessions' files in a shared config dir are skipped.
    fn read_transcripts(&mut self, out: &mut Vec<AgentEvent>) {
        let mut files = Vec::new();
        let sid = self.spec.session_id.clone();
        jsonl_files(
            &self.spec.config_dir.join("projects"),
            &mut files,
            &|p| match &sid {
                Some(sid) => {
                    p.file_stem().is_some_and(|s| s == sid.as_str())
                        || p.components().any(|c| c.as_os_str() == sid.as_str())
                }
                None => true,
            },
        );
        files.sort_by_key(|p| (p.components().count(), p.clone()));
        for f in files {
            for l in self.new_lines(&f) {
                for seen in claude_transcript(&l) {
                    out.extend(self.map_seen(seen));
                }
            }
        }
    }

    /// A line of a headless instance's turns file: the CLI's own output, or the runner's
    /// markers (`corral_ready`, `corral_turn_end`, `corral_error`).
    fn headless_line(&mut self, line: &str) -> Vec<AgentEvent> {
        let marker = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_string));
        match marker.as_deref() {
            Some("corral_ready") => return vec![AgentEvent::Ready("headless_runner")],
            Some("corral_turn_end") => {
                self.ended = false;
                let (reply, error) = self.verdict.take().unwrap_or((
                    None,
                    Some("the CLI ended without a result (interrupted or failed)".into()),
                ));
                return vec![AgentEvent::TurnEnd { reply, error }];
            }
            Some("corral_error") => {
                self.ended = true;
                let v: Value = serde_json::from_str(line).unwrap_or_default();
                return vec![AgentEvent::TurnEnd {
                    reply: None,
                    error: v["message"].as_str().map(str::to_string),
                }];
            }
            _ => {}
        }
        let seen = if self.spec.kind == Kind::Codex {
            codex_exec(line)
        } else {
            claude_stream(line)
        };
        let mut out = Vec::new();
        let events: Vec<AgentEvent> = seen.into_iter().filter_map(|s| self.map_seen(s)).collect();
        for ev in events {
            match ev {
                AgentEvent::TurnEnd { reply, error } => self.verdict = Some((reply, error)),
                other => out.push(other),
            }
        }
        out
    }

    fn map_seen(&mut self, seen: Seen) -> Option<AgentEvent> {
        match seen {
            Seen::Usage(u) => Some(AgentEvent::Usage(u)),
            Seen::Session(s) => Some(AgentEvent::Session(s)),
            Seen::Prompt => {
                self.turn_text.clear();
                Some(AgentEvent::Submitted)
            }
            Seen::Text(t) => {
                self.turn_text.push(t);
                None
            }
            Seen::TurnEnd { reply, error } => {
                self.ended = true;
                let reply = match (reply, &error) {
                    (Some(r), _) => Some(r),
                    (None, None) => self.turn_text.last().cloned(),
                    (None, Some(_)) => None,
                };
                self.turn_text.clear();
                Some(AgentEvent::TurnEnd { reply, error })
            }
        }
    }

    fn hook(&mut self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            warn!(line, "unreadable hook line");
            return vec![];
        };
        match v["hook_event_name"].as_str() {
            Some("SessionStart") => {
                let mut out = vec![AgentEvent::Ready("session_start_hook")];
                if let Some(s) = v["session_id"].as_str() {
                    out.push(AgentEvent::Session(s.to_string()));
                }
                out
            }
            // The transcript's own prompt line starts the turn's text. This hook line may be
            // read after the whole turn's transcript (a fast reply lands in one scan), so it
            // must not clear the reply.
            Some("UserPromptSubmit") => vec![AgentEvent::Submitted],
            // The hook carries the reply (`last_assistant_message`, Claude Code 2.1.x); the
            // transcript's last text is the fallback.
            Some("Stop") => {
                let from_hook = v["last_assistant_message"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                let reply = from_hook.or_else(|| self.turn_text.last().cloned());
                self.turn_text.clear();
                vec![AgentEvent::TurnEnd {
                    reply: Some(reply.unwrap_or_default()),
                    error: None,
                }]
            }
            Some("StopFailure") => vec![AgentEvent::TurnEnd {
                reply: None,
                error: Some(
                    v["error"]
                        .as_str()
                        .or(v["message"].as_str())
                        .map(str::to_string)
                        .unwrap_or_else(|| {
                            self.turn_text
                                .last()
                                .cloned()
                                .unwrap_or_else(|| "the turn failed (API error)".into())
                        }),
                ),
            }],
            Some("Notification") => v["message"]
                .as_str()
                .map(|m| vec![AgentEvent::Notice(m.to_string())])
                .unwrap_or_default(),
            _ => vec![],
        }
    }
}

/// `corral __hook FILE`: appends the hook's JSON input (stdin) to FILE as one line, in one
/// write. Never fails loudly: a hook must not disturb the agent.
pub fn append_hook(file: &Path) -> i32 {
    use std::io::Write;
    let mut input = Vec::new();
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut input);
    let mut line = match serde_json::from_slice::<Value>(&input) {
        Ok(v) => serde_json::to_vec(&v).unwrap_or_default(),
        Err(_) => serde_json::to_vec(&serde_json::json!({ "hook_event_name": "unknown", "raw": String::from_utf8_lossy(&input) })).unwrap_or_default(),
    };
    line.push(b'\n');
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(&line));
    if let Err(e) = r {
        eprintln!("corral hook: {}: {e}", file.display());
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::launch::Mode;

    #[test]
    fn a_fast_turn_keeps_its_reply_and_the_stop_hook_carries_it() {
        let mut t = Tail {
            spec: WatchSpec {
                kind: Kind::Claude,
                mode: Mode::Interactive,
                agent_dir: "/nonexistent".into(),
                config_dir: "/nonexistent/claude".into(),
                hooks_file: "/nonexistent/hooks.jsonl".into(),
                model: "claude-opus-4-8".into(),
                session_id: None,
            },
            offsets: HashMap::new(),
            turn_text: Vec::new(),
            has_records: HashMap::new(),
            ended: false,
            verdict: None,
        };
        // the whole turn's transcript is read before its UserPromptSubmit hook line
        t.map_seen(Seen::Prompt);
        t.map_seen(Seen::Text("answer".into()));
        assert_eq!(
            t.hook(r#"{"hook_event_name":"UserPromptSubmit","prompt":"q"}"#),
            vec![AgentEvent::Submitted]
        );
        let end = |reply: &str| AgentEvent::TurnEnd {
            reply: Some(reply.into()),
            error: None,
        };
        assert_eq!(t.hook(r#"{"hook_event_name":"Stop"}"#), vec![end("answer")]);
        assert_eq!(
            t.hook(r#"{"hook_event_name":"Stop","last_assistant_message":"from the hook"}"#),
            vec![end("from the hook")],
            "the hook's own copy of the reply wins"
        );
    }

    #[tokio::test]
    async fn claude_files_become_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spec = WatchSpec {
            kind: Kind::Claude,
            mode: Mode::Interactive,
            agent_dir: dir.path().to_path_buf(),
            config_dir: dir.path().join("claude"),
            hooks_file: dir.path().join("hooks.jsonl"),
            model: "claude-opus-4-8".into(),
            session_id: Some("s1".into()),
        };
        let (tx, mut rx) = mpsc::channel(64);
        let _h = spawn(spec, false, tx).unwrap();
        let proj = dir.path().join("claude/projects/-w");
        std::fs::create_dir_all(&proj).unwrap();
        std::fs::write(
            dir.path().join("hooks.jsonl"),
            "{\"hook_event_name\":\"SessionStart\",\"session_id\":\"s1\"}\n",
        )
        .unwrap();
        assert_eq!(
            rx.recv().await,
            Some(AgentEvent::Ready("session_start_hook"))
        );
        assert_eq!(rx.recv().await, Some(AgentEvent::Session("s1".into())));
        let a = r#"{"type":"assistant","message":{"id":"m1","model":"claude-opus-4-8","content":[{"type":"text","text":"done!"}],"usage":{"input_tokens":10,"output_tokens":2}}}"#;
        std::fs::write(
            proj.join("s1.jsonl"),
            format!("{{\"type\":\"user\",\"message\":{{\"content\":\"hi\"}}}}\n{a}\n{a}\n"),
        )
        .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("hooks.jsonl"))
            .unwrap();
        use std::io::Write;
        // a late wake-up reads the prompt's hook after the transcript's reply
        write!(
            f,
            "{{\"hook_event_name\":\"UserPromptSubmit\"}}\n{{\"hook_event_name\":\"Stop\"}}\n"
        )
        .unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            got.push(
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(got[0], AgentEvent::Submitted, "the prompt line");
        assert!(matches!(&got[1], AgentEvent::Usage(u) if u.key == "msg:m1"));
        assert!(
            matches!(&got[2], AgentEvent::Usage(u) if u.key == "msg:m1"),
            "duplicates are the store's to drop"
        );
        assert_eq!(
            got[3],
            AgentEvent::Submitted,
            "the prompt's hook, read late"
        );
        assert_eq!(
            got[4],
            AgentEvent::TurnEnd {
                reply: Some("done!".into()),
                error: None
            },
            "the late hook line did not erase the reply"
        );
    }
}
