//! What every handler needs, built once at start-up and shared.

use std::sync::Arc;

use operator_shared::config::Settings;
use operator_shared::db::TaskRepository;
use operator_shared::domain::{TaskRecord, TenantId};
use operator_shared::network::NetworkPolicy;
use operator_shared::queue::{Dispatch, SharedQueue};
use operator_shared::storage::ArtifactStore;
use tracing::warn;

pub struct AppState {
    pub settings: Settings,
    pub repo: TaskRepository,
    pub queue: SharedQueue,
    pub storage: ArtifactStore,
    pub policy: NetworkPolicy,
    /// The address clients reach this API at, for links in responses.
    pub public_url: String,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// The tenant of a request. One tenant until authentication assigns them.
    pub fn tenant(&self) -> TenantId {
        TenantId::default_tenant()
    }

    /// Puts a committed task on the queue. A failure (or a slow queue) is logged, not
    /// returned: the task is already committed, and the reconciler dispatches it later.
    pub async fn dispatch(&self, task: &TaskRecord) {
        let dispatch = Dispatch {
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
