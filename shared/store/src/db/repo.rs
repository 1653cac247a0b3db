//! The task repository: every read and write of tasks, attempts, artifacts and events.
//!
//! Writes that change a task's state are guarded updates: the `WHERE` clause names the
//! states the state machine allows the change from and, for a worker, the lease token it
//! holds. A write whose guard no longer holds changes nothing, and the caller learns it
//! (`LeaseLost`, `NotCancellable`) instead of overwriting someone else's result. Each
//! state change and its event row commit in one transaction; a terminal state also
//! commits its webhook outbox rows in that transaction (`webhooks::write_outbox`).

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;
use serde_json::json;
use tracing::instrument;

use operator_config::BatchSettings;

use super::entities::{
    agent_script, artifact, queue, task, task_attempt, task_checkpoint, task_event,
};
use super::postgres::Batched;
use super::rows::{
    RepoError, coded_error, insert_artifacts, insert_event, insert_events, now, to_artifact,
    to_i32, to_i64, to_record, to_u32,
};
use super::transactional::Transactional;
use super::webhooks::write_outbox;
use super::writes::{Claim, Finish, HotWrites};
use crate::events::{EventBus, EventNotice};
use operator_domain::error::ErrorCode;
use operator_domain::{
    ArtifactId, ArtifactRecord, AttemptRecord, LeaseToken, NewTask, Priority, QueueControls,
    QueueName, TaskEvent, TaskFilter, TaskId, TaskOutcome, TaskRecord, TaskState, TenantId,
};

/// What happened when a client asked to cancel a task.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// It had not started: it is cancelled and will never run.
    Cancelled(TaskRecord),
    /// It is running: its worker will stop it at its next heartbeat.
    Requested(TaskRecord),
    /// It has already ended.
    AlreadyFinished(TaskRecord),
    NotFound,
}

/// What a submission led to.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// A new task.
    Created(TaskRecord),
    /// The same request came with the same idempotency key before: its task.
    Replayed(TaskRecord),
    /// The idempotency key belongs to a different request: nothing was written.
    KeyReused(TaskRecord),
}

/// What happened when a client asked to re-drive a task.
#[derive(Debug, Clone)]
pub enum RedriveOutcome {
    /// Queued again with more attempts.
    Redriven(TaskRecord),
    /// It is not in a state that can be re-driven (it succeeded, runs, or waits).
    NotRedrivable(TaskRecord),
    NotFound,
}

/// What happened when a worker tried to start a claimed task.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    /// The worker now owns the task under its lease.
    Started(Box<TaskRecord>),
    /// The task has ended or been cancelled: drop the claim.
    Finished(TaskState),
    /// Another worker's lease is still valid until this time.
    Held(DateTime<Utc>),
    /// No task with this id (deleted): drop the claim.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRenewal {
    Held { cancel_requested: bool },
    Lost,
}

#[derive(Debug, Clone)]
pub enum FinishOutcome {
    Recorded(Box<TaskRecord>),
    /// The worker's lease was gone: nothing was written.
    LeaseLost,
}

/// A named queue and its controls, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueRecord {
    pub name: QueueName,
    pub controls: QueueControls,
    pub updated_at: DateTime<Utc>,
}

fn to_queue(row: queue::Model) -> Result<QueueRecord, RepoError> {
    Ok(QueueRecord {
        name: QueueName::parse(&row.name).map_err(|error| RepoError::Corrupt(error.to_string()))?,
        controls: QueueControls {
            paused: row.paused,
            concurrency_limit: row
                .concurrency_limit
                .map(|limit| to_u32("concurrency_limit", limit))
                .transpose()?,
        },
        updated_at: row.updated_at,
    })
}

/// A task the reconciler may need to dispatch again.
#[derive(Debug, Clone)]
pub struct DispatchCandidate {
    pub queue: QueueName,
    pub task_id: TaskId,
    pub tenant: TenantId,
    pub priority: Priority,
    pub run_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct TaskRepository {
    db: DatabaseConnection,
    /// Told after each commit that writes events, so live readers learn of them at
    /// once; without one, readers find new events by re-reading periodically.
    events: Option<EventBus>,
    /// How the hot transitions are written on this database. Shared by the clones, so
    /// on PostgreSQL concurrent calls from anywhere in the process batch.
    writes: Arc<dyn HotWrites>,
}

/// The writes of the hot transitions for this database: batched on PostgreSQL,
/// transactions on SQLite. The only place the repository looks at the backend.
fn writes_for(db: &DatabaseConnection, tuning: BatchSettings) -> Arc<dyn HotWrites> {
    if db.get_database_backend() == DatabaseBackend::Postgres {
        Arc::new(Batched::new(db.clone(), tuning))
    } else {
        Arc::new(Transactional::new(db.clone()))
    }
}

impl TaskRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            writes: writes_for(&db, BatchSettings::default()),
            db,
            events: None,
        }
    }

    /// Tunes the PostgreSQL batch writers (`database.batch`; [`TaskRepository::new`]
    /// uses its defaults). Call before the first write.
    pub fn with_batch(self, tuning: BatchSettings) -> Self {
        Self {
            writes: writes_for(&self.db, tuning),
            ..self
        }
    }

    /// Announces every committed event on `bus`.
    pub fn with_event_bus(self, bus: EventBus) -> Self {
        Self {
            events: Some(bus),
            ..self
        }
    }

    pub fn event_bus(&self) -> Option<&EventBus> {
        self.events.as_ref()
    }

    /// Cancellation requests for running tasks, pushed by [`Self::cancel`] in any
    /// process; `None` without an event bus (the lease renewal still carries them).
    pub fn cancel_requests(&self) -> Option<tokio::sync::broadcast::Receiver<TaskId>> {
        self.events.as_ref().map(EventBus::subscribe_cancels)
    }

    fn announce(&self, tenant: &TenantId, task_id: TaskId) {
        if let Some(bus) = &self.events {
            bus.publish(EventNotice {
                tenant: tenant.clone(),
                task_id,
            });
        }
    }

    /// Appends events of one kind (`log` lines…) to a task the worker holding `token`
    /// runs, in one transaction, announced on the event bus; `false` (nothing written)
    /// when the lease is gone.
    #[instrument(skip_all, fields(task_id = %id, kind = kind))]
    pub async fn append_events(
        &self,
        id: TaskId,
        token: LeaseToken,
        kind: &str,
        data: Vec<serde_json::Value>,
    ) -> Result<bool, RepoError> {
        if data.is_empty() {
            return Ok(true);
        }
        let now = now();
        let transaction = self.db.begin().await?;
        let Some(tenant) = lock_leased(&transaction, id, token, None, now).await? else {
            transaction.rollback().await?;
            return Ok(false);
        };
        let events = data.into_iter().map(|data| (kind, data)).collect();
        insert_events(&transaction, id, &tenant, events, now).await?;
        transaction.commit().await?;
        self.announce(&tenant, id);
        Ok(true)
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn ping(&self) -> Result<(), RepoError> {
        self.db.ping().await.map_err(RepoError::from)
    }

    /// Stores a new task (state `queued`, or `scheduled` when it runs later) and its
    /// `created` event, and counts it in the tenant's monthly usage.
    pub async fn create(&self, new: NewTask) -> Result<TaskRecord, RepoError> {
        self.create_within(new, None).await
    }

    /// [`Self::create`] within a monthly quota of tasks: when the tenant has created
    /// `quota` tasks this month, nothing is written ([`RepoError::QuotaExceeded`]).
    #[instrument(skip_all, fields(tenant = %new.tenant))]
    pub async fn create_within(
        &self,
        new: NewTask,
        quota: Option<u64>,
    ) -> Result<TaskRecord, RepoError> {
        let now = now();
        let id = TaskId::new();
        let run_at = new.run_at.map(|at| at.trunc_subsecs(6)).unwrap_or(now);
        // Only the scheduler promotes `scheduled` tasks; with no separate delayed queue
        // yet, a future run_at is queued and the queue holds it back until due.
        let state = TaskState::Queued;
        let model = task::ActiveModel {
            id: Set(id.as_uuid()),
            tenant_id: Set(new.tenant.as_str().to_owned()),
            queue: Set(new.queue.as_str().to_owned()),
            kind: Set(new.spec.kind().as_str().to_owned()),
            state: Set(state.as_str().to_owned()),
            input: Set(new.spec.to_json()),
            priority: Set(new.priority.rank()),
            attempts: Set(0),
            max_attempts: Set(to_i32(new.max_attempts)),
            timeout_ms: Set(to_i64(new.timeout_ms)),
            idempotency_key: Set(new.idempotency_key),
            request_hash: Set(new.request_hash),
            webhook_url: Set(new.webhook_url),
            progress: Set(None),
            result: Set(None),
            error_code: Set(None),
            error_message: Set(None),
            cancel_requested: Set(false),
            lease_token: Set(None),
            lease_expires_at: Set(None),
            worker_id: Set(None),
            trace_parent: Set(new.trace_parent),
            run_at: Set(run_at),
            created_at: Set(now),
            updated_at: Set(now),
            started_at: Set(None),
            finished_at: Set(None),
        };
        let stored = self.writes.create(model, &new.tenant, now, quota).await?;
        self.announce(&new.tenant, id);
        to_record(stored)
    }

    /// Stores a new task unless its idempotency key was used before: then the earlier
    /// task is returned when the request is the same, and refused when it differs.
    pub async fn submit(&self, new: NewTask) -> Result<Submitted, RepoError> {
        self.submit_within(new, None).await
    }

    /// [`Self::submit`] within a monthly quota of tasks (see [`Self::create_within`]); a
    /// replay of an earlier submission is answered whatever the quota.
    pub async fn submit_within(
        &self,
        new: NewTask,
        quota: Option<u64>,
    ) -> Result<Submitted, RepoError> {
        let Some(key) = new.idempotency_key.clone() else {
            return Ok(Submitted::Created(self.create_within(new, quota).await?));
        };
        let tenant = new.tenant.clone();
        let request_hash = new.request_hash.clone();
        if let Some(earlier) = self.find_by_idempotency_key(&tenant, &key).await? {
            return Ok(replay_or_refuse(earlier, request_hash.as_deref()));
        }
        match self.create_within(new, quota).await {
            Ok(record) => Ok(Submitted::Created(record)),
            // Two requests with one key raced and the other committed first.
            Err(RepoError::Database(error))
                if matches!(
                    error.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                let earlier = self
                    .find_by_idempotency_key(&tenant, &key)
                    .await?
                    .ok_or(RepoError::Database(error))?;
                Ok(replay_or_refuse(earlier, request_hash.as_deref()))
            }
            Err(error) => Err(error),
        }
    }

    async fn find_by_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<(TaskRecord, Option<String>)>, RepoError> {
        let Some(row) = task::Entity::find()
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .filter(task::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let request_hash = row.request_hash.clone();
        Ok(Some((to_record(row)?, request_hash)))
    }

    /// Queues a task that ended without success again, with `extra_attempts` more
    /// attempts. Its history (attempts, events, artifacts) stays; its error is cleared.
    #[instrument(skip_all, fields(task_id = %id))]
    pub async fn redrive(
        &self,
        tenant: &TenantId,
        id: TaskId,
        extra_attempts: u32,
    ) -> Result<RedriveOutcome, RepoError> {
        let now = now();
        let redrivable: Vec<&str> = TaskState::ALL
            .into_iter()
            .filter(|state| state.is_redrivable())
            .map(TaskState::as_str)
            .collect();
        let transaction = self.db.begin().await?;
        let Some(current) = task::Entity::find_by_id(id.as_uuid())
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .one(&transaction)
            .await?
        else {
            return Ok(RedriveOutcome::NotFound);
        };
        let updated = task::Entity::update_many()
            .col_expr(task::Column::State, Expr::value(TaskState::Queued.as_str()))
            .col_expr(
                task::Column::MaxAttempts,
                Expr::value(current.attempts.saturating_add(to_i32(extra_attempts))),
            )
            .col_expr(task::Column::ErrorCode, Expr::value(Option::<String>::None))
            .col_expr(
                task::Column::ErrorMessage,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                task::Column::FinishedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(task::Column::CancelRequested, Expr::value(false))
            .col_expr(task::Column::RunAt, Expr::value(now))
            .col_expr(task::Column::UpdatedAt, Expr::value(now))
            .filter(task::Column::Id.eq(id.as_uuid()))
            .filter(task::Column::State.is_in(redrivable))
            .exec(&transaction)
            .await?
            .rows_affected;
        if updated == 0 {
            transaction.commit().await?;
            return Ok(RedriveOutcome::NotRedrivable(to_record(current)?));
        }
        // A redriven task starts afresh: an agent does not resume from where it failed.
        task_checkpoint::Entity::delete_by_id(id.as_uuid())
            .exec(&transaction)
            .await?;
        insert_event(
            &transaction,
            id,
            tenant,
            "state",
            json!({"state": TaskState::Queued, "redriven_from": current.state, "extra_attempts": extra_attempts}),
            now,
        )
        .await?;
        let record = find_task(&transaction, id)
            .await?
            .ok_or_else(|| RepoError::Corrupt(format!("task {id} vanished")))?;
        transaction.commit().await?;
        self.announce(tenant, id);
        Ok(RedriveOutcome::Redriven(record))
    }

    /// How many of a tenant's tasks in `queue` are in each state.
    pub async fn count_by_state(
        &self,
        tenant: &TenantId,
        queue: &QueueName,
    ) -> Result<Vec<(TaskState, u64)>, RepoError> {
        let rows: Vec<(String, i64)> = task::Entity::find()
            .select_only()
            .column(task::Column::State)
            .column_as(task::Column::Id.count(), "count")
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .filter(task::Column::Queue.eq(queue.as_str()))
            .group_by(task::Column::State)
            .into_tuple()
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|(state, count)| {
                let state = TaskState::parse(&state)
                    .map_err(|error| RepoError::Corrupt(error.to_string()))?;
                Ok((state, u64::try_from(count).unwrap_or_default()))
            })
            .collect()
    }

    /// Creates a queue, or changes its concurrency limit; `true` when it was created.
    /// The database keeps every queue's controls, so a queue backend that loses its data
    /// (Redis) gets them back from the reconciler.
    pub async fn upsert_queue(
        &self,
        name: &QueueName,
        concurrency_limit: Option<u32>,
    ) -> Result<(QueueRecord, bool), RepoError> {
        let now = now();
        let limit = concurrency_limit.map(to_i32);
        let transaction = self.db.begin().await?;
        let existing = queue::Entity::find_by_id(name.as_str().to_owned())
            .one(&transaction)
            .await?;
        let created = existing.is_none();
        let row = queue::ActiveModel {
            name: Set(name.as_str().to_owned()),
            paused: Set(existing.as_ref().is_some_and(|row| row.paused)),
            concurrency_limit: Set(limit),
            served_seq: Set(existing.as_ref().map_or(0, |row| row.served_seq)),
            updated_at: Set(now),
        };
        queue::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(queue::Column::Name)
                    .update_columns([queue::Column::ConcurrencyLimit, queue::Column::UpdatedAt])
                    .to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
        let stored = queue::Entity::find_by_id(name.as_str().to_owned())
            .one(&transaction)
            .await?
            .ok_or_else(|| RepoError::Corrupt(format!("queue {name} vanished")))?;
        transaction.commit().await?;
        Ok((to_queue(stored)?, created))
    }

    /// Records whether a queue is paused; `None` when there is no such queue.
    pub async fn set_queue_paused(
        &self,
        name: &QueueName,
        paused: bool,
    ) -> Result<Option<QueueRecord>, RepoError> {
        let updated = queue::Entity::update_many()
            .col_expr(queue::Column::Paused, Expr::value(paused))
            .col_expr(queue::Column::UpdatedAt, Expr::value(now()))
            .filter(queue::Column::Name.eq(name.as_str()))
            .exec(&self.db)
            .await?
            .rows_affected;
        if updated == 0 {
            return Ok(None);
        }
        self.queue(name).await
    }

    /// A queue and its controls; `None` when nobody created it.
    pub async fn queue(&self, name: &QueueName) -> Result<Option<QueueRecord>, RepoError> {
        queue::Entity::find_by_id(name.as_str().to_owned())
            .one(&self.db)
            .await?
            .map(to_queue)
            .transpose()
    }

    /// Every queue, by name.
    pub async fn queues(&self) -> Result<Vec<QueueRecord>, RepoError> {
        queue::Entity::find()
            .order_by_asc(queue::Column::Name)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_queue)
            .collect()
    }

    /// A tenant's task.
    pub async fn get(
        &self,
        tenant: &TenantId,
        id: TaskId,
    ) -> Result<Option<TaskRecord>, RepoError> {
        let row = task::Entity::find_by_id(id.as_uuid())
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?;
        row.map(to_record).transpose()
    }

    /// Any tenant's task: for workers, which act on ids they were dispatched.
    pub async fn get_any(&self, id: TaskId) -> Result<Option<TaskRecord>, RepoError> {
        find_task(&self.db, id).await
    }

    /// A tenant's tasks, newest first.
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &TaskFilter,
    ) -> Result<Vec<TaskRecord>, RepoError> {
        let mut query = task::Entity::find()
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(task::Column::Id)
            .limit(filter.limit);
        if let Some(state) = filter.state {
            query = query.filter(task::Column::State.eq(state.as_str()));
        }
        if let Some(kind) = filter.kind {
            query = query.filter(task::Column::Kind.eq(kind.as_str()));
        }
        if let Some(queue) = &filter.queue {
            query = query.filter(task::Column::Queue.eq(queue.as_str()));
        }
        if let Some(before) = filter.before {
            query = query.filter(task::Column::Id.lt(before.as_uuid()));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_record)
            .collect()
    }

    /// Cancels a task that has not started, or asks its worker to stop it.
    #[instrument(skip_all, fields(task_id = %id))]
    pub async fn cancel(&self, tenant: &TenantId, id: TaskId) -> Result<CancelOutcome, RepoError> {
        let now = now();
        let transaction = self.db.begin().await?;
        let not_started: Vec<&str> = TaskState::predecessors(TaskState::Cancelled)
            .into_iter()
            .filter(|state| *state != TaskState::Running)
            .map(TaskState::as_str)
            .collect();
        let cancelled = task::Entity::update_many()
            .col_expr(
                task::Column::State,
                Expr::value(TaskState::Cancelled.as_str()),
            )
            .col_expr(
                task::Column::ErrorCode,
                Expr::value(ErrorCode::Cancelled.as_str()),
            )
            .col_expr(
                task::Column::ErrorMessage,
                Expr::value("cancelled before it started"),
            )
            .col_expr(task::Column::FinishedAt, Expr::value(now))
            .col_expr(task::Column::UpdatedAt, Expr::value(now))
            .filter(task::Column::Id.eq(id.as_uuid()))
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .filter(task::Column::State.is_in(not_started))
            .exec(&transaction)
            .await?
            .rows_affected;
        if cancelled == 1 {
            insert_event(
                &transaction,
                id,
                tenant,
                "state",
                json!({"state": TaskState::Cancelled}),
                now,
            )
            .await?;
            let record = find_task(&transaction, id)
                .await?
                .ok_or_else(|| RepoError::Corrupt(format!("task {id} vanished")))?;
            // Invariant 3: the outbox rows commit with the terminal state.
            write_outbox(&transaction, &record, Vec::new(), now).await?;
            transaction.commit().await?;
            self.announce(tenant, id);
            return Ok(CancelOutcome::Cancelled(record));
        }
        let requested = task::Entity::update_many()
            .col_expr(task::Column::CancelRequested, Expr::value(true))
            .col_expr(task::Column::UpdatedAt, Expr::value(now))
            .filter(task::Column::Id.eq(id.as_uuid()))
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .filter(task::Column::State.eq(TaskState::Running.as_str()))
            .exec(&transaction)
            .await?
            .rows_affected;
        if requested == 1 {
            insert_event(&transaction, id, tenant, "cancel_requested", json!({}), now).await?;
        }
        let record = task::Entity::find_by_id(id.as_uuid())
            .filter(task::Column::TenantId.eq(tenant.as_str()))
            .one(&transaction)
            .await?
            .map(to_record)
            .transpose()?;
        transaction.commit().await?;
        if requested == 1 {
            self.announce(tenant, id);
            if let Some(bus) = &self.events {
                bus.publish_cancel(id);
            }
        }
        Ok(match record {
            None => CancelOutcome::NotFound,
            Some(record) if requested == 1 => CancelOutcome::Requested(record),
            Some(record) => CancelOutcome::AlreadyFinished(record),
        })
    }

    /// Makes the worker holding `token` the owner of the task, as a new attempt.
    ///
    /// Allowed from `queued`, and from `running` when the previous owner's lease has
    /// expired (it died or stalled): that attempt is closed as `lease_expired` and the
    /// task runs again under the new lease, in one step.
    #[instrument(skip_all, fields(task_id = %id, worker = worker_id))]
    pub async fn start_attempt(
        &self,
        id: TaskId,
        token: LeaseToken,
        worker_id: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<StartOutcome, RepoError> {
        let now = now();
        let claim = Claim {
            id,
            token,
            worker: worker_id,
            lease_until: lease_until.trunc_subsecs(6),
            now,
        };
        let started = self.writes.start(&claim).await?;
        let Some(started) = started else {
            return Ok(match find_task(&self.db, id).await? {
                None => StartOutcome::Missing,
                Some(record) if record.state.is_terminal() => StartOutcome::Finished(record.state),
                Some(record) => match record.lease_expires_at {
                    Some(until) if record.state == TaskState::Running => StartOutcome::Held(until),
                    // Not running and not queued: not ours to start (e.g. scheduled).
                    _ => StartOutcome::Finished(record.state),
                },
            });
        };
        let record = to_record(started)?;
        self.announce(&record.tenant, id);
        Ok(StartOutcome::Started(Box::new(record)))
    }

    /// Extends the lease of the worker holding `token`; tells it whether the task has
    /// been asked to stop.
    pub async fn renew_lease(
        &self,
        id: TaskId,
        token: LeaseToken,
        lease_until: DateTime<Utc>,
    ) -> Result<LeaseRenewal, RepoError> {
        let renewed = task::Entity::update_many()
            .col_expr(
                task::Column::LeaseExpiresAt,
                Expr::value(lease_until.trunc_subsecs(6)),
            )
            .filter(task::Column::Id.eq(id.as_uuid()))
            .filter(task::Column::LeaseToken.eq(token.as_uuid()))
            .filter(task::Column::State.eq(TaskState::Running.as_str()))
            .exec_with_returning(&self.db)
            .await?;
        let Some(renewed) = renewed.into_iter().next() else {
            return Ok(LeaseRenewal::Lost);
        };
        let cancel_requested = renewed.cancel_requested;
        Ok(LeaseRenewal::Held { cancel_requested })
    }

    /// Records the task's progress and appends one `step` event per step that ended
    /// since the last call (`new_steps`), in one transaction; announced on the event
    /// bus so live streams show each step as it ends. Guarded by the lease token;
    /// `false` (nothing written) when the lease is gone.
    pub async fn record_progress(
        &self,
        id: TaskId,
        token: LeaseToken,
        progress: &serde_json::Value,
        new_steps: Vec<serde_json::Value>,
    ) -> Result<bool, RepoError> {
        let now = now();
        let transaction = self.db.begin().await?;
        let Some(tenant) = lock_leased(&transaction, id, token, Some(progress), now).await? else {
            transaction.rollback().await?;
            return Ok(false);
        };
        if !new_steps.is_empty() {
            let events = new_steps.into_iter().map(|step| ("step", step)).collect();
            insert_events(&transaction, id, &tenant, events, now).await?;
        }
        transaction.commit().await?;
        self.announce(&tenant, id);
        Ok(true)
    }

    /// An agent's step as it ends, in one transaction under the lease: the task's
    /// progress, the step's `agent_step` event, its artifacts (the step's screenshot),
    /// and the checkpoint the next attempt resumes from (written by `attempt`). Returns
    /// whether the lease was still held; when not, nothing was written.
    pub async fn record_agent_step(
        &self,
        id: TaskId,
        token: LeaseToken,
        attempt: u32,
        write: AgentStepWrite<'_>,
    ) -> Result<bool, RepoError> {
        let AgentStepWrite {
            progress,
            step,
            checkpoint,
            artifacts,
            model_usage,
        } = write;
        let now = now();
        let transaction = self.db.begin().await?;
        let Some(tenant) = lock_leased(&transaction, id, token, Some(progress), now).await? else {
            transaction.rollback().await?;
            return Ok(false);
        };
        insert_events(&transaction, id, &tenant, vec![("agent_step", step)], now).await?;
        insert_artifacts(&transaction, id, &tenant, artifacts, now).await?;
        super::usage::add_model_usage(&transaction, &tenant, now, model_usage).await?;
        let row = task_checkpoint::ActiveModel {
            task_id: Set(id.as_uuid()),
            attempt: Set(to_i32(attempt)),
            checkpoint: Set(checkpoint.clone()),
            updated_at: Set(now),
        };
        task_checkpoint::Entity::insert(row)
            .on_conflict(
                OnConflict::column(task_checkpoint::Column::TaskId)
                    .update_columns([
                        task_checkpoint::Column::Attempt,
                        task_checkpoint::Column::Checkpoint,
                        task_checkpoint::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
        transaction.commit().await?;
        self.announce(&tenant, id);
        Ok(true)
    }

    /// The checkpoint an earlier attempt of the task left, if any.
    pub async fn checkpoint(&self, id: TaskId) -> Result<Option<serde_json::Value>, RepoError> {
        Ok(task_checkpoint::Entity::find_by_id(id.as_uuid())
            .one(&self.db)
            .await?
            .map(|row| row.checkpoint))
    }

    /// The steps the agent script cache holds for `key` in `tenant`, if any; the read
    /// counts as one use.
    pub async fn cached_script(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<serde_json::Value>, RepoError> {
        let Some(row) =
            agent_script::Entity::find_by_id((tenant.as_str().to_owned(), key.to_owned()))
                .one(&self.db)
                .await?
        else {
            return Ok(None);
        };
        agent_script::Entity::update_many()
            .col_expr(
                agent_script::Column::Uses,
                Expr::col(agent_script::Column::Uses).add(1),
            )
            .filter(agent_script::Column::TenantId.eq(tenant.as_str()))
            .filter(agent_script::Column::CacheKey.eq(key))
            .exec(&self.db)
            .await?;
        Ok(Some(row.steps))
    }

    /// Keeps `steps`, recorded by task `id`, as the cached script for `key` in
    /// `tenant`, replacing any before.
    pub async fn cache_script(
        &self,
        tenant: &TenantId,
        key: &str,
        steps: &serde_json::Value,
        id: TaskId,
    ) -> Result<(), RepoError> {
        let now = now();
        let row = agent_script::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            cache_key: Set(key.to_owned()),
            steps: Set(steps.clone()),
            task_id: Set(id.as_uuid()),
            uses: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        };
        agent_script::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    agent_script::Column::TenantId,
                    agent_script::Column::CacheKey,
                ])
                .update_columns([
                    agent_script::Column::Steps,
                    agent_script::Column::TaskId,
                    agent_script::Column::UpdatedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Records artifacts of a running attempt that will not succeed (its page logs), so
    /// they are listed with the task whatever its outcome. Guarded by the lease token;
    /// returns whether the lease was still held.
    pub async fn record_attempt_artifacts(
        &self,
        id: TaskId,
        token: LeaseToken,
        artifacts: &[operator_domain::NewArtifact],
    ) -> Result<bool, RepoError> {
        if artifacts.is_empty() {
            return Ok(true);
        }
        let now = now();
        let transaction = self.db.begin().await?;
        let Some(tenant) = lock_leased(&transaction, id, token, None, now).await? else {
            transaction.rollback().await?;
            return Ok(false);
        };
        insert_artifacts(&transaction, id, &tenant, artifacts, now).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// Records how the worker holding `token` finished the task: its state, result or
    /// error, artifacts, the attempt's outcome and the event, in one transaction.
    #[instrument(skip_all, fields(task_id = %id, state = %outcome.next_state()))]
    pub async fn finish(
        &self,
        id: TaskId,
        token: LeaseToken,
        outcome: TaskOutcome,
    ) -> Result<FinishOutcome, RepoError> {
        let now = now();
        let next_state = outcome.next_state();
        // The state machine decides; the guard below enforces it against the row.
        TaskState::Running
            .transition(next_state)
            .map_err(|error| RepoError::Corrupt(error.to_string()))?;
        let finish = Finish::shaped(id, token, &outcome, now);
        let Some(record) = self.writes.finish(&finish).await? else {
            return Ok(FinishOutcome::LeaseLost);
        };
        if next_state.is_terminal() {
            // No attempt will resume from it (a redrive starts afresh, see there).
            task_checkpoint::Entity::delete_by_id(id.as_uuid())
                .exec(&self.db)
                .await?;
        }
        self.announce(&record.tenant, id);
        Ok(FinishOutcome::Recorded(Box::new(record)))
    }

    pub async fn attempts(
        &self,
        tenant: &TenantId,
        id: TaskId,
    ) -> Result<Vec<AttemptRecord>, RepoError> {
        let rows = task_attempt::Entity::find()
            .filter(task_attempt::Column::TaskId.eq(id.as_uuid()))
            .filter(task_attempt::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(task_attempt::Column::Attempt)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AttemptRecord {
                    task_id: TaskId::from(row.task_id),
                    attempt: to_u32("attempt", row.attempt)?,
                    worker_id: row.worker_id,
                    started_at: row.started_at,
                    finished_at: row.finished_at,
                    outcome: row.outcome,
                    error: coded_error(row.error_code, row.error_message),
                })
            })
            .collect()
    }

    pub async fn artifacts(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Vec<ArtifactRecord>, RepoError> {
        artifact::Entity::find()
            .filter(artifact::Column::TaskId.eq(task_id.as_uuid()))
            .filter(artifact::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(artifact::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_artifact)
            .collect()
    }

    pub async fn artifact(
        &self,
        tenant: &TenantId,
        id: ArtifactId,
    ) -> Result<Option<ArtifactRecord>, RepoError> {
        artifact::Entity::find_by_id(id.as_uuid())
            .filter(artifact::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .map(to_artifact)
            .transpose()
    }

    pub async fn events(
        &self,
        task_id: TaskId,
        after: Option<i64>,
    ) -> Result<Vec<TaskEvent>, RepoError> {
        let mut query = task_event::Entity::find()
            .filter(task_event::Column::TaskId.eq(task_id.as_uuid()))
            .order_by_asc(task_event::Column::Id);
        if let Some(after) = after {
            query = query.filter(task_event::Column::Id.gt(after));
        }
        Ok(query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| TaskEvent {
                id: row.id,
                task_id: TaskId::from(row.task_id),
                kind: row.kind,
                data: row.data,
                created_at: row.created_at,
            })
            .collect())
    }

    /// Tasks the queue should hold: `queued` ones older than `queued_before`, and
    /// `running` ones whose lease expired (their worker is gone). Paged by id.
    pub async fn dispatch_candidates(
        &self,
        queued_before: DateTime<Utc>,
        after: Option<TaskId>,
        limit: u64,
    ) -> Result<Vec<DispatchCandidate>, RepoError> {
        let now = now();
        let mut query = task::Entity::find()
            .filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(task::Column::State.eq(TaskState::Queued.as_str()))
                            .add(task::Column::UpdatedAt.lte(queued_before)),
                    )
                    .add(
                        Condition::all()
                            .add(task::Column::State.eq(TaskState::Running.as_str()))
                            .add(task::Column::LeaseExpiresAt.lte(now)),
                    ),
            )
            .order_by_asc(task::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(task::Column::Id.gt(after.as_uuid()));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                Ok(DispatchCandidate {
                    queue: QueueName::parse(&row.queue)
                        .map_err(|error| RepoError::Corrupt(error.to_string()))?,
                    task_id: TaskId::from(row.id),
                    tenant: TenantId::parse(&row.tenant_id)
                        .map_err(|error| RepoError::Corrupt(error.to_string()))?,
                    priority: Priority::from_rank(row.priority),
                    run_at: row.run_at,
                })
            })
            .collect()
    }
}

pub(super) async fn find_task<C: ConnectionTrait>(
    connection: &C,
    id: TaskId,
) -> Result<Option<TaskRecord>, RepoError> {
    task::Entity::find_by_id(id.as_uuid())
        .one(connection)
        .await?
        .map(to_record)
        .transpose()
}

/// What [`TaskRepository::record_agent_step`] writes.
pub struct AgentStepWrite<'a> {
    /// The task's progress (every step so far, the usage).
    pub progress: &'a serde_json::Value,
    /// The step's record, as its `agent_step` event.
    pub step: serde_json::Value,
    pub checkpoint: &'a serde_json::Value,
    pub artifacts: &'a [operator_domain::NewArtifact],
    /// The model use since the last recorded step, added to the tenant's month.
    pub model_usage: super::ModelUsage,
}

/// Touches a running task's row under the worker's lease inside `transaction`, setting
/// its progress too when given. The update takes the row's lock, so the lease cannot
/// change hands before the transaction ends and event ids grow in commit order. The
/// task's tenant, or `None` when the lease is gone.
pub(super) async fn lock_leased(
    transaction: &DatabaseTransaction,
    id: TaskId,
    token: LeaseToken,
    progress: Option<&serde_json::Value>,
    at: DateTime<Utc>,
) -> Result<Option<TenantId>, RepoError> {
    let mut update = task::Entity::update_many().col_expr(task::Column::UpdatedAt, Expr::value(at));
    if let Some(progress) = progress {
        update = update.col_expr(task::Column::Progress, Expr::value(progress.clone()));
    }
    let held = update
        .filter(task::Column::Id.eq(id.as_uuid()))
        .filter(task::Column::LeaseToken.eq(token.as_uuid()))
        .filter(task::Column::State.eq(TaskState::Running.as_str()))
        .exec_with_returning(transaction)
        .await?;
    held.into_iter()
        .next()
        .map(|row| {
            TenantId::parse(&row.tenant_id).map_err(|error| RepoError::Corrupt(error.to_string()))
        })
        .transpose()
}

fn replay_or_refuse(
    (earlier, earlier_hash): (TaskRecord, Option<String>),
    request_hash: Option<&str>,
) -> Submitted {
    if earlier_hash.as_deref() == request_hash {
        Submitted::Replayed(earlier)
    } else {
        Submitted::KeyReused(earlier)
    }
}

impl<'a> Finish<'a> {
    /// The rows a finish writes, shaped once for both ways of writing them: one
    /// `artifact` event per artifact, in order, then the `state` event's data (with a
    /// retry's `run_at`; the attempt number is added once the row is known), and the
    /// artifact rows.
    fn shaped(id: TaskId, token: LeaseToken, outcome: &'a TaskOutcome, now: DateTime<Utc>) -> Self {
        let next_state = outcome.next_state();
        let error = outcome.error();
        let stored: &[operator_domain::NewArtifact] = match outcome {
            TaskOutcome::Succeeded { artifacts, .. } => artifacts,
            _ => &[],
        };
        let events = stored
            .iter()
            .map(|new| {
                let data = json!({"id": new.id, "name": new.name, "content_type": new.content_type, "size_bytes": new.size_bytes});
                ("artifact", data)
            })
            .collect();
        let mut state_data = json!({"state": next_state});
        if let Some(error) = &error {
            state_data["error"] = json!(error);
        }
        if let TaskOutcome::Retry { run_at, .. } = outcome {
            // When the retry is due, so a watcher knows (and a test can check the
            // backoff was kept).
            state_data["run_at"] = json!(run_at.trunc_subsecs(6));
        }
        let artifacts = stored
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
            .collect();
        Self {
            id,
            token,
            outcome,
            now,
            next_state,
            error,
            events,
            state_data,
            artifacts,
        }
    }
}
