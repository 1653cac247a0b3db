//! Write, then dispatch: the one way a task reaches the queue after it is stored.
//!
//! The database is the truth and the queue a hint (DESIGN: "the row first"). Every
//! caller that stores a task which should run (the API's submit, one-call and retry
//! handlers; the scheduler's reconciler for rows the queue lost) goes through here, so
//! a dispatch failure is handled the same way everywhere: logged, never returned, and
//! left to the reconciler.

use std::time::Duration;

use operator_domain::{NewTask, TaskId, TaskRecord, TenantId};
use tracing::warn;

use crate::db::{DispatchCandidate, RedriveOutcome, RepoError, Submitted, TaskRepository};
use crate::queue::{Dispatch, SharedQueue};

impl From<&TaskRecord> for Dispatch {
    fn from(task: &TaskRecord) -> Self {
        Self {
            queue: task.queue.clone(),
            task_id: task.id,
            tenant: task.tenant.clone(),
            priority: task.priority,
            not_before: Some(task.run_at),
        }
    }
}

impl From<&DispatchCandidate> for Dispatch {
    fn from(candidate: &DispatchCandidate) -> Self {
        Self {
            queue: candidate.queue.clone(),
            task_id: candidate.task_id,
            tenant: candidate.tenant.clone(),
            priority: candidate.priority,
            not_before: Some(candidate.run_at),
        }
    }
}

/// Stores tasks and puts them on the queue.
#[derive(Clone)]
pub struct Submitter {
    repo: TaskRepository,
    queue: SharedQueue,
    dispatch_timeout: Duration,
}

impl Submitter {
    /// `dispatch_timeout` bounds the wait for the queue (`queue.dispatch_timeout`): a
    /// slow queue delays no answer by more.
    pub fn new(repo: TaskRepository, queue: SharedQueue, dispatch_timeout: Duration) -> Self {
        Self {
            repo,
            queue,
            dispatch_timeout,
        }
    }

    /// Stores a task unless its idempotency key was seen (see
    /// [`TaskRepository::submit_within`]), within the tenant's monthly quota of tasks;
    /// a created one is dispatched.
    pub async fn submit(&self, task: NewTask, quota: Option<u64>) -> Result<Submitted, RepoError> {
        let submitted = self.repo.submit_within(task, quota).await?;
        if let Submitted::Created(task) = &submitted {
            self.dispatch(task).await;
        }
        Ok(submitted)
    }

    /// Stores a task (no idempotency key) within the tenant's monthly quota of tasks,
    /// and dispatches it.
    pub async fn create(&self, task: NewTask, quota: Option<u64>) -> Result<TaskRecord, RepoError> {
        let task = self.repo.create_within(task, quota).await?;
        self.dispatch(&task).await;
        Ok(task)
    }

    /// Re-drives a finished task with `attempts` more attempts and dispatches it.
    pub async fn redrive(
        &self,
        tenant: &TenantId,
        id: TaskId,
        attempts: u32,
    ) -> Result<RedriveOutcome, RepoError> {
        let outcome = self.repo.redrive(tenant, id, attempts).await?;
        if let RedriveOutcome::Redriven(task) = &outcome {
            self.dispatch(task).await;
        }
        Ok(outcome)
    }

    /// Puts a committed task on the queue. A failure (or a slow queue) is logged, not
    /// returned: the task is already committed, and the reconciler dispatches it later.
    pub async fn dispatch(&self, task: &TaskRecord) {
        let dispatch = Dispatch::from(task);
        let timeout = self.dispatch_timeout;
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
