//! Talking to live instances and reading what they produced: messages and turns, output,
//! screens, the workspace, events. Each method finds the instance's handle and either sends its
//! task a control message or reads what the task publishes; ended instances are read from the
//! store and the instance log.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use super::output::{last_lines, read_log_tail, strip_ansi, Chunk};
use super::task::{self, lock, Ctl, Shared};
use super::{ended, files, not_found, plan, Handle, Supervisor, SupervisorError, TurnStatus};
use crate::model::{BackendKind, Event, InstanceInfo, StateName};

/// Output of an instance, bounded.
#[derive(Debug, Clone, Serialize)]
pub struct OutputTail {
    pub id: String,
    pub name: String,
    /// Offset of the first returned byte in the instance's output.
    pub offset: u64,
    /// Bytes of output so far (live instances; for ended ones the log's size).
    pub total: u64,
    pub text: String,
    /// True when older output exists beyond what was returned.
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TurnOutcome {
    pub id: String,
    pub name: String,
    pub turn: u64,
    pub status: TurnStatus,
    /// False when the wait timed out (the turn keeps running).
    pub done: bool,
    pub state: StateName,
    /// The agent's reply, or (commands) the output produced during the turn with escapes
    /// stripped, bounded.
    pub reply: String,
    /// Why the turn failed (an API error, a cap), when it did.
    pub error: Option<String>,
}

/// A live follower of an instance's output.
pub struct Follow {
    pub tail: Vec<u8>,
    pub from: u64,
    pub chunks: Option<broadcast::Receiver<Chunk>>,
    pub info: Option<watch::Receiver<InstanceInfo>>,
    /// The live instance's output ring, for a follower that fell behind the chunk channel
    /// (weak: holding it would keep the chunk channel open after the instance ended).
    ring: Option<Weak<Shared>>,
}

impl Follow {
    /// The output from `from` on that the ring still holds, with the offset it starts at (past
    /// `from` when the ring has already dropped some): a lagging follower catches up from it.
    pub fn catch_up(&self, from: u64) -> Option<(u64, Vec<u8>)> {
        let shared = self.ring.as_ref()?.upgrade()?;
        let ring = lock(&shared.ring);
        Some(ring.range(from, ring.total()))
    }

    /// A handle that can catch up after the `Follow` itself is taken apart.
    pub fn catcher(&self) -> Follow {
        Follow {
            tail: Vec::new(),
            from: self.from,
            chunks: None,
            info: None,
            ring: self.ring.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AttachInfo {
    pub id: String,
    pub name: String,
    pub argv: Vec<String>,
}

/// Most bytes any output read returns.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

impl Supervisor {
    /// Types `text` into the instance (and Enter, when asked); returns the turn number.
    pub async fn send(&self, r: &str, text: String, enter: bool) -> Result<u64, SupervisorError> {
        if text.len() > plan::MAX_MESSAGE_BYTES {
            return Err(SupervisorError::InvalidArgument(format!(
                "message is {} bytes; the limit is {}",
                text.len(),
                plan::MAX_MESSAGE_BYTES
            )));
        }
        if text.contains('\0') {
            return Err(SupervisorError::InvalidArgument(
                "message contains a NUL byte".into(),
            ));
        }
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Send {
                text,
                enter,
                reply: tx,
            })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))?
    }

    async fn live_handle_or_ended(&self, r: &str) -> Result<Handle, SupervisorError> {
        if let Some(h) = self.handle(r) {
            return Ok(h);
        }
        let info = self.get(r).await?;
        Err(SupervisorError::State(format!(
            "instance {:?} has ended ({}{})",
            info.name,
            info.state.as_str(),
            info.reason
                .map(|r| format!(": {}", r.as_str()))
                .unwrap_or_default()
        )))
    }

    /// Waits up to `timeout` for turn `turn` to complete and returns its output.
    pub async fn wait_turn(
        &self,
        r: &str,
        turn: u64,
        timeout: Duration,
    ) -> Result<TurnOutcome, SupervisorError> {
        let h = self.live_handle_or_ended(r).await?;
        let Some(_) = h.shared.turn(turn) else {
            return Err(SupervisorError::NotFound(format!(
                "instance {r:?} has no turn {turn} in memory"
            )));
        };
        let mut rx = h.shared.info.subscribe();
        let mut turns = h.shared.turn_epoch.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            turns.borrow_and_update();
            let rec = h.shared.turn(turn);
            let ended = !rx.borrow_and_update().state.is_live();
            if let Some(rec) = &rec {
                if rec.status != TurnStatus::Running || ended {
                    return Ok(self.outcome(&h, rec, true));
                }
            }
            let woke = async {
                tokio::select! {
                    r = rx.changed() => r,
                    r = turns.changed() => r,
                }
            };
            if tokio::time::timeout_at(deadline, woke).await.is_err() {
                let rec = h.shared.turn(turn).ok_or_else(|| not_found(r))?;
                return Ok(self.outcome(&h, &rec, false));
            }
        }
    }

    fn outcome(&self, h: &Handle, rec: &task::TurnRecord, done: bool) -> TurnOutcome {
        let info = h.shared.info.borrow().clone();
        let end = rec.end_offset.unwrap_or(u64::MAX);
        let (_, bytes) = lock(&h.shared.ring).range(rec.start_offset, end);
        let bytes = if bytes.len() > MAX_OUTPUT_BYTES {
            bytes[bytes.len() - MAX_OUTPUT_BYTES..].to_vec()
        } else {
            bytes
        };
        TurnOutcome {
            id: info.id,
            name: info.name,
            turn: rec.seq,
            status: if done && rec.status == TurnStatus::Running {
                TurnStatus::Ended
            } else {
                rec.status
            },
            done,
            state: info.state,
            // An agent's own reply text; a command's reply is its output during the turn.
            reply: rec
                .reply
                .clone()
                .unwrap_or_else(|| String::from_utf8_lossy(&strip_ansi(&bytes)).into_owned()),
            error: rec.error.clone(),
        }
    }

    pub async fn resize(&self, r: &str, cols: u16, rows: u16) -> Result<(), SupervisorError> {
        plan::check_size(cols, rows)?;
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Resize {
                cols,
                rows,
                reply: tx,
            })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))?
    }

    /// The tmux screen (tmux instances only).
    pub async fn screen(&self, r: &str, lines: u32) -> Result<Option<String>, SupervisorError> {
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Screen { lines, reply: tx })
            .await
            .map_err(|_| ended(r))?;
        Ok(rx.await.unwrap_or(None))
    }

    /// The last output of an instance, bounded by `max_bytes` and then `lines`.
    pub async fn output(
        &self,
        r: &str,
        max_bytes: usize,
        lines: Option<usize>,
        strip: bool,
    ) -> Result<OutputTail, SupervisorError> {
        let max_bytes = max_bytes.clamp(1, MAX_OUTPUT_BYTES);
        let (info, offset, total, bytes) = match self.handle(r) {
            Some(h) => {
                let info = h.shared.info.borrow().clone();
                let ring = lock(&h.shared.ring);
                let (offset, bytes) = ring.tail(max_bytes);
                (info, offset, ring.total(), bytes)
            }
            None => {
                let info = self.get(r).await?;
                let bytes = self.read_log(&info.id, max_bytes)?;
                let total = info.output_bytes.max(bytes.len() as u64);
                (info, total - bytes.len() as u64, total, bytes)
            }
        };
        let mut bytes = if strip { strip_ansi(&bytes) } else { bytes };
        let mut truncated = offset > 0;
        if let Some(n) = lines {
            let kept = last_lines(&bytes, n).len();
            if kept < bytes.len() {
                truncated = true;
                bytes.drain(..bytes.len() - kept);
            }
        }
        Ok(OutputTail {
            id: info.id,
            name: info.name,
            offset,
            total,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            truncated,
        })
    }

    fn read_log(&self, id: &str, max: usize) -> Result<Vec<u8>, SupervisorError> {
        let path = self.log_path(id);
        match read_log_tail(&path, self.inner.cfg.instance.log_keep, max) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(SupervisorError::Backend(format!(
                "reading {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.inner
            .paths
            .instance_log_dir()
            .join(format!("{id}.log"))
    }

    /// A tail of the output plus, for live instances, a stream of what follows.
    pub async fn follow(&self, r: &str, tail_bytes: usize) -> Result<Follow, SupervisorError> {
        let tail_bytes = tail_bytes.min(MAX_OUTPUT_BYTES);
        if let Some(h) = self.handle(r) {
            let chunks = h.shared.chunks.subscribe();
            let (from, tail) = lock(&h.shared.ring).tail(tail_bytes);
            let from = from + tail.len() as u64;
            return Ok(Follow {
                tail,
                from,
                chunks: Some(chunks),
                info: Some(h.shared.info.subscribe()),
                ring: Some(Arc::downgrade(&h.shared)),
            });
        }
        let info = self.get(r).await?;
        let tail = self.read_log(&info.id, tail_bytes)?;
        Ok(Follow {
            tail,
            from: 0,
            chunks: None,
            info: None,
            ring: None,
        })
    }

    /// How an operator attaches to the instance's terminal.
    pub async fn attach(&self, r: &str) -> Result<AttachInfo, SupervisorError> {
        let info = self.get(r).await?;
        if !info.state.is_live() {
            return Err(SupervisorError::State(format!(
                "instance {:?} has ended ({}); read its output with `corral logs {}`",
                info.name,
                info.state.as_str(),
                info.name
            )));
        }
        match (&info.backend, &info.tmux_session) {
            (BackendKind::Tmux, Some(session)) => Ok(AttachInfo {
                argv: self.inner.tmux.attach_argv(session),
                id: info.id,
                name: info.name,
            }),
            _ => Err(SupervisorError::InvalidArgument(format!(
                "instance {:?} runs in the pty backend, which has no terminal to attach to; use `corral logs -f {}` to follow it and `corral send` to type into it",
                info.name, info.name
            ))),
        }
    }

    pub async fn events(
        &self,
        r: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, SupervisorError> {
        let id = match r {
            Some(r) => Some(self.get(r).await?.id),
            None => None,
        };
        Ok(self
            .inner
            .store
            .events(id, after, limit.clamp(1, 10_000))
            .await?)
    }

    /// Sends the terminal's interrupt key (Ctrl-C) to the instance; it keeps running.
    pub async fn interrupt(&self, r: &str) -> Result<InstanceInfo, SupervisorError> {
        let h = self.live_handle_or_ended(r).await?;
        let (tx, rx) = oneshot::channel();
        h.ctl
            .send(Ctl::Interrupt { reply: tx })
            .await
            .map_err(|_| ended(r))?;
        rx.await.map_err(|_| ended(r))??;
        let info = h.shared.info.borrow().clone();
        Ok(info)
    }

    /// The newest turn of a live instance (0 when nothing was sent).
    pub async fn latest_turn(&self, r: &str) -> Result<u64, SupervisorError> {
        Ok(self.get(r).await?.turns)
    }

    /// Lists a directory inside the instance's workspace.
    pub async fn list_files(
        &self,
        r: &str,
        path: &str,
        max: usize,
    ) -> Result<files::Listing, SupervisorError> {
        let info = self.get(r).await?;
        files::list(std::path::Path::new(&info.workspace), path, max)
    }

    /// Reads part of a file inside the instance's workspace.
    pub async fn read_file(
        &self,
        r: &str,
        path: &str,
        offset: u64,
        max: usize,
    ) -> Result<files::FileChunk, SupervisorError> {
        let info = self.get(r).await?;
        files::read(std::path::Path::new(&info.workspace), path, offset, max)
    }
}
