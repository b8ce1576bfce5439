//! The daemon's children: who reaps which process, now that corral is a child subreaper.
//!
//! Outside PID 1, `corral serve` sets `PR_SET_CHILD_SUBREAPER`, so a descendant orphaned by
//! its parent is reparented to the daemon instead of escaping to the host's init: above all
//! the private tmux server (the `tmux` client we run forks it and it daemonizes), and
//! anything an agent double-forks. Those adopted processes are our children too, so when
//! they end they stay zombies until *we* reap them.
//!
//! The daemon cannot reap with `waitpid(-1)`: that also collects the children whose status
//! someone is waiting for — the PTY backend's `waitpid(pid)` (an instance's exit code) and
//! `tokio::process` (each `tmux` client command) — and they would get ECHILD instead of the
//! status. So adopted orphans are told apart from our own children, and reaped one by one:
//!
//! - Every process the daemon forks goes through [`spawn_owned`], which holds a shared
//!   "spawn" lock from before the fork until its pid is in the registry of *owned* pids.
//!   (Clippy's `disallowed-methods`, in `clippy.toml`, rejects any other way to spawn.)
//! - On SIGCHLD the [orphan reaper](adopt_orphans) takes the spawn lock exclusively, lists
//!   the zombies whose parent is this process (`/proc/*/stat`: state `Z`, ppid = us), and
//!   `waitpid(pid, WNOHANG)`s each one that is **not** owned.
//!
//! Why this never steals a status: a zombie child of ours is either owned — registered
//! before the spawn lock was released, and unregistered only when its [`Owned`] token drops,
//! which its owner does after reaping it — or it was never forked by us, so it was adopted.
//! While the reaper holds the lock exclusively, no fork can be in the window between `fork`
//! and registration. Registrations are counted, so a pid reused by a new child while the
//! token of an old, reaped one is still alive stays owned. The one case where the reaper
//! may reap a process we forked is a token dropped *before* its reaping (a `tmux` command
//! whose future was cancelled): then nobody waits for the status any more, and Tokio's own
//! orphan queue treats ECHILD as "already reaped".
//!
//! Under a PID-1 `corral serve` the daemon is not a subreaper: orphans go to the PID-1
//! parent, which may use `waitpid(-1)` because it runs nothing else (see [`crate::pid1`]).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, PoisonError, RwLock};

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// Shared by spawns (between fork and registration), exclusive for the orphan reaper.
static SPAWN_LOCK: RwLock<()> = RwLock::new(());
/// Pids of children forked by this process whose status an owner still waits for, counted.
static OWNED: Mutex<BTreeMap<i32, usize>> = Mutex::new(BTreeMap::new());

/// Proof that a child is registered as ours; unregisters it when dropped. Keep it until the
/// child has been reaped by its owner.
#[derive(Debug)]
pub struct Owned(i32);

impl Owned {
    pub fn pid(&self) -> i32 {
        self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let mut owned = OWNED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = owned.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                owned.remove(&self.0);
            }
        }
    }
}

/// Runs `spawn` (which forks one child and returns it with its pid) so that the orphan
/// reaper can never take the child for an adopted orphan. The only way the daemon may start
/// a process.
pub fn spawn_owned<T>(spawn: impl FnOnce() -> io::Result<(T, i32)>) -> io::Result<(T, Owned)> {
    let _shared = SPAWN_LOCK.read().unwrap_or_else(PoisonError::into_inner);
    let (child, pid) = spawn()?;
    *OWNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(pid)
        .or_insert(0) += 1;
    Ok((child, Owned(pid)))
}

/// Makes this process a child subreaper and starts the task that reaps adopted orphans on
/// every SIGCHLD. Needs a Tokio runtime. Not for the daemon child of a PID-1 corral.
pub fn adopt_orphans() -> io::Result<()> {
    // Without /proc the reaper could not find the zombies: better not to adopt anything.
    std::fs::metadata("/proc/self/stat")
        .map_err(|e| io::Error::new(e.kind(), format!("/proc is not readable: {e}")))?;
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    nix::sys::prctl::set_child_subreaper(true)?;
    tokio::spawn(async move {
        loop {
            // A SIGCHLD stands for any number of exits; each pass reaps every adopted zombie.
            match tokio::task::spawn_blocking(reap_adopted).await {
                Ok(0) => {}
                Ok(n) => debug!(reaped = n, "reaped adopted orphans"),
                Err(e) => warn!(error = %e, "orphan reaper pass failed"),
            }
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(())
}

/// One reaper pass: reaps every zombie child of ours that no owner waits for. Returns how
/// many were reaped.
pub fn reap_adopted() -> usize {
    let _exclusive = SPAWN_LOCK.write().unwrap_or_else(PoisonError::into_inner);
    let me = std::process::id() as i32;
    let mut reaped = 0;
    for pid in zombie_children(me) {
        let owned = OWNED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&pid);
        if owned {
            continue;
        }
        // Only this pid: never -1. ECHILD means someone reaped it since we looked.
        if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            debug!(pid, ?status, "reaped an adopted orphan");
            reaped += 1;
        }
    }
    reaped
}

/// Zombies whose parent is `parent`, from `/proc/*/stat`.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            (state == 'Z' && ppid == parent).then_some(pid)
        })
        .collect()
}

/// (state, ppid) from a `/proc/PID/stat` line. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_ppid_even_with_odd_command_names() {
        assert_eq!(
            parse_stat("123 (sleep) Z 77 123 123 0 -1 4194564"),
            Some(('Z', 77))
        );
        assert_eq!(
            parse_stat("9 (a) b (c)) S 1 9 9 0"),
            Some(('S', 1)),
            "comm with ') '"
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("5 (x)"), None);
    }

    #[test]
    fn registrations_are_counted_and_dropped_with_their_token() {
        let fake = || Ok(((), i32::MAX - 7));
        let (_, a) = spawn_owned(fake).unwrap();
        let (_, b) = spawn_owned(fake).unwrap();
        let count = || OWNED.lock().unwrap().get(&(i32::MAX - 7)).copied();
        assert_eq!(count(), Some(2));
        drop(a);
        assert_eq!(count(), Some(1), "a reused pid stays owned");
        assert_eq!(b.pid(), i32::MAX - 7);
        drop(b);
        assert_eq!(count(), None);
    }

    #[test]
    fn a_failed_spawn_registers_nothing() {
        let err = spawn_owned::<()>(|| Err(io::Error::other("no fork"))).unwrap_err();
        assert_eq!(err.to_string(), "no fork");
    }
}
