//! `corral doctor`: checks this host for what the daemon needs, explains each finding and how
//! to fix it, and exits 1 when something required is broken. It changes nothing (the cgroup
//! probe creates and removes one empty directory).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::isolation::{cgroup, landlock, user};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Note,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, level: Level, what: &str, detail: &str, fix: Option<&str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Note => "note",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {what}: {detail}");
        if let Some(fix) = fix {
            println!("      fix: {fix}");
        }
        self.failed |= level == Level::Fail;
    }
}

pub fn run(cfg: &Config) -> i32 {
    let euid = nix::unistd::geteuid().as_raw();
    println!(
        "corral doctor: checking as UID {euid}{} (run it as the daemon's user)",
        if euid == 0 { " (root)" } else { "" }
    );
    let mut r = Report { failed: false };
    check_tmux(cfg, &mut r);
    let policy = user::policy(&cfg.agent, &user::SystemUsers, euid);
    check_agent(&policy, &mut r);
    check_cgroups(cfg, &mut r);
    check_landlock(cfg, &mut r);
    for (bin, what) in [("claude", "Claude Code"), ("codex", "Codex")] {
        match find_on_path(bin) {
            Some(p) => r.line(Level::Ok, bin, &p.display().to_string(), None),
            None => r.line(
                Level::Note,
                bin,
                &format!("not on PATH (needed only for {what} agents)"),
                None,
            ),
        }
    }
    check_dirs(cfg, &policy, &mut r);
    if r.failed {
        println!("corral doctor: something required is broken (see FAIL above)");
        1
    } else {
        println!("corral doctor: ready");
        0
    }
}

// `corral doctor` is a short-lived CLI process, not the subreaping daemon: it may run tmux
// directly (see clippy.toml).
#[allow(clippy::disallowed_methods)]
fn check_tmux(cfg: &Config, r: &mut Report) {
    let needed = cfg.instance.backend == "tmux";
    match std::process::Command::new(&cfg.tmux.binary)
        .arg("-V")
        .output()
    {
        Ok(o) if o.status.success() => r.line(
            Level::Ok,
            "tmux",
            String::from_utf8_lossy(&o.stdout).trim(),
            None,
        ),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            r.line(
                if needed { Level::Fail } else { Level::Warn },
                "tmux",
                &format!("{:?} does not run: {why}", cfg.tmux.binary),
                Some("apt-get install tmux (or set tmux.binary)"),
            );
        }
    }
}

fn check_agent(policy: &user::Policy, r: &mut Report) {
    match policy {
        user::Policy::Refused(why) => r.line(Level::Fail, "agent user", why, None),
        user::Policy::Shared { user, creds } => {
            let how = match creds {
                Some(c) => format!(
                    "agents run as {:?} (UID {}, GID {})",
                    user.name, c.uid, c.gid
                ),
                None => format!("agents run as {:?}, the daemon's own user", user.name),
            };
            let level = if user.uid == 0 {
                Level::Warn
            } else {
                Level::Ok
            };
            r.line(level, "agent user", &how, None);
            if creds.is_some() {
                r.line(
                    Level::Note,
                    "agent UIDs",
                    "every instance shares this UID, so instances can read each other's workspaces",
                    Some("set agent.uid_range = \"200000-200999\" for a UID per instance"),
                );
            }
        }
        user::Policy::Range { range, .. } => {
            let taken = passwd_uids_in(range);
            if taken.is_empty() {
                r.line(
                    Level::Ok,
                    "agent UIDs",
                    &format!(
                        "one UID per instance from {}-{}",
                        range.start(),
                        range.end()
                    ),
                    None,
                );
            } else {
                r.line(
                    Level::Warn,
                    "agent UIDs",
                    &format!(
                        "agent.uid_range overlaps existing users: {}",
                        taken.join(", ")
                    ),
                    Some("choose a range no account uses"),
                );
            }
        }
    }
}

fn passwd_uids_in(range: &std::ops::RangeInclusive<u32>) -> Vec<String> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid: u32 = f.get(2)?.parse().ok()?;
            range.contains(&uid).then(|| format!("{} ({uid})", f[0]))
        })
        .collect()
}

fn check_cgroups(cfg: &Config, r: &mut Report) {
    if cfg.isolation.cgroups == "off" {
        r.line(
            Level::Note,
            "cgroups",
            "off (isolation.cgroups = \"off\"); rlimits only",
            None,
        );
        return;
    }
    let missing = if cfg.isolation.cgroups == "required" {
        Level::Fail
    } else {
        Level::Warn
    };
    let hiers = match cgroup::detect() {
        Ok(h) => h,
        Err(e) => return r.line(missing, "cgroups", &e, None),
    };
    let pid = std::process::id();
    let mut writable: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut v2_ctls = String::new();
    for h in &hiers {
        let relevant = h.v2
            || h.controllers
                .iter()
                .any(|c| ["memory", "pids", "cpu", "freezer"].contains(&c.as_str()));
        if !relevant {
            continue;
        }
        let name = if h.v2 {
            "v2".to_string()
        } else {
            format!("v1 {}", h.controllers.join(","))
        };
        let probe = h.dir.join(format!("corral-doctor-{pid}"));
        match std::fs::create_dir(&probe) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&probe);
                if h.v2 {
                    v2_ctls = std::fs::read_to_string(h.dir.join("cgroup.controllers"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter(|c| ["memory", "pids", "cpu"].contains(c))
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                writable.push(format!("{name} at {}", h.dir.display()));
            }
            Err(e) => problems.push(format!("{name} at {}: {e}", h.dir.display())),
        }
    }
    let detail = |w: &[String]| {
        let mut s = w.join("; ");
        if !v2_ctls.is_empty() || writable.iter().any(|w| w.starts_with("v2")) {
            s.push_str(&format!(
                "; v2 provides {}",
                if v2_ctls.is_empty() {
                    "no memory/pids/cpu controller (used to kill whole cgroups)"
                } else {
                    &v2_ctls
                }
            ));
        }
        s
    };
    if writable.is_empty() {
        r.line(
            missing,
            "cgroups",
            &format!(
                "no writable cgroup ({}); instances get rlimits only",
                problems.join("; ")
            ),
            Some("run corral as root, or under systemd with Delegate=yes"),
        );
    } else {
        r.line(
            Level::Ok,
            "cgroups",
            &format!("writable: {}", detail(&writable)),
            None,
        );
        for p in problems {
            r.line(Level::Note, "cgroups", &format!("not writable: {p}"), None);
        }
    }
}

fn check_landlock(cfg: &Config, r: &mut Report) {
    match landlock::abi() {
        Ok(abi) => r.line(
            Level::Ok,
            "landlock",
            &format!(
                "ABI {abi}; {}",
                if cfg.isolation.landlock {
                    "every instance is confined (isolation.landlock = true)"
                } else {
                    "off unless a spawn asks (isolation.landlock = false)"
                }
            ),
            None,
        ),
        Err(why) => r.line(
            if cfg.isolation.landlock {
                Level::Warn
            } else {
                Level::Note
            },
            "landlock",
            &format!("unavailable: {why}; instances run without it"),
            Some("Linux ≥ 5.13 with landlock in the lsm= list"),
        ),
    }
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(bin)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn check_dirs(cfg: &Config, policy: &user::Policy, r: &mut Report) {
    let p = cfg.paths();
    for (what, dir, private) in [
        ("state dir", &p.state_dir, false),
        ("data dir", &p.data_dir, true),
        ("log dir", &p.log_dir, true),
        ("run dir", &p.run_dir, true),
        ("workspace root", &p.workspace_root, false),
    ] {
        match std::fs::metadata(dir) {
            Ok(m) => {
                let writable =
                    nix::unistd::access(dir.as_path(), nix::unistd::AccessFlags::W_OK).is_ok();
                let mode = m.permissions().mode() & 0o777;
                if !writable {
                    r.line(
                        Level::Fail,
                        what,
                        &format!("{} is not writable", dir.display()),
                        Some(&format!("chown {} to the daemon's user", dir.display())),
                    );
                } else if private && mode & 0o077 != 0 {
                    r.line(
                        Level::Warn,
                        what,
                        &format!(
                            "{} is mode {mode:o}; the daemon makes it 0700 at start",
                            dir.display()
                        ),
                        None,
                    );
                } else {
                    r.line(
                        Level::Ok,
                        what,
                        &format!("{} (mode {mode:o})", dir.display()),
                        None,
                    );
                }
            }
            Err(_) => {
                let parent = dir
                    .ancestors()
                    .find(|a| a.exists())
                    .unwrap_or(Path::new("/"));
                if nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_ok() {
                    r.line(
                        Level::Ok,
                        what,
                        &format!("{} (created at start)", dir.display()),
                        None,
                    );
                } else {
                    r.line(
                        Level::Fail,
                        what,
                        &format!(
                            "{} is missing and {} is not writable",
                            dir.display(),
                            parent.display()
                        ),
                        Some(&format!(
                            "create {} for the daemon's user, or set paths.state_dir",
                            dir.display()
                        )),
                    );
                }
            }
        }
    }
    if p.db_path.exists() {
        let mode = std::fs::metadata(&p.db_path)
            .map(|m| m.mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            r.line(
                Level::Warn,
                "database",
                &format!(
                    "{} is mode {mode:o}: it holds spawn environments",
                    p.db_path.display()
                ),
                Some(&format!("chmod 600 {}", p.db_path.display())),
            );
        }
    }
    // Agents that run as another user must be able to reach their workspace and HOME by path.
    let switches = matches!(policy, user::Policy::Range { .. })
        || matches!(policy, user::Policy::Shared { creds: Some(_), .. });
    if switches {
        let blocked: Vec<String> = [&p.workspace_root, &p.state_dir]
            .iter()
            .flat_map(|d| {
                d.ancestors()
                    .skip(1)
                    .map(Path::to_path_buf)
                    .collect::<Vec<_>>()
            })
            .filter(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
            .map(|a| a.display().to_string())
            .collect();
        if blocked.is_empty() {
            r.line(
                Level::Ok,
                "agent access",
                "agents can reach their workspace and HOME",
                None,
            );
        } else {
            let mut blocked = blocked;
            blocked.sort();
            blocked.dedup();
            r.line(
                Level::Fail,
                "agent access",
                &format!("agents cannot pass through {}", blocked.join(", ")),
                Some(&format!("chmod o+x {}", blocked.join(" "))),
            );
        }
    }
}
