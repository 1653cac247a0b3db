//! `/v1/audit-events`: the tenant's audit log, newest first.
//!
//! Recorded (by [`crate::state::AppState::audit`]): keys made and revoked; tasks
//! cancelled and retried; webhook endpoints created, changed, deleted, their secrets
//! rotated, deliveries re-sent; the signing key rotated; queues created or changed,
//! paused and resumed.

use chrono::{DateTime, Utc};
use operator_domain::error::ErrorCode;
use operator_store::db::{AuditEvent, AuditFilter, AuditRepository};
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};
use uuid::Uuid;

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;

#[derive(Tags)]
pub enum AuditTags {
    /// Who did what, when.
    Audit,
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

/// One thing a caller did.
#[derive(Debug, Clone, Object)]
#[oai(rename = "AuditEvent")]
pub struct AuditEventView {
    pub id: Uuid,
    /// Who: `key:<id>`, `operator` (the command line), `anonymous` (authentication off).
    pub actor: String,
    /// What, as `resource.verb`: `api_key.created`, `task.cancelled`, `queue.paused`…
    pub action: String,
    /// `api_key`, `task`, `webhook`, `delivery`, `signing_key` or `queue`.
    pub resource_type: String,
    pub resource_id: String,
    /// The client's address.
    pub address: Option<String>,
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl From<AuditEvent> for AuditEventView {
    fn from(event: AuditEvent) -> Self {
        Self {
            id: event.id,
            actor: event.entry.actor,
            action: event.entry.action,
            resource_type: event.entry.resource_type,
            resource_id: event.entry.resource_id,
            address: event.entry.address,
            detail: event.entry.detail,
            created_at: event.created_at,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "AuditEventPage")]
pub struct AuditPage {
    pub items: Vec<AuditEventView>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

codes!(ListAuditCodes: InvalidParameter);

pub struct AuditApi {
    pub state: SharedState,
}

#[OpenApi(tag = "AuditTags::Audit")]
impl AuditApi {
    /// The tenant's audit log, newest first.
    #[oai(path = "/v1/audit-events", method = "get")]
    async fn list(
        &self,
        caller: Caller,
        /// Only this action, e.g. `api_key.revoked`.
        action: Query<Option<String>>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<AuditPage>, ListAuditCodes> {
        let invalid = |message: &str| ApiError::new(ErrorCode::InvalidParameter, message);
        let limit = limit.0.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(invalid("limit: must be between 1 and 200").into());
        }
        let before = cursor
            .0
            .as_deref()
            .filter(|cursor| !cursor.is_empty())
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| invalid("cursor: not a cursor this API returned"))?;
        let filter = AuditFilter {
            action: action.0.filter(|action| !action.is_empty()),
            before,
            // One extra row tells whether another page follows.
            limit: u64::from(limit) + 1,
        };
        let mut events = AuditRepository::new(self.state.repo.connection().clone())
            .list(&caller.tenant, &filter)
            .await?;
        let next_cursor = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|event| event.id.to_string())
        } else {
            None
        };
        Ok(Json(AuditPage {
            items: events.into_iter().map(AuditEventView::from).collect(),
            next_cursor,
        }))
    }
}
