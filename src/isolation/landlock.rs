//! Optional Landlock confinement: the instance may write only beneath its workspace, its HOME
//! and its private tmp (plus the terminal and `/dev/null`-like devices). Reads and execution
//! are not restricted; other users' files stay protected by ordinary permissions.

use std::path::{Path, PathBuf};

use landlock::{
    AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use serde::{Deserialize, Serialize};

/// Device nodes an instance may open for writing.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// What the shim enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Directories beneath which every write access is allowed.
    pub writable: Vec<PathBuf>,
    /// Devices that may be opened for writing (and truncated, for `> /dev/null`).
    pub devices: Vec<PathBuf>,
}

/// The kernel's Landlock ABI version, or why Landlock cannot be used.
pub fn abi() -> Result<i32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // Safety: with a NULL attribute, size 0 and the VERSION flag, landlock_create_ruleset
    // only returns the ABI version (or -1 with errno); it creates nothing and reads no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v >= 1 {
        return Ok(v as i32);
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no Landlock support (CONFIG_SECURITY_LANDLOCK)".into()
        }
        Some(libc::EOPNOTSUPP) => {
            "Landlock is built in but not enabled (add landlock to the lsm= boot parameter)".into()
        }
        _ => format!("landlock_create_ruleset: {err}"),
    })
}

pub fn rules(workspace: &Path, home: &Path, tmp: &Path) -> Rules {
    Rules {
        writable: vec![workspace.into(), home.into(), tmp.into()],
        devices: DEVICES.iter().map(PathBuf::from).collect(),
    }
}

/// The write-like rights handled at `abi`. Device ioctls (ABI 5) are left alone so terminals
/// keep working, and so are Unix socket connections (ABI 9).
fn handled(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_write(abi) & !(AccessFs::IoctlDev | AccessFs::ResolveUnix)
}

/// In the shim: restricts the calling process (and everything it executes). Also sets
/// `no_new_privs`, which Landlock requires of unprivileged callers.
pub fn apply(rules: &Rules) -> Result<(), String> {
    let version = abi()?;
    let abi = ABI::from(version);
    let all = handled(abi);
    let device_access = (AccessFs::WriteFile | AccessFs::Truncate) & all;
    let err = |what: &str, e: &dyn std::fmt::Display| format!("landlock: {what}: {e}");
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(|e| err("handling write access", &e))?
        .create()
        .map_err(|e| err("creating the ruleset", &e))?;
    for dir in &rules.writable {
        let fd = PathFd::new(dir).map_err(|e| err(&format!("opening {}", dir.display()), &e))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, all))
            .map_err(|e| err(&format!("allowing {}", dir.display()), &e))?;
    }
    for dev in &rules.devices {
        // Devices missing on this host are simply not allowed.
        let Ok(fd) = PathFd::new(dev) else { continue };
        let access = if dev.is_dir() {
            device_access
        } else {
            device_access & AccessFs::from_file(abi)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| err(&format!("allowing {}", dev.display()), &e))?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| err("restricting the process", &e))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock: the kernel did not enforce the ruleset".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_is_a_version_or_a_reason() {
        match abi() {
            Ok(v) => assert!(v >= 1),
            Err(why) => assert!(!why.is_empty()),
        }
    }

    #[test]
    fn handled_rights_leave_terminals_alone() {
        let h = handled(ABI::V7);
        assert!(h.contains(AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate));
        assert!(!h.contains(AccessFs::IoctlDev));
        assert!(!h.contains(AccessFs::ReadFile) && !h.contains(AccessFs::Execute));
        let r = rules(Path::new("/w"), Path::new("/h"), Path::new("/t"));
        assert_eq!(r.writable.len(), 3);
        assert!(r.devices.contains(&PathBuf::from("/dev/null")));
    }
}
