//! The scheduler role: keeps the queue in step with the database, the system of record.
//!
//! - The reconciler (this module) periodically re-dispatches every task the database
//!   says is `queued` (and has been for longer than a grace period, so dispatches still
//!   in flight are left alone) or `running` under an expired lease. Enqueueing is
//!   idempotent, so a task the queue already holds is untouched; a task the queue lost
//!   (Redis flushed or restarted without persistence, a dispatch that failed while Redis
//!   was down) is put back. Running it in several replicas is safe: they only repeat
//!   idempotent work.
//! - Each pass also re-applies every queue's controls (paused, concurrency limit) from
//!   the database, so a queue backend that lost its data does not silently resume.

use std::time::Duration;

use chrono::Utc;
use operator_config::Settings;
use operator_domain::TaskId;
use operator_store::db::{RepoError, TaskRepository, TenantRepository};
use operator_store::queue::{Dispatch, QueueError, SharedQueue};
use tracing::{info, warn};

/// How many tasks the reconciler reads and enqueues per round trip.
const PAGE_SIZE: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("database: {0}")]
    Repo(#[from] RepoError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

/// What one reconciliation pass found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Tasks the database says should be on the queue.
    pub examined: usize,
    /// Of those, the ones the queue did not hold and now does.
    pub redispatched: usize,
}

pub struct Scheduler {
    repo: TaskRepository,
    queue: SharedQueue,
    interval: Duration,
    grace: Duration,
}

impl Scheduler {
    pub fn new(settings: &Settings, repo: TaskRepository, queue: SharedQueue) -> Self {
        Self {
            repo,
            queue,
            interval: settings.scheduler.reconcile_interval,
            grace: settings.scheduler.reconcile_grace,
        }
    }

    /// One pass over the database: puts back on the queue what it should hold.
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, SchedulerError> {
        let queued_before = operator_domain::time::earlier(Utc::now(), self.grace);
        // The database queue reads its controls from the same rows: nothing to re-apply,
        // and writing them back could undo a pause made since they were read.
        if self.queue.backend() != "database" {
            for queue in self.repo.queues().await? {
                self.queue.configure(&queue.name, queue.controls).await?;
            }
            // Tenants' own running caps, which a flushed Redis lost too.
            let tenants = TenantRepository::new(self.repo.connection().clone())
                .tenants()
                .await?;
            for tenant in tenants {
                self.queue
                    .limit_tenant(&tenant.id, tenant.limits.running_per_queue)
                    .await?;
            }
        }
        let mut report = ReconcileReport::default();
        let mut after: Option<TaskId> = None;
        loop {
            let page = self
                .repo
                .dispatch_candidates(queued_before, after, PAGE_SIZE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.task_id);
            let batch: Vec<Dispatch> = page.iter().map(Dispatch::from).collect();
            report.examined += batch.len();
            report.redispatched += self.queue.enqueue_many(&batch).await?;
            if (page.len() as u64) < PAGE_SIZE {
                break;
            }
        }
        Ok(report)
    }

    /// Reconciles every interval until `shutdown` resolves.
    pub async fn run_until_stopped<F>(self, shutdown: F)
    where
        F: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(interval_secs = self.interval.as_secs(), "scheduler running");
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("scheduler stopped");
                    return;
                }
                _ = ticker.tick() => {
                    match self.reconcile_once().await {
                        Ok(report) if report.redispatched > 0 => {
                            warn!(examined = report.examined, redispatched = report.redispatched, "reconciler put lost tasks back on the queue");
                        }
                        Ok(_) => {}
                        Err(error) => warn!(error = %error, "reconciliation failed; retrying next interval"),
                    }
                }
            }
        }
    }
}
