//! The daemon's own logs: tracing to stderr (the journal under systemd), pretty or JSON,
//! filtered by `log.level` (or `RUST_LOG` when set). Never written into an agent's terminal.

use tracing_subscriber::EnvFilter;

use crate::config::Config;

pub fn init(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
