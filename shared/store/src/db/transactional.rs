//! Each hot transition as a transaction of several statements: the way SQLite is
//! written (it has no data-modifying CTEs), and PostgreSQL's way for a finish that
//! writes webhook outbox rows (the batch statement leaves those tasks out).

use chrono::{DateTime, SubsecRound, Utc};
use operator_domain::error::CodedError;
use operator_domain::{LeaseToken, TaskId, TaskOutcome, TaskRecord, TaskState, TenantId};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::entities::{task, task_attempt};
use super::rows::RepoError;
use super::rows::{insert_artifacts, insert_event, insert_events, to_record};
use super::usage;
use super::webhooks::write_outbox;
use super::writes::{Claim, Finish, HotWrites};

#[derive(Debug, Clone)]
pub(super) struct Transactional {
    db: DatabaseConnection,
}

impl Transactional {
    pub(super) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl HotWrites for Transactional {
    async fn create(
        &self,
        model: task::ActiveModel,
        tenant: &TenantId,
        now: DateTime<Utc>,
        quota: Option<u64>,
    ) -> Result<task::Model, RepoError> {
        let transaction = self.db.begin().await?;
        // Counted first: the usage row's lock orders concurrent creations of a tenant.
        if !usage::count_created(&transaction, tenant, now, quota).await? {
            transaction.rollback().await?;
            return Err(RepoError::QuotaExceeded {
                limit: quota.unwrap_or(0),
            });
        }
        let stored = task::Entity::insert(model)
            .exec_with_returning(&transaction)
            .await?;
        let created = json!({"state": stored.state});
        let id = TaskId::from(stored.id);
        insert_event(&transaction, id, tenant, "created", created, now).await?;
        transaction.commit().await?;
        Ok(stored)
    }

    async fn start(&self, claim: &Claim<'_>) -> Result<Option<task::Model>, RepoError> {
        let now = claim.now;
        let claimable = Condition::any()
            .add(task::Column::State.eq(TaskState::Queued.as_str()))
            .add(
                Condition::all()
                    .add(task::Column::State.eq(TaskState::Running.as_str()))
                    .add(task::Column::LeaseExpiresAt.lte(now)),
            );
        let update = task::Entity::update_many()
            .col_expr(
                task::Column::State,
                Expr::value(TaskState::Running.as_str()),
            )
            .col_expr(
                task::Column::Attempts,
                Expr::col(task::Column::Attempts).add(1),
            )
            .col_expr(task::Column::LeaseToken, Expr::value(claim.token.as_uuid()))
            .col_expr(task::Column::LeaseExpiresAt, Expr::value(claim.lease_until))
            .col_expr(task::Column::WorkerId, Expr::value(claim.worker))
            .col_expr(
                task::Column::StartedAt,
                Expr::col(task::Column::StartedAt).if_null(now),
            )
            .col_expr(task::Column::UpdatedAt, Expr::value(now))
            .filter(task::Column::Id.eq(claim.id.as_uuid()))
            .filter(claimable);
        let transaction = self.db.begin().await?;
        let Some(started) = update
            .exec_with_returning(&transaction)
            .await?
            .into_iter()
            .next()
        else {
            transaction.rollback().await?;
            return Ok(None);
        };
        let (Some(token), Some(worker_id)) = (started.lease_token, started.worker_id.clone())
        else {
            return Err(RepoError::Corrupt(format!(
                "task {} started without its lease",
                started.id
            )));
        };
        // Close an attempt whose worker vanished without a word; a first attempt has
        // none before it.
        if started.attempts > 1 {
            task_attempt::Entity::update_many()
                .col_expr(task_attempt::Column::FinishedAt, Expr::value(now))
                .col_expr(
                    task_attempt::Column::Outcome,
                    Expr::value(operator_domain::AttemptOutcome::LeaseExpired.as_str()),
                )
                .filter(task_attempt::Column::TaskId.eq(started.id))
                .filter(task_attempt::Column::FinishedAt.is_null())
                .exec(&transaction)
                .await?;
        }
        task_attempt::Entity::insert(task_attempt::ActiveModel {
            task_id: Set(started.id),
            attempt: Set(started.attempts),
            tenant_id: Set(started.tenant_id.clone()),
            worker_id: Set(worker_id.clone()),
            lease_token: Set(token),
            started_at: Set(now),
            finished_at: Set(None),
            outcome: Set(None),
            error_code: Set(None),
            error_message: Set(None),
        })
        .exec_without_returning(&transaction)
        .await?;
        let tenant = TenantId::parse(&started.tenant_id)
            .map_err(|error| RepoError::Corrupt(error.to_string()))?;
        insert_event(
            &transaction,
            TaskId::from(started.id),
            &tenant,
            "state",
            json!({"state": TaskState::Running, "attempt": started.attempts, "worker": worker_id}),
            now,
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(started))
    }

    async fn finish(&self, finish: &Finish<'_>) -> Result<Option<TaskRecord>, RepoError> {
        let Finish {
            id,
            token,
            outcome,
            now,
            next_state,
            ref error,
            ..
        } = *finish;
        let transaction = self.db.begin().await?;
        let updated = finish_update(id, token, outcome, error.as_ref(), now)
            .exec_with_returning(&transaction)
            .await?;
        let Some(updated) = updated.into_iter().next() else {
            transaction.rollback().await?;
            return Ok(None);
        };
        let record = to_record(updated)?;
        let closed = task_attempt::Entity::update_many()
            .col_expr(task_attempt::Column::FinishedAt, Expr::value(now))
            .col_expr(
                task_attempt::Column::Outcome,
                Expr::value(outcome.attempt_outcome().as_str()),
            )
            .col_expr(
                task_attempt::Column::ErrorCode,
                Expr::value(error.as_ref().map(|error| error.code.as_str().to_owned())),
            )
            .col_expr(
                task_attempt::Column::ErrorMessage,
                Expr::value(error.as_ref().map(|error| error.message.clone())),
            )
            .filter(task_attempt::Column::TaskId.eq(id.as_uuid()))
            .filter(task_attempt::Column::LeaseToken.eq(token.as_uuid()))
            .exec_with_returning(&transaction)
            .await?;
        for attempt in &closed {
            let ms = usage::attempt_ms(attempt.started_at, now);
            usage::add_browser_time(&transaction, &record.tenant, now, ms).await?;
        }
        if let TaskOutcome::Succeeded { artifacts, .. } = outcome {
            insert_artifacts(&transaction, id, &record.tenant, artifacts, now).await?;
        }
        let mut state_data = finish.state_data.clone();
        state_data["attempt"] = json!(record.attempts);
        let mut events = finish.events.clone();
        events.push(("state", state_data));
        insert_events(&transaction, id, &record.tenant, events, now).await?;
        if next_state.is_terminal() {
            // Invariant 3: the outbox rows commit with the terminal state.
            write_outbox(&transaction, &record, finish.artifacts.clone(), now).await?;
        }
        transaction.commit().await?;
        Ok(Some(record))
    }
}

/// The guarded update that records how a worker's run ended: only the worker holding
/// `token` on a running task can write it.
fn finish_update(
    id: TaskId,
    token: LeaseToken,
    outcome: &TaskOutcome,
    error: Option<&CodedError>,
    now: DateTime<Utc>,
) -> sea_orm::UpdateMany<task::Entity> {
    let next_state = outcome.next_state();
    let mut update = task::Entity::update_many()
        .col_expr(task::Column::State, Expr::value(next_state.as_str()))
        .col_expr(task::Column::LeaseToken, Expr::value(Option::<Uuid>::None))
        .col_expr(
            task::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(task::Column::CancelRequested, Expr::value(false))
        .col_expr(task::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            task::Column::ErrorCode,
            Expr::value(error.map(|error| error.code.as_str().to_owned())),
        )
        .col_expr(
            task::Column::ErrorMessage,
            Expr::value(error.map(|error| error.message.clone())),
        );
    if next_state.is_terminal() {
        update = update.col_expr(task::Column::FinishedAt, Expr::value(now));
    }
    match outcome {
        TaskOutcome::Succeeded { result, .. } => {
            update = update.col_expr(task::Column::Result, Expr::value(result.clone()));
        }
        TaskOutcome::Retry { run_at, .. } => {
            update = update.col_expr(task::Column::RunAt, Expr::value(run_at.trunc_subsecs(6)));
        }
        TaskOutcome::Released => {
            update = update.col_expr(task::Column::RunAt, Expr::value(now));
        }
        _ => {}
    }
    update
        .filter(task::Column::Id.eq(id.as_uuid()))
        .filter(task::Column::LeaseToken.eq(token.as_uuid()))
        .filter(task::Column::State.eq(TaskState::Running.as_str()))
}
