//! What a named queue is told to do.

use serde::Serialize;

/// A queue's own controls, kept in the database (the truth) and applied to the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueControls {
    /// A paused queue keeps its tasks but hands none out.
    pub paused: bool,
    /// Most of its tasks leased at once; `None` falls back to `queue.global_concurrency`.
    pub concurrency_limit: Option<u32>,
}
