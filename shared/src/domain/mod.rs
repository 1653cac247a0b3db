//! Domain types: ids, the task state machine, task kinds and their validated inputs,
//! and the records the repository returns.

mod ids;
mod spec;
mod state;
mod steps;
mod task;

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
    ArtifactRecord, AttemptOutcome, AttemptRecord, NewArtifact, NewTask, TaskFilter, TaskOutcome,
    TaskRecord,
};
