//! The hot transitions of a task (create, start, finish) as an interface: the one
//! place the two databases are written differently.
//!
//! - [`Transactional`](super::transactional::Transactional): each transition as a
//!   transaction of several statements. SQLite's way, and PostgreSQL's for a finish
//!   that writes webhook outbox rows.
//! - [`Batched`](super::postgres::Batched): PostgreSQL's group commit; concurrent calls
//!   are written by one statement per batch.
//!
//! Both keep the same rules (the guard on the row, the event rows, the attempt rows,
//! the outbox with the terminal state); the repository's conformance suite
//! (`shared/store/tests/store/repository.rs`, `outbox.rs`) runs every transition on both.
//! What the transitions mean, and who may make them, is the repository's
//! ([`TaskRepository`](super::TaskRepository)); this layer only writes them.

use chrono::{DateTime, Utc};
use operator_domain::error::CodedError;
use operator_domain::{LeaseToken, TaskId, TaskOutcome, TaskRecord, TaskState, TenantId};

use super::entities::task;
use super::rows::RepoError;

/// A worker's claim on a task for a new attempt.
pub(super) struct Claim<'a> {
    pub id: TaskId,
    pub token: LeaseToken,
    pub worker: &'a str,
    /// Microsecond precision, as stored.
    pub lease_until: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// How the worker holding `token` ended its run, with the rows it writes, shaped once
/// by the repository for both ways of writing them.
pub(super) struct Finish<'a> {
    pub id: TaskId,
    pub token: LeaseToken,
    pub outcome: &'a TaskOutcome,
    pub now: DateTime<Utc>,
    pub next_state: TaskState,
    pub error: Option<CodedError>,
    /// The events before the `state` event: one `artifact` event per artifact, in order.
    pub events: Vec<(&'static str, serde_json::Value)>,
    /// The `state` event's data; it also gets the attempt number once the row is known.
    pub state_data: serde_json::Value,
    /// The artifacts a successful run stored, as the finish writes them and the webhook
    /// outbox lists them (`storage_key` is internal there: it lets the dispatcher
    /// presign a download and is never sent).
    pub artifacts: Vec<serde_json::Value>,
}

#[async_trait::async_trait]
pub(super) trait HotWrites: Send + Sync + std::fmt::Debug {
    /// Stores a new task row and its `created` event, and counts it in the tenant's
    /// monthly usage. With a `quota` (the tenant's monthly tasks), nothing is written
    /// when the month's count has reached it: [`RepoError::QuotaExceeded`].
    async fn create(
        &self,
        model: task::ActiveModel,
        tenant: &TenantId,
        now: DateTime<Utc>,
        quota: Option<u64>,
    ) -> Result<task::Model, RepoError>;

    /// Makes the claim's worker the owner of the task as a new attempt, if the task is
    /// queued or its previous lease has expired (that attempt is closed as
    /// `lease_expired`); writes the attempt row and the `state` event. `None` when the
    /// task was not claimable.
    async fn start(&self, claim: &Claim<'_>) -> Result<Option<task::Model>, RepoError>;

    /// Records the finish under the lease: the task's new state, result or error, the
    /// attempt's outcome, artifacts, events, the attempt's time in the tenant's monthly
    /// usage and, for a terminal state, the outbox rows.
    /// `None` when the lease is gone (nothing written).
    async fn finish(&self, finish: &Finish<'_>) -> Result<Option<TaskRecord>, RepoError>;
}
