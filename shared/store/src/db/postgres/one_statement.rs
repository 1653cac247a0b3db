//! PostgreSQL: each hot transition (create, start, finish) of a batch of tasks in one
//! statement.
//!
//! A transaction of three to five statements costs as many round trips plus `BEGIN` and
//! `COMMIT`, and each commit waits for its WAL flush. On PostgreSQL the same writes fit
//! in one statement: the tasks' `INSERT`/`UPDATE … RETURNING` is the first common table
//! expression, `t`, and the attempt, artifact and event rows are written by
//! data-modifying CTEs that read from `t`. One statement is one implicit transaction,
//! so the all-or-nothing rule of the repository holds per statement: a task whose guard
//! fails is not in `t`, and nothing is written for it.
//!
//! Each statement takes a batch (see `coalesce`): the per-task values arrive as one JSON
//! array, read with `jsonb_to_recordset`. A batch of one is the single-task case.
//!
//! SQLite has no data-modifying CTEs; it keeps the transactional path in `repo.rs`, and
//! the repository tests run every transition on both databases.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{InsertStatement, PostgresQueryBuilder};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, FromQueryResult, Statement, Value,
    Values,
};
use serde::Serialize;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::db::entities::task;
use crate::db::webhooks::may_have_deliveries_sql;

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

/// Inserts tasks (`insert` must return all columns) and their `created` events.
pub(super) async fn create_many(
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
    statement.sql.push_str(" SELECT * FROM t");
    statement.task_rows(db).await
}

/// One worker's claim of one task, to start under its lease.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StartRequest {
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
pub(super) async fn start_many(
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
pub(super) struct FinishRequest {
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
pub(super) async fn finish_many(
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
             WHERE task_attempts.task_id = t.id AND task_attempts.lease_token = t.finished_token"
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
