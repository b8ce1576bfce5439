//! Tools for hierarchies: a child reports to its parent (`reply_to_parent`), a parent reads
//! what its children reported (`read_inbox`), and inbox messages reach the recipient's open
//! MCP sessions as log notifications, so a parent need not poll.

use axum::http::request::Parts;
use rmcp::handler::server::common::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::JsonObject;
use rmcp::{tool, tool_router};
use serde_json::json;

use super::args::{InboxArgs, ReplyArgs};
use super::{bounded, caller, parse, schema, CorralMcp, Sessions, ToolResult};
use crate::supervisor::{Caller, Supervisor};

impl Sessions {
    /// Sends each inbox message to the recipient's open sessions (the operator's sessions for
    /// messages to the operator).
    #[allow(deprecated)] // logging is part of protocol versions 2025-06-18 and 2025-11-25
    pub(super) fn spawn_inbox_forwarder(&self, sup: &Supervisor) {
        let mut rx = sup.subscribe_inbox();
        let sessions = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let to = match &msg.to_id {
                    Some(id) => Caller::Agent { id: id.clone() },
                    None => Caller::Operator,
                };
                let data = json!({ "event": "inbox", "message": msg });
                let param = rmcp::model::LoggingMessageNotificationParam::new(
                    rmcp::model::LoggingLevel::Info,
                    data,
                )
                .with_logger("corral");
                for (who, peer) in sessions.open() {
                    if who == to {
                        let _ = peer.notify_logging_message(param.clone()).await;
                    }
                }
            }
        });
    }
}

#[tool_router(router = tree_router, vis = "pub(super)")]
impl CorralMcp {
    #[tool(
        description = "Report to your parent: puts a message in its inbox (read with read_inbox) and notifies its open MCP sessions. For agents connected with their own token; an instance without a parent reports to the operator. Returns the message id.",
        input_schema = schema::<ReplyArgs>()
    )]
    async fn reply_to_parent(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: ReplyArgs = parse("reply_to_parent", raw)?;
            let Caller::Agent { id } = caller(&parts)? else {
                return Err("reply_to_parent is for agents connected with their own instance token; the operator has no parent".to_string());
            };
            let msg = self
                .sup
                .reply_to_parent(&id, a.text)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "message_id": msg.id, "to_id": msg.to_id, "delivered_to": if msg.to_id.is_some() { "parent" } else { "operator" } }))
        }
        .await;
        self.finish("reply_to_parent", r)
    }

    #[tool(
        description = "Read your inbox: the messages your children sent with reply_to_parent, oldest first (unread only by default; reading marks them read). The operator reads its own inbox (messages from instances without a parent) or, with instance, any instance's.",
        input_schema = schema::<InboxArgs>()
    )]
    async fn read_inbox(
        &self,
        Parameters(raw): Parameters<JsonObject>,
        Extension(parts): Extension<Parts>,
    ) -> ToolResult {
        let r = async {
            let a: InboxArgs = parse("read_inbox", raw)?;
            let max = bounded("max", a.max, 50, 500)?;
            let owner = match (caller(&parts)?, a.instance) {
                (Caller::Agent { .. }, Some(_)) => {
                    return Err("instance: an agent reads only its own inbox; leave instance out".to_string())
                }
                (Caller::Agent { id }, None) => Some(id),
                (Caller::Operator, Some(r)) => Some(self.sup.get(&r).await.map_err(|e| e.to_string())?.id),
                (Caller::Operator, None) => None,
            };
            let (messages, unread) = self
                .sup
                .read_inbox(owner.clone(), a.after_id.unwrap_or(0), a.unread_only.unwrap_or(true), max as u32)
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "owner": owner, "count": messages.len(), "messages": messages, "unread_left": unread }))
        }
        .await;
        self.finish("read_inbox", r)
    }
}
