//! Limits → `setrlimit` calls, computed in the daemon and applied by the shim (soft = hard,
//! so the agent cannot raise them again). Core dumps are always off.

use serde::{Deserialize, Serialize};

use super::limits::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Core,
    Nofile,
    Nproc,
    As,
    Data,
    Fsize,
    Cpu,
}

impl Resource {
    fn to_nix(self) -> nix::sys::resource::Resource {
        use nix::sys::resource::Resource as R;
        match self {
            Resource::Core => R::RLIMIT_CORE,
            Resource::Nofile => R::RLIMIT_NOFILE,
            Resource::Nproc => R::RLIMIT_NPROC,
            Resource::As => R::RLIMIT_AS,
            Resource::Data => R::RLIMIT_DATA,
            Resource::Fsize => R::RLIMIT_FSIZE,
            Resource::Cpu => R::RLIMIT_CPU,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Resource::Core => "RLIMIT_CORE",
            Resource::Nofile => "RLIMIT_NOFILE",
            Resource::Nproc => "RLIMIT_NPROC",
            Resource::As => "RLIMIT_AS",
            Resource::Data => "RLIMIT_DATA",
            Resource::Fsize => "RLIMIT_FSIZE",
            Resource::Cpu => "RLIMIT_CPU",
        }
    }
}

/// One limit: soft and hard both set to `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub resource: Resource,
    pub value: u64,
}

/// The rlimits for `limits`, in the order they are applied. `core = 0` always comes first.
pub fn settings(limits: &Limits) -> Vec<Setting> {
    let mut out = vec![Setting {
        resource: Resource::Core,
        value: 0,
    }];
    for (resource, v) in [
        (Resource::Nofile, limits.nofile),
        (Resource::Nproc, limits.nproc),
        (Resource::As, limits.as_),
        (Resource::Data, limits.data),
        (Resource::Fsize, limits.fsize),
        (Resource::Cpu, limits.cpu_s),
    ] {
        if let Some(value) = v {
            out.push(Setting { resource, value });
        }
    }
    out
}

/// Applies the settings to the calling process (the shim, before exec).
pub fn apply(settings: &[Setting]) -> Result<(), String> {
    for s in settings {
        nix::sys::resource::setrlimit(s.resource.to_nix(), s.value, s.value)
            .map_err(|e| format!("setrlimit({}, {}): {e}", s.resource.name(), s.value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_is_always_zero_and_unset_limits_are_skipped() {
        let l = Limits {
            nofile: Some(1024),
            fsize: Some(1 << 20),
            ..Default::default()
        };
        let s = settings(&l);
        assert_eq!(
            s,
            vec![
                Setting {
                    resource: Resource::Core,
                    value: 0
                },
                Setting {
                    resource: Resource::Nofile,
                    value: 1024
                },
                Setting {
                    resource: Resource::Fsize,
                    value: 1 << 20
                },
            ]
        );
        assert_eq!(settings(&Limits::default()).len(), 1);
    }

    #[test]
    fn applies_to_the_calling_process() {
        // Core = 0 is harmless for the test process itself.
        apply(&[Setting {
            resource: Resource::Core,
            value: 0,
        }])
        .unwrap();
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
        assert_eq!((soft, hard), (0, 0));
    }
}
