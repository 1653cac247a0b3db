//! One-call endpoints: `POST /v1/screenshot`, `/v1/pdf`, `/v1/content`, `/v1/scrape`.
//!
//! The body is the task's input (what `input` would be in `POST /v1/tasks`). The call
//! creates an ordinary task (same validation, queue, records, limits and retries), waits
//! for it up to `server.sync_wait` (30 s by default), and answers with what the task
//! produced: the image, the PDF or the HTML with its content type, or the scraped JSON.
//! A task that is still running when the wait ends is answered with `202` and the task
//! (poll its `Location`). A task that failed is answered with its error code.
//!
//! The wait wakes on the task's own events (the event bus the live streams use), so the
//! answer leaves as soon as the task ends, not at the next poll.

// Response enums are built once and returned at once.
#![allow(clippy::large_enum_variant)]

use std::time::Duration;

use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{TaskId, TaskKind, TaskRecord, TaskState};
use operator_store::events::{EventBus, EventNotice};
use poem::Body;
use poem::http::StatusCode;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use tokio::sync::broadcast;
use tracing::warn;

use crate::access::Caller;
use crate::artifacts::ArtifactBody;
use crate::dto::TaskView;
use crate::error::{ApiError, ErrorBody, status_for};
use crate::state::SharedState;
use crate::submission::{SubmissionRules, TaskSubmission};
use crate::tasks::ApiTags;

#[derive(ApiResponse)]
pub enum FileResponse {
    /// The task's file, with its content type (`image/png`, `application/pdf`,
    /// `text/html`…). The task's id is in `Operator-Task-Id`.
    #[oai(status = 200)]
    Ok(ArtifactBody, #[oai(header = "Operator-Task-Id")] String),
    /// Still running when the wait ended: the task, to poll at `Location`.
    #[oai(status = 202)]
    Accepted(Json<TaskView>, #[oai(header = "Location")] String),
    /// The input is invalid (400 `invalid_json`, 422 `invalid_input`, `url_not_allowed`,
    /// …; no task was created), or the task failed on the page (422 `url_not_allowed`,
    /// `selector_not_found`, `step_failed`; 409 `cancelled`).
    #[oai(status_range = "4XX")]
    Rejected(
        StatusCode,
        Json<ErrorBody>,
        #[oai(header = "Operator-Task-Id")] Option<String>,
    ),
    /// The task failed: 502 `navigation_failed`, 504 `task_timeout`/`wait_timeout`,
    /// 500 `browser_error`, `browser_crashed`, …
    #[oai(status_range = "5XX")]
    Failed(
        StatusCode,
        Json<ErrorBody>,
        #[oai(header = "Operator-Task-Id")] Option<String>,
    ),
}

#[derive(ApiResponse)]
pub enum DataResponse {
    /// The task's result: `data` (the extracted values), `page`, `steps`, `artifacts`.
    #[oai(status = 200)]
    Ok(
        Json<serde_json::Value>,
        #[oai(header = "Operator-Task-Id")] String,
    ),
    /// Still running when the wait ended: the task, to poll at `Location`.
    #[oai(status = 202)]
    Accepted(Json<TaskView>, #[oai(header = "Location")] String),
    /// Invalid input (no task was created), or the task failed on the page.
    #[oai(status_range = "4XX")]
    Rejected(
        StatusCode,
        Json<ErrorBody>,
        #[oai(header = "Operator-Task-Id")] Option<String>,
    ),
    /// The task failed.
    #[oai(status_range = "5XX")]
    Failed(
        StatusCode,
        Json<ErrorBody>,
        #[oai(header = "Operator-Task-Id")] Option<String>,
    ),
}

pub struct OneShotApi {
    pub state: SharedState,
}

/// How a one-call task ended, before it becomes a response.
enum Waited {
    Invalid(ApiError),
    Pending(TaskRecord),
    Failed(TaskRecord, CodedError),
    Succeeded(TaskRecord),
}

#[OpenApi(tag = "ApiTags::Tasks")]
impl OneShotApi {
    /// Take a screenshot and get the image in the answer.
    ///
    /// The body is a `screenshot` task's input. Waits for the task up to
    /// `server.sync_wait`, then answers `202` with the task.
    #[oai(path = "/v1/screenshot", method = "post")]
    async fn screenshot(
        &self,
        caller: Caller,
        body: TaskSubmission,
        /// Milliseconds one attempt may take (default 60000).
        timeout_ms: Query<Option<u64>>,
        /// The queue to run it from (default `default`).
        queue: Query<Option<String>>,
    ) -> poem::Result<FileResponse> {
        let options = Options::new(caller, timeout_ms, queue);
        self.file(TaskKind::Screenshot, body, options, "screenshot.")
            .await
    }

    /// Print a page to PDF and get the document in the answer.
    #[oai(path = "/v1/pdf", method = "post")]
    async fn pdf(
        &self,
        caller: Caller,
        body: TaskSubmission,
        /// Milliseconds one attempt may take (default 60000).
        timeout_ms: Query<Option<u64>>,
        /// The queue to run it from (default `default`).
        queue: Query<Option<String>>,
    ) -> poem::Result<FileResponse> {
        let options = Options::new(caller, timeout_ms, queue);
        self.file(TaskKind::Pdf, body, options, "document.pdf")
            .await
    }

    /// Get a page's HTML after its scripts ran.
    #[oai(path = "/v1/content", method = "post")]
    async fn content(
        &self,
        caller: Caller,
        body: TaskSubmission,
        /// Milliseconds one attempt may take (default 60000).
        timeout_ms: Query<Option<u64>>,
        /// The queue to run it from (default `default`).
        queue: Query<Option<String>>,
    ) -> poem::Result<FileResponse> {
        let options = Options::new(caller, timeout_ms, queue);
        self.file(TaskKind::Content, body, options, "page.html")
            .await
    }

    /// Scrape a page by CSS selectors and get the data as JSON.
    #[oai(path = "/v1/scrape", method = "post")]
    async fn scrape(
        &self,
        caller: Caller,
        body: TaskSubmission,
        /// Milliseconds one attempt may take (default 60000).
        timeout_ms: Query<Option<u64>>,
        /// The queue to run it from (default `default`).
        queue: Query<Option<String>>,
    ) -> poem::Result<DataResponse> {
        let options = Options::new(caller, timeout_ms, queue);
        Ok(match self.run(TaskKind::Scrape, body, options).await? {
            Waited::Invalid(error) => ErrorAnswer::invalid(error).into(),
            Waited::Pending(task) => {
                let location = self.state.task_url(task.id);
                DataResponse::Accepted(Json(TaskView::from_record(task, None)), location)
            }
            Waited::Failed(task, error) => ErrorAnswer::failed(&task, error).into(),
            Waited::Succeeded(task) => {
                let id = task.id.to_string();
                DataResponse::Ok(Json(task.result.unwrap_or_default()), id)
            }
        })
    }
}

/// The query options of a one-call request.
struct Options {
    caller: Caller,
    timeout_ms: Option<u64>,
    queue: Option<String>,
}

impl Options {
    fn new(caller: Caller, timeout_ms: Query<Option<u64>>, queue: Query<Option<String>>) -> Self {
        Self {
            caller,
            timeout_ms: timeout_ms.0,
            queue: queue.0,
        }
    }
}

impl OneShotApi {
    async fn file(
        &self,
        kind: TaskKind,
        body: TaskSubmission,
        options: Options,
        artifact_prefix: &str,
    ) -> poem::Result<FileResponse> {
        let state = &self.state;
        Ok(match self.run(kind, body, options).await? {
            Waited::Invalid(error) => ErrorAnswer::invalid(error).into(),
            Waited::Pending(task) => {
                let location = state.task_url(task.id);
                FileResponse::Accepted(Json(TaskView::from_record(task, None)), location)
            }
            Waited::Failed(task, error) => ErrorAnswer::failed(&task, error).into(),
            Waited::Succeeded(task) => {
                let artifacts = state
                    .repo
                    .artifacts(&task.tenant, task.id)
                    .await
                    .map_err(ApiError::from)?;
                let Some(artifact) = artifacts
                    .into_iter()
                    .find(|artifact| artifact.name.starts_with(artifact_prefix))
                else {
                    return Err(ApiError::internal(&format!(
                        "task {} succeeded without its {artifact_prefix} artifact",
                        task.id
                    ))
                    .into());
                };
                let bytes = state
                    .storage
                    .get_bytes(&artifact.storage_key)
                    .await
                    .map_err(ApiError::from)?;
                FileResponse::Ok(
                    ArtifactBody {
                        content_type: artifact.content_type,
                        size: bytes.len() as u64,
                        sha256: artifact.sha256,
                        file_name: artifact.name,
                        body: Body::from_bytes(bytes),
                    },
                    task.id.to_string(),
                )
            }
        })
    }

    /// Validates, stores and dispatches the task, then waits for it.
    async fn run(
        &self,
        kind: TaskKind,
        body: TaskSubmission,
        options: Options,
    ) -> poem::Result<Waited> {
        let state = &self.state;
        let mut fields = serde_json::Map::new();
        if let Some(timeout) = options.timeout_ms {
            fields.insert("timeout_ms".to_owned(), timeout.into());
        }
        if let Some(queue) = options.queue {
            fields.insert("queue".to_owned(), queue.into());
        }
        let submission = TaskSubmission::from_input(kind, body, fields.into());
        let rules = SubmissionRules {
            settings: &state.settings,
            policy: &state.policy,
            tenant_model: None,
        };
        let new_task = match submission.validate(&rules, options.caller.tenant.clone(), None, None)
        {
            Ok(new_task) => new_task,
            Err(error) => return Ok(Waited::Invalid(error)),
        };
        if let Err(refused) = state.check_queue(&new_task.queue).await {
            return Ok(Waited::Invalid(refused));
        }
        let quota = state.admit(&options.caller.tenant).await?;
        // Subscribed before the task exists, so that no event of it can be missed.
        let mut notices = state.repo.event_bus().map(EventBus::subscribe);
        let task = state
            .submitter
            .create(new_task, quota)
            .await
            .map_err(ApiError::from)?;
        let deadline = tokio::time::Instant::now() + state.settings.server.sync_wait;
        // Without an event bus: a primary-key read per poll, every 50 ms at most.
        let mut pause = Duration::from_millis(20);
        let tenant = task.tenant.clone();
        let id = task.id;
        let mut latest = task;
        loop {
            if latest.state.is_terminal() {
                return Ok(match latest.state {
                    TaskState::Succeeded => Waited::Succeeded(latest),
                    _ => {
                        let error = latest.error.clone().unwrap_or_else(|| {
                            CodedError::new(ErrorCode::Internal, "the task ended without an error")
                        });
                        Waited::Failed(latest, error)
                    }
                });
            }
            let now = tokio::time::Instant::now();
            match notices.as_mut() {
                Some(receiver) => {
                    if now >= deadline {
                        return Ok(Waited::Pending(latest));
                    }
                    // The task's next event wakes the wait; a re-read every second
                    // covers a notice lost on the way.
                    let wait = (deadline - now).min(NOTICE_RECHECK);
                    if let Ok(false) = tokio::time::timeout(wait, next_notice(receiver, id)).await {
                        notices = None;
                    }
                }
                None => {
                    if now + pause > deadline {
                        return Ok(Waited::Pending(latest));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
            latest = match state.repo.get(&tenant, id).await {
                Ok(Some(task)) => task,
                Ok(None) => {
                    return Err(ApiError::internal(&format!("task {id} vanished")).into());
                }
                Err(error) => return Err(ApiError::from(error).into()),
            };
        }
    }
}

/// How long a one-call wait trusts the event bus before it reads the task anyway.
const NOTICE_RECHECK: Duration = Duration::from_secs(1);

/// Waits for a notice of new events of task `id`: `true` when one came (or notices were
/// dropped because this reader fell behind, which may have hidden one), `false` when
/// the bus is gone.
async fn next_notice(receiver: &mut broadcast::Receiver<EventNotice>, id: TaskId) -> bool {
    loop {
        match receiver.recv().await {
            Ok(notice) if notice.task_id == id => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

/// The status and error body for a failed task. 500 and 503 bodies keep the code but
/// not the message (it may describe internals; it is logged instead).
/// An error answer with the status its code maps to: `Rejected` (4xx) or `Failed` (5xx),
/// with the task's id once a task exists.
struct ErrorAnswer {
    status: StatusCode,
    body: ErrorBody,
    task_id: Option<String>,
}

impl ErrorAnswer {
    /// The request was refused before a task existed.
    fn invalid(error: ApiError) -> Self {
        Self {
            status: status_for(error.code()),
            body: error.body(),
            task_id: None,
        }
    }

    /// The task ran and failed: its own code and message, except that the cause of an
    /// internal or infrastructure failure (500, 503) is left to the log.
    fn failed(task: &TaskRecord, error: CodedError) -> Self {
        let status = status_for(error.code);
        let body = if matches!(status.as_u16(), 500 | 503) {
            warn!(task_id = %task.id, code = %error.code, error = %error.message, "one-call task failed");
            ErrorBody {
                code: error.code.as_str().to_owned(),
                message: format!(
                    "the task failed ({}); see GET /v1/tasks/{} and the server log",
                    error.code, task.id
                ),
            }
        } else {
            ErrorBody::from(error)
        };
        Self {
            status,
            body,
            task_id: Some(task.id.to_string()),
        }
    }
}

impl From<ErrorAnswer> for FileResponse {
    fn from(answer: ErrorAnswer) -> Self {
        if answer.status.is_client_error() {
            Self::Rejected(answer.status, Json(answer.body), answer.task_id)
        } else {
            Self::Failed(answer.status, Json(answer.body), answer.task_id)
        }
    }
}

impl From<ErrorAnswer> for DataResponse {
    fn from(answer: ErrorAnswer) -> Self {
        if answer.status.is_client_error() {
            Self::Rejected(answer.status, Json(answer.body), answer.task_id)
        } else {
            Self::Failed(answer.status, Json(answer.body), answer.task_id)
        }
    }
}
