//! PID-1 mode: a tiny synchronous init that forwards signals and reaps zombies.
//!
//! Why an init at all: the kernel gives PID 1 of a PID namespace (a container's first
//! process) two jobs that ordinary programs do not do. It must reap every orphan that is
//! reparented to it, or zombies pile up until the pid table is full; and it gets no default
//! signal actions, so a SIGTERM from `docker stop` does nothing unless PID 1 handles it.
//! The Tokio daemon cannot do the first job safely: reaping any child means `waitpid(-1)`,
//! which steals the exit statuses that `tokio::process` and the PTY backend wait for on
//! their own children. So PID 1 is a separate, synchronous process, the way tini and
//! dumb-init do it.
//!
//! Theory of operation (everything happens in `main`, before the config is read, before the
//! tracing subscriber, the Tokio runtime or any other thread exists):
//! 1. Block the forwarded signals and SIGCHLD with `sigprocmask`, so none is lost or acted
//!    upon before the loop waits for them ([`forward::wait_set`]).
//! 2. Outside PID 1 (`corral init` run by hand), become a child subreaper, so orphans of the
//!    command's tree still come back to us.
//! 3. Fork and exec the child: `corral init -- CMD` runs CMD; `corral serve` as PID 1 re-runs
//!    `/proc/self/exe` with the same arguments and `CORRAL_PID1_CHILD=1`, so the child runs
//!    the daemon. Between fork and exec the child starts a new session (its own process
//!    group; it takes the terminal on stdin as its controlling terminal when it can) and
//!    restores the signal mask we started with; std resets SIGPIPE (which Rust ignores). An
//!    exec failure comes back through std's close-on-exec pipe: 127 when the program does
//!    not exist, 126 otherwise, with a message on stderr.
//! 4. Loop on `sigwait`: SIGCHLD reaps every zombie (`waitpid(-1, WNOHANG)` until 0 or
//!    ECHILD, since exits coalesce into one SIGCHLD); any other signal is forwarded
//!    ([`forward::Target`]). When the main child has been reaped, exit with its code, or
//!    128 + the signal that killed it ([`reaper::decode`]).
//!
//! This module imports nothing from the rest of corral.

mod forward;
mod reaper;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

pub use forward::{Target, FORWARDED};
pub use reaper::{decode, exec_failure_code};

/// Set (to `1`) in the environment of the daemon child that a PID-1 `corral serve` starts,
/// so the child serves instead of splitting again, and knows that its parent reaps orphans.
pub const CHILD_ENV: &str = "CORRAL_PID1_CHILD";

/// Whether this process is PID 1 of its PID namespace.
pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// Whether this process is the daemon child of a PID-1 `corral serve`.
pub fn under_pid1_parent() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

/// Whether `corral serve` must split into a PID-1 parent and a daemon child.
pub fn serve_needs_split() -> bool {
    is_pid1() && !under_pid1_parent()
}

/// `corral init -- CMD ARGS...`: runs CMD under the init loop; returns the exit code.
/// Signals go to CMD's whole process group (CMD is a session leader), like dumb-init.
pub fn init(argv: &[OsString]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("corral init: nothing to run (usage: corral init -- CMD [ARGS...])");
        return 2;
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    supervise(cmd, Target::Group, "corral init")
}

/// `corral serve` as PID 1: re-executes this binary with the same arguments as the daemon
/// child and runs the init loop over it; returns the exit code.
///
/// Signals go to the daemon process only, not its group: the daemon's process group holds
/// the short-lived `tmux` client commands it runs, and a forwarded SIGTERM must not cut one
/// of those off in the middle of the daemon's orderly shutdown. The daemon stops its
/// instances (each in its own session) itself.
pub fn serve_as_pid1() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some((arg0, rest)) = args.split_first() else {
        eprintln!("corral: no argv[0]; cannot re-execute myself");
        return 1;
    };
    let exe = std::path::Path::new("/proc/self/exe");
    let mut cmd = if exe.exists() {
        Command::new(exe)
    } else {
        Command::new(arg0)
    };
    cmd.arg0(arg0).args(rest).env(CHILD_ENV, "1");
    supervise(cmd, Target::Process, "corral")
}

/// Steps 1-4 of the module docs.
fn supervise(mut cmd: Command, target: Target, who: &str) -> i32 {
    let waited = forward::wait_set();
    let old_mask = match waited.thread_swap_mask(SigmaskHow::SIG_BLOCK) {
        Ok(old) => old,
        Err(e) => {
            eprintln!("{who}: cannot block signals: {e}");
            return 1;
        }
    };
    // Plain data, copied into the child's closure: no allocation after fork.
    let child_mask: libc::sigset_t = *old_mask.as_ref();
    if !is_pid1() {
        // Not fatal: without it, orphans of CMD's tree go to the real init instead of us.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("{who}: cannot become a child subreaper ({e}); orphans go to init");
        }
    }
    // Safety: the closure runs in the forked child between fork and exec. This process is
    // single-threaded here (we are in `main`, before any runtime or thread), and the closure
    // only makes async-signal-safe syscalls (setsid, sigprocmask, isatty, ioctl) on values it
    // owns; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The mask we started with (std resets SIGPIPE but not the mask): the child must
            // not inherit our blocked set, or it would never see SIGTERM.
            if libc::sigprocmask(libc::SIG_SETMASK, &child_mask, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Take the terminal when stdin is one that no other session holds; failure is
            // fine (no terminal, or it belongs to our own session).
            if libc::isatty(libc::STDIN_FILENO) == 1 {
                libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0);
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_os_string();
    // The init process is not the daemon: it reaps with waitpid(-1) on purpose.
    #[allow(clippy::disallowed_methods)]
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("{who}: cannot run {}: {e}", program.to_string_lossy());
            return exec_failure_code(&e);
        }
    };
    let main = Pid::from_raw(child.id() as i32);
    // The child is reaped by our own waitpid(-1) loop: std's handle must never wait for it
    // (dropping a std Child neither waits nor kills).
    drop(child);
    run_loop(&waited, main, target, who)
}

/// Waits for signals until the main child has ended; returns its exit code.
fn run_loop(waited: &SigSet, main: Pid, target: Target, who: &str) -> i32 {
    loop {
        // Reap first: the child may have ended before we started waiting, and a SIGCHLD
        // stands for any number of exits.
        if let Some(code) = reaper::reap_all(main) {
            if target == Target::Group {
                // What is left of its process group gets a polite signal before we go (as
                // PID 1, our exit SIGKILLs the rest of the namespace).
                forward::forward(Signal::SIGTERM, main, Target::Group, who);
            }
            reaper::reap_all(main);
            return code;
        }
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => forward::forward(sig, main, target, who),
            Err(e) => {
                // Cannot happen with a valid set; never spin: block in waitpid instead.
                eprintln!("{who}: sigwait failed ({e}); waiting for a child to exit");
                if let Some(code) = reaper::reap_blocking(main) {
                    return code;
                }
            }
        }
    }
}
