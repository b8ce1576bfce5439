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
