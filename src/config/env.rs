//! Environment overrides: `CORRAL_<SECTION>_<KEY>` (and `_FILE`) for every key of the default
//! tree, and the Madrox-compatible names.

use std::path::Path;

use super::ConfigError;

/// Madrox-compatible variables: (name, config key).
const MADROX_ENV: &[(&str, &str)] = &[
    ("MAX_TOKENS_PER_INSTANCE", "limits.max_tokens_per_instance"),
    ("MAX_TOTAL_COST", "limits.max_total_cost_usd"),
    ("ORCHESTRATOR_HOST", "server.host"),
    ("ORCHESTRATOR_PORT", "server.port"),
    ("MAX_INSTANCES", "limits.max_instances"),
    ("WORKSPACE_DIR", "paths.workspace_root"),
    ("LOG_DIR", "paths.log_dir"),
    ("LOG_LEVEL", "log.level"),
];

/// `server.port` → `CORRAL_SERVER_PORT`.
pub fn env_name(key: &str) -> String {
    format!("CORRAL_{}", key.replace('.', "_").to_uppercase())
}

pub(super) fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

pub(super) fn collect_leaves(
    v: &toml::Value,
    prefix: String,
    out: &mut Vec<(String, toml::Value)>,
) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(v, key, out);
            }
        }
        leaf => out.push((prefix, leaf.clone())),
    }
}

pub(super) fn set_path(tree: &mut toml::Value, key: &str, value: toml::Value) {
    let mut cur = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let toml::Value::Table(t) = cur else { return };
        cur = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    if let (toml::Value::Table(t), Some(last)) = (cur, parts.last()) {
        t.insert(last.to_string(), value);
    }
}

/// Parses an env value as the type of the key's default value.
pub(super) fn parse_env_value(
    key: &str,
    default: &toml::Value,
    raw: &str,
    var: &str,
) -> Result<toml::Value, ConfigError> {
    let err = |what: &str| ConfigError::Invalid(format!("{var}={raw:?}: {key} expects {what}"));
    Ok(match default {
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| err("an integer"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| err("a number"))?)
        }
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(err("true or false")),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

pub(super) fn apply_madrox_env(
    tree: &mut toml::Value,
    defaults: &toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let lookup = |key: &str| -> Option<toml::Value> {
        let mut cur = defaults;
        for p in key.split('.') {
            cur = cur.get(p)?;
        }
        Some(cur.clone())
    };
    for (var, key) in MADROX_ENV {
        if let Some(raw) = env(var) {
            let default = lookup(key).unwrap_or(toml::Value::String(String::new()));
            let v = parse_env_value(key, &default, &raw, var)?;
            set_path(tree, key, v);
        }
    }
    if let Some(raw) = env("INSTANCE_TIMEOUT_MINUTES") {
        let minutes: i64 = raw.trim().parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "INSTANCE_TIMEOUT_MINUTES={raw:?}: instance.idle_timeout_s expects whole minutes"
            ))
        })?;
        if minutes < 0 {
            return Err(ConfigError::Invalid(format!(
                "INSTANCE_TIMEOUT_MINUTES={raw:?}: must not be negative"
            )));
        }
        set_path(
            tree,
            "instance.idle_timeout_s",
            toml::Value::Integer(minutes * 60),
        );
    }
    if let Some(raw) = env("DATABASE_URL") {
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(&raw);
        if !Path::new(path).is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "DATABASE_URL={raw:?}: store.path must be an absolute sqlite path (sqlite:////abs/path.db or /abs/path.db)"
            )));
        }
        set_path(tree, "store.path", toml::Value::String(path.to_string()));
    }
    Ok(())
}
