//! The store: one SQLite connection (WAL) owned by a dedicated thread.
//!
//! Async callers send closures to the thread and await the answer, so no connection or
//! statement is ever held across an `.await`, and writes are serialised without a lock.
//! Every state change goes through [`Store::record`], which commits the instance row and the
//! event in one transaction and appends the audit line before the caller is answered: what a
//! client has been told is on disk.

mod migrations;
mod tree;

pub use tree::InboxMessage;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::oneshot;

use crate::audit::AuditLog;
use crate::model::{BackendKind, Event, InstanceInfo, Kind, ReasonCode, StateName};

pub use migrations::latest as schema_version;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this corral understands ({supported}); run a newer corral or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("migration to schema version {version} failed: {source}")]
    Migration {
        version: i64,
        source: rusqlite::Error,
    },
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("audit log: {0}")]
    Audit(#[from] std::io::Error),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("the store thread has stopped")]
    Closed,
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// What the store thread owns.
pub struct Db {
    pub conn: Connection,
    audit: AuditLog,
}

#[derive(Clone)]
pub struct Store {
    tx: std::sync::mpsc::Sender<Job>,
}

/// Opens (creating if needed) and migrates a database file. Synchronous: call before serving.
pub fn open_connection(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    {
        // The database holds instance environments: owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = migrations::latest();
    if found > supported {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    for version in found..supported {
        let sql = migrations::MIGRATIONS[version as usize];
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .and_then(|_| tx.pragma_update(None, "user_version", version + 1))
            .map_err(|source| StoreError::Migration {
                version: version + 1,
                source,
            })?;
        tx.commit().map_err(|source| StoreError::Migration {
            version: version + 1,
            source,
        })?;
    }
    Ok(())
}

impl Store {
    /// Opens the database, completes the audit log, and starts the store thread.
    ///
    /// An event is committed and then appended to the audit log; a crash between the two
    /// leaves the log short. Before serving, every event after the log's last sequence number
    /// is appended (or, with no audit files at all, those from the last `retention_days`).
    pub fn open(
        path: &Path,
        synchronous: &str,
        audit_dir: PathBuf,
        retention_days: u32,
    ) -> Result<Store, StoreError> {
        let conn = open_connection(path, synchronous)?;
        let mut audit = AuditLog::new(audit_dir.clone())?;
        let last = crate::audit::last_seq(&audit_dir)?;
        let since_ts = match (last, retention_days) {
            (Some(_), _) | (None, 0) => 0,
            (None, days) => crate::model::now_ms() - i64::from(days) * 86_400_000,
        };
        let mut stmt = conn.prepare(
            "SELECT seq, ts, instance_id, name, kind, data FROM events WHERE seq > ?1 AND ts >= ?2 ORDER BY seq",
        )?;
        let missing = stmt.query_map(params![last.unwrap_or(0), since_ts], read_event)?;
        for ev in missing {
            audit.append(&ev?)?;
        }
        drop(stmt);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("corral-store".into())
            .spawn(move || {
                let mut db = Db { conn, audit };
                while let Ok(job) = rx.recv() {
                    job(&mut db);
                }
                // Dropping the connection checkpoints the WAL.
            })?;
        Ok(Store { tx })
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(move |db| {
                let _ = tx.send(f(db));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Inserts a new instance row together with its first event.
    pub async fn insert_instance(
        &self,
        info: InstanceInfo,
        spec_json: String,
        event: Event,
    ) -> Result<Event, StoreError> {
        self.call(move |db| {
            let tx = db.conn.transaction()?;
            tx.execute(
                "INSERT INTO instances (id, name, kind, backend, parent_id, state, reason,
                    reason_detail, exit_code, exit_signal, pid, argv, env_keys, spec, workspace,
                    tmux_session, idle_timeout_s, wall_timeout_s, created_at, started_at,
                    ended_at, last_activity_at, output_bytes, turns, cost_usd, pid_start, boot_id,
                    tokens, max_cost_usd, max_tokens, mode, model, session_id, tree)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32,
                    ?33, ?34)",
                params![
                    info.id,
                    info.name,
                    info.kind.as_str(),
                    info.backend.as_str(),
                    info.parent_id,
                    info.state.as_str(),
                    info.reason.map(ReasonCode::as_str),
                    info.reason_detail,
                    info.exit_code,
                    info.exit_signal,
                    info.pid,
                    serde_json::to_string(&info.argv).unwrap_or_default(),
                    serde_json::to_string(&info.env_keys).unwrap_or_default(),
                    spec_json,
                    info.workspace,
                    info.tmux_session,
                    info.idle_timeout_s as i64,
                    info.wall_timeout_s as i64,
                    info.created_at,
                    info.started_at,
                    info.ended_at,
                    info.last_activity_at,
                    info.output_bytes as i64,
                    info.turns as i64,
                    info.cost_usd,
                    info.pid_start.map(|v| v as i64),
                    info.boot_id,
                    serde_json::to_string(&info.tokens).unwrap_or_default(),
                    info.max_cost_usd,
                    info.max_tokens.map(|v| v as i64),
                    info.mode,
                    info.model,
                    info.session_id,
                    serde_json::to_string(&info.tree).unwrap_or_default(),
                ],
            )?;
            let event = insert_event(&tx, event)?;
            tx.commit()?;
            db.audit.append(&event)?;
            Ok(event)
        })
        .await
    }

    /// Commits an instance's new row state and the event describing the change, then
    /// appends the audit line. Returns the event with its sequence number.
    pub async fn record(&self, info: InstanceInfo, event: Event) -> Result<Event, StoreError> {
        self.call(move |db| {
            let tx = db.conn.transaction()?;
            update_instance(&tx, &info)?;
            let event = insert_event(&tx, event)?;
            tx.commit()?;
            db.audit.append(&event)?;
            Ok(event)
        })
        .await
    }

    /// Records an event that changes no instance row.
    pub async fn event(&self, event: Event) -> Result<Event, StoreError> {
        self.call(move |db| {
            let event = insert_event(&db.conn, event)?;
            db.audit.append(&event)?;
            Ok(event)
        })
        .await
    }

    /// Updates activity counters without an event (they are not acknowledgements).
    pub async fn touch(&self, info: InstanceInfo) -> Result<(), StoreError> {
        self.call(move |db| update_instance(&db.conn, &info)).await
    }

    pub async fn list_instances(&self, live_only: bool) -> Result<Vec<InstanceInfo>, StoreError> {
        self.call(move |db| {
            let sql = if live_only {
                "SELECT * FROM instances WHERE state IN ('starting','ready','busy','paused','stopping') ORDER BY created_at"
            } else {
                "SELECT * FROM instances ORDER BY created_at"
            };
            let mut stmt = db.conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| Ok(read_instance(r)))?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    /// Finds an instance by id, or else by name (the newest with that name).
    pub async fn find_instance(&self, r: String) -> Result<Option<InstanceInfo>, StoreError> {
        self.call(move |db| {
            let row = db
                .conn
                .query_row("SELECT * FROM instances WHERE id = ?1", [&r], |row| {
                    Ok(read_instance(row))
                })
                .optional()?;
            if let Some(row) = row {
                return row.map(Some);
            }
            db.conn
                .query_row(
                    "SELECT * FROM instances WHERE name = ?1 ORDER BY created_at DESC LIMIT 1",
                    [&r],
                    |row| Ok(read_instance(row)),
                )
                .optional()?
                .transpose()
        })
        .await
    }

    /// Records one usage record unless one with the same key is already stored for the
    /// instance. Returns whether it was new.
    pub async fn add_usage(
        &self,
        instance_id: String,
        turn: Option<u64>,
        rec: crate::agent::usage::UsageRecord,
        cost_usd: f64,
        priced_by: &'static str,
    ) -> Result<bool, StoreError> {
        self.call(move |db| {
            let n = db.conn.execute(
                "INSERT OR IGNORE INTO usage (instance_id, turn, ts, key, source, model, input, output, cache_write, cache_read, cost_usd, priced_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    instance_id,
                    turn.map(|t| t as i64),
                    crate::model::now_ms(),
                    rec.key,
                    rec.source,
                    rec.model,
                    rec.tokens.input as i64,
                    rec.tokens.output as i64,
                    rec.tokens.cache_write as i64,
                    rec.tokens.cache_read as i64,
                    cost_usd,
                    priced_by,
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Total USD recorded over every instance (the fleet's spend).
    pub async fn fleet_cost(&self) -> Result<f64, StoreError> {
        self.call(|db| {
            Ok(db
                .conn
                .query_row("SELECT COALESCE(SUM(cost_usd), 0) FROM usage", [], |r| {
                    r.get(0)
                })?)
        })
        .await
    }

    /// `PRAGMA integrity_check`: "ok" or the problems found.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        self.call(|db| {
            Ok(db
                .conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
        })
        .await
    }

    /// The stored spawn spec (a `SpawnRequest` as JSON) of an instance.
    pub async fn spec(&self, id: String) -> Result<Option<String>, StoreError> {
        self.call(move |db| {
            Ok(db
                .conn
                .query_row("SELECT spec FROM instances WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .await
    }

    pub async fn id_exists(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |db| {
            Ok(db
                .conn
                .query_row("SELECT 1 FROM instances WHERE id = ?1", [&id], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    pub async fn events(
        &self,
        instance_id: Option<String>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.call(move |db| {
            let mut stmt = db.conn.prepare(
                "SELECT seq, ts, instance_id, name, kind, data FROM events
                 WHERE seq > ?1 AND (?2 IS NULL OR instance_id = ?2) ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after, instance_id, limit], read_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn start_turn(
        &self,
        instance_id: String,
        seq: u64,
        input_bytes: usize,
    ) -> Result<(), StoreError> {
        self.call(move |db| {
            db.conn.execute(
                "INSERT INTO turns (instance_id, seq, sent_at, input_bytes, status) VALUES (?1, ?2, ?3, ?4, 'running')",
                params![instance_id, seq as i64, crate::model::now_ms(), input_bytes as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn end_turn(
        &self,
        instance_id: String,
        seq: u64,
        status: &'static str,
    ) -> Result<(), StoreError> {
        self.call(move |db| {
            db.conn.execute(
                "UPDATE turns SET completed_at = ?3, status = ?4 WHERE instance_id = ?1 AND seq = ?2 AND status = 'running'",
                params![instance_id, seq as i64, crate::model::now_ms(), status],
            )?;
            Ok(())
        })
        .await
    }
}

/// An `events` row selected as `seq, ts, instance_id, name, kind, data`.
fn read_event(r: &Row<'_>) -> rusqlite::Result<Event> {
    let data: String = r.get(5)?;
    Ok(Event {
        seq: r.get(0)?,
        ts: r.get(1)?,
        instance_id: r.get(2)?,
        name: r.get(3)?,
        kind: r.get(4)?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
    })
}

fn insert_event(conn: &Connection, mut event: Event) -> Result<Event, StoreError> {
    conn.execute(
        "INSERT INTO events (ts, instance_id, name, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            event.ts,
            event.instance_id,
            event.name,
            event.kind,
            event.data.to_string()
        ],
    )?;
    event.seq = conn.last_insert_rowid();
    Ok(event)
}

fn update_instance(conn: &Connection, info: &InstanceInfo) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE instances SET state = ?2, reason = ?3, reason_detail = ?4, exit_code = ?5,
            exit_signal = ?6, pid = ?7, tmux_session = ?8, started_at = ?9, ended_at = ?10,
            last_activity_at = ?11, output_bytes = ?12, turns = ?13, cost_usd = ?14,
            pid_start = ?15, boot_id = ?16, tokens = ?17, max_cost_usd = ?18, max_tokens = ?19,
            session_id = ?20, parent_id = ?21, tree = ?22
         WHERE id = ?1",
        params![
            info.id,
            info.state.as_str(),
            info.reason.map(ReasonCode::as_str),
            info.reason_detail,
            info.exit_code,
            info.exit_signal,
            info.pid,
            info.tmux_session,
            info.started_at,
            info.ended_at,
            info.last_activity_at,
            info.output_bytes as i64,
            info.turns as i64,
            info.cost_usd,
            info.pid_start.map(|v| v as i64),
            info.boot_id,
            serde_json::to_string(&info.tokens).unwrap_or_default(),
            info.max_cost_usd,
            info.max_tokens.map(|v| v as i64),
            info.session_id,
            info.parent_id,
            serde_json::to_string(&info.tree).unwrap_or_default(),
        ],
    )?;
    Ok(())
}

fn read_instance(r: &Row<'_>) -> Result<InstanceInfo, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "instances",
        detail,
    };
    let kind: String = r.get("kind")?;
    let backend: String = r.get("backend")?;
    let state: String = r.get("state")?;
    let reason: Option<String> = r.get("reason")?;
    let argv: String = r.get("argv")?;
    let env_keys: String = r.get("env_keys")?;
    Ok(InstanceInfo {
        id: r.get("id")?,
        name: r.get("name")?,
        kind: Kind::parse(&kind).ok_or_else(|| corrupt(format!("unknown kind {kind:?}")))?,
        backend: BackendKind::parse(&backend)
            .ok_or_else(|| corrupt(format!("unknown backend {backend:?}")))?,
        parent_id: r.get("parent_id")?,
        state: StateName::parse(&state)
            .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
        reason: match reason {
            None => None,
            Some(s) => Some(
                ReasonCode::parse(&s).ok_or_else(|| corrupt(format!("unknown reason {s:?}")))?,
            ),
        },
        reason_detail: r.get("reason_detail")?,
        exit_code: r.get("exit_code")?,
        exit_signal: r.get("exit_signal")?,
        pid: r.get("pid")?,
        argv: serde_json::from_str(&argv).map_err(|e| corrupt(format!("argv: {e}")))?,
        env_keys: serde_json::from_str(&env_keys).map_err(|e| corrupt(format!("env_keys: {e}")))?,
        workspace: r.get("workspace")?,
        tmux_session: r.get("tmux_session")?,
        idle_timeout_s: r.get::<_, i64>("idle_timeout_s")? as u64,
        wall_timeout_s: r.get::<_, i64>("wall_timeout_s")? as u64,
        created_at: r.get("created_at")?,
        started_at: r.get("started_at")?,
        ended_at: r.get("ended_at")?,
        last_activity_at: r.get("last_activity_at")?,
        output_bytes: r.get::<_, i64>("output_bytes")? as u64,
        turns: r.get::<_, i64>("turns")? as u64,
        cost_usd: r.get("cost_usd")?,
        pid_start: r.get::<_, Option<i64>>("pid_start")?.map(|v| v as u64),
        boot_id: r.get("boot_id")?,
        tokens: {
            let t: String = r.get("tokens")?;
            serde_json::from_str(&t).map_err(|e| corrupt(format!("tokens: {e}")))?
        },
        max_cost_usd: r.get("max_cost_usd")?,
        max_tokens: r.get::<_, Option<i64>>("max_tokens")?.map(|v| v as u64),
        mode: r.get("mode")?,
        model: r.get("model")?,
        session_id: r.get("session_id")?,
        tree: {
            let t: String = r.get("tree")?;
            serde_json::from_str(&t).map_err(|e| corrupt(format!("tree: {e}")))?
        },
    })
}

/// Copies a live database to `dest` with SQLite's online backup API (readers and the daemon's
/// writer keep working), then checks the copy.
pub fn backup(src: &Path, dest: &Path) -> Result<(), StoreError> {
    use rusqlite::OpenFlags;
    if dest.exists() {
        return Err(StoreError::Audit(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists; refusing to overwrite it", dest.display()),
        )));
    }
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: src.to_path_buf(),
        source,
    })?;
    from.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut to = Connection::open(dest).map_err(|source| StoreError::Open {
        path: dest.to_path_buf(),
        source,
    })?;
    {
        let b = rusqlite::backup::Backup::new(&from, &mut to)?;
        b.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
    }
    let ok: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(StoreError::Corrupt {
            table: "backup",
            detail: ok,
        });
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = open_connection(&path, "full").unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        drop(conn);
        let err = open_connection(&path, "full").unwrap_err().to_string();
        assert!(err.contains("newer than this corral"), "{err}");
        // reopening an up-to-date database is a no-op
        let dir2 = tempfile::tempdir().unwrap();
        let p2 = dir2.path().join("d.db");
        drop(open_connection(&p2, "normal").unwrap());
        drop(open_connection(&p2, "normal").unwrap());
    }

    /// Opens a database made from an old schema's SQL (migrating it) and reads one instance.
    fn upgraded(sql: &str, id: &str) -> (tempfile::TempDir, Connection, InstanceInfo) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        let conn = open_connection(&path, "full").unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
        let info = conn
            .query_row("SELECT * FROM instances WHERE id = ?1", [id], |r| {
                Ok(read_instance(r))
            })
            .unwrap()
            .unwrap();
        (dir, conn, info)
    }

    #[test]
    fn a_v1_database_upgrades_and_keeps_its_data() {
        let (_dir, conn, info) =
            upgraded(include_str!("../../tests/fixtures/db/v1.sql"), "v1inst0001");
        assert_eq!(info.name, "old-worker");
        assert_eq!(info.argv, ["sh", "-c", "echo hi"]);
        assert_eq!((info.pid_start, info.boot_id), (None, None));
        let events: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 1);
    }

    #[test]
    fn migrates_a_v3_database_with_agents_to_hierarchies() {
        let (_dir, conn, info) =
            upgraded(include_str!("../../tests/fixtures/db/v3.sql"), "v3agent001");
        assert_eq!(info.name, "old-agent");
        assert_eq!(info.tokens.cache_write, 17454);
        assert_eq!(info.tree, crate::model::TreeInfo::default(), "a root");
        // what the caps count: its own spend, until a descendant adds to it
        assert_eq!(crate::supervisor::tree::subtree_spend(&info).0, 0.1179625);
        let inbox: i64 = conn
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(inbox, 0);
        let usage: f64 = conn
            .query_row("SELECT sum(cost_usd) FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(usage, 0.1179625);
    }

    #[test]
    fn backup_copies_a_live_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let conn = open_connection(&path, "full").unwrap();
        conn.execute(
            "INSERT INTO events (ts, kind, data) VALUES (1, 'x', '{}')",
            [],
        )
        .unwrap();
        let dest = dir.path().join("copy.db");
        backup(&path, &dest).unwrap();
        assert!(backup(&path, &dest)
            .unwrap_err()
            .to_string()
            .contains("refusing to overwrite"));
        let copy = Connection::open(&dest).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn failed_migration_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).unwrap();
        // A table the v1 migration wants to create already exists: v1 must fail whole.
        conn.execute_batch("CREATE TABLE turns (x INTEGER);")
            .unwrap();
        drop(conn);
        let err = open_connection(&path, "full").unwrap_err().to_string();
        assert!(err.contains("migration to schema version 1"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 0);
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'instances'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            n, 0,
            "the instances table of a failed migration must be rolled back"
        );
    }
}
