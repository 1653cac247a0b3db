//! The embedded queue: a table (`queue_jobs`) in the task database.
//!
//! A claim is one guarded `UPDATE … RETURNING`: it takes the highest-priority row that
//! is due and not under a live lease, from the tenant served longest ago (`queue_tenants`
//! keeps each tenant's last turn), oldest first, so two claimers can never both win (on
//! PostgreSQL the inner select also skips rows another claimer has locked). The
//! concurrency limits are checked inside the same statement, and exactly: SQLite writes
//! one statement at a time, and on PostgreSQL claims take turns on an advisory lock
//! (without it, claimers racing for a tenant's last slot all passed). Workers in
//! this process are woken by a [`Notify`] the moment a task is enqueued; work written by
//! other processes is found by polling every `poll_interval`. That makes it the right
//! queue for one process (`operator serve`) and a working, slower one for several.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Claim, Dispatch, ParkedClaims, PriorityCounts, Queue, QueueError, QueueLimits, QueueStats,
    Swappable, served_queues,
};
use operator_domain::QueueControls;
use operator_domain::{LeaseToken, Priority, QueueName, TaskId, TenantId};

pub struct DatabaseQueue {
    db: DatabaseConnection,
    /// Wakes idle claimers in this process when work arrives; `notify_one` keeps a
    /// permit when nobody waits, so an enqueue between a failed claim and the wait
    /// is not missed.
    wakeup: Notify,
    parked: ParkedClaims,
    poll_interval: Duration,
    limits: QueueLimits,
    /// The queues claims take from.
    serves: Swappable<Vec<QueueName>>,
}

/// The PostgreSQL advisory lock claims take turns on ("opclaim" in ASCII).
const CLAIM_LOCK: i64 = 0x006f_7063_6c61_696d;

/// Rows per multi-row insert: 6 parameters each stays far below every database's limit.
const INSERT_CHUNK: usize = 500;

impl DatabaseQueue {
    pub fn new(db: DatabaseConnection, poll_interval: Duration) -> Self {
        Self {
            db,
            wakeup: Notify::new(),
            parked: ParkedClaims::default(),
            poll_interval,
            limits: QueueLimits::default(),
            serves: Swappable::new(served_queues(Vec::new())),
        }
    }

    /// Applies per-tenant and per-queue concurrency limits to claims.
    pub fn with_limits(mut self, limits: QueueLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The queues claims take from (`default` when none are given).
    pub fn serving(self, queues: Vec<QueueName>) -> Self {
        self.serve(queues);
        self
    }

    /// The SQL dialect (not to be confused with `Queue::backend`, the queue's name).
    fn db_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Writes SQL with `?` placeholders; PostgreSQL gets `$1, $2, …`.
    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.db_backend();
        let sql = if backend == DbBackend::Postgres {
            let mut numbered = String::with_capacity(sql.len() + 8);
            let mut index = 0;
            for character in sql.chars() {
                if character == '?' {
                    index += 1;
                    numbered.push_str(&format!("${index}"));
                } else {
                    numbered.push(character);
                }
            }
            numbered
        } else {
            sql.to_owned()
        };
        Statement::from_sql_and_values(backend, sql, values)
    }

    async fn try_claim(&self, lease: Duration) -> Result<Option<Claim>, QueueError> {
        if self.db_backend() != DbBackend::Postgres {
            // SQLite has one writer at a time: claims are serial already.
            return self.claim_on(&self.db, lease).await;
        }
        // The limits count live leases, and under READ COMMITTED two claimers counting
        // at once both see the last free slot (measured: 4 claims held under a tenant
        // limit of 2 with 8 racing claimers). Claims therefore take turns, by a
        // transaction-level advisory lock, so each counts the leases of those before it.
        let transaction = self.db.begin().await?;
        transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [CLAIM_LOCK.into()],
            ))
            .await?;
        let claim = self.claim_on(&transaction, lease).await?;
        transaction.commit().await?;
        Ok(claim)
    }

    async fn claim_on(
        &self,
        db: &impl ConnectionTrait,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let now = Utc::now().trunc_subsecs(6);
        let lease_until = operator_domain::time::later(now, lease).trunc_subsecs(6);
        let token = LeaseToken::new();
        let skip_locked = if self.db_backend() == DbBackend::Postgres {
            " FOR UPDATE OF job SKIP LOCKED"
        } else {
            ""
        };
        let serves = self.serves.get();
        let served = vec!["?"; serves.len()].join(", ");
        // A queue's own limit wins over the default one; 0 means none.
        let sql = format!(
            "UPDATE queue_jobs SET lease_token = ?, lease_expires_at = ? \
             WHERE task_id = (SELECT job.task_id FROM queue_jobs job \
                 LEFT JOIN queue_tenants turn ON turn.tenant_id = job.tenant_id \
                 LEFT JOIN queues settings ON settings.name = job.queue \
                 LEFT JOIN tenants own ON own.id = job.tenant_id \
                 WHERE job.queue IN ({served}) AND job.available_at <= ? \
                 AND (job.lease_expires_at IS NULL OR job.lease_expires_at <= ?) \
                 AND (settings.paused IS NULL OR settings.paused = ?) \
                 AND (COALESCE(settings.concurrency_limit, ?) = 0 \
                     OR (SELECT COUNT(*) FROM queue_jobs leased \
                         WHERE leased.queue = job.queue AND leased.lease_expires_at > ?) \
                     < COALESCE(settings.concurrency_limit, ?)) \
                 AND (COALESCE(own.running_per_queue, ?) = 0 \
                     OR (SELECT COUNT(*) FROM queue_jobs leased \
                     WHERE leased.queue = job.queue AND leased.tenant_id = job.tenant_id \
                     AND leased.lease_expires_at > ?) < COALESCE(own.running_per_queue, ?)) \
                 ORDER BY job.priority DESC, COALESCE(settings.served_seq, 0) ASC, \
                     COALESCE(turn.served_seq, 0) ASC, \
                     job.available_at ASC, job.task_id ASC LIMIT 1{skip_locked}) \
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?) \
             RETURNING task_id, tenant_id, priority, queue"
        );
        let global = i64::from(self.limits.global_concurrency);
        let per_tenant = i64::from(self.limits.tenant_concurrency);
        let mut values: Vec<Value> = vec![token.as_uuid().into(), lease_until.into()];
        values.extend(serves.iter().map(|queue| Value::from(queue.as_str())));
        values.extend([
            now.into(),
            now.into(),
            false.into(),
            global.into(),
            now.into(),
            global.into(),
            per_tenant.into(),
            now.into(),
            per_tenant.into(),
            now.into(),
        ]);
        let statement = self.statement(&sql, values);
        let Some(row) = db.query_one_raw(statement).await? else {
            return Ok(None);
        };
        let task_id: Uuid = row.try_get("", "task_id")?;
        let tenant: String = row.try_get("", "tenant_id")?;
        let priority: i16 = row.try_get("", "priority")?;
        let queue: String = row.try_get("", "queue")?;
        // The tenant's turn: it goes behind every tenant served before it.
        self.execute_on(
            db,
            "INSERT INTO queue_tenants (tenant_id, served_seq) \
             VALUES (?, (SELECT COALESCE(MAX(served_seq), 0) + 1 FROM queue_tenants)) \
             ON CONFLICT (tenant_id) DO UPDATE SET served_seq = excluded.served_seq",
            vec![tenant.as_str().into()],
        )
        .await?;
        // With several queues, the queue's turn too: equal priorities take turns.
        if serves.len() > 1 {
            self.execute_on(
                db,
                "INSERT INTO queues (name, paused, updated_at, served_seq) \
                 VALUES (?, ?, ?, (SELECT COALESCE(MAX(served_seq), 0) + 1 FROM queues)) \
                 ON CONFLICT (name) DO UPDATE SET served_seq = excluded.served_seq",
                vec![queue.as_str().into(), false.into(), now.into()],
            )
            .await?;
        }
        Ok(Some(Claim {
            queue: QueueName::parse(&queue)
                .map_err(|error| QueueError::Protocol(error.to_string()))?,
            task_id: TaskId::from(task_id),
            tenant: TenantId::parse(&tenant)
                .map_err(|error| QueueError::Protocol(error.to_string()))?,
            priority: Priority::from_rank(priority),
            token,
            lease_until,
        }))
    }

    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, QueueError> {
        self.execute_on(&self.db, sql, values).await
    }

    async fn execute_on(
        &self,
        db: &impl ConnectionTrait,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<u64, QueueError> {
        let statement = self.statement(sql, values);
        Ok(db.execute_raw(statement).await?.rows_affected())
    }
}

#[async_trait::async_trait]
impl Queue for DatabaseQueue {
    fn parked_claims(&self) -> usize {
        self.parked.count()
    }

    fn backend(&self) -> &'static str {
        "database"
    }

    fn serve(&self, queues: Vec<QueueName>) {
        self.serves.set(served_queues(queues));
        // A waiting claim looks again with the new set.
        self.wakeup.notify_waiters();
    }

    async fn enqueue(&self, dispatch: &Dispatch) -> Result<bool, QueueError> {
        Ok(self.enqueue_many(std::slice::from_ref(dispatch)).await? == 1)
    }

    /// Multi-row inserts of up to [`INSERT_CHUNK`] rows: one statement per chunk.
    async fn enqueue_many(&self, batch: &[Dispatch]) -> Result<usize, QueueError> {
        let now = Utc::now().trunc_subsecs(6);
        let mut inserted = 0;
        for chunk in batch.chunks(INSERT_CHUNK) {
            let mut values = Vec::with_capacity(chunk.len() * 6);
            for dispatch in chunk {
                let available_at = dispatch
                    .not_before
                    .map(|at| at.trunc_subsecs(6))
                    .unwrap_or(now)
                    .max(now);
                values.extend([
                    dispatch.queue.as_str().into(),
                    dispatch.task_id.as_uuid().into(),
                    dispatch.tenant.as_str().into(),
                    dispatch.priority.rank().into(),
                    available_at.into(),
                    now.into(),
                ]);
            }
            let rows = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            inserted += self
                .execute(
                    &format!(
                        "INSERT INTO queue_jobs (queue, task_id, tenant_id, priority, available_at, enqueued_at) \
                         VALUES {rows} ON CONFLICT (task_id) DO NOTHING"
                    ),
                    values,
                )
                .await?;
        }
        if inserted > 1 {
            self.wakeup.notify_waiters();
        }
        if inserted > 0 {
            self.wakeup.notify_one();
        }
        Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
    }

    async fn claim(
        &self,
        _worker: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(claim) = self.try_claim(lease).await? {
                return Ok(Some(claim));
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let pause = remaining.min(self.poll_interval);
            // Registered for the wake-up before it counts as parked, so that a
            // `notify_waiters` sent once it is seen parked reaches it.
            let woken = self.wakeup.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let _parked = self.parked.park();
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn renew(
        &self,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<DateTime<Utc>>, QueueError> {
        let lease_until = operator_domain::time::later(Utc::now(), lease).trunc_subsecs(6);
        let renewed = self
            .execute(
                "UPDATE queue_jobs SET lease_expires_at = ? WHERE task_id = ? AND lease_token = ?",
                vec![
                    lease_until.into(),
                    claim.task_id.as_uuid().into(),
                    claim.token.as_uuid().into(),
                ],
            )
            .await?;
        Ok((renewed == 1).then_some(lease_until))
    }

    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError> {
        let deleted = self
            .execute(
                "DELETE FROM queue_jobs WHERE task_id = ? AND lease_token = ?",
                vec![claim.task_id.as_uuid().into(), claim.token.as_uuid().into()],
            )
            .await?;
        if deleted == 1 {
            // A slot opened: a claimer in this process held back by a concurrency limit
            // may take a task now, without waiting for its next poll. One slot, one
            // claimer.
            self.wakeup.notify_one();
        }
        Ok(deleted == 1)
    }

    async fn requeue(
        &self,
        claim: &Claim,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<bool, QueueError> {
        let now = Utc::now().trunc_subsecs(6);
        let available_at = not_before
            .map(|at| at.trunc_subsecs(6))
            .unwrap_or(now)
            .max(now);
        let requeued = self
            .execute(
                "UPDATE queue_jobs SET lease_token = NULL, lease_expires_at = NULL, available_at = ? \
                 WHERE task_id = ? AND lease_token = ?",
                vec![
                    available_at.into(),
                    claim.task_id.as_uuid().into(),
                    claim.token.as_uuid().into(),
                ],
            )
            .await?;
        if requeued == 1 {
            self.wakeup.notify_one();
        }
        Ok(requeued == 1)
    }

    async fn remove(&self, _queue: &QueueName, task_id: TaskId) -> Result<bool, QueueError> {
        let now = Utc::now().trunc_subsecs(6);
        let removed = self
            .execute(
                "DELETE FROM queue_jobs WHERE task_id = ? \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
                vec![task_id.as_uuid().into(), now.into()],
            )
            .await?;
        Ok(removed == 1)
    }

    async fn configure(
        &self,
        queue: &QueueName,
        controls: QueueControls,
    ) -> Result<(), QueueError> {
        self.execute(
            "INSERT INTO queues (name, paused, concurrency_limit, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, \
             concurrency_limit = excluded.concurrency_limit, updated_at = excluded.updated_at",
            vec![
                queue.as_str().into(),
                controls.paused.into(),
                controls.concurrency_limit.map(i64::from).into(),
                Utc::now().into(),
            ],
        )
        .await?;
        if !controls.paused {
            self.wakeup.notify_waiters();
            self.wakeup.notify_one();
        }
        Ok(())
    }

    async fn limit_tenant(
        &self,
        _tenant: &TenantId,
        _running_per_queue: Option<u32>,
    ) -> Result<(), QueueError> {
        // Claims read the cap from the tenant's row, in the claim's own statement; a
        // raised cap may let a waiting claimer take a task now.
        self.wakeup.notify_waiters();
        Ok(())
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, QueueError> {
        let now = Utc::now().trunc_subsecs(6);
        let free = "(lease_expires_at IS NULL OR lease_expires_at <= ?)";
        let statement = self.statement(
            &format!(
                "SELECT \
                   COALESCE(SUM(CASE WHEN {free} AND available_at <= ? AND priority = 2 THEN 1 ELSE 0 END), 0) AS high, \
                   COALESCE(SUM(CASE WHEN {free} AND available_at <= ? AND priority = 1 THEN 1 ELSE 0 END), 0) AS normal, \
                   COALESCE(SUM(CASE WHEN {free} AND available_at <= ? AND priority = 0 THEN 1 ELSE 0 END), 0) AS low, \
                   COALESCE(SUM(CASE WHEN {free} AND available_at > ? THEN 1 ELSE 0 END), 0) AS delayed, \
                   COALESCE(SUM(CASE WHEN lease_expires_at > ? THEN 1 ELSE 0 END), 0) AS leased, \
                   MIN(CASE WHEN {free} AND available_at <= ? THEN available_at END) AS oldest, \
                   (SELECT COUNT(*) FROM queues WHERE name = ? AND paused = ?) AS paused \
                 FROM queue_jobs WHERE queue = ?"
            ),
            vec![
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                now.into(),
                queue.as_str().into(),
                true.into(),
                queue.as_str().into(),
            ],
        );
        let row = self
            .db
            .query_one_raw(statement)
            .await?
            .ok_or_else(|| QueueError::Protocol("stats query returned no row".into()))?;
        let count = |column: &str| -> Result<u64, QueueError> {
            let value: i64 = row.try_get("", column)?;
            Ok(u64::try_from(value).unwrap_or_default())
        };
        Ok(QueueStats {
            ready_by_priority: PriorityCounts {
                high: count("high")?,
                normal: count("normal")?,
                low: count("low")?,
            },
            delayed: count("delayed")?,
            leased: count("leased")?,
            paused: count("paused")? > 0,
            oldest_ready_at: row.try_get("", "oldest")?,
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.db.ping().await?;
        Ok(())
    }
}
