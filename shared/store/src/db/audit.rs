//! The audit repository: an append-only log of what callers did. Rows are written
//! and read, never changed or deleted here (retention is the housekeeping's).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::Value;
use uuid::Uuid;

use super::entities::audit_event;
use super::rows::{RepoError, now};
use operator_domain::TenantId;

/// Something a caller did.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub tenant: TenantId,
    /// Who: `key:<id>`, `user:<id>`, `operator`, `anonymous`.
    pub actor: String,
    /// What, as `resource.verb`: `api_key.created`, `task.cancelled`, …
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    /// The client's address, when known.
    pub address: Option<String>,
    /// What else is worth keeping (a key's role, a queue's new limit…).
    pub detail: Value,
}

/// A recorded entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub entry: AuditEntry,
    pub created_at: DateTime<Utc>,
}

/// Which entries to list: newest first, before a cursor, optionally one action.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub before: Option<Uuid>,
    pub limit: u64,
}

#[derive(Clone, Debug)]
pub struct AuditRepository {
    db: DatabaseConnection,
}

impl AuditRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn record(&self, entry: AuditEntry) -> Result<AuditEvent, RepoError> {
        let id = Uuid::now_v7();
        let created_at = now();
        audit_event::Entity::insert(audit_event::ActiveModel {
            id: Set(id),
            tenant_id: Set(entry.tenant.as_str().to_owned()),
            actor: Set(entry.actor.clone()),
            action: Set(entry.action.clone()),
            resource_type: Set(entry.resource_type.clone()),
            resource_id: Set(entry.resource_id.clone()),
            address: Set(entry.address.clone()),
            detail: Set(entry.detail.clone()),
            created_at: Set(created_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(AuditEvent {
            id,
            entry,
            created_at,
        })
    }

    /// The tenant's entries, newest first (ids are time-ordered).
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, RepoError> {
        let mut query = audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(audit_event::Column::Id)
            .limit(filter.limit);
        if let Some(action) = &filter.action {
            query = query.filter(audit_event::Column::Action.eq(action.as_str()));
        }
        if let Some(before) = filter.before {
            query = query.filter(audit_event::Column::Id.lt(before));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.id,
                    entry: AuditEntry {
                        tenant: TenantId::parse(&row.tenant_id)
                            .map_err(|error| RepoError::Corrupt(error.to_string()))?,
                        actor: row.actor,
                        action: row.action,
                        resource_type: row.resource_type,
                        resource_id: row.resource_id,
                        address: row.address,
                        detail: row.detail,
                    },
                    created_at: row.created_at,
                })
            })
            .collect()
    }
}
