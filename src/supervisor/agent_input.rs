//! How messages are typed into an agent's terminal, and what an interrupt changes about that.
//!
//! - A message is one bracketed paste, then Enter after `agents.enter_delay_ms`.
//! - An interactive agent must then report the prompt (`Submitted`: Claude's UserPromptSubmit
//!   hook or transcript line, Codex's rollout) within `agents.submit_check_ms`, or Enter is
//!   pressed again (at most `ENTER_RETRIES` times): a TUI finishing its start-up under load
//!   drops an Enter, and an extra Enter on an empty input box does nothing.
//! - After Ctrl-C during a turn the CLI is still winding the turn down: Claude Code puts an
//!   unanswered prompt back into its input box a moment later, Codex takes typing then as
//!   steering the aborted turn, a headless runner is still stopping its CLI. A message sent
//!   then is held until the CLI has settled — its interrupted turn's end has arrived (Codex,
//!   headless) and its output has been quiet `SETTLE_QUIET` — at most `SETTLE_MAX`. A turn end
//!   that arrives while a message is held belongs to the interrupted turn, not the new one.
//! - Interactive Claude reports nothing for an interrupted turn (no hook; before any answer no
//!   transcript line), so corral ends that turn itself, and empties the input box (Ctrl-U and
//!   Backspace per line of the interrupted message) before the next paste.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::instance::State;
use super::task::Task;
use super::SupervisorError;
use crate::model::Kind;

/// A CLI has settled after an interrupt once its output has been quiet this long...
const SETTLE_QUIET: Duration = Duration::from_millis(400);
/// ...or this long after the interrupt at most.
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// Enters pressed again for one message at most.
const ENTER_RETRIES: u32 = 3;

/// Per-agent state of its input.
#[derive(Debug, Default)]
pub(crate) struct AgentInput {
    /// Lines of the last message typed.
    pub last_lines: usize,
    /// Lines an interrupt may have put back into Claude's input box (cleared before the next
    /// paste).
    pub dirty_lines: usize,
    /// Enters pressed again for the running message.
    pub enter_retries: u32,
    /// When Ctrl-C was last pressed during a turn, until the CLI has settled after it.
    pub interrupted_at: Option<Instant>,
    /// The interrupted turn's end is still to come from the agent (Codex, headless).
    pub abort_pending: bool,
    /// A message (text, Enter) held back until the CLI has settled.
    pub held: Option<(String, bool)>,
}

impl Task {
    fn input(&mut self) -> Option<&mut AgentInput> {
        self.agent.as_mut().map(|a| &mut a.input)
    }

    fn interactive(&self) -> bool {
        self.info.mode.as_deref() == Some("interactive")
    }

    /// Interactive Claude: no report of an interrupted turn, and an unanswered prompt goes
    /// back into its input box.
    fn restores_prompts(&self) -> bool {
        self.info.kind == Kind::Claude && self.interactive()
    }

    /// Ctrl-C was pressed (an `interrupt`, or a cap's pause) while a turn may be running.
    pub(crate) fn note_interrupt(&mut self) {
        if self.current_turn.is_none() {
            return;
        }
        let restores = self.restores_prompts();
        if let Some(i) = self.input() {
            i.interrupted_at = Some(Instant::now());
            i.abort_pending = !restores;
            if restores {
                i.dirty_lines = i.last_lines.max(1);
            }
        }
    }

    /// The interrupt key reached the agent; interactive Claude's turn ends here.
    pub(crate) async fn agent_interrupted(&mut self) {
        let running = self.current_turn.is_some();
        self.note_interrupt();
        if !self.restores_prompts() || !running {
            return;
        }
        self.timers.enter_deadline = None;
        self.timers.submit_deadline = None;
        self.on_turn_end(None, Some("interrupted".into())).await;
    }

    /// A turn end from the agent: true when it belongs to the interrupted turn rather than
    /// the running one (a message is held), so the caller drops it.
    pub(crate) fn late_turn_end(&mut self, error: &Option<String>) -> bool {
        let Some(i) = self.input() else {
            return false;
        };
        i.abort_pending = false;
        if i.held.is_none() {
            return false;
        }
        info!(
            ?error,
            "the interrupted turn's end, reported after the next message was sent"
        );
        self.schedule_held();
        true
    }

    /// When to type the held message: once the interrupted turn has ended and the output has
    /// been quiet `SETTLE_QUIET`, at most `SETTLE_MAX` after the interrupt.
    fn schedule_held(&mut self) {
        let Some(i) = self.agent.as_ref().map(|a| &a.input) else {
            return;
        };
        let (Some(at), Some(_)) = (i.interrupted_at, i.held.as_ref()) else {
            return;
        };
        let cap = at + SETTLE_MAX;
        self.timers.paste_deadline = Some(if i.abort_pending {
            cap
        } else {
            (Instant::now() + SETTLE_QUIET).min(cap)
        });
    }

    /// The agent printed: a held message waits for quiet again.
    pub(crate) fn settling_output(&mut self) {
        self.schedule_held();
    }

    /// Types the message held back after an interrupt.
    pub(crate) async fn paste_held(&mut self) {
        let Some((text, enter)) = self.input().and_then(|i| {
            i.interrupted_at = None;
            i.abort_pending = false;
            i.held.take()
        }) else {
            return;
        };
        if !matches!(self.state, State::Busy | State::Ready) {
            return; // paused or stopping meanwhile: nothing is typed into it
        }
        if let Err(e) = self.paste_message(&text, enter).await {
            warn!(error = %e, "typing the held message failed");
            if let Some(seq) = self.current_turn {
                self.set_turn_result(seq, None, Some(e.to_string()));
            }
        }
    }

    /// Enter was pressed for a message (`retry`: again); an interactive agent must now report
    /// the prompt within `agents.submit_check_ms`.
    pub(crate) fn enter_pressed(&mut self, retry: bool) {
        let check = self.inner.cfg.agents.submit_check_ms;
        let watch = check > 0 && self.interactive() && self.current_turn.is_some();
        let Some(i) = self.input() else {
            return;
        };
        if !retry {
            i.enter_retries = 0;
        }
        if watch {
            self.timers.submit_deadline = Some(Instant::now() + Duration::from_millis(check));
        }
    }

    /// The agent has not reported the message it was given: press Enter again.
    pub(crate) async fn submit_overdue(&mut self) {
        let retries = self
            .agent
            .as_ref()
            .map_or(ENTER_RETRIES, |a| a.input.enter_retries);
        if self.current_turn.is_none() {
            return;
        }
        if retries >= ENTER_RETRIES {
            warn!("the agent did not take the message after {retries} more Enters");
            return;
        }
        if let Some(i) = self.input() {
            i.enter_retries += 1;
        }
        info!(
            retry = retries + 1,
            "no sign the agent took the message: pressing Enter again"
        );
        if let Err(e) = self.control.send_text("", true).await {
            warn!(error = %e, "pressing Enter failed");
        }
        self.enter_pressed(true);
    }

    /// Types a message into an agent: a bracketed paste now, Enter after `enter_delay_ms` —
    /// or, right after an interrupt, once the CLI has settled.
    pub(crate) async fn paste_message(
        &mut self,
        text: &str,
        enter: bool,
    ) -> Result<(), SupervisorError> {
        let (cost, tokens) = (self.info.cost_usd, self.info.tokens);
        if let Some(a) = self.agent.as_mut() {
            a.turn_start = (cost, tokens);
        }
        let settling = self
            .agent
            .as_ref()
            .and_then(|a| a.input.interrupted_at)
            .is_some_and(|t| t.elapsed() < SETTLE_MAX);
        if settling {
            if let Some(i) = self.input() {
                // Messages sent while it settles are typed as one.
                let text = match i.held.take() {
                    Some((before, _)) => format!("{before}\n{text}"),
                    None => text.to_string(),
                };
                i.held = Some((text, enter));
            }
            self.schedule_held();
            return Ok(());
        }
        let dirty = match self.input() {
            Some(i) => {
                i.interrupted_at = None;
                i.abort_pending = false;
                std::mem::take(&mut i.dirty_lines)
            }
            None => 0,
        };
        if dirty > 0 {
            self.control.clear_input(dirty).await.map_err(|e| {
                SupervisorError::Backend(format!("clearing the agent's input failed: {e}"))
            })?;
        }
        self.control.paste(text).await.map_err(|e| {
            SupervisorError::Backend(format!("pasting into the terminal failed: {e}"))
        })?;
        if enter {
            let delay = Duration::from_millis(self.inner.cfg.agents.enter_delay_ms);
            self.timers.enter_deadline = Some(Instant::now() + delay);
        }
        if let Some(i) = self.input() {
            i.last_lines = text.lines().count().max(1);
        }
        Ok(())
    }
}
