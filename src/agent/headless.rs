//! `corral __headless`: the process a headless agent instance runs in its terminal.
//!
//! It reads messages from the terminal the way the interactive TUIs do (bracketed paste, then
//! Enter; the terminal is in raw mode), and runs one CLI invocation per message:
//! `claude -p MSG --output-format stream-json --verbose --session-id|--resume SID` or
//! `codex exec --json --skip-git-repo-check [resume TID] MSG`. Every line the CLI prints is
//! appended to the instance's turns file, which the daemon's watcher parses (the `result` line
//! carries Claude's own cost; `turn.completed` carries Codex usage), and a readable rendering
//! goes to the terminal, so an operator who attaches sees the conversation. Ctrl-C interrupts
//! the running turn (SIGINT to the CLI); the conversation continues with the next message.
//!
//! It is small and synchronous: it runs in the instance as the agent user, after the isolation
//! shim, and never in the daemon.
#![allow(clippy::disallowed_methods)] // runs in the agent's process, not the subreaping daemon

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

pub const SUBCOMMAND: &str = "__headless";

struct Args {
    kind: String,
    file: PathBuf,
    session: Option<String>,
    resume: bool,
    base: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut kind = None;
    let mut file = None;
    let mut session = None;
    let mut resume = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--kind" => {
                kind = args.get(i + 1).cloned();
                i += 2;
            }
            "--file" => {
                file = args.get(i + 1).map(PathBuf::from);
                i += 2;
            }
            "--session" => {
                session = args.get(i + 1).cloned();
                i += 2;
            }
            "--resume" => {
                resume = true;
                i += 1;
            }
            "--" => {
                i += 1;
                break;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let base = args[i..].to_vec();
    if base.is_empty() {
        return Err("no agent command after --".into());
    }
    Ok(Args {
        kind: kind.ok_or("--kind is required")?,
        file: file.ok_or("--file is required")?,
        session,
        resume,
        base,
    })
}

/// The command line for one message.
pub fn turn_argv(
    kind: &str,
    base: &[String],
    session: Option<&str>,
    first: bool,
    resume: bool,
    text: &str,
) -> Vec<String> {
    let mut argv = base.to_vec();
    if kind == "codex" {
        if let (Some(tid), true) = (session, resume || !first) {
            argv.extend(["resume".to_string(), tid.to_string()]);
        }
        argv.push(text.to_string());
    } else {
        argv.extend([
            "-p".to_string(),
            text.to_string(),
            "--output-format".into(),
            "stream-json".into(),
            "--verbose".into(),
        ]);
        if let Some(sid) = session {
            let flag = if first && !resume {
                "--session-id"
            } else {
                "--resume"
            };
            argv.extend([flag.to_string(), sid.to_string()]);
        }
    }
    argv
}

/// What to show on the terminal for one output line.
fn render(kind: &str, line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    match (kind, v["type"].as_str()?) {
        ("claude", "result") => Some(match v["is_error"].as_bool() {
            Some(true) => format!("⎿ {}", v["result"].as_str().unwrap_or("error")),
            _ => format!("● {}", v["result"].as_str().unwrap_or("")),
        }),
        ("codex", "item.completed") if v["item"]["type"] == "agent_message" => {
            Some(format!("• {}", v["item"]["text"].as_str()?))
        }
        ("codex", "turn.failed") => Some(format!(
            "■ {}",
            v["error"]["message"].as_str().unwrap_or("turn failed")
        )),
        _ => None,
    }
}

fn say(out: &mut impl Write, text: &str) {
    let _ = out.write_all(text.replace('\n', "\r\n").as_bytes());
    let _ = out.write_all(b"\r\n");
    let _ = out.flush();
}

fn append(file: &PathBuf, line: &str) {
    let mut l = line.trim_end().as_bytes().to_vec();
    l.push(b'\n');
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(&l));
}

/// Entry point of `corral __headless ...` (arguments after the subcommand).
pub fn main(args: &[String]) -> i32 {
    let mut a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("corral {SUBCOMMAND}: {e}");
            return 2;
        }
    };
    let stdin = std::io::stdin();
    let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\x1b[?2004h"); // ask for bracketed paste, like the TUIs
    say(
        &mut out,
        &format!(
            "corral headless {} agent: each message runs `{}` once",
            a.kind,
            a.base.join(" ")
        ),
    );
    append(&a.file, r#"{"type":"corral_ready"}"#);
    let mut first = true;
    let mut buf: Vec<u8> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut byte = [0u8; 1];
    let mut input = stdin.lock();
    let code = loop {
        match input.read(&mut byte) {
            Ok(0) | Err(_) => break 0,
            Ok(_) => {}
        }
        pending.push(byte[0]);
        // bracketed paste markers are dropped; the text between them is the message
        for marker in [b"\x1b[200~".as_slice(), b"\x1b[201~".as_slice()] {
            if pending.ends_with(marker) {
                pending.truncate(pending.len() - marker.len());
            }
        }
        if pending.last() == Some(&0x1b)
            || pending.ends_with(b"\x1b[")
            || pending.ends_with(b"\x1b[2")
            || pending.ends_with(b"\x1b[20")
            || pending.ends_with(b"\x1b[201")
            || pending.ends_with(b"\x1b[200")
        {
            continue; // maybe the start of a marker
        }
        buf.append(&mut pending);
        match buf.last() {
            Some(b'\r') => {
                buf.pop();
                let text = String::from_utf8_lossy(&buf).trim().to_string();
                buf.clear();
                if text.is_empty() {
                    continue;
                }
                say(&mut out, &format!("> {text}"));
                let argv = turn_argv(
                    &a.kind,
                    &a.base,
                    a.session.as_deref(),
                    first,
                    a.resume,
                    &text,
                );
                let (session, early) = run_turn(&a, &argv, &mut out, &mut input);
                // Only a run that reported its session created it: one interrupted while
                // the CLI was starting left nothing to resume.
                if let Some(s) = session {
                    a.session = Some(s);
                    first = false;
                }
                pending.extend(early);
            }
            Some(0x03) | Some(0x04) => {
                buf.pop(); // Ctrl-C / Ctrl-D at the prompt: nothing to interrupt
            }
            _ => {}
        }
    };
    if let Some(t) = &saved {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            t,
        );
    }
    code
}

/// Runs one message; returns the session/thread id the CLI reported and any input that
/// arrived meanwhile (other than Ctrl-C), for the prompt loop.
fn run_turn(
    a: &Args,
    argv: &[String],
    out: &mut impl Write,
    input: &mut impl Read,
) -> (Option<String>, Vec<u8>) {
    let mut early = Vec::new();
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let line = serde_json::json!({"type": "corral_error", "message": format!("cannot run {}: {e}", argv[0])});
            append(&a.file, &line.to_string());
            say(out, &format!("■ cannot run {}: {e}", argv[0]));
            append(&a.file, r#"{"type":"corral_turn_end"}"#);
            return (None, early);
        }
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let Some(stdout) = child.stdout.take() else {
        return (None, early);
    };
    let file = a.file.clone();
    let kind = a.kind.clone();
    // Lines are relayed by a thread while this one watches the keyboard for Ctrl-C.
    let relay = std::thread::spawn(move || {
        let mut session = None;
        let mut shown = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            append(&file, &line);
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some(s) = v["session_id"].as_str().or(v["thread_id"].as_str()) {
                    session = Some(s.to_string());
                }
            }
            if let Some(r) = render(&kind, &line) {
                shown.push(r);
            }
        }
        (session, shown)
    });
    let fd = std::io::stdin();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)), Ok(n) if n > 0)
        {
            let mut b = [0u8; 64];
            if let Ok(n) = input.read(&mut b) {
                if b[..n].contains(&0x03) {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                    say(out, "Interrupted");
                }
                early.extend(b[..n].iter().filter(|c| **c != 0x03));
            }
        }
    }
    let _ = child.wait();
    let (session, shown) = relay.join().unwrap_or((None, Vec::new()));
    for s in shown {
        say(out, &s);
    }
    append(&a.file, r#"{"type":"corral_turn_end"}"#);
    (session, early)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_command_lines() {
        let base = vec!["claude".to_string(), "--model".into(), "m".into()];
        assert_eq!(
            turn_argv("claude", &base, Some("S"), true, false, "hi"),
            [
                "claude",
                "--model",
                "m",
                "-p",
                "hi",
                "--output-format",
                "stream-json",
                "--verbose",
                "--session-id",
                "S"
            ]
        );
        assert_eq!(
            turn_argv("claude", &base, Some("S"), false, false, "x")[8],
            "--resume"
        );
        assert_eq!(
            turn_argv("claude", &base, Some("S"), true, true, "x")[8],
            "--resume"
        );
        let cb = vec![
            "codex".to_string(),
            "exec".into(),
            "--json".into(),
            "--skip-git-repo-check".into(),
        ];
        assert_eq!(
            turn_argv("codex", &cb, None, true, false, "hi"),
            ["codex", "exec", "--json", "--skip-git-repo-check", "hi"]
        );
        assert_eq!(
            turn_argv("codex", &cb, Some("T"), false, false, "hi")[4..],
            ["resume", "T", "hi"]
        );
    }
}
