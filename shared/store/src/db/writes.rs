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
use serde_json::json;

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

/// How the worker holding `token` ended its run.
pub(super) struct Finish<'a> {
    pub id: TaskId,
    pub token: LeaseToken,
    pub outcome: &'a TaskOutcome,
    pub now: DateTime<Utc>,
}

#[async_trait::async_trait]
pub(super) trait HotWrites: Send + Sync + std::fmt::Debug {
    /// Stores a new task row and its `created` event.
    async fn create(
        &self,
        model: task::ActiveModel,
        tenant: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<task::Model, RepoError>;

    /// Makes the claim's worker the owner of the task as a new attempt, if the task is
    /// queued or its previous lease has expired (that attempt is closed as
    /// `lease_expired`); writes the attempt row and the `state` event. `None` when the
    /// task was not claimable.
    async fn start(&self, claim: &Claim<'_>) -> Result<Option<task::Model>, RepoError>;

    /// Records the finish under the lease: the task's new state, result or error, the
    /// attempt's outcome, artifacts, events and, for a terminal state, the outbox rows.
    /// `None` when the lease is gone (nothing written).
    async fn finish(&self, finish: &Finish<'_>) -> Result<Option<TaskRecord>, RepoError>;
}

/// The artifacts a successful run stored, as the batch finish writes them and the
/// webhook outbox lists them (`storage_key` is internal there: it lets the dispatcher
/// presign a download and is never sent).
pub(super) fn artifact_rows(outcome: &TaskOutcome) -> Vec<serde_json::Value> {
    let TaskOutcome::Succeeded { artifacts, .. } = outcome else {
        return Vec::new();
    };
    artifacts
        .iter()
        .map(|artifact| {
            json!({
                "id": artifact.id,
                "name": artifact.name,
                "content_type": artifact.content_type,
                "size_bytes": artifact.size_bytes,
                "sha256": artifact.sha256,
                "storage_key": artifact.storage_key,
            })
        })
        .collect()
}

/// A finish's events: one `artifact` event per artifact, in order, then the data of
/// the `state` event, which also gets the attempt number once the row is known.
pub(super) fn finish_events(
    outcome: &TaskOutcome,
    next_state: TaskState,
    error: Option<&CodedError>,
) -> (Vec<(&'static str, serde_json::Value)>, serde_json::Value) {
    let mut events = Vec::new();
    if let TaskOutcome::Succeeded { artifacts, .. } = outcome {
        events.extend(artifacts.iter().map(|new| {
            (
                "artifact",
                json!({"id": new.id, "name": new.name, "content_type": new.content_type, "size_bytes": new.size_bytes}),
            )
        }));
    }
    let mut state = json!({"state": next_state});
    if let Some(error) = error {
        state["error"] = json!(error);
    }
    (events, state)
}
