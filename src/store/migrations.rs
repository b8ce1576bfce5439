//! Forward-only numbered migrations. `PRAGMA user_version` is the schema version; each
//! migration runs in one transaction with the version bump, so a failed upgrade rolls back.

/// Index `i` upgrades version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1: instances, events, turns
    r#"
    CREATE TABLE instances (
        id               TEXT PRIMARY KEY,
        name             TEXT NOT NULL,
        kind             TEXT NOT NULL,
        backend          TEXT NOT NULL,
        parent_id        TEXT REFERENCES instances(id),
        state            TEXT NOT NULL,
        reason           TEXT,
        reason_detail    TEXT,
        exit_code        INTEGER,
        exit_signal      INTEGER,
        pid              INTEGER,
        argv             TEXT NOT NULL,
        env_keys         TEXT NOT NULL,
        spec             TEXT NOT NULL,
        workspace        TEXT NOT NULL,
        tmux_session     TEXT,
        idle_timeout_s   INTEGER NOT NULL,
        wall_timeout_s   INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        ended_at         INTEGER,
        last_activity_at INTEGER NOT NULL,
        output_bytes     INTEGER NOT NULL DEFAULT 0,
        turns            INTEGER NOT NULL DEFAULT 0,
        cost_usd         REAL NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX instances_live_name ON instances(name)
        WHERE state IN ('starting', 'ready', 'busy', 'paused', 'stopping');
    CREATE INDEX instances_state ON instances(state);
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          INTEGER NOT NULL,
        instance_id TEXT,
        name        TEXT,
        kind        TEXT NOT NULL,
        data        TEXT NOT NULL
    );
    CREATE INDEX events_instance ON events(instance_id, seq);
    CREATE TABLE turns (
        instance_id  TEXT NOT NULL REFERENCES instances(id),
        seq          INTEGER NOT NULL,
        sent_at      INTEGER NOT NULL,
        completed_at INTEGER,
        input_bytes  INTEGER NOT NULL,
        status       TEXT NOT NULL,
        PRIMARY KEY (instance_id, seq)
    );
    "#,
    // v2: process identity for re-adoption after a restart
    r#"
    ALTER TABLE instances ADD COLUMN pid_start INTEGER;
    ALTER TABLE instances ADD COLUMN boot_id TEXT;
    "#,
    // v3: agents: tokens, caps, mode, model, session; usage records (deduplicated by key)
    r#"
    ALTER TABLE instances ADD COLUMN tokens TEXT NOT NULL DEFAULT '{"input":0,"output":0,"cache_write":0,"cache_read":0}';
    ALTER TABLE instances ADD COLUMN max_cost_usd REAL;
    ALTER TABLE instances ADD COLUMN max_tokens INTEGER;
    ALTER TABLE instances ADD COLUMN mode TEXT;
    ALTER TABLE instances ADD COLUMN model TEXT;
    ALTER TABLE instances ADD COLUMN session_id TEXT;
    CREATE TABLE usage (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id TEXT NOT NULL REFERENCES instances(id),
        turn        INTEGER,
        ts          INTEGER NOT NULL,
        key         TEXT NOT NULL,
        source      TEXT NOT NULL,
        model       TEXT NOT NULL,
        input       INTEGER NOT NULL,
        output      INTEGER NOT NULL,
        cache_write INTEGER NOT NULL,
        cache_read  INTEGER NOT NULL,
        cost_usd    REAL NOT NULL,
        priced_by   TEXT NOT NULL,
        UNIQUE (instance_id, key)
    );
    CREATE INDEX usage_instance ON usage(instance_id, id);
    "#,
    // v4: hierarchies: the tree's limits and subtree spend, per-instance MCP tokens (their
    // SHA-256, while live), and the inboxes children report to
    r#"
    ALTER TABLE instances ADD COLUMN tree TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE instances ADD COLUMN token_sha256 TEXT;
    CREATE INDEX instances_parent ON instances(parent_id);
    CREATE TABLE inbox (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        ts        INTEGER NOT NULL,
        to_id     TEXT REFERENCES instances(id),
        from_id   TEXT NOT NULL REFERENCES instances(id),
        from_name TEXT NOT NULL,
        text      TEXT NOT NULL,
        read_at   INTEGER
    );
    CREATE INDEX inbox_to ON inbox(to_id, id);
    "#,
];

/// The schema version this binary writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}
