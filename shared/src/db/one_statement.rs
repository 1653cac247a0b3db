//! PostgreSQL: each hot transition of a task (create, start, finish) in one statement.
//!
//! A transaction of three to five statements costs as many round trips plus `BEGIN` and
//! `COMMIT`, and each round trip is a wake-up of a backend on a busy machine. On
//! PostgreSQL the same writes fit in one statement: the task's `INSERT`/`UPDATE …
//! RETURNING *` is the first common table expression, `t`, and the attempt and event
//! rows are written by data-modifying CTEs that read from `t`. One statement is one
//! implicit transaction, so the all-or-nothing rule of the repository holds: when `t`
//! matches no row (its guard failed), the others write nothing either.
//!
//! The task statement comes from the same sea-orm builder the transactional path uses,
//! so the columns, values and guards are written once; only the side rows are SQL here.
//! Its parameters are `$1…$n`; the side statements' parameters follow them.
//!
//! SQLite has no data-modifying CTEs; it keeps the transactional path in `repo.rs`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{PostgresQueryBuilder, QueryStatementWriter};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, FromQueryResult, Statement, Value,
    Values,
};
use serde_json::Value as Json;
use uuid::Uuid;

use super::entities::task;

/// A statement under construction: SQL text and its positional values.
struct Composed {
    sql: String,
    values: Vec<Value>,
}

impl Composed {
    /// Starts with `WITH t AS (<task statement>)`.
    fn with_task_statement(statement: &impl QueryStatementWriter) -> Self {
        let (sql, Values(values)) = statement.build(PostgresQueryBuilder);
        Self {
            sql: format!("WITH t AS ({sql})"),
            values,
        }
    }

    /// Binds one more value and returns its placeholder.
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("${}", self.values.len())
    }

    fn then(&mut self, name: &str, sql: &str) {
        self.sql.push_str(", ");
        self.sql.push_str(name);
        self.sql.push_str(" AS (");
        self.sql.push_str(sql);
        self.sql.push(')');
    }

    /// Runs the statement, ending in `SELECT * FROM t`: the task row, if its guard held.
    async fn task_row(mut self, db: &DatabaseConnection) -> Result<Option<task::Model>, DbErr> {
        self.sql.push_str(" SELECT * FROM t");
        self.run(db).await
    }

    /// Runs the statement, whose final query returns the task row.
    async fn run(self, db: &DatabaseConnection) -> Result<Option<task::Model>, DbErr> {
        let statement =
            Statement::from_sql_and_values(DatabaseBackend::Postgres, self.sql, self.values);
        match db.query_one_raw(statement).await? {
            Some(row) => task::Model::from_query_result(&row, "").map(Some),
            None => Ok(None),
        }
    }
}

/// Inserts a task (`insert` must return all columns) and its `created` event.
pub(super) async fn create(
    db: &DatabaseConnection,
    insert: &impl QueryStatementWriter,
    created: Json,
    at: DateTime<Utc>,
) -> Result<task::Model, DbErr> {
    let mut statement = Composed::with_task_statement(insert);
    let (data, at) = (statement.bind(created), statement.bind(at));
    statement.then(
        "event",
        &format!(
            "INSERT INTO task_events (task_id, tenant_id, kind, data, created_at) \
             SELECT id, tenant_id, 'created', {data}, {at} FROM t"
        ),
    );
    statement
        .task_row(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)
}

/// Runs a guarded start (`update` sets the task running under the new lease and returns
/// all columns): closes an earlier attempt left open by a worker that vanished, opens
/// this attempt and appends the `state` event. `None` when the guard did not hold.
///
/// The start commits without waiting for its WAL flush (`synchronous_commit` off for
/// this statement's transaction only; a flush costs 2–4 ms on the machines measured).
/// Lost in a crash, a start only makes the worker's guarded finish fail and the task
/// run again, and the next durable commit (the finish's) flushes it anyway.
pub(super) async fn start(
    db: &DatabaseConnection,
    update: &impl QueryStatementWriter,
    at: DateTime<Utc>,
) -> Result<Option<task::Model>, DbErr> {
    let mut statement = Composed::with_task_statement(update);
    let at = statement.bind(at);
    statement.then(
        "closed",
        &format!(
            "UPDATE task_attempts SET finished_at = {at}, outcome = 'lease_expired' \
             WHERE task_id = (SELECT id FROM t) AND finished_at IS NULL \
             AND (SELECT attempts FROM t) > 1"
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
    statement.run(db).await
}

/// How the attempt ended, for the attempt row.
pub(super) struct AttemptEnd<'a> {
    pub token: Uuid,
    pub outcome: &'a str,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Runs a guarded finish (`update` returns all columns): closes the attempt, stores the
/// artifacts (`{id, name, content_type, size_bytes, storage_key, sha256}` objects) and
/// appends the events (`{kind, data}` objects, in order; the `state` event's data gets
/// the task's attempt number). `None` when the guard did not hold.
pub(super) async fn finish(
    db: &DatabaseConnection,
    update: &impl QueryStatementWriter,
    attempt: AttemptEnd<'_>,
    artifacts: Json,
    events: Json,
    at: DateTime<Utc>,
) -> Result<Option<task::Model>, DbErr> {
    let mut statement = Composed::with_task_statement(update);
    let at = statement.bind(at);
    let token = statement.bind(attempt.token);
    let outcome = statement.bind(attempt.outcome);
    let code = statement.bind(attempt.error_code);
    let message = statement.bind(attempt.error_message);
    statement.then(
        "attempt",
        &format!(
            "UPDATE task_attempts SET finished_at = {at}, outcome = {outcome}, \
             error_code = {code}, error_message = {message} \
             WHERE task_id = (SELECT id FROM t) AND lease_token = {token}"
        ),
    );
    let is_empty = artifacts.as_array().is_none_or(Vec::is_empty);
    if !is_empty {
        let artifacts = statement.bind(artifacts);
        statement.then(
            "stored",
            &format!(
                "INSERT INTO artifacts (id, task_id, tenant_id, name, content_type, \
                 size_bytes, storage_key, sha256, created_at) \
                 SELECT (a->>'id')::uuid, t.id, t.tenant_id, a->>'name', \
                 a->>'content_type', (a->>'size_bytes')::bigint, a->>'storage_key', \
                 a->>'sha256', {at} FROM t, jsonb_array_elements({artifacts}) AS a"
            ),
        );
    }
    let events = statement.bind(events);
    statement.then(
        "event",
        &format!(
            "INSERT INTO task_events (task_id, tenant_id, kind, data, created_at) \
             SELECT t.id, t.tenant_id, e->>'kind', \
             CASE WHEN e->>'kind' = 'state' \
             THEN (e->'data') || jsonb_build_object('attempt', t.attempts) \
             ELSE e->'data' END, {at} \
             FROM t, jsonb_array_elements({events}) WITH ORDINALITY AS listed(e, position) \
             ORDER BY position"
        ),
    );
    statement.task_row(db).await
}
