//! corral: a supervisor for AI coding agents.
//!
//! Layout (dependencies point down; nothing below `supervisor` knows HTTP):
//! - `main.rs`: thin: parse the CLI, split off PID-1 mode ([`pid1`]) first, dispatch.
//! - [`pid1`]: `corral init` and `corral serve` as PID 1: a synchronous init loop that forwards
//!   signals and reaps zombies, run before any runtime or thread exists. Imports nothing else.
//! - [`cli`]: clap definitions and the client commands that talk to the local daemon.
//! - [`app`]: wiring of store, supervisor and HTTP; ordered shutdown.
//! - [`http`]: axum router: `/health`, `/ready`, `/metrics`, the status page, the JSON API
//!   `/api/v1`, `/mcp`; auth and Origin guards.
//! - [`mcp`]: the MCP tools (rmcp), served over Streamable HTTP at `/mcp`.
//! - [`metrics`]: Prometheus counters and gauges.
//! - [`supervisor`]: the `Supervisor` handle, one task per instance, the lifecycle state
//!   machine ([`supervisor::instance`]), output ring and logs ([`supervisor::output`]).
//! - [`backend`]: start a process in tmux or a PTY; input, resize, output stream, exit (pidfd).
//!   [`backend::children`]: the child subreaper and its orphan reaper, which never takes the
//!   exit status of a child the daemon forked itself.
//! - [`isolation`]: agent user/UID, rlimits, cgroups, Landlock, private directories; the
//!   `__exec` shim that applies them in the instance before its program runs.
//! - [`store`]: SQLite (WAL) on its own thread; migrations; the audit log ([`audit`]).
//! - [`config`]: TOML + env into a validated `Config`.
//! - [`model`]: plain data shared by all of the above (the API's wire types).
//! - [`ids`], [`telemetry`], [`signals`], [`sdnotify`]: small helpers.

pub mod agent;
pub mod app;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod config;
pub mod http;
pub mod ids;
pub mod isolation;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod pid1;
pub mod sdnotify;
pub mod signals;
pub mod store;
pub mod supervisor;
pub mod telemetry;
