//! `/v1/queues/{name}`: what a queue holds, and pausing or resuming it.
//!
//! There is one queue, `default`, today; the path names it so more can follow. Pausing
//! is recorded in the database (the truth) and applied to the queue backend; the
//! reconciler re-applies it should the backend lose its data.

use chrono::{DateTime, Utc};
use operator_shared::domain::TaskState;
use operator_shared::error::ErrorCode;
use operator_shared::queue::DEFAULT_QUEUE;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use crate::error::{ApiError, ErrorBody};
use crate::state::SharedState;

#[derive(Tags)]
enum QueueTags {
    /// Queue depth, pausing and resuming.
    Queues,
}

/// Ready tasks by priority.
#[derive(Debug, Clone, Object)]
pub struct ReadyCounts {
    pub high: u64,
    pub normal: u64,
    pub low: u64,
    pub total: u64,
}

/// The calling tenant's tasks by state.
#[derive(Debug, Clone, Default, Object)]
pub struct TaskCounts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    pub dead: u64,
}

/// What a queue holds now.
#[derive(Debug, Clone, Object)]
pub struct QueueView {
    pub name: String,
    /// A paused queue keeps its tasks and hands none to workers.
    pub paused: bool,
    /// Tasks ready to run now (all tenants).
    pub ready: ReadyCounts,
    /// Tasks waiting for their time: delayed submissions and retries in backoff.
    pub delayed: u64,
    /// Tasks held by a worker.
    pub running: u64,
    /// How long the task that has waited longest has been ready, in seconds.
    pub oldest_waiting_seconds: Option<f64>,
    pub oldest_waiting_since: Option<DateTime<Utc>>,
    /// The calling tenant's tasks by state, including `dead` ones.
    pub tasks: TaskCounts,
}

#[derive(ApiResponse)]
pub enum QueueResponse {
    #[oai(status = 200)]
    Ok(Json<QueueView>),
    /// `queue_not_found`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}

pub struct QueuesApi {
    pub state: SharedState,
}

#[OpenApi(tag = "QueueTags::Queues")]
impl QueuesApi {
    /// Queue statistics: depth by priority, delayed, running, dead, oldest waiting age.
    #[oai(path = "/v1/queues/:name", method = "get")]
    async fn get(&self, name: Path<String>) -> poem::Result<QueueResponse> {
        if name.0 != DEFAULT_QUEUE {
            return Ok(unknown_queue(&name.0));
        }
        Ok(QueueResponse::Ok(Json(self.view().await?)))
    }

    /// Pause a queue: workers finish what they hold and take nothing new.
    #[oai(path = "/v1/queues/:name/pause", method = "post")]
    async fn pause(&self, name: Path<String>) -> poem::Result<QueueResponse> {
        self.set_paused(&name.0, true).await
    }

    /// Resume a paused queue: idle workers are woken at once.
    #[oai(path = "/v1/queues/:name/resume", method = "post")]
    async fn resume(&self, name: Path<String>) -> poem::Result<QueueResponse> {
        self.set_paused(&name.0, false).await
    }
}

impl QueuesApi {
    async fn set_paused(&self, name: &str, paused: bool) -> poem::Result<QueueResponse> {
        if name != DEFAULT_QUEUE {
            return Ok(unknown_queue(name));
        }
        let state = &self.state;
        state
            .repo
            .set_queue_paused(name, paused)
            .await
            .map_err(ApiError::from)?;
        state
            .queue
            .set_paused(paused)
            .await
            .map_err(ApiError::from)?;
        Ok(QueueResponse::Ok(Json(self.view().await?)))
    }

    async fn view(&self) -> Result<QueueView, ApiError> {
        let state = &self.state;
        let stats = state.queue.stats().await?;
        let mut tasks = TaskCounts::default();
        for (task_state, count) in state.repo.count_by_state(&state.tenant()).await? {
            let slot = match task_state {
                TaskState::Scheduled => &mut tasks.scheduled,
                TaskState::Queued => &mut tasks.queued,
                TaskState::Running => &mut tasks.running,
                TaskState::Succeeded => &mut tasks.succeeded,
                TaskState::Failed => &mut tasks.failed,
                TaskState::Cancelled => &mut tasks.cancelled,
                TaskState::TimedOut => &mut tasks.timed_out,
                TaskState::Dead => &mut tasks.dead,
            };
            *slot = count;
        }
        let ready = stats.ready_by_priority;
        Ok(QueueView {
            name: DEFAULT_QUEUE.to_owned(),
            paused: stats.paused,
            ready: ReadyCounts {
                high: ready.high,
                normal: ready.normal,
                low: ready.low,
                total: stats.ready(),
            },
            delayed: stats.delayed,
            running: stats.leased,
            oldest_waiting_seconds: stats
                .oldest_ready_at
                .map(|since| (Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0),
            oldest_waiting_since: stats.oldest_ready_at,
            tasks,
        })
    }
}

fn unknown_queue(name: &str) -> QueueResponse {
    QueueResponse::NotFound(Json(
        ApiError::new(
            ErrorCode::QueueNotFound,
            format!("no queue {name:?}; the queue is {DEFAULT_QUEUE:?}"),
        )
        .body(),
    ))
}
