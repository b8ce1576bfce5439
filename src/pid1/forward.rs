//! Which signals the init loop waits for, and where it forwards them.

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// Signals passed on to the child. SIGKILL and SIGSTOP cannot be caught; the job-control
/// signals (SIGTSTP, SIGTTIN, SIGTTOU) keep their default meaning for us.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Everything the loop waits for: the forwarded signals and SIGCHLD. Blocked for the whole
/// life of the init process so that they queue until `sigwait` takes them. Blocked signals
/// are also the ones PID 1 can receive at all from inside its namespace: the kernel drops a
/// signal sent to a namespace init only when it is unblocked with the default action.
pub fn wait_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Where a forwarded signal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The child's whole process group (`kill(-pgid)`): the child is a session leader, so
    /// this is its pipeline or script with everything it started in the foreground.
    Group,
    /// The child process alone (the re-executed daemon, which signals its own children).
    Process,
}

/// The pid argument of `kill(2)` for `target`.
pub fn destination(child: Pid, target: Target) -> Pid {
    match target {
        Target::Group => Pid::from_raw(-child.as_raw()),
        Target::Process => child,
    }
}

/// Sends `sig` on; a child or group that is already gone (ESRCH) is not an error.
pub fn forward(sig: Signal, child: Pid, target: Target, who: &str) {
    match kill(destination(child, target), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => eprintln!("{who}: forwarding {sig} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_sigchld_and_every_forwarded_signal_only() {
        let set = wait_set();
        assert!(set.contains(Signal::SIGCHLD));
        for sig in FORWARDED {
            assert!(set.contains(sig), "{sig}");
        }
        for sig in [
            Signal::SIGKILL,
            Signal::SIGSTOP,
            Signal::SIGPIPE,
            Signal::SIGTSTP,
        ] {
            assert!(!set.contains(sig), "{sig}");
        }
        assert_eq!(set.iter().count(), FORWARDED.len() + 1);
    }

    #[test]
    fn group_targets_use_the_negative_pgid() {
        let child = Pid::from_raw(4242);
        assert_eq!(destination(child, Target::Group).as_raw(), -4242);
        assert_eq!(destination(child, Target::Process).as_raw(), 4242);
    }
}
