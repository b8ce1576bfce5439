//! Where our own cgroup is in each mounted hierarchy: `/proc/self/mountinfo` (the cgroup
//! mounts, their controllers and roots) joined with `/proc/self/cgroup` (our path in each).
//! Pure parsing, tested on text; [`detect`] reads the real files.

use std::path::PathBuf;

/// A cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    /// The mount's root inside the hierarchy (not `/` for a bind mount of a subtree).
    pub root: String,
    pub v2: bool,
    /// v1 only: the controllers of this hierarchy.
    pub controllers: Vec<String>,
}

/// Our own cgroup in one hierarchy (a usable place to create children in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hier {
    pub dir: PathBuf,
    pub v2: bool,
    /// Whether `dir` is the hierarchy's root (no internal-process rule there).
    pub is_root: bool,
    pub controllers: Vec<String>,
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let known = [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "blkio",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ];
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let v2 = match r[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            r[2].split(',')
                .filter(|o| known.contains(o))
                .map(str::to_string)
                .collect()
        };
        out.push(Mount {
            path: PathBuf::from(unescape(l[4])),
            root: unescape(l[3]),
            v2,
            controllers,
        });
    }
    out
}

/// `/proc/self/cgroup` → (controllers, path) per line; v2 has empty controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctl = it.next()?;
            let path = it.next()?;
            let ctls = ctl
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
                .map(str::to_string)
                .collect::<Vec<_>>();
            // A named v1 hierarchy (name=systemd) has no controllers but is not v2.
            if ctls.is_empty() && !ctl.is_empty() {
                return None;
            }
            Some((ctls, path.to_string()))
        })
        .collect()
}

/// Our own cgroup in each mounted hierarchy.
pub fn locate(mounts: &[Mount], membership: &[(Vec<String>, String)]) -> Vec<Hier> {
    let mut out = Vec::new();
    for m in mounts {
        let own = membership.iter().find(|(ctls, _)| {
            if m.v2 {
                ctls.is_empty()
            } else {
                !ctls.is_empty() && ctls.iter().all(|c| m.controllers.contains(c))
            }
        });
        let Some((_, path)) = own else { continue };
        let rel = path
            .strip_prefix(m.root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        let dir = if rel.is_empty() {
            m.path.clone()
        } else {
            m.path.join(rel)
        };
        if out.iter().any(|h: &Hier| h.dir == dir) {
            continue;
        }
        out.push(Hier {
            dir,
            v2: m.v2,
            is_root: rel.is_empty(),
            controllers: m.controllers.clone(),
        });
    }
    out
}

/// Reads this process's hierarchies from /proc.
pub fn detect() -> Result<Vec<Hier>, String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let cg = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    Ok(locate(&parse_mountinfo(&mi), &parse_proc_cgroup(&cg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
37 30 0:33 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/system.slice/corral.service
6:freezer:/
5:pids:/system.slice/corral.service
4:memory:/system.slice/corral.service
2:cpu,cpuacct:/system.slice
0::/system.slice/corral.service
";

    #[test]
    fn locates_our_cgroup_in_each_hierarchy() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 6);
        assert!(mounts[0].v2);
        assert_eq!(mounts[1].controllers, ["cpu", "cpuacct"]);
        let hiers = locate(&mounts, &parse_proc_cgroup(HYBRID_CGROUP));
        let dirs: Vec<String> = hiers.iter().map(|h| h.dir.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/unified/system.slice/corral.service",
                "/sys/fs/cgroup/cpu,cpuacct/system.slice",
                "/sys/fs/cgroup/memory/system.slice/corral.service",
                "/sys/fs/cgroup/pids/system.slice/corral.service",
                "/sys/fs/cgroup/freezer",
            ]
        );
        assert!(hiers[4].is_root && !hiers[0].is_root);
    }

    #[test]
    fn bind_mounted_subtree_is_made_relative() {
        let mi = "40 30 0:40 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let hiers = locate(
            &parse_mountinfo(mi),
            &parse_proc_cgroup("0::/docker/abc/inner\n"),
        );
        assert_eq!(hiers[0].dir, PathBuf::from("/sys/fs/cgroup/inner"));
    }
}
