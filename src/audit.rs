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

/// The sequence number of the newest line in the audit files, if any. A torn last line (no
/// final newline) is cut off first, so the log only ever holds whole lines.
pub fn last_seq(dir: &std::path::Path) -> std::io::Result<Option<i64>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit_") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    for path in files.iter().rev() {
        let text = std::fs::read(path)?;
        let whole = match text.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if whole < text.len() {
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(whole as u64)?;
        }
        let body = &text[..whole];
        let last = body[..body.len().saturating_sub(1)]
            .rsplit(|b| *b == b'\n')
            .next()
            .unwrap_or(&[]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(last) {
            if let Some(seq) = v["seq"].as_i64() {
                return Ok(Some(seq));
            }
        }
    }
    Ok(None)
}

/// Deletes `audit_YYYY-MM-DD.jsonl` files whose day is more than `days` days before `today`.
/// Returns the files removed.
pub fn prune(
    dir: &std::path::Path,
    days: u32,
    today: chrono::NaiveDate,
) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if days == 0 {
        return Ok(removed);
    }
    let cutoff = today - chrono::Days::new(u64::from(days));
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(day) = name
            .strip_prefix("audit_")
            .and_then(|r| r.strip_suffix(".jsonl"))
        else {
            continue;
        };
        if let Ok(d) = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") {
            if d < cutoff {
                std::fs::remove_file(entry.path())?;
                removed.push(entry.path());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_by_age_and_only_audit_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "audit_2026-01-01.jsonl",
            "audit_2026-11-01.jsonl",
            "audit_2026-11-22.jsonl",
            "notes.txt",
            "audit_x.jsonl",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let removed = prune(dir.path(), 30, today).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!dir.path().join("audit_2026-01-01.jsonl").exists());
        for kept in [
            "audit_2026-11-01.jsonl",
            "audit_2026-11-22.jsonl",
            "notes.txt",
            "audit_x.jsonl",
        ] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }
        assert!(prune(dir.path(), 0, today).unwrap().is_empty());
    }

    #[test]
    fn last_seq_reads_the_newest_line_and_cuts_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last_seq(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join("audit_2026-11-20.jsonl"),
            "{\"seq\":3}\n{\"seq\":4}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("audit_2026-11-21.jsonl"),
            "{\"seq\":5}\n{\"seq\":6,\"da",
        )
        .unwrap();
        assert_eq!(last_seq(dir.path()).unwrap(), Some(5));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit_2026-11-21.jsonl")).unwrap(),
            "{\"seq\":5}\n"
        );
    }

    #[test]
    fn lines_are_whole_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::new(dir.path().to_path_buf()).unwrap();
        let ev = Event {
            seq: 7,
            ts: 1_795_300_000_000,
            instance_id: Some("i".into()),
            name: None,
            kind: "spawn".into(),
            data: serde_json::json!({"a": "b\nc"}),
        };
        log.append(&ev).unwrap();
        log.append(&ev).unwrap();
        let day = chrono::DateTime::from_timestamp_millis(ev.ts)
            .unwrap()
            .format("%Y-%m-%d");
        let text = std::fs::read_to_string(dir.path().join(format!("audit_{day}.jsonl"))).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["seq"], 7);
        }
    }
}
