//! Reaping: every zombie child, main child or adopted orphan, with `waitpid(-1, WNOHANG)`.
//! Only the PID-1 process (which runs no Tokio and spawns nothing else) may do this.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The exit code that stands for a wait status, as shells report it: the code of a process
/// that exited, 128 + the signal of one that was killed. `None` for statuses that are not
/// an end (stopped, continued, still alive).
pub fn decode(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// The exit code when the command could not be executed at all: 127 when it does not exist
/// (as a shell says "command not found"), 126 when it exists but cannot run.
pub fn exec_failure_code(err: &std::io::Error) -> i32 {
    match err.raw_os_error() {
        Some(libc::ENOENT) => 127,
        _ if err.kind() == std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Reaps every child that has ended, without blocking. Returns the exit code of `main` if
/// it was among them.
pub fn reap_all(main: Pid) -> Option<i32> {
    let mut main_code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(status) => {
                if status.pid() == Some(main) {
                    main_code = decode(status).or(main_code);
                }
            }
            Err(Errno::EINTR) => continue,
            // ECHILD: no children left at all.
            Err(_) => break,
        }
    }
    main_code
}

/// Blocks until one child ends and reaps it. Returns the exit code of `main` if it was the
/// one; 1 if there is no child left (the main child cannot be waited for any more).
pub fn reap_blocking(main: Pid) -> Option<i32> {
    loop {
        match waitpid(None, None) {
            Ok(status) if status.pid() == Some(main) => return decode(status),
            Ok(_) => return None,
            Err(Errno::EINTR) => continue,
            Err(_) => return Some(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn decodes_exit_codes_and_signals_like_a_shell() {
        let p = Pid::from_raw(42);
        let cases = [
            (WaitStatus::Exited(p, 0), Some(0)),
            (WaitStatus::Exited(p, 7), Some(7)),
            (WaitStatus::Exited(p, 255), Some(255)),
            (WaitStatus::Signaled(p, Signal::SIGKILL, false), Some(137)),
            (WaitStatus::Signaled(p, Signal::SIGTERM, false), Some(143)),
            (WaitStatus::Signaled(p, Signal::SIGSEGV, true), Some(139)),
            (WaitStatus::Signaled(p, Signal::SIGINT, false), Some(130)),
            (WaitStatus::Stopped(p, Signal::SIGSTOP), None),
            (WaitStatus::Continued(p), None),
            (WaitStatus::StillAlive, None),
        ];
        for (status, want) in cases {
            assert_eq!(decode(status), want, "{status:?}");
        }
    }

    #[test]
    fn exec_failures_map_to_127_and_126() {
        let not_found = std::io::Error::from_raw_os_error(libc::ENOENT);
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let bad_format = std::io::Error::from_raw_os_error(libc::ENOEXEC);
        assert_eq!(exec_failure_code(&not_found), 127);
        assert_eq!(
            exec_failure_code(&std::io::Error::from(std::io::ErrorKind::NotFound)),
            127
        );
        assert_eq!(exec_failure_code(&denied), 126);
        assert_eq!(exec_failure_code(&bad_format), 126);
    }
}
