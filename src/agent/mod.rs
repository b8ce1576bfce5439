//! Claude Code and Codex as instance kinds: prices, usage parsing, launch preparation, and
//! the watcher that turns an agent's own files into events for its instance task.

pub mod headless;
pub mod launch;
pub mod prices;
pub mod usage;
pub mod watch;
