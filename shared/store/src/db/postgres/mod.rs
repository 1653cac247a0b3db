//! PostgreSQL's writes of the hot transitions: group commit. Concurrent creates,
//! starts and finishes are each written by one statement per batch, tuned by
//! `database.batch`: [`coalesce`] gathers the calls, and the statements below write
//! them.
//!
//! Why one statement: a transaction of three to five statements costs as many round
//! trips plus `BEGIN` and `COMMIT`, and each commit waits for its WAL flush. On
//! PostgreSQL the same writes fit in one statement: the tasks' `INSERT`/`UPDATE …
//! RETURNING` is the first common table expression, `t`, and the attempt, artifact and
//! event rows are written by data-modifying CTEs that read from `t`. One statement is
//! one implicit transaction, so the all-or-nothing rule of the repository holds per
//! statement: a task whose guard fails is not in `t`, and nothing is written for it.
//! The per-task values of a batch arrive as one JSON array, read with
//! `jsonb_to_recordset`; a batch of one is the single-task case.
//!
//! A finish the batch statement leaves out (its lease is gone, or it is terminal and
//! its tenant may have webhook destinations) goes through the transactional path,
//! which tells the two apart and writes the outbox rows. SQLite has no data-modifying
//! CTEs and writes every transition that way; the conformance suite runs every
//! transition on both databases.

mod coalesce;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use operator_config::BatchSettings;
use operator_domain::{TaskOutcome, TaskRecord, TenantId};
use sea_orm::sea_query::{InsertStatement, PostgresQueryBuilder};
use sea_orm::sqlx::postgres::PgPoolOptions;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, EntityTrait,
    FromQueryResult, QueryTrait, SqlxPostgresConnector, Statement, Value, Values,
};
use serde::Serialize;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use self::coalesce::Coalescer;
use super::entities::task;
use super::rows::RepoError;
use super::rows::{now, to_record};
use super::transactional::Transactional;
use super::webhooks::may_have_deliveries_sql;
use super::writes::{Claim, Finish, HotWrites};

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
        tenant: &TenantId,
        now: DateTime<Utc>,
        quota: Option<u64>,
    ) -> Result<task::Model, RepoError> {
        match quota {
            // A quota is checked against the tenant's count row by row, which one
            // statement for many tenants cannot do: such creates are written alone.
            Some(_) => self.fallback.create(model, tenant, now, quota).await,
            None => self.writers().create.call(model).await,
        }
    }

    async fn start(&self, claim: &Claim<'_>) -> Result<Option<task::Model>, RepoError> {
        let request = StartRequest {
            id: claim.id.as_uuid(),
            token: claim.token.as_uuid(),
            worker: claim.worker.to_owned(),
            lease_until: claim.lease_until,
        };
        self.writers().start.call(request).await
    }

    async fn finish(&self, finish: &Finish<'_>) -> Result<Option<TaskRecord>, RepoError> {
        let outcome = finish.outcome;
        let next_state = finish.next_state;
        let error = &finish.error;
        let listed: Vec<serde_json::Value> = finish
            .events
            .iter()
            .chain(std::iter::once(&("state", finish.state_data.clone())))
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
        let request = FinishRequest {
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
            artifacts: serde_json::Value::Array(finish.artifacts.clone()),
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
/// finishes are each written by one statement per batch (`coalesce`, and the statements below).
struct Writers {
    create: Coalescer<task::ActiveModel, task::Model>,
    start: Coalescer<StartRequest, Option<task::Model>>,
    finish: Coalescer<FinishRequest, Option<task::Model>>,
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
        match create_many(&db, &insert_of(models.clone())).await {
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
        let answer = create_many(&db, &insert_of(vec![model]))
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
    requests: Vec<StartRequest>,
) -> Vec<Result<Option<task::Model>, RepoError>> {
    write_batch(
        "start",
        requests,
        move |batch: Vec<StartRequest>| {
            let db = db.clone();
            async move { start_many(&db, &batch, now()).await }
        },
        |rows: &[task::Model], request: &StartRequest| {
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
    requests: Vec<FinishRequest>,
) -> Vec<Result<Option<task::Model>, RepoError>> {
    write_batch(
        "finish",
        requests,
        move |batch: Vec<FinishRequest>| {
            let db = db.clone();
            async move { finish_many(&db, &batch, now()).await }
        },
        |rows: &[(task::Model, Uuid)], request: &FinishRequest| {
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

// The statements.

/// A statement under construction: SQL text and its positional values.
struct Composed {
    sql: String,
    values: Vec<Value>,
}

impl Composed {
    fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            values: Vec::new(),
        }
    }

    /// Binds one more value and returns its placeholder.
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("${}", self.values.len())
    }

    /// Adds `, name AS (sql)`.
    fn then(&mut self, name: &str, sql: &str) {
        self.sql.push_str(", ");
        self.sql.push_str(name);
        self.sql.push_str(" AS (");
        self.sql.push_str(sql);
        self.sql.push(')');
    }

    /// Runs the statement, whose rows are task rows.
    async fn task_rows(self, db: &DatabaseConnection) -> Result<Vec<task::Model>, DbErr> {
        self.rows(db)
            .await?
            .iter()
            .map(|row| task::Model::from_query_result(row, ""))
            .collect()
    }

    async fn rows(self, db: &DatabaseConnection) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        let statement =
            Statement::from_sql_and_values(DatabaseBackend::Postgres, self.sql, self.values);
        db.query_all_raw(statement).await
    }
}

/// Inserts tasks (`insert` must return all columns) and their `created` events, and
/// counts them in their tenants' monthly usage (in tenant order, so that two batches
/// lock the usage rows in the same order and cannot deadlock).
async fn create_many(
    db: &DatabaseConnection,
    insert: &InsertStatement,
) -> Result<Vec<task::Model>, DbErr> {
    let (sql, Values(values)) = insert.build(PostgresQueryBuilder);
    let mut statement = Composed {
        sql: format!("WITH t AS ({sql})"),
        values,
    };
    statement.then(
        "event",
        "INSERT INTO task_events (task_id, tenant_id, kind, data, created_at) \
         SELECT id, tenant_id, 'created', jsonb_build_object('state', state), created_at \
         FROM t",
    );
    statement.then(
        "usage",
        &format!(
            "INSERT INTO tenant_usage (tenant_id, period, tasks, browser_ms, updated_at) \
             SELECT tenant_id, {month}, count(*), 0, max(created_at) FROM t \
             GROUP BY 1, 2 ORDER BY 1, 2 {ADD_USAGE}",
            month = month_of("created_at")
        ),
    );
    statement.sql.push_str(" SELECT * FROM t");
    statement.task_rows(db).await
}

/// One worker's claim of one task, to start under its lease.
#[derive(Debug, Clone, Serialize)]
struct StartRequest {
    pub id: Uuid,
    pub token: Uuid,
    pub worker: String,
    pub lease_until: DateTime<Utc>,
}

/// Starts the tasks whose guard holds (queued, or running with an expired lease): sets
/// them running under the request's lease, closes an earlier attempt left open by a
/// worker that vanished, opens the new attempt and appends the `state` event. Returns
/// the started rows; a task whose guard failed is absent, and when two requests name
/// one task, its `lease_token` tells which one won.
///
/// The start commits without waiting for its WAL flush (`synchronous_commit` off for
/// this statement's transaction only; a flush costs 2–4 ms on the machines measured).
/// Lost in a crash, a start only makes the worker's guarded finish fail and the task
/// run again, and the next durable commit (the finish's) flushes it anyway.
async fn start_many(
    db: &DatabaseConnection,
    requests: &[StartRequest],
    at: DateTime<Utc>,
) -> Result<Vec<task::Model>, DbErr> {
    let mut statement = Composed::new("");
    let ids = statement.bind(id_array(requests.iter().map(|request| request.id)));
    let requests = statement.bind(serde_json::to_value(requests).map_err(json_error)?);
    let at = statement.bind(at);
    statement.sql = format!(
        "WITH request AS (SELECT * FROM jsonb_to_recordset({requests}) \
         AS r(id uuid, token uuid, worker text, lease_until timestamptz)), \
         t AS (UPDATE tasks SET state = 'running', attempts = tasks.attempts + 1, \
         lease_token = request.token, lease_expires_at = request.lease_until, \
         worker_id = request.worker, started_at = COALESCE(tasks.started_at, {at}), \
         updated_at = {at} FROM request WHERE tasks.id = ANY({ids}::uuid[]) \
         AND tasks.id = request.id AND (tasks.state = 'queued' \
         OR (tasks.state = 'running' AND tasks.lease_expires_at <= {at})) \
         RETURNING tasks.*)"
    );
    statement.then(
        "closed",
        &format!(
            "UPDATE task_attempts SET finished_at = {at}, outcome = 'lease_expired' \
             FROM t WHERE task_attempts.task_id = t.id AND t.attempts > 1 \
             AND task_attempts.finished_at IS NULL"
        ),
    );
    statement.then(
        "attempt",
        &format!(
            "INSERT INTO task_attempts \
             (task_id, attempt, tenant_id, worker_id, lease_token, started_at) \
             SELECT id, attempts, tenant_id, worker_id, lease_token, {at} FROM t"
        ),
    );
    statement.then(
        "event",
        &format!(
            "INSERT INTO task_events (task_id, tenant_id, kind, data, created_at) \
             SELECT id, tenant_id, 'state', jsonb_build_object('state', state, \
             'attempt', attempts, 'worker', worker_id), {at} FROM t"
        ),
    );
    // A plain SELECT in a WITH runs only when read, so the final SELECT reads it.
    statement.then(
        "no_flush_wait",
        "SELECT set_config('synchronous_commit', 'off', true)",
    );
    statement.sql.push_str(" SELECT t.* FROM t, no_flush_wait");
    statement.task_rows(db).await
}

/// How a worker's run of one task ended, to record under its lease.
#[derive(Debug, Clone, Serialize)]
struct FinishRequest {
    pub id: Uuid,
    pub token: Uuid,
    /// The task's next state.
    pub state: &'static str,
    /// Whether that state ends the task (sets `finished_at`; needs the outbox check).
    pub terminal: bool,
    /// Whether `result` replaces the task's result.
    pub set_result: bool,
    pub result: Option<Json>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// When the task runs next, for a retry or a released lease.
    pub run_at: Option<DateTime<Utc>>,
    /// The attempt's outcome.
    pub outcome: &'static str,
    /// `{id, name, content_type, size_bytes, storage_key, sha256}` objects.
    pub artifacts: Json,
    /// `{kind, data}` objects in order; the `state` event's data gets the attempt.
    pub events: Json,
}

/// Records the ends whose guard holds (the task runs under the request's token and, for
/// a terminal state, has no webhook destination whose outbox rows would be due): the
/// task's state, result or error, the attempt's outcome, the artifacts and the events.
/// Returns each recorded row with the token it was recorded for; a request whose guard
/// failed is absent and goes through the transactional path, which tells a lost lease
/// from a task with webhook destinations and writes the outbox rows.
async fn finish_many(
    db: &DatabaseConnection,
    requests: &[FinishRequest],
    at: DateTime<Utc>,
) -> Result<Vec<(task::Model, Uuid)>, DbErr> {
    let mut statement = Composed::new("");
    let ids = statement.bind(id_array(requests.iter().map(|request| request.id)));
    let requests = statement.bind(serde_json::to_value(requests).map_err(json_error)?);
    let at = statement.bind(at);
    let may_have_deliveries = may_have_deliveries_sql("tasks");
    statement.sql = format!(
        "WITH request AS (SELECT * FROM jsonb_to_recordset({requests}) AS r(id uuid, \
         token uuid, state text, terminal boolean, set_result boolean, result jsonb, \
         error_code text, error_message text, run_at timestamptz, outcome text, \
         artifacts jsonb, events jsonb)), \
         t AS (UPDATE tasks SET state = request.state, lease_token = NULL, \
         lease_expires_at = NULL, cancel_requested = FALSE, updated_at = {at}, \
         error_code = request.error_code, error_message = request.error_message, \
         finished_at = CASE WHEN request.terminal THEN {at} ELSE tasks.finished_at END, \
         result = CASE WHEN request.set_result THEN request.result ELSE tasks.result END, \
         run_at = COALESCE(request.run_at, tasks.run_at) \
         FROM request WHERE tasks.id = ANY({ids}::uuid[]) AND tasks.id = request.id \
         AND tasks.lease_token = request.token \
         AND tasks.state = 'running' AND (NOT request.terminal \
         OR NOT {may_have_deliveries}) \
         RETURNING tasks.*, request.token AS finished_token, \
         request.outcome AS attempt_outcome, request.artifacts AS new_artifacts, \
         request.events AS new_events)"
    );
    statement.then(
        "attempt",
        &format!(
            "UPDATE task_attempts SET finished_at = {at}, outcome = t.attempt_outcome, \
             error_code = t.error_code, error_message = t.error_message FROM t \
             WHERE task_attempts.task_id = t.id AND task_attempts.lease_token = t.finished_token \
             RETURNING task_attempts.tenant_id, task_attempts.started_at"
        ),
    );
    statement.then(
        "usage",
        &format!(
            "INSERT INTO tenant_usage (tenant_id, period, tasks, browser_ms, updated_at) \
             SELECT tenant_id, {month}, 0, \
             sum(GREATEST(0, floor(extract(epoch FROM ({at}::timestamptz - started_at)) * 1000)))::bigint, \
             {at}::timestamptz FROM attempt GROUP BY 1 ORDER BY 1 {ADD_USAGE}",
            month = month_of(&format!("{at}::timestamptz"))
        ),
    );
    statement.then(
        "stored",
        &format!(
            "INSERT INTO artifacts (id, task_id, tenant_id, name, content_type, size_bytes, \
             storage_key, sha256, created_at) \
             SELECT (a->>'id')::uuid, t.id, t.tenant_id, a->>'name', a->>'content_type', \
             (a->>'size_bytes')::bigint, a->>'storage_key', a->>'sha256', {at} \
             FROM t, jsonb_array_elements(t.new_artifacts) AS a"
        ),
    );
    statement.then(
        "event",
        &format!(
            "INSERT INTO task_events (task_id, tenant_id, kind, data, created_at) \
             SELECT t.id, t.tenant_id, e->>'kind', \
             CASE WHEN e->>'kind' = 'state' \
             THEN (e->'data') || jsonb_build_object('attempt', t.attempts) \
             ELSE e->'data' END, {at} \
             FROM t, jsonb_array_elements(t.new_events) WITH ORDINALITY AS listed(e, position) \
             ORDER BY t.id, position"
        ),
    );
    statement.sql.push_str(" SELECT * FROM t");
    statement
        .rows(db)
        .await?
        .iter()
        .map(|row| {
            let model = task::Model::from_query_result(row, "")?;
            let token: Uuid = row.try_get("", "finished_token")?;
            Ok((model, token))
        })
        .collect()
}

/// The usage period (`YYYY-MM` in UTC) of a timestamp, as `db::usage::Period` labels it.
fn month_of(timestamp: &str) -> String {
    format!("to_char(({timestamp}) AT TIME ZONE 'UTC', 'YYYY-MM')")
}

/// Adds a usage row's counts to the month's row that exists.
const ADD_USAGE: &str = "ON CONFLICT (tenant_id, period) DO UPDATE SET \
     tasks = tenant_usage.tasks + excluded.tasks, \
     browser_ms = tenant_usage.browser_ms + excluded.browser_ms, \
     updated_at = GREATEST(tenant_usage.updated_at, excluded.updated_at)";

/// The batch's task ids as a PostgreSQL array literal (`{id,id,…}`), for
/// `tasks.id = ANY($n::uuid[])`. The planner sees how many ids there are and looks each
/// up by key; joined only to the JSON rows, whose count it cannot know, it would rather
/// scan every live task of the backlog.
fn id_array(ids: impl Iterator<Item = Uuid>) -> String {
    let listed: Vec<String> = ids.map(|id| id.to_string()).collect();
    format!("{{{}}}", listed.join(","))
}

fn json_error(error: serde_json::Error) -> DbErr {
    DbErr::Custom(format!("cannot encode a batch: {error}"))
}
