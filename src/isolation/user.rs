//! Who an agent runs as: the configured `agent.user`, or one UID per instance from
//! `agent.uid_range`. Resolved in the daemon (through a [`UserDb`], so tests need no real
//! users); the shim drops privileges with [`drop_privileges`].

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;

/// The identity the shim switches to: supplementary groups, GID, then UID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub shell: String,
}

/// A source of users and groups (the system's NSS in production, a table in tests).
pub trait UserDb {
    fn by_name(&self, name: &str) -> Option<UserEntry>;
    fn by_uid(&self, uid: u32) -> Option<UserEntry>;
    /// Supplementary groups of `name` (including `gid`).
    fn groups(&self, name: &str, gid: u32) -> Vec<u32>;
}

/// The system's user database (getpwnam/getgrouplist, so NSS sources count).
pub struct SystemUsers;

fn entry(u: nix::unistd::User) -> UserEntry {
    UserEntry {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        shell: u.shell.display().to_string(),
    }
}

impl UserDb for SystemUsers {
    fn by_name(&self, name: &str) -> Option<UserEntry> {
        nix::unistd::User::from_name(name).ok().flatten().map(entry)
    }
    fn by_uid(&self, uid: u32) -> Option<UserEntry> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(entry)
    }
    fn groups(&self, name: &str, gid: u32) -> Vec<u32> {
        let Ok(cname) = std::ffi::CString::new(name) else {
            return vec![gid];
        };
        nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(gid))
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![gid])
    }
}

/// Parses `agent.uid_range` ("FIRST-LAST"); empty is off.
pub fn parse_uid_range(s: &str) -> Result<Option<RangeInclusive<u32>>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || "expected \"FIRST-LAST\", e.g. \"200000-200999\"".to_string();
    let (a, b) = t.split_once('-').ok_or_else(bad)?;
    let first: u32 = a.trim().parse().map_err(|_| bad())?;
    let last: u32 = b.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last || last == u32::MAX {
        return Err("must be FIRST-LAST with 0 < FIRST ≤ LAST < 4294967295 (UID 0 is root)".into());
    }
    if last - first >= 1_000_000 {
        return Err("a range of at most 1000000 UIDs".into());
    }
    Ok(Some(first..=last))
}

/// How spawns get their identity.
pub enum Policy {
    /// Every instance runs as this user. `creds` is `None` when it is the daemon's own user.
    Shared {
        user: UserEntry,
        creds: Option<Credentials>,
    },
    /// Each instance gets its own UID (= GID, no supplementary groups) from the range.
    Range {
        name: String,
        range: RangeInclusive<u32>,
        leased: Arc<Mutex<BTreeSet<u32>>>,
    },
    /// Spawns are refused with this message (e.g. the user does not exist).
    Refused(String),
}

/// One instance's identity; a range UID returns to the pool when this is dropped.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub shell: String,
    pub creds: Option<Credentials>,
    lease: Option<(u32, Arc<Mutex<BTreeSet<u32>>>)>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        if let Some((uid, pool)) = self.lease.take() {
            pool.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        }
    }
}

/// Decides the policy from the config, the user database and the daemon's effective UID.
pub fn policy(cfg: &AgentConfig, db: &dyn UserDb, euid: u32) -> Policy {
    let range = match parse_uid_range(&cfg.uid_range) {
        Ok(r) => r,
        Err(e) => return Policy::Refused(format!("agent.uid_range = {:?}: {e}", cfg.uid_range)),
    };
    if let Some(range) = range {
        if euid != 0 {
            return Policy::Refused(format!(
                "agent.uid_range is set, but the daemon runs as UID {euid} and cannot switch users; run corral as root or unset agent.uid_range"
            ));
        }
        return Policy::Range {
            name: cfg.user.clone(),
            range,
            leased: Arc::new(Mutex::new(BTreeSet::new())),
        };
    }
    let Some(user) = db.by_name(&cfg.user) else {
        return Policy::Refused(format!(
            "agent.user = {:?}: no such user; create it (`useradd --system --no-create-home --shell /usr/sbin/nologin {}`, or `scripts/dev setup`) or set agent.user",
            cfg.user, cfg.user
        ));
    };
    if user.uid == 0 && !cfg.allow_root {
        return Policy::Refused(format!(
            "agent.user = {:?} is root: corral refuses to run agents as root; use a non-root agent.user, or set agent.allow_root = true to allow it",
            cfg.user
        ));
    }
    if euid != 0 && user.uid != euid {
        let me = db
            .by_uid(euid)
            .map(|u| u.name)
            .unwrap_or_else(|| euid.to_string());
        return Policy::Refused(format!(
            "agent.user = {:?}, but the daemon runs as {me:?} (not root) and cannot switch users; run corral as root, or set agent.user = {me:?}",
            cfg.user
        ));
    }
    let creds = (user.uid != euid).then(|| Credentials {
        uid: user.uid,
        gid: user.gid,
        groups: db.groups(&user.name, user.gid),
    });
    Policy::Shared { user, creds }
}

impl Policy {
    /// The identity for a new instance. `busy` says whether a UID still has processes (a
    /// range UID is not handed out again while anything runs as it).
    pub fn identity(&self, busy: &dyn Fn(u32) -> bool) -> Result<Identity, String> {
        match self {
            Policy::Refused(why) => Err(why.clone()),
            Policy::Shared { user, creds } => Ok(Identity {
                name: user.name.clone(),
                uid: user.uid,
                gid: user.gid,
                shell: usable_shell(&user.shell),
                creds: creds.clone(),
                lease: None,
            }),
            Policy::Range {
                name,
                range,
                leased,
            } => {
                let mut pool = leased.lock().unwrap_or_else(|p| p.into_inner());
                let uid = range
                    .clone()
                    .find(|u| !pool.contains(u) && !busy(*u))
                    .ok_or_else(|| {
                        format!(
                            "agent.uid_range {}-{}: every UID is in use",
                            range.start(),
                            range.end()
                        )
                    })?;
                pool.insert(uid);
                Ok(Identity {
                    name: name.clone(),
                    uid,
                    gid: uid,
                    shell: "/bin/sh".into(),
                    creds: Some(Credentials {
                        uid,
                        gid: uid,
                        groups: Vec::new(),
                    }),
                    lease: Some((uid, leased.clone())),
                })
            }
        }
    }

    /// Whether files owned by `uid` belong to agents (and so may be handed to another agent).
    pub fn is_agent_uid(&self, uid: u32) -> bool {
        match self {
            Policy::Shared { user, .. } => uid == user.uid && uid != 0,
            Policy::Range { range, .. } => range.contains(&uid),
            Policy::Refused(_) => false,
        }
    }
}

/// SHELL for agents: a system user's `nologin` or `false` would break tools that run
/// `$SHELL`, so those become `/bin/sh`.
pub fn usable_shell(shell: &str) -> String {
    if shell.is_empty() || shell.ends_with("/nologin") || shell.ends_with("/false") {
        "/bin/sh".into()
    } else {
        shell.into()
    }
}

/// Real UIDs of every running process (for [`Policy::identity`]'s `busy`).
pub fn uids_in_use() -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(e.path().join("status")) {
            if let Some(uid) = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|u| u.parse().ok())
            {
                out.insert(uid);
            }
        }
    }
    out
}

/// In the shim: supplementary groups, then GID, then UID; then checks that root cannot be
/// regained. Must run after everything that needs privileges.
pub fn drop_privileges(c: &Credentials) -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let groups: Vec<Gid> = c.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(|e| format!("setgroups({:?}): {e}", c.groups))?;
    let gid = Gid::from_raw(c.gid);
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid({}): {e}", c.gid))?;
    let uid = Uid::from_raw(c.uid);
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid({}): {e}", c.uid))?;
    if c.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("privileges were not dropped: setuid(0) still succeeds".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table(Vec<UserEntry>);
    impl UserDb for Table {
        fn by_name(&self, name: &str) -> Option<UserEntry> {
            self.0.iter().find(|u| u.name == name).cloned()
        }
        fn by_uid(&self, uid: u32) -> Option<UserEntry> {
            self.0.iter().find(|u| u.uid == uid).cloned()
        }
        fn groups(&self, _name: &str, gid: u32) -> Vec<u32> {
            vec![gid, 100]
        }
    }

    fn db() -> Table {
        let u = |name: &str, uid| UserEntry {
            name: name.into(),
            uid,
            gid: uid,
            shell: "/bin/sh".into(),
        };
        Table(vec![u("root", 0), u("corral", 999), u("dev", 1000)])
    }

    fn cfg(user: &str, allow_root: bool, range: &str) -> AgentConfig {
        AgentConfig {
            user: user.into(),
            allow_root,
            uid_range: range.into(),
        }
    }

    fn refused(p: Policy) -> String {
        match p {
            Policy::Refused(m) => m,
            _ => panic!("expected a refusal"),
        }
    }

    #[test]
    fn root_daemon_switches_to_the_agent_user() {
        let p = policy(&cfg("corral", false, ""), &db(), 0);
        let id = p.identity(&|_| false).unwrap();
        assert_eq!(
            id.creds,
            Some(Credentials {
                uid: 999,
                gid: 999,
                groups: vec![999, 100]
            })
        );
        assert!(p.is_agent_uid(999) && !p.is_agent_uid(0));
    }

    #[test]
    fn root_agents_need_allow_root() {
        let m = refused(policy(&cfg("root", false, ""), &db(), 0));
        assert!(m.contains("refuses to run agents as root") && m.contains("agent.allow_root"));
        let p = policy(&cfg("root", true, ""), &db(), 0);
        assert_eq!(p.identity(&|_| false).unwrap().creds, None, "already root");
    }

    #[test]
    fn missing_user_and_unprivileged_daemon_are_refused_with_a_fix() {
        let m = refused(policy(&cfg("ghost", false, ""), &db(), 0));
        assert!(m.contains("no such user") && m.contains("useradd"), "{m}");
        let m = refused(policy(&cfg("corral", false, ""), &db(), 1000));
        assert!(
            m.contains("cannot switch users") && m.contains("\"dev\""),
            "{m}"
        );
        let p = policy(&cfg("dev", false, ""), &db(), 1000);
        assert_eq!(p.identity(&|_| false).unwrap().creds, None);
        let m = refused(policy(&cfg("dev", false, "5000-5001"), &db(), 1000));
        assert!(m.contains("uid_range"), "{m}");
    }

    #[test]
    fn range_hands_out_distinct_free_uids_and_takes_them_back() {
        let p = policy(&cfg("agent", false, "5000-5002"), &db(), 0);
        let busy = |u: u32| u == 5001;
        let a = p.identity(&busy).unwrap();
        let b = p.identity(&busy).unwrap();
        assert_eq!((a.uid, b.uid), (5000, 5002));
        assert_eq!(b.creds.as_ref().unwrap().groups, Vec::<u32>::new());
        assert!(p
            .identity(&busy)
            .unwrap_err()
            .contains("every UID is in use"));
        drop(a);
        assert_eq!(p.identity(&busy).unwrap().uid, 5000);
        assert!(p.is_agent_uid(5001) && !p.is_agent_uid(4999));
    }

    #[test]
    fn uid_range_parsing() {
        assert_eq!(parse_uid_range(""), Ok(None));
        assert_eq!(parse_uid_range("200000-200999"), Ok(Some(200000..=200999)));
        assert!(parse_uid_range("0-10").is_err());
        assert!(parse_uid_range("10-5").is_err());
        assert!(parse_uid_range("abc").is_err());
        assert!(parse_uid_range("1-2000000").is_err());
    }

    #[test]
    fn the_system_db_knows_root() {
        let root = SystemUsers.by_uid(0).unwrap();
        assert_eq!(root.name, "root");
        assert!(SystemUsers.by_name("no-such-user-corral-test").is_none());
        assert!(uids_in_use().contains(&nix::unistd::getuid().as_raw()));
    }
}
