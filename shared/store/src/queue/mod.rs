//! The dispatch path: a queue of task ids with per-task leases.
//!
//! The database is the truth; the queue only says which task a worker should try next.
//! A claim hands the worker a lease (token + deadline) that it renews by heartbeat; a
//! lease that is not renewed expires and the task becomes claimable again, whatever
//! happened to the worker. Operations on a claim are guarded by its token, so a worker
//! whose lease expired cannot acknowledge or requeue what another worker now owns.
//!
//! Tasks live in named queues ([`QueueName`]); a worker claims from the queues it was
//! built for (`worker.queues`), each pausable and with its own concurrency cap. Claims
//! are fair across tenants (they take turns; within a tenant the highest priority, then
//! the oldest, goes first), a higher priority goes first across tenants and queues, and
//! optional per-tenant and per-queue concurrency limits hold claims back.
//!
//! Backends:
//! - [`redis::RedisQueue`]: Redis via fred; every multi-key step is one Lua script.
//! - [`database::DatabaseQueue`]: the embedded queue, a table in the task database.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use operator_config::{QueueBackendKind, ServedQueues, Settings};
use operator_domain::QueueControls;
use operator_domain::{LeaseToken, Priority, QueueName, TaskId, TenantId};

pub mod database;
pub mod redis;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("queue answered something unexpected: {0}")]
    Protocol(String),
}

/// A task to put on the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub queue: QueueName,
    pub task_id: TaskId,
    pub tenant: TenantId,
    pub priority: Priority,
    /// Not before this time (delayed tasks and retries); at once when `None` or past.
    pub not_before: Option<DateTime<Utc>>,
}

/// A worker's hold on one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The queue the task was claimed from.
    pub queue: QueueName,
    pub task_id: TaskId,
    pub tenant: TenantId,
    pub priority: Priority,
    pub token: LeaseToken,
    /// When the lease runs out unless renewed.
    pub lease_until: DateTime<Utc>,
}

/// Ready tasks by priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PriorityCounts {
    pub high: u64,
    pub normal: u64,
    pub low: u64,
}

/// What the queue holds, for the stats endpoint and dashboards.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Ready to run now, by priority.
    pub ready_by_priority: PriorityCounts,
    /// Waiting for their time (delays, retries).
    pub delayed: u64,
    /// Claimed by a worker.
    pub leased: u64,
    /// A paused queue keeps its tasks but hands none out.
    pub paused: bool,
    /// When the task that has waited longest became ready.
    pub oldest_ready_at: Option<DateTime<Utc>>,
}

impl QueueStats {
    /// Ready to run now, all priorities.
    pub fn ready(&self) -> u64 {
        let counts = self.ready_by_priority;
        counts.high + counts.normal + counts.low
    }
}

/// Concurrency limits a claim respects; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most tasks of one tenant leased at once in one queue, across all workers.
    pub tenant_concurrency: u32,
    /// Most tasks of one queue leased at once, across all workers and tenants, for a
    /// queue that sets no `concurrency_limit` of its own.
    pub global_concurrency: u32,
}

impl QueueLimits {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            tenant_concurrency: settings.queue.tenant_concurrency,
            global_concurrency: settings.queue.global_concurrency,
        }
    }
}

/// The claims of this instance parked waiting for work: each found nothing, is
/// registered for the wake-up an enqueue, ack or resume sends, and waits. A gauge of
/// idle claimers, and the condition a test waits for before it makes work arrive.
#[derive(Debug, Default)]
pub struct ParkedClaims(std::sync::atomic::AtomicUsize);

impl ParkedClaims {
    /// Counts one parked claim until the guard drops (the claim woke, or was dropped).
    pub fn park(&self) -> ParkedGuard<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ParkedGuard(&self.0)
    }

    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub struct ParkedGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// `redis` or `database`.
    fn backend(&self) -> &'static str;

    /// How many of this instance's claims are parked waiting for work (see
    /// [`ParkedClaims`]).
    fn parked_claims(&self) -> usize;

    /// Sets the queues this instance's claims take from (`default` when none are
    /// given); a claim waiting when the set changes keeps the old set until it returns.
    fn serve(&self, queues: Vec<QueueName>);

    /// Puts a task on the queue. Idempotent: a task already waiting or leased is left
    /// as it is (returns `false`).
    async fn enqueue(&self, dispatch: &Dispatch) -> Result<bool, QueueError>;

    /// Enqueues many tasks; returns how many were not on the queue before.
    async fn enqueue_many(&self, batch: &[Dispatch]) -> Result<usize, QueueError> {
        let mut added = 0;
        for dispatch in batch {
            if self.enqueue(dispatch).await? {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Claims the next task for `worker` from the queues this instance serves (see
    /// [`connect`]), waiting up to `wait` for one to arrive. The highest priority ready
    /// in any of them goes first; queues with the same priority ready take turns.
    async fn claim(
        &self,
        worker: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError>;

    /// Extends the lease; `None` when it was lost (expired and possibly re-claimed).
    async fn renew(
        &self,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<DateTime<Utc>>, QueueError>;

    /// Removes the task for good (it finished). `false` when the lease was lost.
    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError>;

    /// Gives the task back, to be claimed again at `not_before` (at once when `None`).
    async fn requeue(
        &self,
        claim: &Claim,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<bool, QueueError>;

    /// Takes a waiting task off the queue (cancelled). A leased task stays: its worker
    /// finds out from the database.
    async fn remove(&self, queue: &QueueName, task_id: TaskId) -> Result<bool, QueueError>;

    /// Applies a queue's controls. Pausing stops it handing out tasks (waiting tasks
    /// stay queued; leased ones run to their end); resuming, or raising its limit, wakes
    /// idle workers at once.
    async fn configure(&self, queue: &QueueName, controls: QueueControls)
    -> Result<(), QueueError>;

    /// Sets a tenant's own cap on its running tasks per queue (`None`: the
    /// `queue.tenant_concurrency` setting), checked by every claim atomically with it.
    async fn limit_tenant(
        &self,
        tenant: &TenantId,
        running_per_queue: Option<u32>,
    ) -> Result<(), QueueError>;

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, QueueError>;

    /// Checks the backend answers, for readiness probes.
    async fn ping(&self) -> Result<(), QueueError>;
}

pub type SharedQueue = Arc<dyn Queue>;

/// Builds the queue backend the settings select; its claims take from the queues
/// `worker.queues` lists (see [`Queue::serve`] for `*`).
pub async fn connect(
    settings: &Settings,
    db: sea_orm::DatabaseConnection,
) -> Result<SharedQueue, QueueError> {
    let limits = QueueLimits::from_settings(settings);
    // With `*`, the worker follows the queue list itself (it has the database); until
    // then, `default`.
    let serves = match settings.served_queues() {
        ServedQueues::Only(queues) => queues,
        ServedQueues::All => Vec::new(),
    };
    match settings.queue_backend() {
        QueueBackendKind::Redis => {
            let queue = redis::RedisQueue::connect(&settings.redis)
                .await?
                .with_limits(limits)
                .serving(serves);
            Ok(Arc::new(queue))
        }
        QueueBackendKind::Database | QueueBackendKind::Auto => Ok(Arc::new(
            database::DatabaseQueue::new(db, settings.queue.poll_interval)
                .with_limits(limits)
                .serving(serves),
        )),
    }
}

/// A value claims read while another task may replace it (the served queues): a read
/// takes the current one whole, so a claim never sees half of a change.
pub(crate) struct Swappable<T>(std::sync::RwLock<Arc<T>>);

impl<T> Swappable<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(Arc::new(value)))
    }

    pub(crate) fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut current) => *current = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// The queues a claimer serves: the given ones in order, without repeats, or `default`
/// when none are given.
pub(crate) fn served_queues(queues: Vec<QueueName>) -> Vec<QueueName> {
    let mut served: Vec<QueueName> = Vec::with_capacity(queues.len().max(1));
    for queue in queues {
        if !served.contains(&queue) {
            served.push(queue);
        }
    }
    if served.is_empty() {
        served.push(QueueName::default_queue());
    }
    served
}
