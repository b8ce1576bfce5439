//! Exit notification without polling: a pidfd becomes readable when its process terminates.
//!
//! This works for processes that are not our children (tmux panes are children of the tmux
//! server), so both backends learn of an exit the moment it happens. Requires Linux ≥ 5.3.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

pub struct PidFd(AsyncFd<OwnedFd>);

impl PidFd {
    /// Opens a pidfd for `pid`. `ESRCH` means the process is already gone (and reaped).
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // Safety: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // shared with the kernel.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: the syscall returned a fresh fd that nothing else owns; O_CLOEXEC is set by
        // pidfd_open.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd(super::register_fd(owned)?))
    }

    /// Resolves once the process has terminated.
    pub async fn exited(&self) -> io::Result<()> {
        let mut guard = self.0.readable().await?;
        // A pidfd stays readable after exit; keep the readiness so repeated calls return.
        guard.retain_ready();
        Ok(())
    }
}

/// Sends `sig` to the process group `pgid`; a group that no longer exists is success.
pub fn signal_group(pgid: i32, sig: nix::sys::signal::Signal) -> io::Result<()> {
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Whether any process is still in process group `pgid` (signal 0 probes without sending).
pub fn group_alive(pgid: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

/// The start time of `pid` in clock ticks after boot (/proc/PID/stat field 22).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// This boot's id: process start times are only comparable within one boot.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `pid` is the process recorded as (`start`, `boot`): alive, not a zombie, same start
/// time, same boot.
pub fn same_process(pid: i32, start: Option<u64>, boot: Option<&str>) -> bool {
    let (Some(start), Some(boot)) = (start, boot) else {
        return false;
    };
    let alive =
        zombie_status(pid).is_none() && std::path::Path::new(&format!("/proc/{pid}")).exists();
    alive && start_time(pid) == Some(start) && boot_id().as_deref() == Some(boot)
}

/// The exit status of `pid` while it is an unreaped zombie, from `/proc/PID/stat` field 52
/// (`exit_code`, the raw wait status; Linux ≥ 3.5). `None` when the process is not a zombie
/// (still running, or already reaped by its parent).
///
/// tmux panes need this: Debian's tmux runs `utempter` when a pane's pty closes and sets
/// SIGCHLD to SIG_DFL while it waits for it, so the pane's own SIGCHLD can be lost and tmux
/// never records `pane_dead_status`. The kernel still holds the status until the zombie is
/// reaped, and our pidfd guarantees the pid has not been reused before then.
pub fn zombie_status(pid: i32) -> Option<crate::model::ExitStatus> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_zombie_stat(&stat)
}

pub fn parse_zombie_stat(stat: &str) -> Option<crate::model::ExitStatus> {
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first()? != &"Z" {
        return None;
    }
    let raw: i32 = fields.get(52 - 3)?.parse().ok()?;
    let sig = raw & 0x7f;
    Some(if sig == 0 {
        crate::model::ExitStatus {
            code: Some((raw >> 8) & 0xff),
            signal: None,
        }
    } else {
        crate::model::ExitStatus {
            code: None,
            signal: Some(sig),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExitStatus;

    fn stat_line(state: &str, exit_code: i32) -> String {
        // pid (comm with ) and spaces) state, then fields 4..=51, then exit_code as field 52
        let mut s = format!("123 (we ird) x) {state}");
        for _ in 4..52 {
            s.push_str(" 0");
        }
        s.push_str(&format!(" {exit_code}\n"));
        s
    }

    #[test]
    fn decodes_zombie_wait_status() {
        assert_eq!(
            parse_zombie_stat(&stat_line("Z", 3 << 8)),
            Some(ExitStatus {
                code: Some(3),
                signal: None
            })
        );
        assert_eq!(
            parse_zombie_stat(&stat_line("Z", 15)),
            Some(ExitStatus {
                code: None,
                signal: Some(15)
            })
        );
        assert_eq!(parse_zombie_stat(&stat_line("S", 0)), None);
    }

    #[test]
    fn identifies_a_process_by_start_time() {
        let me = std::process::id() as i32;
        let start = start_time(me);
        assert!(start.is_some());
        let boot = boot_id();
        assert!(same_process(me, start, boot.as_deref()));
        assert!(!same_process(me, start.map(|s| s + 1), boot.as_deref()));
        assert!(!same_process(me, start, Some("another-boot")));
        assert!(!same_process(me, None, boot.as_deref()));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the test process is no subreaper
    fn reads_a_real_zombie() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { PidFd::open(pid).unwrap().exited().await.unwrap() });
        assert_eq!(
            zombie_status(pid),
            Some(ExitStatus {
                code: Some(5),
                signal: None
            })
        );
        let mut child = child;
        assert_eq!(child.wait().unwrap().code(), Some(5));
        assert_eq!(zombie_status(pid), None);
    }
}
