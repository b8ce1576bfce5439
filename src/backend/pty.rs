//! The PTY backend: corral holds the master side; the child runs in its own session with the
//! slave as its controlling terminal (portable-pty does setsid + TIOCSCTTY, resets signal
//! dispositions and the mask, and closes stray fds before exec).
//!
//! Output is read from the master through `AsyncFd` (no thread per instance); the exit is
//! noticed through a pidfd and the status reaped with `waitpid(pid)` on that one child, never
//! `waitpid(-1)`. The child is registered as owned (`children::spawn_owned`) until then, so
//! the orphan reaper leaves it alone.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use portable_pty::{CommandBuilder, MasterPty, PtySize};
use tokio::io::unix::AsyncFd;

use super::LaunchSpec;
use crate::model::ExitStatus;

pub struct Spawned {
    pub pid: i32,
    pub master: Box<dyn MasterPty + Send>,
    /// Non-blocking duplicate of the master for reading.
    pub read_fd: AsyncFd<OwnedFd>,
    /// Non-blocking duplicate of the master for writing.
    pub write_fd: AsyncFd<OwnedFd>,
    pub child: Box<dyn portable_pty::Child + Send + Sync>,
    /// Keeps the orphan reaper away from this child until [`reap`] has collected it.
    pub owned: super::children::Owned,
}

pub fn spawn(spec: &LaunchSpec) -> io::Result<Spawned> {
    let pty = portable_pty::native_pty_system();
    let pair = pty
        .openpty(size(spec.cols, spec.rows))
        .map_err(|e| io::Error::other(format!("openpty: {e}")))?;
    let mut cmd = CommandBuilder::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    // Nothing of the daemon's environment is inherited; the shim sets the program's.
    cmd.env_clear();
    cmd.cwd(&spec.cwd);
    let (child, owned) = super::children::spawn_owned(|| {
        #[allow(clippy::disallowed_methods)] // inside spawn_owned
        let child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| io::Error::other(format!("cannot start {:?}: {e}", spec.argv[0])))?;
        let pid = child
            .process_id()
            .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
        Ok((child, pid as i32))
    })?;
    drop(pair.slave);
    let pid = owned.pid();
    let raw = pair
        .master
        .as_raw_fd()
        .ok_or_else(|| io::Error::other("pty master has no fd"))?;
    // Safety: `raw` is the live master fd owned by `pair.master`, which outlives this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    Ok(Spawned {
        pid,
        read_fd: super::register_fd(dup_nonblocking(borrowed)?)?,
        write_fd: super::register_fd(dup_nonblocking(borrowed)?)?,
        master: pair.master,
        child,
        owned,
    })
}

fn size(cols: u16, rows: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

pub fn resize(master: &dyn MasterPty, cols: u16, rows: u16) -> io::Result<()> {
    master
        .resize(size(cols, rows))
        .map_err(|e| io::Error::other(format!("resize: {e}")))
}

fn dup_nonblocking(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let owned = fd.try_clone_to_owned()?;
    let flags = OFlag::from_bits_truncate(fcntl(&owned, FcntlArg::F_GETFL)?);
    fcntl(&owned, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(owned)
}

/// Reads output; `Ok(0)` once every process has closed the slave side (EIO).
pub async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

pub async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Reaps our child `pid`. After its pidfd fired this returns at once; without a pidfd the
/// blocking wait runs off the async threads.
pub async fn reap(pid: i32) -> io::Result<ExitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let pid = nix::unistd::Pid::from_raw(pid);
    if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        if let Some(s) = decode(status) {
            return Ok(s);
        }
    }
    tokio::task::spawn_blocking(move || loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(s) = decode(status) {
                    return Ok(s);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// Pure decoding of a wait status into exit code or signal.
pub fn decode(status: nix::sys::wait::WaitStatus) -> Option<ExitStatus> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus {
            code: Some(code),
            signal: None,
        }),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus {
            code: None,
            signal: Some(sig as i32),
        }),
        _ => None,
    }
}
