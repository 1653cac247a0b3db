//! `/v1/tasks`: submit, read, list and cancel tasks; their artifacts and attempts.

// Response enums are built once and returned at once; boxing the large variant would
// only add an allocation per request.
#![allow(clippy::large_enum_variant)]

use operator_domain::error::ErrorCode;
use operator_domain::{QueueName, TaskFilter, TaskId, TaskKind, TaskState};
use operator_store::db::{CancelOutcome, RedriveOutcome, Submitted};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::access::Caller;
use crate::codes;
use crate::dto::{
    ArtifactList, ArtifactView, AttemptList, AttemptView, LinkSigning, TaskKindDto, TaskPage,
    TaskStateDto, TaskView,
};
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;
use crate::submission::{SubmissionRules, TaskSubmission};

#[derive(Tags)]
pub enum ApiTags {
    /// Browser tasks: submit, watch, cancel.
    Tasks,
    /// Files tasks produced.
    Artifacts,
    /// Liveness and readiness.
    Health,
}

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 200;
/// `Idempotency-Key` values longer than this are refused (they are stored and indexed).
const MAX_IDEMPOTENCY_KEY_LENGTH: usize = 255;

/// A ticket that opens one task's event stream without credentials.
#[derive(Debug, Clone, Object)]
#[oai(rename = "EventTicket")]
pub struct TicketView {
    /// Pass as `?ticket=`.
    pub ticket: String,
    /// Until when it opens a stream (`auth.ticket_ttl` after this answer); an open
    /// stream is not cut when it expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The Server-Sent Events stream with the ticket.
    pub events_url: String,
    /// The WebSocket with the ticket.
    pub websocket_url: String,
}

/// Unix seconds `ttl` from now (saturating, as every lease and delay does).
fn expiry(ttl: std::time::Duration) -> i64 {
    operator_domain::time::later(chrono::Utc::now(), ttl).timestamp()
}

#[derive(ApiResponse)]
pub enum CreateTaskResponse {
    /// Accepted and queued; poll the task or wait for its webhook.
    #[oai(status = 202)]
    Accepted(Json<TaskView>, #[oai(header = "Location")] String),
    /// The same request was sent before with this `Idempotency-Key`: the task it
    /// created, as it is now. Nothing new was queued.
    #[oai(status = 200)]
    Replayed(Json<TaskView>, #[oai(header = "Location")] String),
}

codes!(CreateCodes: InvalidJson, InvalidParameter, IdempotencyConflict, InvalidRequest,
    UnknownKind, UnknownQueue, InvalidInput, InvalidUrl, UrlSchemeNotAllowed, UrlNotAllowed,
    LlmNotConfigured, QuotaExceeded);
codes!(TaskCodes: InvalidParameter, TaskNotFound);
codes!(ListCodes: InvalidParameter);
codes!(CancelCodes: InvalidParameter, TaskNotFound, InvalidState);
codes!(RetryCodes: InvalidParameter, TaskNotFound, InvalidState, QuotaExceeded);
codes!(ReplayCodes: InvalidParameter, TaskNotFound, InvalidState, IdempotencyConflict,
    UnknownQueue, InvalidInput, InvalidUrl, UrlSchemeNotAllowed, UrlNotAllowed, QuotaExceeded);

pub struct TasksApi {
    pub state: SharedState,
}

/// An `Idempotency-Key` header: empty is none; too long is refused.
fn checked_idempotency_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    let key = key.filter(|key| !key.is_empty());
    if key
        .as_ref()
        .is_some_and(|key| key.len() > MAX_IDEMPOTENCY_KEY_LENGTH)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"),
        ));
    }
    Ok(key)
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::new(ErrorCode::TaskNotFound, format!("no task {id}"))
}

#[OpenApi(tag = "ApiTags::Tasks")]
impl TasksApi {
    /// Submit a task.
    ///
    /// The task is validated, stored and queued; the answer comes at once with the task
    /// in state `queued`. Poll `GET /v1/tasks/{id}` or wait for its webhook.
    #[oai(path = "/v1/tasks", method = "post")]
    async fn create(
        &self,
        caller: Caller,
        body: TaskSubmission,
        /// Makes the submission safe to retry: the same key with the same body returns
        /// the task created first (200); with a different body it is refused (409).
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// W3C trace context; the worker's spans join this trace.
        traceparent: Header<Option<String>>,
    ) -> ApiResult<CreateTaskResponse, CreateCodes> {
        let state = &self.state;
        let idempotency_key = checked_idempotency_key(idempotency_key.0)?;
        let trace_parent = traceparent.0.filter(|value| is_traceparent(value));
        let tenant_model = match body.is_kind("agent") {
            true => state.tenant_model(&caller.tenant).await?,
            false => None,
        };
        let rules = SubmissionRules {
            settings: &state.settings,
            policy: &state.policy,
            tenant_model: tenant_model.as_ref(),
        };
        let new_task =
            body.validate(&rules, caller.tenant.clone(), idempotency_key, trace_parent)?;
        Ok(self.submit(&caller, new_task).await?)
    }

    /// Get a task, with its artifacts.
    #[oai(path = "/v1/tasks/:id", method = "get")]
    async fn get(&self, caller: Caller, id: Path<Uuid>) -> ApiResult<Json<TaskView>, TaskCodes> {
        let state = &self.state;
        let Some(task) = state.repo.get(&caller.tenant, TaskId::from(id.0)).await? else {
            return Err(not_found(id.0).into());
        };
        let artifacts = self.artifact_views(&caller, task.id).await?;
        Ok(Json(TaskView::from_record(task, Some(artifacts))))
    }

    /// List tasks, newest first.
    #[oai(path = "/v1/tasks", method = "get")]
    async fn list(
        &self,
        caller: Caller,
        /// Only tasks in this state.
        state: Query<Option<TaskStateDto>>,
        /// Only tasks of this kind.
        kind: Query<Option<TaskKindDto>>,
        /// Only tasks of this queue.
        queue: Query<Option<String>>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<TaskPage>, ListCodes> {
        let invalid = |message: String| ApiError::new(ErrorCode::InvalidParameter, message);
        let limit = limit.0.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(invalid(format!("limit: must be between 1 and {MAX_PAGE_SIZE}")).into());
        }
        let before = cursor
            .0
            .as_deref()
            .filter(|cursor| !cursor.is_empty())
            .map(TaskId::parse)
            .transpose()
            .map_err(|_| invalid("cursor: not a cursor this API returned".to_owned()))?;
        let queue = queue
            .0
            .as_deref()
            .map(QueueName::parse)
            .transpose()
            .map_err(|error| invalid(format!("queue: {error}")))?;
        let filter = TaskFilter {
            state: state.0.map(Into::into),
            kind: kind.0.map(Into::into),
            queue,
            before,
            // One extra row tells whether another page follows.
            limit: u64::from(limit) + 1,
        };
        let app = &self.state;
        let mut tasks = app.repo.list(&caller.tenant, &filter).await?;
        let next_cursor = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|task| task.id.to_string())
        } else {
            None
        };
        Ok(Json(TaskPage {
            items: tasks
                .into_iter()
                .map(|task| TaskView::from_record(task, None))
                .collect(),
            next_cursor,
        }))
    }

    /// Cancel a task.
    ///
    /// A task that has not started is cancelled at once and never runs. A running task
    /// is stopped by its worker, which is told at once (within a second, typically tens
    /// of milliseconds); the answer shows `cancel_requested: true` until then.
    #[oai(path = "/v1/tasks/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<TaskView>, CancelCodes> {
        let state = &self.state;
        let task_id = TaskId::from(id.0);
        let (task, was) = match state.repo.cancel(&caller.tenant, task_id).await? {
            CancelOutcome::Cancelled(task) => {
                if let Err(error) = state.queue.remove(&task.queue, task_id).await {
                    // The worker that claims it will find it cancelled and drop it.
                    tracing::warn!(task_id = %task_id, error = %error, "removing a cancelled task from the queue failed");
                }
                (task, "queued")
            }
            CancelOutcome::Requested(task) => (task, "running"),
            CancelOutcome::AlreadyFinished(task) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    format!("task {} has already ended ({})", task.id, task.state),
                )
                .into());
            }
            CancelOutcome::NotFound => return Err(not_found(id.0).into()),
        };
        state
            .audit(
                &caller,
                "task.cancelled",
                "task",
                task_id,
                serde_json::json!({"was": was}),
            )
            .await;
        Ok(Json(TaskView::from_record(task, None)))
    }

    /// Re-drive a task that failed, timed out or is dead.
    ///
    /// The task is queued again with `attempts` more attempts (default: the configured
    /// `tasks.default_max_attempts`); attempt numbers continue, and the earlier attempts,
    /// events and artifacts stay on the task.
    #[oai(path = "/v1/tasks/:id/retry", method = "post")]
    async fn retry(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        /// How many more attempts it gets, 1 to `tasks.max_attempts_limit`.
        attempts: Query<Option<u32>>,
    ) -> ApiResult<Json<TaskView>, RetryCodes> {
        let state = &self.state;
        let tasks = &state.settings.tasks;
        let attempts = attempts.0.unwrap_or(tasks.default_max_attempts);
        if !(1..=tasks.max_attempts_limit).contains(&attempts) {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "attempts: must be between 1 and {}",
                    tasks.max_attempts_limit
                ),
            )
            .into());
        }
        // A retry creates no task, but runs the browser again.
        state.admit(&caller.tenant).await?;
        match state
            .submitter
            .redrive(&caller.tenant, TaskId::from(id.0), attempts)
            .await?
        {
            RedriveOutcome::Redriven(task) => {
                state
                    .audit(
                        &caller,
                        "task.retried",
                        "task",
                        &task.id,
                        serde_json::json!({"attempts": attempts}),
                    )
                    .await;
                Ok(Json(TaskView::from_record(task, None)))
            }
            RedriveOutcome::NotRedrivable(task) => Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "task {} is {}; only failed, timed_out and dead tasks can be retried",
                    task.id, task.state
                ),
            )
            .into()),
            RedriveOutcome::NotFound => Err(not_found(id.0).into()),
        }
    }

    /// Replay an agent's run without the model.
    ///
    /// Creates a `script` task from a succeeded `agent` task's recorded run
    /// (`result.script`: its page options and every action as a step on the concrete
    /// selector the agent resolved), in the same queue with the same priority, attempts,
    /// timeout and webhook. The `{{name}}` placeholders of its typed text are filled from
    /// the agent task's `secrets`. No model is asked: the replay costs browser time only.
    #[oai(path = "/v1/tasks/:id/replay", method = "post")]
    async fn replay(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        /// As on `POST /v1/tasks`: the same key returns the replay created first.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// W3C trace context; the replay's spans join this trace.
        traceparent: Header<Option<String>>,
    ) -> ApiResult<CreateTaskResponse, ReplayCodes> {
        let state = &self.state;
        let idempotency_key = checked_idempotency_key(idempotency_key.0)?;
        let Some(task) = state.repo.get(&caller.tenant, TaskId::from(id.0)).await? else {
            return Err(not_found(id.0).into());
        };
        let script = task
            .result
            .as_ref()
            .and_then(|result| result.get("script"))
            .filter(|script| script.is_object());
        let (TaskKind::Agent, TaskState::Succeeded, Some(script)) = (task.kind, task.state, script)
        else {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "task {} is a {} task in state {}; only a succeeded agent task has a run to replay",
                    task.id, task.kind, task.state
                ),
            )
            .into());
        };
        let mut input = script.clone();
        if let (Some(input), Some(secrets)) = (input.as_object_mut(), task.input.get("secrets")) {
            input.insert("secrets".to_owned(), secrets.clone());
        }
        let mut body = serde_json::json!({
            "kind": "script",
            "input": input,
            "queue": task.queue,
            "priority": task.priority,
            "max_attempts": task.max_attempts,
            "timeout_ms": task.timeout_ms,
        });
        if let Some(webhook_url) = &task.webhook_url {
            body["webhook_url"] = serde_json::json!(webhook_url);
        }
        let rules = SubmissionRules {
            settings: &state.settings,
            policy: &state.policy,
            tenant_model: None,
        };
        let new_task = TaskSubmission::from_body(body).validate(
            &rules,
            caller.tenant.clone(),
            idempotency_key,
            traceparent.0.filter(|value| is_traceparent(value)),
        )?;
        Ok(self.submit(&caller, new_task).await?)
    }

    /// List a task's artifacts.
    #[oai(
        path = "/v1/tasks/:id/artifacts",
        method = "get",
        tag = "ApiTags::Artifacts"
    )]
    async fn artifacts(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<ArtifactList>, TaskCodes> {
        let task_id = self.existing(&caller, id.0).await?;
        let items = self.artifact_views(&caller, task_id).await?;
        Ok(Json(ArtifactList { items }))
    }

    /// A ticket for the task's live events, for browsers.
    ///
    /// `EventSource` and WebSocket cannot send an `Authorization` header: open
    /// `/v1/tasks/{id}/events?ticket=…` or `/v1/tasks/{id}/ws?ticket=…` with this
    /// ticket within `auth.ticket_ttl` (60 s). It opens this task's stream only.
    #[oai(path = "/v1/tasks/:id/event-ticket", method = "get")]
    async fn event_ticket(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<TicketView>, TaskCodes> {
        let state = &self.state;
        let task_id = self.existing(&caller, id.0).await?;
        let key = state.signer.current().await?;
        let expires = expiry(state.settings.auth.ticket_ttl);
        let ticket = operator_domain::links::stream_ticket(&key, &caller.tenant, task_id, expires);
        let task_url = state.task_url(task_id);
        let websocket = task_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        Ok(Json(TicketView {
            events_url: format!("{task_url}/events?ticket={ticket}"),
            websocket_url: format!("{websocket}/ws?ticket={ticket}"),
            expires_at: chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default(),
            ticket,
        }))
    }

    /// List a task's attempts: which worker ran it, when, and how each run ended.
    #[oai(path = "/v1/tasks/:id/attempts", method = "get")]
    async fn attempts(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<AttemptList>, TaskCodes> {
        let state = &self.state;
        let task_id = self.existing(&caller, id.0).await?;
        let items = state
            .repo
            .attempts(&caller.tenant, task_id)
            .await?
            .into_iter()
            .map(AttemptView::from)
            .collect();
        Ok(Json(AttemptList { items }))
    }
}

impl TasksApi {
    /// The task's id when the tenant has it; `task_not_found` otherwise.
    /// Queues a validated task (its queue checked, the tenant's quota admitted) and
    /// answers as `POST /v1/tasks` does.
    async fn submit(
        &self,
        caller: &Caller,
        new_task: operator_domain::NewTask,
    ) -> Result<CreateTaskResponse, ApiError> {
        let state = &self.state;
        state.check_queue(&new_task.queue).await?;
        let quota = state.admit(&caller.tenant).await?;
        match state.submitter.submit(new_task, quota).await? {
            Submitted::Created(task) => {
                let location = state.task_url(task.id);
                Ok(CreateTaskResponse::Accepted(
                    Json(TaskView::from_record(task, Some(Vec::new()))),
                    location,
                ))
            }
            Submitted::Replayed(task) => {
                let location = state.task_url(task.id);
                Ok(CreateTaskResponse::Replayed(
                    Json(TaskView::from_record(task, None)),
                    location,
                ))
            }
            Submitted::KeyReused(task) => Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                format!(
                    "this Idempotency-Key was used for a different request (task {}); use a new key",
                    task.id
                ),
            )),
        }
    }

    async fn existing(&self, caller: &Caller, id: Uuid) -> Result<TaskId, ApiError> {
        let state = &self.state;
        let task_id = TaskId::from(id);
        match state.repo.get(&caller.tenant, task_id).await? {
            Some(_) => Ok(task_id),
            None => Err(not_found(id)),
        }
    }

    async fn artifact_views(
        &self,
        caller: &Caller,
        task_id: TaskId,
    ) -> Result<Vec<ArtifactView>, ApiError> {
        let state = &self.state;
        let key = state.signer.current().await?;
        let links = LinkSigning {
            public_url: &state.public_url,
            key: &key,
            expires: expiry(state.settings.auth.link_ttl),
        };
        Ok(state
            .repo
            .artifacts(&caller.tenant, task_id)
            .await?
            .into_iter()
            .map(|artifact| ArtifactView::from_record(artifact, &links))
            .collect())
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: anything else is dropped rather than stored.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2].iter().zip(&parts).all(|(length, part)| {
            part.len() == *length && part.bytes().all(|byte| byte.is_ascii_hexdigit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_shape_is_checked() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent("00-xyz-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("garbage"));
    }
}
