//! What every writer of task rows shares: the repository's error, the clock at the
//! stored precision, row conversions, and the inserts of artifacts and events. Here so
//! that the repository and the two `HotWrites` implementations import it, and not each
//! other.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{DatabaseTransaction, DbErr, EntityTrait};

use super::entities::{artifact, task, task_event};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{
    ArtifactId, ArtifactRecord, LeaseToken, Priority, QueueName, TaskId, TaskKind, TaskRecord,
    TaskState, TenantId,
};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// A row the code cannot interpret (written by a newer version, or edited by hand).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The tenant has created its monthly quota of tasks; nothing was written.
    #[error("the tenant's monthly quota of {limit} tasks is used up")]
    QuotaExceeded { limit: u64 },
}

/// The current time at the precision every supported database stores (microseconds),
/// so a value written and read back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(super) async fn insert_artifacts(
    transaction: &DatabaseTransaction,
    task_id: TaskId,
    tenant: &TenantId,
    artifacts: &[operator_domain::NewArtifact],
    at: DateTime<Utc>,
) -> Result<(), RepoError> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let rows = artifacts.iter().map(|new| artifact::ActiveModel {
        id: Set(new.id.as_uuid()),
        task_id: Set(task_id.as_uuid()),
        tenant_id: Set(tenant.as_str().to_owned()),
        name: Set(new.name.clone()),
        content_type: Set(new.content_type.clone()),
        size_bytes: Set(to_i64(new.size_bytes)),
        storage_key: Set(new.storage_key.clone()),
        sha256: Set(new.sha256.clone()),
        created_at: Set(at),
    });
    artifact::Entity::insert_many(rows)
        .exec_without_returning(transaction)
        .await?;
    Ok(())
}

/// Appends events in their order, in one statement (ids follow the order of the rows).
pub(super) async fn insert_events(
    transaction: &DatabaseTransaction,
    task_id: TaskId,
    tenant: &TenantId,
    events: Vec<(&str, serde_json::Value)>,
    at: DateTime<Utc>,
) -> Result<(), RepoError> {
    let rows = events
        .into_iter()
        .map(|(kind, data)| task_event::ActiveModel {
            id: NotSet,
            task_id: Set(task_id.as_uuid()),
            tenant_id: Set(tenant.as_str().to_owned()),
            kind: Set(kind.to_owned()),
            data: Set(data),
            created_at: Set(at),
        });
    task_event::Entity::insert_many(rows)
        .exec_without_returning(transaction)
        .await?;
    Ok(())
}

pub(super) async fn insert_event(
    transaction: &DatabaseTransaction,
    task_id: TaskId,
    tenant: &TenantId,
    kind: &str,
    data: serde_json::Value,
    at: DateTime<Utc>,
) -> Result<(), RepoError> {
    insert_events(transaction, task_id, tenant, vec![(kind, data)], at).await
}

pub(super) fn to_record(row: task::Model) -> Result<TaskRecord, RepoError> {
    let corrupt = |what: String| RepoError::Corrupt(format!("task {}: {what}", row.id));
    Ok(TaskRecord {
        id: TaskId::from(row.id),
        tenant: TenantId::parse(&row.tenant_id).map_err(|error| corrupt(error.to_string()))?,
        queue: QueueName::parse(&row.queue).map_err(|error| corrupt(error.to_string()))?,
        kind: TaskKind::parse(&row.kind).map_err(|error| corrupt(error.message))?,
        state: TaskState::parse(&row.state).map_err(|error| corrupt(error.to_string()))?,
        input: row.input.clone(),
        priority: Priority::from_rank(row.priority),
        attempts: to_u32("attempts", row.attempts)?,
        max_attempts: to_u32("max_attempts", row.max_attempts)?,
        timeout_ms: u64::try_from(row.timeout_ms)
            .map_err(|_| corrupt(format!("timeout_ms is negative ({})", row.timeout_ms)))?,
        idempotency_key: row.idempotency_key.clone(),
        webhook_url: row.webhook_url.clone(),
        progress: row.progress.clone(),
        result: row.result.clone(),
        error: coded_error(row.error_code.clone(), row.error_message.clone()),
        cancel_requested: row.cancel_requested,
        lease_token: row.lease_token.map(LeaseToken::from),
        lease_expires_at: row.lease_expires_at,
        worker_id: row.worker_id.clone(),
        trace_parent: row.trace_parent.clone(),
        run_at: row.run_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    })
}

pub(super) fn to_artifact(row: artifact::Model) -> Result<ArtifactRecord, RepoError> {
    Ok(ArtifactRecord {
        id: ArtifactId::from(row.id),
        task_id: TaskId::from(row.task_id),
        tenant: TenantId::parse(&row.tenant_id)
            .map_err(|error| RepoError::Corrupt(format!("artifact {}: {error}", row.id)))?,
        name: row.name,
        content_type: row.content_type,
        size_bytes: u64::try_from(row.size_bytes).unwrap_or_default(),
        storage_key: row.storage_key,
        sha256: row.sha256,
        created_at: row.created_at,
    })
}

pub(super) fn coded_error(code: Option<String>, message: Option<String>) -> Option<CodedError> {
    let code = code?;
    let code = serde_json::from_value::<ErrorCode>(serde_json::Value::String(code))
        .unwrap_or(ErrorCode::Internal);
    Some(CodedError::new(code, message.unwrap_or_default()))
}

pub(super) fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A count the schema keeps non-negative; a negative one is a corrupt row, not zero.
pub(super) fn to_u32(field: &str, value: i32) -> Result<u32, RepoError> {
    u32::try_from(value).map_err(|_| RepoError::Corrupt(format!("{field} is negative ({value})")))
}
