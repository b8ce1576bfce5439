//! One cgroup per instance, inside corral's own part of the tree, on cgroup v2, v1 or both.
//!
//! Where: for every hierarchy, `<mount>/<our own cgroup>/corral/<instance id>`, so a daemon
//! under systemd (`Delegate=yes`) stays inside its delegated subtree. On v2 with controllers,
//! the no-internal-processes rule may need the daemon out of its own cgroup first: it moves
//! into the leaf `corral/daemon`, and instances are its siblings.
//!
//! Which hierarchy does what is decided once at start ([`Manager::setup`]): each of memory,
//! pids and cpu comes from v2 when v2 offers it, else from its v1 hierarchy. Killing uses v2's
//! `cgroup.kill` when any v2 hierarchy is writable (hybrid hosts included, where it has no
//! controllers), else the v1 freezer (freeze, SIGKILL every member, thaw), else repeated
//! SIGKILL of the members. Every function takes its paths as parameters, so the unit tests
//! run on a plain temp directory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::limits::Limits;

/// Directory name of corral's subtree under our own cgroup.
pub const SUBTREE: &str = "corral";
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

mod detect;

pub use detect::{detect, locate, parse_mountinfo, parse_proc_cgroup, Hier, Mount};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    V2,
    V1,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::V2 => "v2",
            Via::V1 => "v1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillVia {
    CgroupKill,
    Freezer,
    Signals,
}

/// Corral's cgroup subtree and what each hierarchy provides.
#[derive(Debug, Clone)]
pub struct Manager {
    v2: Option<PathBuf>,
    /// Controller → base directory in its v1 hierarchy.
    v1: BTreeMap<String, PathBuf>,
    memory: Option<Via>,
    pids: Option<Via>,
    cpu: Option<Via>,
    kill: KillVia,
    notes: Vec<String>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

fn mkdir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", path.display()),
        )),
    }
}

/// Creates `base` if needed and proves we can create children in it (it may exist already,
/// made by another user).
fn usable_base(base: &Path) -> io::Result<()> {
    mkdir(base)?;
    let probe = base.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", probe.display())))?;
    std::fs::remove_dir(&probe)
}

/// Enables `want` for the children of `own` and of `base` (= `own/corral`), moving the daemon
/// into `base/daemon` when `own` holds processes. Returns the controllers that are enabled.
fn enable_v2(
    own: &Hier,
    base: &Path,
    want: &[&str],
    daemon_pid: u32,
) -> Result<Vec<String>, String> {
    let enable = |dir: &Path| -> Result<(), io::Error> {
        for c in want {
            write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
        Ok(())
    };
    if !own.is_root {
        if let Err(e) = enable(&own.dir) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e.to_string());
            }
            // No internal processes: the daemon leaves its own cgroup for a leaf.
            let leaf = base.join("daemon");
            mkdir(&leaf).map_err(|e| e.to_string())?;
            write(&leaf.join("cgroup.procs"), &daemon_pid.to_string())
                .map_err(|e| e.to_string())?;
            enable(&own.dir).map_err(|e| {
                format!("{e} (other processes share the daemon's cgroup {}; run corral in a cgroup of its own, e.g. systemd Delegate=yes)", own.dir.display())
            })?;
        }
    }
    enable(base).map_err(|e| e.to_string())?;
    Ok(want.iter().map(|c| c.to_string()).collect())
}

impl Manager {
    /// Creates corral's subtree in each writable hierarchy and decides what each provides.
    /// Fails (with the reasons) when no hierarchy is writable.
    pub fn setup(hiers: &[Hier], daemon_pid: u32) -> Result<Manager, String> {
        let mut m = Manager {
            v2: None,
            v1: BTreeMap::new(),
            memory: None,
            pids: None,
            cpu: None,
            kill: KillVia::Signals,
            notes: Vec::new(),
        };
        let mut v2_ctls: Vec<String> = Vec::new();
        if let Some(h) = hiers.iter().find(|h| h.v2) {
            let base = h.dir.join(SUBTREE);
            match usable_base(&base) {
                Err(e) => m.notes.push(format!("v2: {e}")),
                Ok(()) => {
                    let available = std::fs::read_to_string(h.dir.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let want: Vec<&str> = CONTROLLERS
                        .into_iter()
                        .filter(|c| available.split_whitespace().any(|a| a == *c))
                        .collect();
                    if !want.is_empty() {
                        match enable_v2(h, &base, &want, daemon_pid) {
                            Ok(c) => v2_ctls = c,
                            Err(e) => m.notes.push(format!("v2 controllers: {e}")),
                        }
                    }
                    if base.join("cgroup.kill").exists() {
                        m.kill = KillVia::CgroupKill;
                    }
                    m.v2 = Some(base);
                }
            }
        }
        let mut wanted: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !v2_ctls.iter().any(|v| v == c))
            .collect();
        if m.kill != KillVia::CgroupKill {
            wanted.push("freezer");
        }
        for c in wanted {
            let Some(h) = hiers
                .iter()
                .find(|h| !h.v2 && h.controllers.iter().any(|x| x == c))
            else {
                continue;
            };
            let base = h.dir.join(SUBTREE);
            match usable_base(&base) {
                Ok(()) => {
                    m.v1.insert(c.to_string(), base);
                }
                Err(e) => m.notes.push(format!("v1 {c}: {e}")),
            }
        }
        let pick = |c: &str| {
            if v2_ctls.iter().any(|v| v == c) {
                Some(Via::V2)
            } else if m.v1.contains_key(c) {
                Some(Via::V1)
            } else {
                None
            }
        };
        m.memory = pick("memory");
        m.pids = pick("pids");
        m.cpu = pick("cpu");
        if m.kill != KillVia::CgroupKill && m.v1.contains_key("freezer") {
            m.kill = KillVia::Freezer;
        }
        if m.v2.is_none() && m.v1.is_empty() {
            let why = if m.notes.is_empty() {
                "no cgroup hierarchy is mounted".to_string()
            } else {
                m.notes.join("; ")
            };
            return Err(format!("no writable cgroup: {why}"));
        }
        Ok(m)
    }

    /// A summary for /health.
    pub fn describe(&self) -> serde_json::Value {
        let mode = match (self.v2.is_some(), self.v1.is_empty()) {
            (true, true) => "v2",
            (true, false) => "hybrid",
            (false, _) => "v1",
        };
        let via = |v: Option<Via>| v.map(Via::name).unwrap_or("unavailable");
        let mut dirs: Vec<String> = self.v2.iter().map(|p| p.display().to_string()).collect();
        dirs.extend(self.v1.values().map(|p| p.display().to_string()));
        dirs.dedup();
        json!({
            "available": true,
            "mode": mode,
            "memory": via(self.memory),
            "pids": via(self.pids),
            "cpu": via(self.cpu),
            "kill": match self.kill {
                KillVia::CgroupKill => "cgroup.kill (v2)",
                KillVia::Freezer => "freeze, SIGKILL, thaw (v1 freezer)",
                KillVia::Signals => "SIGKILL to every member, repeated",
            },
            "dirs": dirs,
            "notes": self.notes,
        })
    }

    /// The instance's directories (without creating them).
    pub fn instance(&self, id: &str) -> InstanceCgroup {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let v2 = self.v2.as_ref().map(|b| b.join(id));
        dirs.extend(v2.clone());
        for base in self.v1.values() {
            let d = base.join(id);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        let ctl_dir = |via: Option<Via>, c: &str| match via {
            Some(Via::V2) => v2.clone().map(|d| (d, Via::V2)),
            Some(Via::V1) => self.v1.get(c).map(|b| (b.join(id), Via::V1)),
            None => None,
        };
        InstanceCgroup {
            memory: ctl_dir(self.memory, "memory"),
            pids: ctl_dir(self.pids, "pids"),
            cpu: ctl_dir(self.cpu, "cpu"),
            freezer: (self.kill == KillVia::Freezer)
                .then(|| self.v1.get("freezer").map(|b| b.join(id)))
                .flatten(),
            kill_v2: (self.kill == KillVia::CgroupKill)
                .then(|| v2.clone())
                .flatten(),
            dirs,
        }
    }

    /// Creates the instance's cgroup and writes its limits; nothing is left behind on error.
    pub fn create(&self, id: &str, limits: &Limits) -> io::Result<InstanceCgroup> {
        let cg = self.instance(id);
        let result = (|| {
            for d in &cg.dirs {
                std::fs::create_dir(d).map_err(|e| {
                    io::Error::new(e.kind(), format!("creating {}: {e}", d.display()))
                })?;
            }
            cg.write_limits(limits)
        })();
        if let Err(e) = result {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// One instance's cgroup: a directory per hierarchy in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCgroup {
    pub dirs: Vec<PathBuf>,
    memory: Option<(PathBuf, Via)>,
    pids: Option<(PathBuf, Via)>,
    cpu: Option<(PathBuf, Via)>,
    freezer: Option<PathBuf>,
    kill_v2: Option<PathBuf>,
}

fn max_or(v: Option<u64>, unlimited: &str) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| unlimited.into())
}

impl InstanceCgroup {
    fn write_limits(&self, l: &Limits) -> io::Result<()> {
        if let Some((d, via)) = &self.memory {
            match via {
                Via::V2 => {
                    write(&d.join("memory.max"), &max_or(l.memory_max, "max"))?;
                    let swap = d.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, &max_or(l.memory_swap_max, "max"))?;
                    }
                }
                Via::V1 => {
                    write(
                        &d.join("memory.limit_in_bytes"),
                        &max_or(l.memory_max, "-1"),
                    )?;
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if let (Some(mem), Some(swap), true) =
                        (l.memory_max, l.memory_swap_max, memsw.exists())
                    {
                        write(&memsw, &mem.saturating_add(swap).to_string())?;
                    }
                }
            }
        }
        if let Some((d, _)) = &self.pids {
            write(&d.join("pids.max"), &max_or(l.pids_max, "max"))?;
        }
        if let Some((d, via)) = &self.cpu {
            match (via, l.cpu_max) {
                (Via::V2, Some(c)) => write(
                    &d.join("cpu.max"),
                    &format!("{} {}", c.quota_us, c.period_us),
                )?,
                (Via::V2, None) => write(&d.join("cpu.max"), "max 100000")?,
                (Via::V1, Some(c)) => {
                    write(&d.join("cpu.cfs_period_us"), &c.period_us.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &c.quota_us.to_string())?;
                }
                (Via::V1, None) => write(&d.join("cpu.cfs_quota_us"), "-1")?,
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files the shim writes its own pid to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Every process in any of the instance's directories.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for f in self.procs_files() {
            if let Ok(text) = std::fs::read_to_string(&f) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// One pass of killing everything in the cgroup (call until [`Self::pids`] is empty).
    pub fn kill(&self) -> io::Result<()> {
        if let Some(d) = &self.kill_v2 {
            return write(&d.join("cgroup.kill"), "1");
        }
        let frozen = match &self.freezer {
            Some(d) => write(&d.join("freezer.state"), "FROZEN").is_ok(),
            None => false,
        };
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let (true, Some(d)) = (frozen, &self.freezer) {
            write(&d.join("freezer.state"), "THAWED")?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer ended in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some((d, via)) = &self.memory else {
            return 0;
        };
        let file = match via {
            Via::V2 => d.join("memory.events"),
            Via::V1 => d.join("memory.oom_control"),
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| parse_oom_kill(&t))
            .unwrap_or(0)
    }

    /// Removes the (empty) directories; already gone is success.
    pub fn remove(&self) -> io::Result<()> {
        let mut first_err = None;
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("removing {}: {e}", d.display()),
                    ));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The `oom_kill N` line of v2 `memory.events` or v1 `memory.oom_control`.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(v2_controllers: &str, v1: &[&str]) -> (tempfile::TempDir, Vec<Hier>) {
        let t = tempfile::tempdir().unwrap();
        let mut hiers = Vec::new();
        let v2 = t.path().join("unified");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), v2_controllers).unwrap();
        hiers.push(Hier {
            dir: v2,
            v2: true,
            is_root: true,
            controllers: vec![],
        });
        for c in v1 {
            let d = t.path().join(c);
            std::fs::create_dir_all(&d).unwrap();
            hiers.push(Hier {
                dir: d,
                v2: false,
                is_root: true,
                controllers: vec![c.to_string()],
            });
        }
        (t, hiers)
    }

    fn limits() -> Limits {
        Limits {
            memory_max: Some(64 << 20),
            memory_swap_max: Some(0),
            pids_max: Some(32),
            cpu_max: Some(super::super::limits::CpuMax {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            ..Default::default()
        }
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn pure_v2_puts_everything_in_one_directory() {
        let (t, hiers) = fake_tree("cpuset cpu io memory pids", &[]);
        let m = Manager::setup(&hiers, 1).unwrap();
        assert_eq!(m.describe()["mode"], "v2");
        assert_eq!(m.describe()["memory"], "v2");
        let ctl = read(t.path().join("unified/corral/cgroup.subtree_control"));
        assert!(
            ctl.starts_with('+'),
            "controllers enabled for instances: {ctl}"
        );
        let cg = m.create("abc", &limits()).unwrap();
        let d = t.path().join("unified/corral/abc");
        assert_eq!(cg.dirs, vec![d.clone()]);
        assert_eq!(read(d.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(d.join("pids.max")), "32");
        assert_eq!(read(d.join("cpu.max")), "50000 100000");
        assert_eq!(cg.procs_files(), vec![d.join("cgroup.procs")]);
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 1);
    }

    #[test]
    fn hybrid_uses_v1_controllers_and_v2_for_kill() {
        let (t, hiers) = fake_tree("", &["memory", "pids", "cpu", "freezer"]);
        // A kernel with cgroup.kill shows it in every non-root v2 cgroup.
        std::fs::create_dir_all(t.path().join("unified/corral")).unwrap();
        std::fs::write(t.path().join("unified/corral/cgroup.kill"), "").unwrap();
        let m = Manager::setup(&hiers, 1).unwrap();
        let d = m.describe();
        assert_eq!(
            (d["mode"].as_str(), d["memory"].as_str()),
            (Some("hybrid"), Some("v1"))
        );
        assert_eq!(d["kill"], "cgroup.kill (v2)");
        assert!(
            !t.path().join("freezer/corral").exists(),
            "no freezer needed"
        );
        let mem = t.path().join("memory/corral/x1");
        let cg = m.create("x1", &limits()).unwrap();
        assert_eq!(cg.dirs.len(), 4, "{:?}", cg.dirs);
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(t.path().join("pids/corral/x1/pids.max")), "32");
        assert_eq!(
            read(t.path().join("cpu/corral/x1/cpu.cfs_quota_us")),
            "50000"
        );
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 2);
        cg.kill().unwrap();
        assert_eq!(read(t.path().join("unified/corral/x1/cgroup.kill")), "1");
    }

    #[test]
    fn pure_v1_kills_through_the_freezer() {
        let t = tempfile::tempdir().unwrap();
        let mut hiers = Vec::new();
        for c in ["memory", "pids", "freezer"] {
            let d = t.path().join(c);
            std::fs::create_dir_all(&d).unwrap();
            hiers.push(Hier {
                dir: d,
                v2: false,
                is_root: true,
                controllers: vec![c.into()],
            });
        }
        let m = Manager::setup(&hiers, 1).unwrap();
        assert_eq!(m.describe()["cpu"], "unavailable");
        let cg = m.create("i", &Limits::default()).unwrap();
        assert_eq!(
            read(t.path().join("memory/corral/i/memory.limit_in_bytes")),
            "-1"
        );
        cg.kill().unwrap();
        assert_eq!(
            read(t.path().join("freezer/corral/i/freezer.state")),
            "THAWED"
        );
        assert_eq!(cg.pids(), Vec::<i32>::new());
    }

    #[test]
    fn nothing_writable_is_an_error_with_reasons() {
        let e = Manager::setup(&[], 1).unwrap_err();
        assert!(e.contains("no writable cgroup"), "{e}");
        let hiers = vec![Hier {
            dir: PathBuf::from("/proc/definitely/not/a/cgroup"),
            v2: true,
            is_root: false,
            controllers: vec![],
        }];
        let e = Manager::setup(&hiers, 1).unwrap_err();
        assert!(e.contains("v2: creating"), "{e}");
    }

    #[test]
    fn oom_kill_lines() {
        assert_eq!(parse_oom_kill("oom 0\noom_kill 4\n"), Some(4));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }
}
