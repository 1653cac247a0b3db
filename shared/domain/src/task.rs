//! Tasks, attempts and artifacts as the rest of the code sees them (the repository
//! converts database rows into these at its edge).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{ArtifactId, LeaseToken, QueueName, TaskId, TenantId};
use super::spec::{Priority, TaskKind, TaskSpec};
use super::state::TaskState;
use crate::error::{CodedError, ErrorCode};

/// A validated task submission, before it has an id.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub tenant: TenantId,
    pub queue: QueueName,
    pub spec: TaskSpec,
    pub priority: Priority,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the submission, stored with an idempotency key so a repeat of
    /// the same request can be told from a different request under the same key.
    pub request_hash: Option<String>,
    pub webhook_url: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    /// W3C `traceparent` of the request that created the task, so the worker's spans join its trace.
    pub trace_parent: Option<String>,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub tenant: TenantId,
    pub queue: QueueName,
    pub kind: TaskKind,
    pub state: TaskState,
    pub input: serde_json::Value,
    pub priority: Priority,
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub idempotency_key: Option<String>,
    pub webhook_url: Option<String>,
    pub progress: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub error: Option<CodedError>,
    pub cancel_requested: bool,
    pub lease_token: Option<LeaseToken>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub worker_id: Option<String>,
    pub trace_parent: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TaskRecord {
    /// Re-validates the stored input into a spec a worker can run.
    pub fn spec(&self) -> Result<TaskSpec, CodedError> {
        TaskSpec::parse(self.kind, &self.input)
    }
}

/// How one run of a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    /// Failed with a retryable error; the task goes back to the queue.
    Retrying,
    Failed,
    TimedOut,
    Cancelled,
    /// Failed with a retryable error on the last attempt.
    Dead,
    /// The worker handed the lease back (shutdown) before finishing.
    Released,
    /// The lease expired before the worker finished (killed, stalled, partitioned).
    LeaseExpired,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
            Self::Released => "released",
            Self::LeaseExpired => "lease_expired",
        }
    }
}

/// One run of a task by one worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub task_id: TaskId,
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<CodedError>,
}

/// A file a task produced, stored in object storage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArtifactRecord {
    pub id: ArtifactId,
    pub task_id: TaskId,
    pub tenant: TenantId,
    pub name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

/// An artifact the worker has uploaded and wants recorded with the task's outcome.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub id: ArtifactId,
    pub name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
    pub sha256: String,
}

/// How a worker's run of a task ended, as it asks the repository to record it.
#[derive(Debug, Clone)]
pub enum TaskOutcome {
    Succeeded {
        result: serde_json::Value,
        artifacts: Vec<NewArtifact>,
    },
    Failed {
        error: CodedError,
    },
    /// Put the task back in the queue to run again at `run_at`.
    Retry {
        error: CodedError,
        run_at: DateTime<Utc>,
    },
    TimedOut {
        error: CodedError,
    },
    Cancelled,
    Dead {
        error: CodedError,
    },
    /// The worker stops without a verdict (shutdown): back to the queue, at once.
    Released,
}

impl TaskOutcome {
    /// The state the task moves to.
    pub fn next_state(&self) -> TaskState {
        match self {
            Self::Succeeded { .. } => TaskState::Succeeded,
            Self::Failed { .. } => TaskState::Failed,
            Self::Retry { .. } | Self::Released => TaskState::Queued,
            Self::TimedOut { .. } => TaskState::TimedOut,
            Self::Cancelled => TaskState::Cancelled,
            Self::Dead { .. } => TaskState::Dead,
        }
    }

    pub fn attempt_outcome(&self) -> AttemptOutcome {
        match self {
            Self::Succeeded { .. } => AttemptOutcome::Succeeded,
            Self::Failed { .. } => AttemptOutcome::Failed,
            Self::Retry { .. } => AttemptOutcome::Retrying,
            Self::TimedOut { .. } => AttemptOutcome::TimedOut,
            Self::Cancelled => AttemptOutcome::Cancelled,
            Self::Dead { .. } => AttemptOutcome::Dead,
            Self::Released => AttemptOutcome::Released,
        }
    }

    pub fn error(&self) -> Option<CodedError> {
        match self {
            Self::Failed { error }
            | Self::Retry { error, .. }
            | Self::TimedOut { error }
            | Self::Dead { error } => Some(error.clone()),
            Self::Cancelled => Some(CodedError::new(
                ErrorCode::Cancelled,
                "the task was cancelled",
            )),
            Self::Succeeded { .. } | Self::Released => None,
        }
    }
}

/// Filters and page size for listing tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub kind: Option<TaskKind>,
    pub queue: Option<QueueName>,
    /// Return tasks created before this one (the cursor of the previous page).
    pub before: Option<TaskId>,
    pub limit: u64,
}

/// One entry of a task's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    pub id: i64,
    pub task_id: TaskId,
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}
