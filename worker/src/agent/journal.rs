//! Where an agent's steps go as they end: each step is one transaction under the task's
//! lease (the task's progress, the `agent_step` event, the step's screenshot and the
//! checkpoint), written before the model is asked for the next step. So a step the
//! model chose is either recorded whole or not at all, and an attempt after a crash
//! resumes from the last recorded step without asking the model again for it.

use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{LeaseToken, NewArtifact, Step, TaskId, TenantId};
use operator_store::db::{AgentStepWrite, TaskRepository};
use operator_store::storage::ArtifactStore;
use serde_json::Value;
use tracing::warn;

use crate::render::RenderedFile;
use crate::runner::store_file;

/// One task attempt's journal.
pub struct Journal {
    repo: TaskRepository,
    storage: ArtifactStore,
    task: TaskId,
    tenant: TenantId,
    attempt: u32,
    token: LeaseToken,
    /// The checkpoint an earlier attempt left, read when this attempt started.
    restored: Option<Value>,
}

impl Journal {
    pub fn new(
        repo: TaskRepository,
        storage: ArtifactStore,
        task: TaskId,
        tenant: TenantId,
        attempt: u32,
        token: LeaseToken,
        restored: Option<Value>,
    ) -> Self {
        Self {
            repo,
            storage,
            task,
            tenant,
            attempt,
            token,
            restored,
        }
    }

    pub fn restored(&self) -> Option<&Value> {
        self.restored.as_ref()
    }

    /// Stores a file of this attempt (a step's screenshot); `None` when storage failed,
    /// which costs the record its picture, not the task its step.
    pub async fn store(&self, file: RenderedFile) -> Option<NewArtifact> {
        let name = file.name.clone();
        match store_file(&self.storage, &self.tenant, self.task, self.attempt, file).await {
            Ok(artifact) => Some(artifact),
            Err(error) => {
                warn!(file = %name, error = %error.message, "cannot store a step's screenshot");
                None
            }
        }
    }

    /// The script the cache holds for `key` (this tenant's), if any and readable; the
    /// cache is an optimisation, so a failure to read it only costs the model calls.
    pub async fn cached_script(&self, key: &str) -> Option<Vec<Step>> {
        let steps = match self.repo.cached_script(&self.tenant, key).await {
            Ok(steps) => steps?,
            Err(error) => {
                warn!(error = %error, "cannot read the agent script cache");
                return None;
            }
        };
        match serde_json::from_value(steps) {
            Ok(steps) => Some(steps),
            Err(error) => {
                warn!(error = %error, "the cached agent script is unreadable; ignored");
                None
            }
        }
    }

    /// Keeps `steps` as the cached script for `key`; a failure is logged, not fatal.
    pub async fn cache_script(&self, key: &str, steps: &[Step]) -> bool {
        let steps = serde_json::to_value(steps).unwrap_or(Value::Null);
        match self
            .repo
            .cache_script(&self.tenant, key, &steps, self.task)
            .await
        {
            Ok(()) => true,
            Err(error) => {
                warn!(error = %error, "cannot keep the agent's script in the cache");
                false
            }
        }
    }

    /// Records a step; an error when the lease is gone (another worker owns the task)
    /// or the database cannot be written (the step cannot be kept, so the attempt ends
    /// and is retried from the last step that was).
    pub async fn record(&self, write: AgentStepWrite<'_>) -> Result<(), CodedError> {
        match self
            .repo
            .record_agent_step(self.task, self.token, self.attempt, write)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(CodedError::new(
                ErrorCode::Cancelled,
                "the task's lease was lost: another worker owns it now",
            )),
            Err(error) => Err(CodedError::new(
                ErrorCode::StorageError,
                format!("cannot record the agent's step: {error}"),
            )),
        }
    }
}
