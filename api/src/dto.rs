//! The API's wire types. Their doc comments become the OpenAPI schema descriptions.

use chrono::{DateTime, Utc};
use operator_domain::{ArtifactRecord, AttemptRecord, Priority, TaskKind, TaskRecord, TaskState};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use crate::error::ErrorBody;

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "TaskKind", rename_all = "snake_case")]
pub enum TaskKindDto {
    /// Capture a page as PNG, JPEG or WebP.
    Screenshot,
    /// Print a page to PDF.
    Pdf,
    /// The page's HTML after its scripts ran.
    Content,
    /// Data taken from the page by CSS selectors, as JSON.
    Scrape,
    /// A list of steps: goto, click, type, press, select, hover, scroll, wait_for,
    /// screenshot, pdf, extract, evaluate, set_viewport, set_user_agent,
    /// set_extra_headers, set_cookies.
    Script,
    /// A goal in plain language that a language model reaches by driving the browser.
    Agent,
}

impl From<TaskKind> for TaskKindDto {
    fn from(kind: TaskKind) -> Self {
        match kind {
            TaskKind::Screenshot => Self::Screenshot,
            TaskKind::Pdf => Self::Pdf,
            TaskKind::Content => Self::Content,
            TaskKind::Scrape => Self::Scrape,
            TaskKind::Script => Self::Script,
            TaskKind::Agent => Self::Agent,
        }
    }
}

impl From<TaskKindDto> for TaskKind {
    fn from(kind: TaskKindDto) -> Self {
        match kind {
            TaskKindDto::Screenshot => Self::Screenshot,
            TaskKindDto::Pdf => Self::Pdf,
            TaskKindDto::Content => Self::Content,
            TaskKindDto::Scrape => Self::Scrape,
            TaskKindDto::Script => Self::Script,
            TaskKindDto::Agent => Self::Agent,
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "TaskState", rename_all = "snake_case")]
pub enum TaskStateDto {
    /// Accepted, waiting for its start time.
    Scheduled,
    /// Waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    Succeeded,
    /// Failed with an error that running again would not fix.
    Failed,
    Cancelled,
    /// Ran past its timeout.
    TimedOut,
    /// Failed with retryable errors until it ran out of attempts.
    Dead,
}

impl From<TaskState> for TaskStateDto {
    fn from(state: TaskState) -> Self {
        match state {
            TaskState::Scheduled => Self::Scheduled,
            TaskState::Queued => Self::Queued,
            TaskState::Running => Self::Running,
            TaskState::Succeeded => Self::Succeeded,
            TaskState::Failed => Self::Failed,
            TaskState::Cancelled => Self::Cancelled,
            TaskState::TimedOut => Self::TimedOut,
            TaskState::Dead => Self::Dead,
        }
    }
}

impl From<TaskStateDto> for TaskState {
    fn from(state: TaskStateDto) -> Self {
        match state {
            TaskStateDto::Scheduled => Self::Scheduled,
            TaskStateDto::Queued => Self::Queued,
            TaskStateDto::Running => Self::Running,
            TaskStateDto::Succeeded => Self::Succeeded,
            TaskStateDto::Failed => Self::Failed,
            TaskStateDto::Cancelled => Self::Cancelled,
            TaskStateDto::TimedOut => Self::TimedOut,
            TaskStateDto::Dead => Self::Dead,
        }
    }
}

/// Dispatch order: higher runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "Priority", rename_all = "snake_case")]
pub enum PriorityDto {
    Low,
    Normal,
    High,
}

impl From<Priority> for PriorityDto {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Low => Self::Low,
            Priority::Normal => Self::Normal,
            Priority::High => Self::High,
        }
    }
}

/// A task submission.
///
/// `input` depends on `kind`:
///
/// - `screenshot`: `url` (required, http or https), `viewport` (`{width, height,
///   device_scale_factor}`, default 1280×800×1), `full_page` (default false), `type`
///   (`png` | `jpeg` | `webp`, default png), `quality` (0-100, jpeg and webp only),
///   `wait_until` (`dom_content_loaded` | `load` | `network_idle`, default load),
///   `wait_for_selector` (CSS selector of an element that must be visible), `delay_ms`.
/// - `pdf`: `url`, `viewport`, `format` (`Letter`, `Legal`, `Tabloid`, `Ledger`, `A0`-`A6`,
///   default A4), `width` / `height` (CSS lengths overriding the format), `landscape`,
///   `margin` (`{top, right, bottom, left}`, CSS lengths like `"1cm"`), `print_background`
///   (default true), `scale` (0.1-2), `page_ranges` (`"1-3, 5"`), and the same wait fields.
/// - `script`: `steps` (a list, each tagged by `action`; see the README), an optional
///   starting `url`, and page options: `viewport`, `user_agent`, `locale`, `timezone`,
///   `extra_headers`, `cookies`, `storage_state`, `block_resources` (`image`, `font`,
///   `media`, `stylesheet`), `block_urls` (`*` patterns), `save_html`, and `secrets`
///   (typed where a `type` step's text says `{{name}}`, masked in the result and logs,
///   shown back redacted).
/// - `content`: `url`, the wait fields and page options (optionally `steps` to run first);
///   the result is the HTML after scripts ran.
/// - `agent`: `goal` (plain language; `{{name}}` refers to a secret), optional `url`,
///   `output_schema` (a JSON Schema the output must satisfy), `max_steps` (default 25),
///   `budget` (`{max_tokens, max_cost_usd, max_duration_ms}`), `allowed_domains`,
///   `secrets` (`{"password": "…"}`, shown back redacted), `vision` (`off` | `auto` |
///   `on`), `model`, `cache` (`off` | `reuse` | `refresh`: replay the script a succeeded
///   run of the same goal left, asking the model only from the first step that fails),
///   and the page options of `script`. The result has `output`, `steps`, `usage`,
///   `script` (the run as script steps, replayable without the model) and, with a
///   cache, `cache` (`hit`, `replayed`, `healed`, `saved`).
/// - `scrape`: like `content` plus `extract` (a list of `{name, selector, what, attribute,
///   all, fields}`); the result's `data` holds the values.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreateTask")]
pub struct CreateTaskRequest {
    pub kind: TaskKindDto,
    /// Kind-specific input; see above.
    pub input: serde_json::Value,
    /// The queue to run it from (default `default`); it must exist (`PUT /v1/queues/{name}`).
    pub queue: Option<String>,
    /// Default `normal`.
    pub priority: Option<PriorityDto>,
    /// How many times a task failing with retryable errors runs before it is `dead`.
    pub max_attempts: Option<u32>,
    /// Milliseconds one attempt may take (default 60000).
    pub timeout_ms: Option<u64>,
    /// Where to POST a signed notification when the task ends.
    pub webhook_url: Option<String>,
    /// Do not start before this time (RFC 3339).
    pub run_at: Option<DateTime<Utc>>,
    /// Or: do not start before this long from now, e.g. `"90s"` or `"1h 30m"`.
    pub delay: Option<String>,
}

/// A task.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Task")]
pub struct TaskView {
    pub id: Uuid,
    pub kind: TaskKindDto,
    pub state: TaskStateDto,
    /// The queue it runs from.
    pub queue: String,
    /// The normalized input, defaults filled in.
    pub input: serde_json::Value,
    pub priority: PriorityDto,
    /// Attempts started so far.
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    #[oai(skip_serializing_if_is_none)]
    pub idempotency_key: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub webhook_url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub progress: Option<serde_json::Value>,
    /// What the task produced (page facts, artifact summaries), once it succeeded.
    #[oai(skip_serializing_if_is_none)]
    pub result: Option<serde_json::Value>,
    /// Why it did not succeed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<ErrorBody>,
    /// A cancellation was asked for while it ran; its worker stops it shortly.
    pub cancel_requested: bool,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The files it produced (on single-task responses).
    #[oai(skip_serializing_if_is_none)]
    pub artifacts: Option<Vec<ArtifactView>>,
}

/// The input as shown: its secrets (an agent's, a replayed script's) redacted.
fn shown_input(mut input: serde_json::Value) -> serde_json::Value {
    operator_domain::agent::redact_input(&mut input);
    input
}

impl TaskView {
    pub fn from_record(record: TaskRecord, artifacts: Option<Vec<ArtifactView>>) -> Self {
        Self {
            id: record.id.as_uuid(),
            kind: record.kind.into(),
            state: record.state.into(),
            queue: record.queue.into(),
            input: shown_input(record.input),
            priority: record.priority.into(),
            attempts: record.attempts,
            max_attempts: record.max_attempts,
            timeout_ms: record.timeout_ms,
            idempotency_key: record.idempotency_key,
            webhook_url: record.webhook_url,
            progress: record.progress,
            result: record.result,
            error: record.error.map(ErrorBody::from),
            cancel_requested: record.cancel_requested,
            run_at: record.run_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
            started_at: record.started_at,
            finished_at: record.finished_at,
            artifacts,
        }
    }
}

/// One page of tasks, newest first.
#[derive(Debug, Clone, Object)]
#[oai(rename = "TaskPage")]
pub struct TaskPage {
    pub items: Vec<TaskView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// A file a task produced.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Artifact")]
pub struct ArtifactView {
    pub id: Uuid,
    pub task_id: Uuid,
    pub name: String,
    pub content_type: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the content (also the download's ETag).
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// Where to download it (with credentials).
    pub url: String,
    /// The same download without credentials, until the link expires (`exp`, Unix
    /// seconds; `auth.link_ttl` after this answer).
    pub signed_url: String,
}

/// What signs the links in one answer: the key and the expiry (Unix seconds).
pub struct LinkSigning<'a> {
    pub public_url: &'a str,
    pub key: &'a operator_domain::links::LinkKey,
    pub expires: i64,
}

impl ArtifactView {
    pub fn from_record(record: ArtifactRecord, links: &LinkSigning<'_>) -> Self {
        Self {
            url: operator_domain::links::artifact_url(links.public_url, record.id),
            signed_url: operator_domain::links::signed_artifact_url(
                links.public_url,
                links.key,
                &record.tenant,
                record.id,
                links.expires,
            ),
            id: record.id.as_uuid(),
            task_id: record.task_id.as_uuid(),
            name: record.name,
            content_type: record.content_type,
            size_bytes: record.size_bytes,
            sha256: record.sha256,
            created_at: record.created_at,
        }
    }
}

/// A list of artifacts.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ArtifactList")]
pub struct ArtifactList {
    pub items: Vec<ArtifactView>,
}

/// One run of a task.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Attempt")]
pub struct AttemptView {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<DateTime<Utc>>,
    /// `succeeded`, `retrying`, `failed`, `timed_out`, `cancelled`, `dead`, `released`
    /// or `lease_expired`; absent while it runs.
    #[oai(skip_serializing_if_is_none)]
    pub outcome: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<ErrorBody>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(record: AttemptRecord) -> Self {
        Self {
            attempt: record.attempt,
            worker_id: record.worker_id,
            started_at: record.started_at,
            finished_at: record.finished_at,
            outcome: record.outcome,
            error: record.error.map(ErrorBody::from),
        }
    }
}

/// A task's attempts, oldest first.
#[derive(Debug, Clone, Object)]
#[oai(rename = "AttemptList")]
pub struct AttemptList {
    pub items: Vec<AttemptView>,
}
