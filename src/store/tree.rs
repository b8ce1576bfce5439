//! The store's part of hierarchies: per-instance MCP token digests (kept while the instance
//! lives, so an adopted agent's token still works after a restart) and the inboxes children
//! report to.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Store, StoreError};

/// One message in an inbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboxMessage {
    pub id: i64,
    /// Unix milliseconds.
    pub ts: i64,
    /// The recipient; `None`: the operator.
    pub to_id: Option<String>,
    pub from_id: String,
    pub from_name: String,
    pub text: String,
    pub read_at: Option<i64>,
}

impl Store {
    /// Records (or with `None` revokes) the SHA-256 of an instance's MCP token.
    pub async fn set_token_sha256(
        &self,
        id: String,
        digest: Option<String>,
    ) -> Result<(), StoreError> {
        self.call(move |db| {
            db.conn.execute(
                "UPDATE instances SET token_sha256 = ?2 WHERE id = ?1",
                params![id, digest],
            )?;
            Ok(())
        })
        .await
    }

    /// The token digests of live instances, as (digest, id).
    pub async fn live_token_digests(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.call(|db| {
            let mut stmt = db.conn.prepare(
                "SELECT token_sha256, id FROM instances WHERE token_sha256 IS NOT NULL
                 AND state IN ('starting','ready','busy','paused','stopping')",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Clears the digests of instances that have ended (a crash may have left some).
    pub async fn revoke_ended_tokens(&self) -> Result<usize, StoreError> {
        self.call(|db| {
            Ok(db.conn.execute(
                "UPDATE instances SET token_sha256 = NULL WHERE token_sha256 IS NOT NULL
                 AND state NOT IN ('starting','ready','busy','paused','stopping')",
                [],
            )?)
        })
        .await
    }

    /// Puts a message in an inbox (`to_id` `None`: the operator's) with its event.
    pub async fn post_inbox(
        &self,
        to_id: Option<String>,
        from_id: String,
        from_name: String,
        text: String,
        event: crate::model::Event,
    ) -> Result<(InboxMessage, crate::model::Event), StoreError> {
        self.call(move |db| {
            let ts = crate::model::now_ms();
            let tx = db.conn.transaction()?;
            tx.execute(
                "INSERT INTO inbox (ts, to_id, from_id, from_name, text) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![ts, to_id, from_id, from_name, text],
            )?;
            let id = tx.last_insert_rowid();
            let mut event = event;
            event.data["message_id"] = serde_json::json!(id);
            let event = super::insert_event(&tx, event)?;
            tx.commit()?;
            db.audit.append(&event)?;
            Ok((
                InboxMessage {
                    id,
                    ts,
                    to_id,
                    from_id,
                    from_name,
                    text,
                    read_at: None,
                },
                event,
            ))
        })
        .await
    }

    /// Messages of one inbox after `after` (ids), oldest first; with `mark_read` they are
    /// marked read in the same transaction.
    pub async fn read_inbox(
        &self,
        to_id: Option<String>,
        after: i64,
        unread_only: bool,
        limit: u32,
        mark_read: bool,
    ) -> Result<Vec<InboxMessage>, StoreError> {
        self.call(move |db| {
            let tx = db.conn.transaction()?;
            let list = {
                let mut stmt = tx.prepare(
                    "SELECT id, ts, to_id, from_id, from_name, text, read_at FROM inbox
                     WHERE to_id IS ?1 AND id > ?2 AND (?3 = 0 OR read_at IS NULL)
                     ORDER BY id LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![to_id, after, unread_only, limit], |r| {
                    Ok(InboxMessage {
                        id: r.get(0)?,
                        ts: r.get(1)?,
                        to_id: r.get(2)?,
                        from_id: r.get(3)?,
                        from_name: r.get(4)?,
                        text: r.get(5)?,
                        read_at: r.get(6)?,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            if mark_read && !list.is_empty() {
                let now = crate::model::now_ms();
                for m in list.iter().filter(|m| m.read_at.is_none()) {
                    tx.execute(
                        "UPDATE inbox SET read_at = ?2 WHERE id = ?1",
                        params![m.id, now],
                    )?;
                }
            }
            tx.commit()?;
            Ok(list)
        })
        .await
    }

    /// Unread messages in an inbox.
    pub async fn unread_count(&self, to_id: Option<String>) -> Result<u64, StoreError> {
        self.call(move |db| {
            let n: i64 = db
                .conn
                .query_row(
                    "SELECT COUNT(*) FROM inbox WHERE to_id IS ?1 AND read_at IS NULL",
                    [to_id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            Ok(n as u64)
        })
        .await
    }
}
