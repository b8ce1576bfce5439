//! Resource limits of one instance: parsed from `[limits]`, lowered (never raised) by a spawn
//! request, then split into cgroup settings (`cgroup.rs`) and rlimits (`rlimit.rs`).

use serde::Serialize;

use crate::config::LimitsConfig;
use crate::model::{LimitsRequest, Size};

/// CPU bandwidth: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuMax {
    /// CPUs as a fraction, for comparisons and display.
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// Effective limits; `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_swap_max: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpu_max: Option<CpuMax>,
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    #[serde(rename = "as")]
    pub as_: Option<u64>,
    pub data: Option<u64>,
    pub fsize: Option<u64>,
    pub cpu_s: Option<u64>,
}

/// Parses a size: `"max"` or `""` is no limit; a number of bytes, optionally with a suffix
/// K, M, G, T (powers of 1024; `KiB`, `MB` and friends are read the same way).
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 4G, or max)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size suffix {suffix:?} (K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .map(Some)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `cpu_max`: `""`/`"max"` (none), CPUs (`"1.5"`) or `"QUOTA PERIOD"` in µs.
pub fn parse_cpu_max(s: &str) -> Result<Option<CpuMax>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let bad = || format!("{s:?}: expected CPUs (\"1.5\") or \"QUOTA_US PERIOD_US\" or \"max\"");
    let parts: Vec<&str> = t.split_whitespace().collect();
    let cpu = match parts.as_slice() {
        [cpus] => {
            let c: f64 = cpus.parse().map_err(|_| bad())?;
            if !(c.is_finite() && c > 0.0 && c <= 4096.0) {
                return Err(bad());
            }
            CpuMax {
                quota_us: (c * 100_000.0).round() as u64,
                period_us: 100_000,
            }
        }
        [q, p] if q.eq_ignore_ascii_case("max") => {
            p.parse::<u64>().map_err(|_| bad())?;
            return Ok(None);
        }
        [q, p] => CpuMax {
            quota_us: q.parse().map_err(|_| bad())?,
            period_us: p.parse().map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    // The kernel's bounds: period 1 ms - 1 s, quota at least 1 ms.
    if !(1000..=1_000_000).contains(&cpu.period_us) || cpu.quota_us < 1000 {
        return Err(format!(
            "{s:?}: the period must be 1000-1000000 µs and the quota at least 1000 µs"
        ));
    }
    Ok(Some(cpu))
}

fn size_key(key: &str, v: &str, zero_is_none: bool) -> Result<Option<u64>, String> {
    let parsed = parse_size(v).map_err(|e| format!("{key} = {v:?}: {e}"))?;
    Ok(match parsed {
        Some(0) if zero_is_none => None,
        other => other,
    })
}

fn count(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

fn size_arg(key: &str, v: &Size, zero_is_none: bool) -> Result<Option<u64>, String> {
    match v {
        Size::Bytes(0) if zero_is_none => Ok(None),
        Size::Bytes(n) => Ok(Some(*n)),
        Size::Text(t) => size_key(key, t, zero_is_none),
    }
}

/// `requested` may only lower `configured` (`None` = no limit).
fn lower(
    key: &str,
    configured: Option<u64>,
    requested: Option<u64>,
) -> Result<Option<u64>, String> {
    match (configured, requested) {
        (Some(c), None) => Err(format!(
            "limits.{key}: the server limits it to {c}; a spawn may only lower limits, not lift them"
        )),
        (Some(c), Some(r)) if r > c => Err(format!(
            "limits.{key} = {r}: above the server's limit of {c}; a spawn may only lower limits"
        )),
        (_, r) => Ok(r),
    }
}

impl Limits {
    /// The configured defaults; the error names the key and the value.
    pub fn from_config(c: &LimitsConfig) -> Result<Limits, String> {
        Limits {
            memory_max: size_key("limits.memory_max", &c.memory_max, true)?,
            memory_swap_max: size_key("limits.memory_swap_max", &c.memory_swap_max, false)?,
            pids_max: count(c.pids_max),
            cpu_max: parse_cpu_max(&c.cpu_max).map_err(|e| format!("limits.cpu_max = {e}"))?,
            nofile: count(c.nofile),
            nproc: count(c.nproc),
            as_: size_key("limits.as", &c.as_, true)?,
            data: size_key("limits.data", &c.data, true)?,
            fsize: size_key("limits.fsize", &c.fsize, true)?,
            cpu_s: count(c.cpu_s),
        }
        .checked()
    }

    /// Bounds no configuration or request may cross.
    fn checked(self) -> Result<Limits, String> {
        if let Some(nofile) = self.nofile {
            if nofile < 16 {
                return Err(format!("limits.nofile = {nofile}: must be at least 16"));
            }
        }
        Ok(self)
    }

    /// These limits lowered by a spawn request. A request value of 0 or "max" asks for no
    /// limit, which only an unlimited server setting allows.
    pub fn lowered(&self, r: &LimitsRequest) -> Result<Limits, String> {
        let mut out = self.clone();
        if let Some(v) = &r.memory_max {
            out.memory_max = lower(
                "memory_max",
                self.memory_max,
                size_arg("memory_max", v, true)?,
            )?;
        }
        if let Some(v) = &r.memory_swap_max {
            out.memory_swap_max = lower(
                "memory_swap_max",
                self.memory_swap_max,
                size_arg("memory_swap_max", v, false)?,
            )?;
        }
        if let Some(v) = r.pids_max {
            out.pids_max = lower("pids_max", self.pids_max, count(v))?;
        }
        if let Some(v) = &r.cpu_max {
            let want = parse_cpu_max(v).map_err(|e| format!("limits.cpu_max = {e}"))?;
            out.cpu_max = match (self.cpu_max, want) {
                (Some(c), None) => {
                    return Err(format!(
                        "limits.cpu_max: the server limits it to {:.2} CPUs; a spawn may only lower limits",
                        c.cpus()
                    ))
                }
                (Some(c), Some(w)) if w.cpus() > c.cpus() => {
                    return Err(format!(
                        "limits.cpu_max = {v:?}: above the server's limit of {:.2} CPUs",
                        c.cpus()
                    ))
                }
                (_, w) => w,
            };
        }
        if let Some(v) = r.nofile {
            out.nofile = lower("nofile", self.nofile, count(v))?;
        }
        if let Some(v) = r.nproc {
            out.nproc = lower("nproc", self.nproc, count(v))?;
        }
        if let Some(v) = &r.as_ {
            out.as_ = lower("as", self.as_, size_arg("as", v, true)?)?;
        }
        if let Some(v) = &r.data {
            out.data = lower("data", self.data, size_arg("data", v, true)?)?;
        }
        if let Some(v) = &r.fsize {
            out.fsize = lower("fsize", self.fsize, size_arg("fsize", v, true)?)?;
        }
        if let Some(v) = r.cpu_s {
            out.cpu_s = lower("cpu_s", self.cpu_s, count(v))?;
        }
        out.checked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("max"), Ok(None));
        assert_eq!(parse_size(""), Ok(None));
        assert_eq!(parse_size("0"), Ok(Some(0)));
        assert_eq!(parse_size("4096"), Ok(Some(4096)));
        assert_eq!(parse_size("64K"), Ok(Some(64 << 10)));
        assert_eq!(parse_size("512M"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("4GiB"), Ok(Some(4 << 30)));
        assert_eq!(parse_size("1 t"), Ok(Some(1 << 40)));
        assert!(parse_size("12Q").unwrap_err().contains("suffix"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn cpu_max_forms() {
        assert_eq!(parse_cpu_max(""), Ok(None));
        assert_eq!(parse_cpu_max("max 100000"), Ok(None));
        assert_eq!(
            parse_cpu_max("1.5"),
            Ok(Some(CpuMax {
                quota_us: 150_000,
                period_us: 100_000
            }))
        );
        assert_eq!(
            parse_cpu_max("50000 100000"),
            Ok(Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000
            }))
        );
        assert!(parse_cpu_max("0").is_err());
        assert!(parse_cpu_max("10 100000").is_err());
        assert!(parse_cpu_max("a b c").is_err());
    }

    #[test]
    fn defaults_and_lowering() {
        let base = Limits::from_config(&LimitsConfig::default()).unwrap();
        assert_eq!(base.memory_max, Some(4 << 30));
        assert_eq!(base.memory_swap_max, Some(0));
        assert_eq!(base.pids_max, Some(1024));
        assert_eq!(base.as_, None);
        assert_eq!(base.cpu_max, None);
        let req = LimitsRequest {
            memory_max: Some(Size::Text("64M".into())),
            pids_max: Some(32),
            fsize: Some(Size::Bytes(1 << 20)),
            cpu_max: Some("0.5".into()),
            ..Default::default()
        };
        let l = base.lowered(&req).unwrap();
        assert_eq!(l.memory_max, Some(64 << 20));
        assert_eq!(l.pids_max, Some(32));
        assert_eq!(l.fsize, Some(1 << 20));
        assert_eq!(l.cpu_max.unwrap().quota_us, 50_000);
        assert_eq!(
            l.nofile,
            Some(8192),
            "untouched keys keep the configured value"
        );

        let raise = LimitsRequest {
            memory_max: Some(Size::Text("8G".into())),
            ..Default::default()
        };
        let e = base.lowered(&raise).unwrap_err();
        assert!(e.contains("memory_max") && e.contains("only lower"), "{e}");
        let lift = LimitsRequest {
            pids_max: Some(0),
            ..Default::default()
        };
        assert!(base.lowered(&lift).unwrap_err().contains("pids_max"));
        let e = base
            .lowered(&LimitsRequest {
                memory_max: Some(Size::Text("lots".into())),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("memory_max"), "{e}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = LimitsConfig {
            memory_max: "huge".into(),
            ..Default::default()
        };
        let e = Limits::from_config(&c).unwrap_err();
        assert!(e.contains("limits.memory_max") && e.contains("huge"), "{e}");
        let c = LimitsConfig {
            cpu_max: "fast".into(),
            ..Default::default()
        };
        assert!(Limits::from_config(&c)
            .unwrap_err()
            .contains("limits.cpu_max"));
    }
}
