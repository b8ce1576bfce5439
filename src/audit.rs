//! The JSONL audit log: `<log_dir>/audit/audit_YYYY-MM-DD.jsonl`, one line per event.
//!
//! Lines are written by the store thread right after the event is committed to SQLite and
//! before the event is acknowledged, each with a single `write_all` of the whole line on a file
//! opened with `O_APPEND`, so a crash cannot interleave or split lines between writers.
//! The file rolls over at UTC midnight.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::model::Event;

pub struct AuditLog {
    dir: PathBuf,
    current: Option<(String, File)>,
}

impl AuditLog {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, current: None })
    }

    /// The file name for a day, e.g. `audit_2026-11-22.jsonl`.
    pub fn file_name(day: &str) -> String {
        format!("audit_{day}.jsonl")
    }

    pub fn append(&mut self, event: &Event) -> std::io::Result<()> {
        let ts = chrono::DateTime::from_timestamp_millis(event.ts).unwrap_or_default();
        let day = ts.format("%Y-%m-%d").to_string();
        let mut line = serde_json::to_vec(&serde_json::json!({
            "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "seq": event.seq,
            "event": event.kind,
            "instance_id": event.instance_id,
            "name": event.name,
            "data": event.data,
        }))?;
        line.push(b'\n');
        let file = match &mut self.current {
            Some((d, f)) if *d == day => f,
            _ => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(Self::file_name(&day)))?;
                &mut self.current.insert((day, f)).1
            }
        };
        file.write_all(&line)
    }
}
