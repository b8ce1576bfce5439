//! `corral __exec --plan FILE -- ARGV...`: the first program of every instance.
//!
//! Both backends start processes through code corral does not control (tmux forks panes in
//! its server; portable-pty forks for us), so the instance's first process is corral itself.
//! It is small, synchronous and single-threaded (no Tokio). It reads its plan — a 0600 file
//! the daemon wrote, owned by the same user, deleted as soon as it is read — and then, in this
//! fixed order:
//!
//! 1. joins the instance's cgroup (its own pid into each `cgroup.procs`), before anything runs;
//! 2. sets the rlimits (soft = hard; `core` = 0);
//! 3. applies Landlock, when planned (this also sets `no_new_privs`);
//! 4. changes to the workspace;
//! 5. gives the terminal on stdin to the agent's user (as `login` does);
//! 6. drops privileges: `setgroups`, `setresgid`, `setresuid`, then checks `setuid(0)` fails;
//! 7. sets `PR_SET_NO_NEW_PRIVS`, so no set-uid program can raise them again;
//! 8. replaces the environment with the plan's and executes ARGV (looked up on the plan's
//!    PATH).
//!
//! Secrets travel only in the plan file, never on a command line or in tmux's environment.
//! A failure before exec prints `corral: ...` on the terminal and exits 125; exec failures
//! exit 127 (not found) or 126 (not executable), as shells do.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::{landlock, rlimit, user, IsolationPlan};

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "__exec";

/// Exit code for a failure before exec (the isolation could not be applied).
pub const SETUP_FAILED: i32 = 125;

/// The shim's command line: `EXE __exec --plan PLAN -- ARGV...`.
pub fn command_line(exe: &Path, plan: &Path, argv: &[String]) -> Vec<String> {
    let mut v = vec![
        exe.display().to_string(),
        SUBCOMMAND.to_string(),
        "--plan".to_string(),
        plan.display().to_string(),
        "--".to_string(),
    ];
    v.extend(argv.iter().cloned());
    v
}

/// Parses the arguments after the subcommand.
pub fn parse_args(args: &[OsString]) -> Result<(PathBuf, Vec<OsString>), String> {
    match args {
        [flag, plan, dd, argv @ ..] if flag == "--plan" && dd == "--" && !argv.is_empty() => {
            Ok((PathBuf::from(plan), argv.to_vec()))
        }
        _ => Err(format!(
            "usage: corral {SUBCOMMAND} --plan FILE -- PROGRAM [ARGS...] (internal; started by the daemon)"
        )),
    }
}

/// Writes a plan readable only by its owner; refuses to overwrite anything.
pub fn write_plan(path: &Path, plan: &IsolationPlan) -> std::io::Result<()> {
    use std::io::Write;
    let body = serde_json::to_vec(plan).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(&body)?;
    f.sync_all()
}

/// Reads and deletes a plan, after checking that it is a regular file owned by us and
/// private to us.
pub fn read_plan(path: &Path) -> Result<IsolationPlan, String> {
    let ctx = |e: std::io::Error| format!("reading the plan {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(ctx)?;
    let meta = f.metadata().map_err(ctx)?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the plan {} is not a private file of UID {euid}; refusing it",
            path.display()
        ));
    }
    let mut body = Vec::new();
    f.read_to_end(&mut body).map_err(ctx)?;
    std::fs::remove_file(path).map_err(ctx)?;
    serde_json::from_slice(&body)
        .map_err(|e| format!("the plan {} is invalid: {e}", path.display()))
}

/// The shim's entry point (called from `main` before any runtime or config exists).
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(2).collect();
    let (plan, argv) = match parse_args(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("corral: {e}");
            return 2;
        }
    };
    let (code, msg) = run(&plan, &argv);
    eprintln!("corral: {msg}");
    code
}

/// Applies the plan and executes `argv`; returns only on failure, with the exit code.
fn run(plan_path: &Path, argv: &[OsString]) -> (i32, String) {
    let fail = |m: String| (SETUP_FAILED, format!("isolation: {m}"));
    let plan = match read_plan(plan_path) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let pid = std::process::id().to_string();
    for procs in &plan.cgroup_procs {
        if let Err(e) = std::fs::write(procs, &pid) {
            return fail(format!("joining the cgroup {}: {e}", procs.display()));
        }
    }
    if let Err(e) = rlimit::apply(&plan.rlimits) {
        return fail(e);
    }
    if let Some(rules) = &plan.landlock {
        if let Err(e) = landlock::apply(rules) {
            return fail(e);
        }
    }
    if let Err(e) = std::env::set_current_dir(&plan.cwd) {
        return fail(format!("changing to {}: {e}", plan.cwd.display()));
    }
    if let Some(c) = &plan.credentials {
        give_terminal(c.uid);
        if let Err(e) = user::drop_privileges(c) {
            return fail(e);
        }
    }
    if let Err(e) = set_no_new_privs() {
        return fail(e);
    }
    let err = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    (
        code,
        format!("cannot run {}: {err}", argv[0].to_string_lossy()),
    )
}

/// The terminal on stdin becomes the agent's (mode 0620), so it can reopen it by name.
fn give_terminal(uid: u32) {
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return;
    }
    // Safety: fchown/fchmod on fd 0 take plain integers; a failure only leaves the terminal
    // as it was, which still works through the inherited descriptors.
    unsafe {
        libc::fchown(0, uid, u32::MAX);
        libc::fchmod(0, 0o620);
    }
}

fn set_no_new_privs() -> Result<(), String> {
    // Safety: PR_SET_NO_NEW_PRIVS takes integer arguments only and affects this process.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> IsolationPlan {
        IsolationPlan {
            cgroup_procs: vec![],
            rlimits: vec![],
            landlock: None,
            env: vec![("SECRET".into(), "s3cr3t".into())],
            cwd: PathBuf::from("/"),
            credentials: None,
        }
    }

    #[test]
    fn command_line_round_trips() {
        let cl = command_line(
            Path::new("/proc/1/exe"),
            Path::new("/r/p.plan"),
            &["sh".into(), "-c".into(), "x".into()],
        );
        assert_eq!(&cl[1..5], &[SUBCOMMAND, "--plan", "/r/p.plan", "--"]);
        let args: Vec<OsString> = cl[2..].iter().map(OsString::from).collect();
        let (p, argv) = parse_args(&args).unwrap();
        assert_eq!(p, PathBuf::from("/r/p.plan"));
        assert_eq!(argv, ["sh", "-c", "x"]);
        assert!(parse_args(&[OsString::from("--plan"), OsString::from("x")]).is_err());
        assert!(!cl.iter().any(|a| a.contains("s3cr3t")));
    }

    #[test]
    fn plan_files_are_private_read_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.plan");
        write_plan(&p, &plan()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(write_plan(&p, &plan()).is_err(), "never overwritten");
        let read = read_plan(&p).unwrap();
        assert_eq!(read.env, plan().env);
        assert!(!p.exists(), "deleted once read");
        assert!(read_plan(&p).unwrap_err().contains("reading the plan"));
        // a plan others could read is refused
        write_plan(&p, &plan()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_plan(&p).unwrap_err().contains("refusing"));
    }
}
