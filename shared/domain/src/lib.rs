//! OperatorNext's domain: the types every role agrees on, with no I/O (no database,
//! network or runtime dependency), so each can be tested alone.
//!
//! - `ids` (re-exported): task, artifact, tenant and queue ids and lease tokens.
//! - `spec` (re-exported): task kinds and their validated inputs.
//! - [`agent`]: the `agent` kind's input (goal, budget, secrets, allowed domains) and
//!   the secret masking and output checks its worker and API share.
//! - [`steps`] (partly re-exported): the step language, one module per action with its
//!   shape, checks and run over [`steps::StepPage`], the page the worker provides.
//! - `state` (re-exported): the task state machine and its checked transitions.
//! - `task` (re-exported): tasks, attempts, artifacts and events as records.
//! - [`queue`]: a named queue's controls.
//! - [`auth`]: roles, permissions and the table granting them; the API key format.
//! - [`error`]: the stable machine-readable error codes.
//! - [`links`]: the API addresses of a task and an artifact.
//! - [`time`]: instants a duration away, saturating rather than wrapping to zero.
//! - [`network`]: the policy deciding which addresses browsers and webhooks may reach
//!   (the DNS look-up itself is the worker's).
//! - [`webhooks`]: event types, signing secrets, Standard Webhooks signatures, the
//!   retry schedule, payloads.

mod ids;
mod spec;
mod state;
mod task;

pub mod agent;
pub mod auth;
pub mod error;
pub mod links;
pub mod network;
pub mod queue;
pub mod steps;
pub mod time;
pub mod webhooks;

pub use queue::QueueControls;

pub use ids::{
    ArtifactId, DEFAULT_QUEUE, DEFAULT_TENANT, InvalidQueueName, InvalidTenantId, LeaseToken,
    QueueName, TaskId, TenantId,
};
pub use spec::{
    CssLength, ImageFormat, MAX_URL_LENGTH, PaperFormat, PaperGeometry, PdfInput, PdfMargins,
    Priority, ScreenshotInput, TargetUrl, TaskKind, TaskSpec, Viewport, WaitSpec, WaitUntil,
};
pub use state::{InvalidTransition, TaskState, UnknownState};
pub use steps::{
    BlockableResource, BrowseInput, CookieSpec, DEFAULT_STEP_TIMEOUT_MS, ElementState, ExtractWhat,
    Extraction, FieldDetail, FieldSpec, PageEvent, Step,
};
pub use task::{
    ArtifactRecord, AttemptOutcome, AttemptRecord, NewArtifact, NewTask, TaskEvent, TaskFilter,
    TaskOutcome, TaskRecord,
};
