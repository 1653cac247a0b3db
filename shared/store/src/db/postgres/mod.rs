//! PostgreSQL's writes of the hot transitions: group commit. Concurrent creates,
//! starts and finishes are each written by one statement per batch ([`coalesce`]
//! gathers the calls, [`one_statement`] writes them), tuned by `database.batch`.
//!
//! A finish the batch statement leaves out (its lease is gone, or it is terminal and
//! its tenant may have webhook destinations) goes through the transactional path,
//! which tells the two apart and writes the outbox rows.

mod coalesce;
mod one_statement;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use operator_config::BatchSettings;
use operator_domain::{TaskOutcome, TaskRecord, TenantId};
use sea_orm::sqlx::postgres::PgPoolOptions;
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait, QueryTrait, SqlxPostgresConnector,
};
use serde_json::json;
use uuid::Uuid;

use self::coalesce::Coalescer;
use super::entities::task;
use super::rows::RepoError;
use super::rows::{now, to_record};
use super::transactional::Transactional;
use super::writes::{Claim, Finish, HotWrites, artifact_rows, finish_events};

/// The batched writes, with the transactional ones for the finishes a batch leaves out.
#[derive(Debug)]
pub(super) struct Batched {
    db: DatabaseConnection,
    writers: LazyWriters,
    fallback: Transactional,
}

impl Batched {
    pub(super) fn new(db: DatabaseConnection, tuning: BatchSettings) -> Self {
        Self {
            fallback: Transactional::new(db.clone()),
            writers: LazyWriters {
                writers: OnceLock::new(),
                tuning,
            },
            db,
        }
    }

    /// The flush loops, started on first use on the caller's runtime.
    fn writers(&self) -> &Writers {
        let lazy = &self.writers;
        lazy.writers
            .get_or_init(|| Writers::start(&self.db, &lazy.tuning))
    }
}

#[async_trait::async_trait]
impl HotWrites for Batched {
    async fn create(
        &self,
        model: task::ActiveModel,
        _tenant: &TenantId,
        _now: DateTime<Utc>,
    ) -> Result<task::Model, RepoError> {
        self.writers().create.call(model).await
    }

    async fn start(&self, claim: &Claim<'_>) -> Result<Option<task::Model>, RepoError> {
        let request = one_statement::StartRequest {
            id: claim.id.as_uuid(),
            token: claim.token.as_uuid(),
            worker: claim.worker.to_owned(),
            lease_until: claim.lease_until,
        };
        self.writers().start.call(request).await
    }

    async fn finish(&self, finish: &Finish<'_>) -> Result<Option<TaskRecord>, RepoError> {
        let outcome = finish.outcome;
        let next_state = outcome.next_state();
        let error = outcome.error();
        let (events, state_data) = finish_events(outcome, next_state, error.as_ref());
        let listed: Vec<serde_json::Value> = events
            .iter()
            .chain(std::iter::once(&("state", state_data)))
            .map(|(kind, data)| json!({"kind": kind, "data": data}))
            .collect();
        let (set_result, result) = match outcome {
            TaskOutcome::Succeeded { result, .. } => (true, Some(result.clone())),
            _ => (false, None),
        };
        let run_at = match outcome {
            TaskOutcome::Retry { run_at, .. } => Some(run_at.trunc_subsecs(6)),
            TaskOutcome::Released => Some(finish.now),
            _ => None,
        };
        let request = one_statement::FinishRequest {
            id: finish.id.as_uuid(),
            token: finish.token.as_uuid(),
            state: next_state.as_str(),
            terminal: next_state.is_terminal(),
            set_result,
            result,
            error_code: error.as_ref().map(|error| error.code.as_str().to_owned()),
            error_message: error.as_ref().map(|error| error.message.clone()),
            run_at,
            outcome: outcome.attempt_outcome().as_str(),
            artifacts: serde_json::Value::Array(artifact_rows(outcome)),
            events: serde_json::Value::Array(listed),
        };
        match self.writers().finish.call(request).await? {
            Some(finished) => Ok(Some(to_record(finished)?)),
            // The lease is gone, or the task has webhook destinations: the transaction
            // tells which, and writes the outbox rows.
            None => self.fallback.finish(finish).await,
        }
    }
}

/// Group commit of the hot transitions on PostgreSQL: concurrent creates, starts and
/// finishes are each written by one statement per batch (`coalesce`, `one_statement`).
struct Writers {
    create: Coalescer<task::ActiveModel, task::Model>,
    start: Coalescer<one_statement::StartRequest, Option<task::Model>>,
    finish: Coalescer<one_statement::FinishRequest, Option<task::Model>>,
}

/// The writers, started on first use with the tuning of `database.batch`.
#[derive(Default)]
struct LazyWriters {
    writers: OnceLock<Writers>,
    tuning: BatchSettings,
}

impl std::fmt::Debug for LazyWriters {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.writers.get().is_some() {
            "batch writers"
        } else {
            "batch writers (not started)"
        })
    }
}

impl Writers {
    fn start(db: &DatabaseConnection, tuning: &BatchSettings) -> Self {
        let db = writer_connections(db, tuning);
        let create_db = db.clone();
        let start_db = db.clone();
        let finish_db = db;
        Self {
            create: Coalescer::start(
                tuning,
                Arc::new(move |models| Box::pin(create_batch(create_db.clone(), models))),
            ),
            start: Coalescer::start(
                tuning,
                Arc::new(move |requests| Box::pin(start_batch(start_db.clone(), requests))),
            ),
            finish: Coalescer::start(
                tuning,
                Arc::new(move |requests| Box::pin(finish_batch(finish_db.clone(), requests))),
            ),
        }
    }
}

/// The flush loops' own connections (one per loop), lazily opened with the pool's
/// connect options plus two settings:
/// - `enable_seqscan = off`. These statements look tasks up by key and must never scan
///   the table; but PostgreSQL keeps the generic plan it makes after a prepared
///   statement's fifth run, and one made while the tasks table was nearly empty scans
///   it, for as long as the connection lives or until an ANALYZE (and with autovacuum
///   off, as on the CI machines, there is none). Measured with the queue bench: such a
///   plan made the start statement 4.2 ms instead of 0.34 ms and the whole run 1,100
///   tasks/s instead of 2,000, at random. Only the key lookups are affected: every
///   other table these statements touch is written, not scanned.
/// - `statement_timeout` (`database.batch.statement_timeout`): one stuck statement would
///   otherwise hold up its transition for the whole process, because each transition
///   has its own flush loops; a cancelled batch is written one task at a time, so only
///   the task whose row is locked waits (and fails) again.
fn writer_connections(db: &DatabaseConnection, tuning: &BatchSettings) -> DatabaseConnection {
    let timeout_ms = tuning.statement_timeout.as_millis().to_string();
    let options = (*db.get_postgres_connection_pool().connect_options())
        .clone()
        .options([
            ("enable_seqscan", "off"),
            ("statement_timeout", timeout_ms.as_str()),
        ]);
    let pool = PgPoolOptions::new()
        .max_connections(3 * u32::try_from(tuning.flushers).unwrap_or(u32::MAX))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(options);
    SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
}

/// Writes a batch of new tasks; when the batch fails (a reused idempotency key, say),
/// each task is written alone so that each caller gets its own answer.
async fn create_batch(
    db: DatabaseConnection,
    models: Vec<task::ActiveModel>,
) -> Vec<Result<task::Model, RepoError>> {
    let insert_of = |models: Vec<task::ActiveModel>| {
        let mut insert = task::Entity::insert_many(models).into_query();
        insert.returning_all();
        insert
    };
    let ids: Vec<Option<Uuid>> = models
        .iter()
        .map(|model| match &model.id {
            Set(id) => Some(*id),
            _ => None,
        })
        .collect();
    if models.len() > 1 {
        match one_statement::create_many(&db, &insert_of(models.clone())).await {
            Ok(rows) => {
                return ids
                    .iter()
                    .map(|id| {
                        rows.iter()
                            .find(|row| Some(row.id) == *id)
                            .cloned()
                            .ok_or_else(|| RepoError::Corrupt("a batch lost a new task".to_owned()))
                    })
                    .collect();
            }
            Err(error) => batch_failed("create", models.len(), &error),
        }
    }
    let mut answers = Vec::with_capacity(models.len());
    for model in models {
        let answer = one_statement::create_many(&db, &insert_of(vec![model]))
            .await
            .map_err(RepoError::from)
            .and_then(|rows| {
                rows.into_iter()
                    .next()
                    .ok_or_else(|| RepoError::Database(DbErr::RecordNotInserted))
            });
        answers.push(answer);
    }
    answers
}

/// A batch that failed as a whole is written again one task at a time, so that each
/// caller gets its own answer (a reused idempotency key fails only its own request).
fn batch_failed(what: &str, size: usize, error: &DbErr) {
    tracing::debug!(%error, size, "a batch {what} failed; writing its tasks one at a time");
}

/// Starts a batch of claimed tasks; each request's answer is its row when it won the
/// start.
async fn start_batch(
    db: DatabaseConnection,
    requests: Vec<one_statement::StartRequest>,
) -> Vec<Result<Option<task::Model>, RepoError>> {
    write_batch(
        "start",
        requests,
        move |batch: Vec<one_statement::StartRequest>| {
            let db = db.clone();
            async move { one_statement::start_many(&db, &batch, now()).await }
        },
        |rows: &[task::Model], request: &one_statement::StartRequest| {
            rows.iter()
                .find(|row| row.id == request.id && row.lease_token == Some(request.token))
                .cloned()
        },
    )
    .await
}

/// Records a batch of finishes; each request's answer is its row when its guard held.
async fn finish_batch(
    db: DatabaseConnection,
    requests: Vec<one_statement::FinishRequest>,
) -> Vec<Result<Option<task::Model>, RepoError>> {
    write_batch(
        "finish",
        requests,
        move |batch: Vec<one_statement::FinishRequest>| {
            let db = db.clone();
            async move { one_statement::finish_many(&db, &batch, now()).await }
        },
        |rows: &[(task::Model, Uuid)], request: &one_statement::FinishRequest| {
            rows.iter()
                .find(|(row, token)| row.id == request.id && *token == request.token)
                .map(|(row, _)| row.clone())
        },
    )
    .await
}

/// Writes `requests` with one call of `write`, and gives each request the row `answer`
/// finds for it. A failed batch is written again one request at a time.
async fn write_batch<R, Row, W, Fut, A>(
    what: &str,
    requests: Vec<R>,
    write: W,
    answer: A,
) -> Vec<Result<Option<task::Model>, RepoError>>
where
    R: Clone,
    W: Fn(Vec<R>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Row>, DbErr>>,
    A: Fn(&[Row], &R) -> Option<task::Model>,
{
    if requests.len() > 1 {
        match write(requests.clone()).await {
            Ok(rows) => {
                return requests
                    .iter()
                    .map(|request| Ok(answer(&rows, request)))
                    .collect();
            }
            Err(error) => batch_failed(what, requests.len(), &error),
        }
    }
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        let rows = write(vec![request.clone()]).await;
        answers.push(
            rows.map(|rows| answer(&rows, &request))
                .map_err(RepoError::from),
        );
    }
    answers
}
