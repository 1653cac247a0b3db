//! What every handler needs, built once at start-up and shared.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use operator_config::Settings;
use operator_domain::error::ErrorCode;
use operator_domain::network::NetworkPolicy;
use operator_domain::{QueueName, TaskRecord, TenantId};
use operator_store::db::TaskRepository;
use operator_store::queue::{Dispatch, SharedQueue};
use operator_store::storage::ArtifactStore;
use tracing::warn;

use crate::error::ApiError;

pub struct AppState {
    pub settings: Settings,
    pub repo: TaskRepository,
    pub queue: SharedQueue,
    pub storage: ArtifactStore,
    pub policy: NetworkPolicy,
    /// The address clients reach this API at, for links in responses.
    pub public_url: String,
    /// Queues known to exist. Queues are never deleted, so a name seen once stays valid
    /// and submissions to it need no database read.
    pub known_queues: KnownQueues,
}

#[derive(Debug, Default)]
pub struct KnownQueues(RwLock<HashSet<QueueName>>);

impl KnownQueues {
    fn contains(&self, queue: &QueueName) -> bool {
        self.0.read().is_ok_and(|known| known.contains(queue))
    }

    pub fn insert(&self, queue: &QueueName) {
        if let Ok(mut known) = self.0.write() {
            known.insert(queue.clone());
        }
    }
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// The tenant of a request. One tenant until authentication assigns them.
    pub fn tenant(&self) -> TenantId {
        TenantId::default_tenant()
    }

    /// Refuses a task for a queue nobody created, which no worker would ever take it
    /// from: the inner error is that refusal (`unknown_queue`), the outer one a failure
    /// to look the queue up.
    pub async fn check_queue(&self, queue: &QueueName) -> Result<Result<(), ApiError>, ApiError> {
        if queue.is_default() || self.known_queues.contains(queue) {
            return Ok(Ok(()));
        }
        if self.repo.queue(queue).await?.is_some() {
            self.known_queues.insert(queue);
            return Ok(Ok(()));
        }
        Ok(Err(ApiError::new(
            ErrorCode::UnknownQueue,
            format!("queue: no queue \"{queue}\"; create it first with PUT /v1/queues/{queue}"),
        )))
    }

    /// Puts a committed task on the queue. A failure (or a slow queue) is logged, not
    /// returned: the task is already committed, and the reconciler dispatches it later.
    pub async fn dispatch(&self, task: &TaskRecord) {
        let dispatch = Dispatch {
            queue: task.queue.clone(),
            task_id: task.id,
            tenant: task.tenant.clone(),
            priority: task.priority,
            not_before: Some(task.run_at),
        };
        let timeout = self.settings.queue.dispatch_timeout;
        match tokio::time::timeout(timeout, self.queue.enqueue(&dispatch)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                warn!(task_id = %task.id, error = %error, "dispatch failed; the reconciler will retry it")
            }
            Err(_) => {
                warn!(task_id = %task.id, timeout_ms = timeout.as_millis() as u64, "dispatch timed out; the reconciler will retry it")
            }
        }
    }
}
