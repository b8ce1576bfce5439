//! The instance lifecycle as an explicit enum with a pure transition function.
//!
//! ```text
//!   starting ──ready──▶ ready ◀──turn done── busy
//!      │                  │ ──message──────▶  │
//!      │                  ├──pause──▶ paused ─┤ (resume → ready)
//!      │ stop/start fail  ▼ stop              ▼ stop
//!      └────────────▶ stopping{reason} ──exit──▶ killed{reason} | failed (spawn)
//!   exit while starting ─▶ failed (spawn_failed)
//!   exit while ready/busy/paused ─▶ exited{completed | crashed}
//!   OOM kill while starting/ready/busy/paused ─▶ killed{oom}
//!   found dead after a restart ─▶ lost
//! ```
//!
//! End states: `exited` means the process ended on its own; `killed` means corral ended it
//! (the reason says why); `failed` means it never became ready. The task applies side effects
//! (signals, timers, store writes); this module decides, and is tested by tables.

use crate::model::{ExitStatus, ReasonCode, StateName};

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Starting,
    Ready,
    Busy,
    Paused,
    Stopping {
        reason: ReasonCode,
    },
    Exited {
        reason: ReasonCode,
        status: ExitStatus,
    },
    Killed {
        reason: ReasonCode,
        status: ExitStatus,
    },
    Failed {
        status: Option<ExitStatus>,
    },
    Lost,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The readiness signal (ready pattern, settle window, agent hook).
    ReadySeen,
    /// A message was written to the instance.
    MessageSent,
    /// The current turn finished (quiet output, agent Stop hook, result line).
    TurnDone,
    Pause,
    Resume,
    /// Corral decided to stop it.
    Stop(ReasonCode),
    /// It did not become ready in time.
    StartTimedOut,
    /// The process ended with this status.
    ProcessExited(ExitStatus),
    /// It ended with this status after the kernel's OOM killer ended processes of its cgroup.
    OomKilled(ExitStatus),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the instance has ended ({0})")]
    Ended(&'static str),
    #[error("the instance is paused; raise its budget or resume it first")]
    Paused,
    #[error("the instance is stopping")]
    Stopping,
    #[error("cannot {action} an instance that is {state}")]
    Invalid {
        action: &'static str,
        state: &'static str,
    },
}

impl State {
    pub fn name(&self) -> StateName {
        match self {
            State::Starting => StateName::Starting,
            State::Ready => StateName::Ready,
            State::Busy => StateName::Busy,
            State::Paused => StateName::Paused,
            State::Stopping { .. } => StateName::Stopping,
            State::Exited { .. } => StateName::Exited,
            State::Killed { .. } => StateName::Killed,
            State::Failed { .. } => StateName::Failed,
            State::Lost => StateName::Lost,
        }
    }

    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            State::Stopping { reason }
            | State::Exited { reason, .. }
            | State::Killed { reason, .. } => Some(*reason),
            State::Failed { .. } => Some(ReasonCode::SpawnFailed),
            State::Lost => Some(ReasonCode::Lost),
            _ => None,
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            State::Exited { status, .. } | State::Killed { status, .. } => Some(*status),
            State::Failed { status } => *status,
            _ => None,
        }
    }

    pub fn is_ended(&self) -> bool {
        !self.name().is_live()
    }
}

/// The next state for `input`, or why the input is refused. Inputs that do not apply to the
/// current state and are harmless (a late ready signal, a second stop) leave it unchanged.
pub fn next(state: &State, input: &Input) -> Result<State, Rejected> {
    use Input as I;
    use State as S;
    if state.is_ended() {
        return Err(Rejected::Ended(state.name().as_str()));
    }
    Ok(match (state, input) {
        (S::Starting, I::ReadySeen) => S::Ready,
        (_, I::ReadySeen) => state.clone(),

        (S::Paused, I::MessageSent) => return Err(Rejected::Paused),
        (S::Stopping { .. }, I::MessageSent) => return Err(Rejected::Stopping),
        (S::Starting, I::MessageSent) => S::Starting,
        (S::Ready | S::Busy, I::MessageSent) => S::Busy,

        (S::Busy, I::TurnDone) => S::Ready,
        (_, I::TurnDone) => state.clone(),

        (S::Ready | S::Busy, I::Pause) => S::Paused,
        (S::Paused, I::Pause) => S::Paused,
        (_, I::Pause) => {
            return Err(Rejected::Invalid {
                action: "pause",
                state: state.name().as_str(),
            })
        }
        (S::Paused, I::Resume) => S::Ready,
        (_, I::Resume) => state.clone(),

        (S::Stopping { .. }, I::Stop(_)) => state.clone(),
        (_, I::Stop(reason)) => S::Stopping { reason: *reason },

        (S::Starting, I::StartTimedOut) => S::Stopping {
            reason: ReasonCode::SpawnFailed,
        },
        (_, I::StartTimedOut) => state.clone(),

        (S::Starting, I::ProcessExited(status)) => S::Failed {
            status: Some(*status),
        },
        (
            S::Stopping {
                reason: ReasonCode::SpawnFailed,
            },
            I::ProcessExited(status),
        ) => S::Failed {
            status: Some(*status),
        },
        (S::Stopping { reason }, I::ProcessExited(status)) => S::Killed {
            reason: *reason,
            status: *status,
        },
        (
            S::Stopping {
                reason: ReasonCode::SpawnFailed,
            },
            I::OomKilled(status),
        ) => S::Failed {
            status: Some(*status),
        },
        // A stop corral had decided keeps its reason.
        (S::Stopping { reason }, I::OomKilled(status)) => S::Killed {
            reason: *reason,
            status: *status,
        },
        (S::Starting | S::Ready | S::Busy | S::Paused, I::OomKilled(status)) => S::Killed {
            reason: ReasonCode::Oom,
            status: *status,
        },
        (S::Ready | S::Busy | S::Paused, I::ProcessExited(status)) => S::Exited {
            reason: if status.success() {
                ReasonCode::Completed
            } else {
                ReasonCode::Crashed
            },
            status: *status,
        },
        // Ended states returned above; Lost is ended.
        (S::Exited { .. } | S::Killed { .. } | S::Failed { .. } | S::Lost, _) => {
            return Err(Rejected::Ended(state.name().as_str()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReasonCode as R;
    use State as S;

    const OK: ExitStatus = ExitStatus {
        code: Some(0),
        signal: None,
    };
    const E3: ExitStatus = ExitStatus {
        code: Some(3),
        signal: None,
    };
    const TERM: ExitStatus = ExitStatus {
        code: None,
        signal: Some(15),
    };
    const KILL: ExitStatus = ExitStatus {
        code: None,
        signal: Some(9),
    };

    #[test]
    fn transition_table() {
        let stopping = |r| S::Stopping { reason: r };
        let table: Vec<(State, Input, Result<State, Rejected>)> = vec![
            (S::Starting, Input::ReadySeen, Ok(S::Ready)),
            (S::Ready, Input::ReadySeen, Ok(S::Ready)),
            (S::Starting, Input::MessageSent, Ok(S::Starting)),
            (S::Ready, Input::MessageSent, Ok(S::Busy)),
            (S::Busy, Input::MessageSent, Ok(S::Busy)),
            (S::Paused, Input::MessageSent, Err(Rejected::Paused)),
            (
                stopping(R::Requested),
                Input::MessageSent,
                Err(Rejected::Stopping),
            ),
            (S::Busy, Input::TurnDone, Ok(S::Ready)),
            (S::Ready, Input::TurnDone, Ok(S::Ready)),
            (S::Busy, Input::Pause, Ok(S::Paused)),
            (S::Ready, Input::Pause, Ok(S::Paused)),
            (
                S::Starting,
                Input::Pause,
                Err(Rejected::Invalid {
                    action: "pause",
                    state: "starting",
                }),
            ),
            (S::Paused, Input::Resume, Ok(S::Ready)),
            (S::Busy, Input::Resume, Ok(S::Busy)),
            (
                S::Starting,
                Input::Stop(R::Requested),
                Ok(stopping(R::Requested)),
            ),
            (
                S::Ready,
                Input::Stop(R::IdleTimeout),
                Ok(stopping(R::IdleTimeout)),
            ),
            (
                S::Busy,
                Input::Stop(R::WallTimeout),
                Ok(stopping(R::WallTimeout)),
            ),
            (
                S::Paused,
                Input::Stop(R::SupervisorShutdown),
                Ok(stopping(R::SupervisorShutdown)),
            ),
            // the first stop reason wins
            (
                stopping(R::IdleTimeout),
                Input::Stop(R::Requested),
                Ok(stopping(R::IdleTimeout)),
            ),
            (
                S::Starting,
                Input::StartTimedOut,
                Ok(stopping(R::SpawnFailed)),
            ),
            (S::Ready, Input::StartTimedOut, Ok(S::Ready)),
            (
                S::Starting,
                Input::ProcessExited(E3),
                Ok(S::Failed { status: Some(E3) }),
            ),
            (
                S::Starting,
                Input::ProcessExited(OK),
                Ok(S::Failed { status: Some(OK) }),
            ),
            (
                stopping(R::SpawnFailed),
                Input::ProcessExited(TERM),
                Ok(S::Failed { status: Some(TERM) }),
            ),
            (
                stopping(R::Requested),
                Input::ProcessExited(TERM),
                Ok(S::Killed {
                    reason: R::Requested,
                    status: TERM,
                }),
            ),
            (
                stopping(R::IdleTimeout),
                Input::ProcessExited(OK),
                Ok(S::Killed {
                    reason: R::IdleTimeout,
                    status: OK,
                }),
            ),
            (
                S::Ready,
                Input::ProcessExited(OK),
                Ok(S::Exited {
                    reason: R::Completed,
                    status: OK,
                }),
            ),
            (
                S::Busy,
                Input::ProcessExited(E3),
                Ok(S::Exited {
                    reason: R::Crashed,
                    status: E3,
                }),
            ),
            (
                S::Paused,
                Input::ProcessExited(TERM),
                Ok(S::Exited {
                    reason: R::Crashed,
                    status: TERM,
                }),
            ),
            (
                S::Exited {
                    reason: R::Completed,
                    status: OK,
                },
                Input::MessageSent,
                Err(Rejected::Ended("exited")),
            ),
            (
                S::Killed {
                    reason: R::Requested,
                    status: TERM,
                },
                Input::Stop(R::Requested),
                Err(Rejected::Ended("killed")),
            ),
            (
                S::Failed { status: None },
                Input::ReadySeen,
                Err(Rejected::Ended("failed")),
            ),
            (
                S::Lost,
                Input::ProcessExited(OK),
                Err(Rejected::Ended("lost")),
            ),
            (
                S::Busy,
                Input::OomKilled(KILL),
                Ok(S::Killed {
                    reason: R::Oom,
                    status: KILL,
                }),
            ),
            (
                S::Ready,
                Input::OomKilled(E3),
                Ok(S::Killed {
                    reason: R::Oom,
                    status: E3,
                }),
            ),
            (
                S::Starting,
                Input::OomKilled(KILL),
                Ok(S::Killed {
                    reason: R::Oom,
                    status: KILL,
                }),
            ),
            (
                stopping(R::Requested),
                Input::OomKilled(KILL),
                Ok(S::Killed {
                    reason: R::Requested,
                    status: KILL,
                }),
            ),
            (
                stopping(R::SpawnFailed),
                Input::OomKilled(KILL),
                Ok(S::Failed { status: Some(KILL) }),
            ),
            (
                S::Killed {
                    reason: R::Oom,
                    status: KILL,
                },
                Input::OomKilled(KILL),
                Err(Rejected::Ended("killed")),
            ),
        ];
        for (from, input, want) in table {
            assert_eq!(next(&from, &input), want, "{from:?} + {input:?}");
        }
    }

    #[test]
    fn every_live_state_can_be_stopped_and_ends_with_a_reason() {
        for s in [S::Starting, S::Ready, S::Busy, S::Paused] {
            let stopping = next(&s, &Input::Stop(R::Requested)).unwrap();
            let end = next(&stopping, &Input::ProcessExited(TERM)).unwrap();
            assert!(end.is_ended());
            assert!(end.reason().is_some(), "{end:?}");
        }
    }

    #[test]
    fn names_and_reasons() {
        assert_eq!(S::Failed { status: None }.reason(), Some(R::SpawnFailed));
        assert_eq!(S::Lost.name(), StateName::Lost);
        assert!(!S::Busy.is_ended());
        assert_eq!(
            S::Killed {
                reason: R::WallTimeout,
                status: TERM
            }
            .exit_status(),
            Some(TERM)
        );
    }
}
