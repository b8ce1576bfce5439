//! Validation: every value checked once, each error naming the key and the value.

use std::path::Path;

use super::{Config, ConfigError};

impl Config {
    /// Checks every value; the error names the key and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Debug, why: &str| {
            Err(ConfigError::Invalid(format!("{key} = {value:?}: {why}")))
        };
        let loopback = match self.server.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) if self.server.host == "localhost" => true,
            Err(_) => {
                return bad(
                    "server.host",
                    &self.server.host,
                    "must be an IP address or \"localhost\"",
                )
            }
        };
        if !loopback && self.server.token.is_empty() {
            return bad(
                "server.host",
                &self.server.host,
                "binding to a non-loopback address requires server.token (CORRAL_SERVER_TOKEN or CORRAL_SERVER_TOKEN_FILE); refusing to serve an unauthenticated API on the network",
            );
        }
        self.validate_rest()
    }

    fn validate_rest(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Debug, why: &str| {
            Err(ConfigError::Invalid(format!("{key} = {value:?}: {why}")))
        };
        if !self.server.token.is_empty() && self.server.token.len() < 16 {
            return Err(ConfigError::Invalid(
                "server.token: must be at least 16 characters (value not shown)".into(),
            ));
        }
        if self
            .server
            .token
            .starts_with(crate::supervisor::TOKEN_PREFIX)
        {
            return Err(ConfigError::Invalid(
                "server.token: must not start with \"crl_\", the prefix of per-instance tokens (value not shown)".into(),
            ));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_total_cost_usd", l.max_total_cost_usd),
            (
                "limits.max_cost_usd_per_instance",
                l.max_cost_usd_per_instance,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, &v, "must be a number of dollars ≥ 0 (0: no cap)");
            }
        }
        if !matches!(l.on_cap.as_str(), "pause" | "terminate") {
            return bad(
                "limits.on_cap",
                &l.on_cap,
                "must be \"pause\" or \"terminate\"",
            );
        }
        if !matches!(self.instance.end_policy.as_str(), "cascade" | "orphan") {
            return bad(
                "instance.end_policy",
                &self.instance.end_policy,
                "must be \"cascade\" or \"orphan\"",
            );
        }
        if l.max_depth == 0 {
            return bad(
                "limits.max_depth",
                &0,
                "must be at least 1 (1: instances the operator spawns may have children, their children none; limits.max_children = 0 forbids children)",
            );
        }
        let url = &self.server.mcp_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad(
                "server.mcp_url",
                &self.server.mcp_url,
                "must be an http:// or https:// URL (e.g. http://127.0.0.1:8001/mcp)",
            );
        }
        for (kind, a) in [
            ("claude", &self.agents.claude),
            ("codex", &self.agents.codex),
        ] {
            if !a.config_toml.is_empty()
                && kind == "codex"
                && toml::from_str::<toml::Value>(&a.config_toml).is_err()
            {
                return bad("agents.codex.config_toml", &"<toml>", "is not valid TOML");
            }
            if !a.permission_mode.is_empty()
                && !matches!(
                    a.permission_mode.as_str(),
                    "default" | "acceptEdits" | "plan" | "bypassPermissions"
                )
            {
                return bad(
                    &format!("agents.{kind}.permission_mode"),
                    &a.permission_mode,
                    "must be default, acceptEdits, plan or bypassPermissions",
                );
            }
        }
        if !(self.agents.start_timeout_s.is_finite()
            && self.agents.start_timeout_s > 0.0
            && self.agents.start_timeout_s <= 600.0)
        {
            return bad(
                "agents.start_timeout_s",
                &self.agents.start_timeout_s,
                "must be >0 and ≤600",
            );
        }
        if self.agents.ready_settle_ms > 60_000 {
            return bad(
                "agents.ready_settle_ms",
                &self.agents.ready_settle_ms,
                "must be 0-60000",
            );
        }
        if self.agents.submit_check_ms > 60_000 {
            return bad(
                "agents.submit_check_ms",
                &self.agents.submit_check_ms,
                "must be 0-60000",
            );
        }
        if self.agents.enter_delay_ms > 10_000 {
            return bad(
                "agents.enter_delay_ms",
                &self.agents.enter_delay_ms,
                "must be 0-10000",
            );
        }
        for (model, p) in &self.prices {
            if [p.input, p.output, p.cache_write, p.cache_read]
                .iter()
                .any(|v| !(v.is_finite() && *v >= 0.0))
            {
                return bad(
                    &format!("prices.{model}"),
                    p,
                    "prices must be numbers ≥ 0 (USD per million tokens)",
                );
            }
        }
        if self.limits.max_instances == 0 {
            return bad("limits.max_instances", &0, "must be at least 1");
        }
        let i = &self.instance;
        if !matches!(i.backend.as_str(), "tmux" | "pty") {
            return bad(
                "instance.backend",
                &i.backend,
                "must be \"tmux\" or \"pty\"",
            );
        }
        if !(i.stop_grace_s.is_finite() && (0.0..=3600.0).contains(&i.stop_grace_s)) {
            return bad("instance.stop_grace_s", &i.stop_grace_s, "must be 0-3600");
        }
        if crate::backend::parse_signal(&i.stop_signal).is_none() {
            return bad(
                "instance.stop_signal",
                &i.stop_signal,
                "must be SIGTERM, SIGHUP, SIGINT or SIGQUIT",
            );
        }
        if !(i.start_timeout_s.is_finite()
            && i.start_timeout_s > 0.0
            && i.start_timeout_s <= 3600.0)
        {
            return bad(
                "instance.start_timeout_s",
                &i.start_timeout_s,
                "must be >0 and ≤3600",
            );
        }
        if i.turn_quiet_ms == 0 || i.turn_quiet_ms > 600_000 {
            return bad(
                "instance.turn_quiet_ms",
                &i.turn_quiet_ms,
                "must be 1-600000",
            );
        }
        if i.clone_timeout_s == 0 || i.clone_timeout_s > 86_400 {
            return bad(
                "instance.clone_timeout_s",
                &i.clone_timeout_s,
                "must be 1-86400",
            );
        }
        if i.settle_ms > 600_000 {
            return bad("instance.settle_ms", &i.settle_ms, "must be 0-600000");
        }
        if i.ring_bytes < 4096 || i.ring_bytes > (256 << 20) {
            return bad(
                "instance.ring_bytes",
                &i.ring_bytes,
                "must be 4096-268435456",
            );
        }
        if i.log_max_bytes < 4096 {
            return bad(
                "instance.log_max_bytes",
                &i.log_max_bytes,
                "must be at least 4096",
            );
        }
        if i.log_keep > 100 {
            return bad("instance.log_keep", &i.log_keep, "must be 0-100");
        }
        if !(10..=1000).contains(&i.cols) {
            return bad("instance.cols", &i.cols, "must be 10-1000");
        }
        if !(5..=500).contains(&i.rows) {
            return bad("instance.rows", &i.rows, "must be 5-500");
        }
        if !matches!(self.shutdown.agents.as_str(), "terminate" | "detach") {
            return bad(
                "shutdown.agents",
                &self.shutdown.agents,
                "must be \"terminate\" or \"detach\"",
            );
        }
        if !(self.shutdown.grace_s.is_finite() && (0.0..=3600.0).contains(&self.shutdown.grace_s)) {
            return bad("shutdown.grace_s", &self.shutdown.grace_s, "must be 0-3600");
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return bad(
                "log.format",
                &self.log.format,
                "must be \"pretty\" or \"json\"",
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(
                "log.level",
                &self.log.level,
                "is not a valid tracing filter",
            );
        }
        if !matches!(self.store.synchronous.as_str(), "full" | "normal") {
            return bad(
                "store.synchronous",
                &self.store.synchronous,
                "must be \"full\" or \"normal\"",
            );
        }
        if self.tmux.binary.is_empty() {
            return bad("tmux.binary", &self.tmux.binary, "must not be empty");
        }
        crate::isolation::limits::Limits::from_config(&self.limits)
            .map_err(ConfigError::Invalid)?;
        let user = &self.agent.user;
        let user_ok = !user.is_empty()
            && user.len() <= 32
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !user_ok {
            return bad(
                "agent.user",
                user,
                "must be a user name ([A-Za-z0-9_.-], 1-32 characters)",
            );
        }
        if let Err(why) = crate::isolation::user::parse_uid_range(&self.agent.uid_range) {
            return bad("agent.uid_range", &self.agent.uid_range, &why);
        }
        if !matches!(self.isolation.cgroups.as_str(), "auto" | "required" | "off") {
            return bad(
                "isolation.cgroups",
                &self.isolation.cgroups,
                "must be \"auto\", \"required\" or \"off\"",
            );
        }
        for (key, value) in [
            ("paths.state_dir", &self.paths.state_dir),
            ("paths.data_dir", &self.paths.data_dir),
            ("paths.log_dir", &self.paths.log_dir),
            ("paths.workspace_root", &self.paths.workspace_root),
            ("paths.run_dir", &self.paths.run_dir),
            ("store.path", &self.store.path),
        ] {
            if !value.is_empty() && !Path::new(value).is_absolute() {
                return bad(key, value, "must be an absolute path");
            }
        }
        Ok(())
    }
}
