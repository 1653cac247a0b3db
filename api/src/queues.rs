//! `/v1/queues`: named queues, what each holds, pausing and resuming them, and their
//! concurrency caps.
//!
//! `default` always exists; others are created with `PUT /v1/queues/{name}`, and a task
//! naming a queue nobody created is refused (`unknown_queue`) rather than parked where
//! no worker looks. A queue's controls (paused, concurrency limit) are recorded in the
//! database (the truth) and applied to the queue backend; the reconciler re-applies them
//! should the backend lose its data.

use chrono::{DateTime, Utc};
use operator_domain::error::ErrorCode;
use operator_domain::{QueueName, TaskState};
use operator_store::db::QueueRecord;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult, NoCodes};
use crate::state::SharedState;

#[derive(Tags)]
enum QueueTags {
    /// Named queues: depth, pausing and resuming, concurrency caps.
    Queues,
}

/// The highest concurrency limit a queue may set.
const MAX_CONCURRENCY_LIMIT: u32 = 1_000_000;

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

/// A queue, its controls and what it holds now.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Queue")]
pub struct QueueView {
    pub name: String,
    /// A paused queue keeps its tasks and hands none to workers.
    pub paused: bool,
    /// The most of its tasks running at once, across all workers; `null` when the queue
    /// sets none (then each worker's `queue.global_concurrency` applies, 0 = no limit).
    pub concurrency_limit: Option<u32>,
    /// Tasks of every tenant ready to run now. This and the fields down to
    /// `oldest_waiting_since` describe every tenant's tasks, so they are shown to
    /// platform-admin keys only (`null` for a tenant's own keys, which see their tasks
    /// in `tasks`).
    pub ready: Option<ReadyCounts>,
    /// Tasks waiting for their time: delayed submissions and retries in backoff.
    pub delayed: Option<u64>,
    /// Tasks held by a worker.
    pub running: Option<u64>,
    /// How long the task that has waited longest has been ready, in seconds.
    pub oldest_waiting_seconds: Option<f64>,
    pub oldest_waiting_since: Option<DateTime<Utc>>,
    /// The calling tenant's tasks in this queue by state, including `dead` ones.
    pub tasks: TaskCounts,
}

/// Every queue, by name.
#[derive(Debug, Clone, Object)]
#[oai(rename = "QueueList")]
pub struct QueueList {
    pub items: Vec<QueueView>,
}

/// A queue's settings.
#[derive(Debug, Clone, Object)]
#[oai(rename = "QueueSettings")]
pub struct QueueSettingsRequest {
    /// The most of its tasks running at once, across all workers (1 or more); absent or
    /// `null` for none of its own.
    pub concurrency_limit: Option<u32>,
}

#[derive(ApiResponse)]
pub enum PutQueueResponse {
    /// The queue existed; its settings are changed.
    #[oai(status = 200)]
    Ok(Json<QueueView>),
    /// The queue is created.
    #[oai(status = 201)]
    Created(Json<QueueView>),
}

codes!(PutCodes: InvalidJson, InvalidParameter, InvalidRequest);
codes!(QueueCodes: QueueNotFound);

pub struct QueuesApi {
    pub state: SharedState,
}

#[OpenApi(tag = "QueueTags::Queues")]
impl QueuesApi {
    /// Every queue, with its statistics.
    #[oai(path = "/v1/queues", method = "get")]
    async fn list(&self, caller: Caller) -> ApiResult<Json<QueueList>, NoCodes> {
        let records = self.state.repo.queues().await?;
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            items.push(self.view(&caller, record).await?);
        }
        Ok(Json(QueueList { items }))
    }

    /// Create a queue, or change its settings. Idempotent: the same request again
    /// changes nothing. Workers take tasks from the queues their `worker.queues` lists.
    #[oai(path = "/v1/queues/:name", method = "put")]
    async fn put(
        &self,
        caller: Caller,
        name: Path<String>,
        body: Json<QueueSettingsRequest>,
    ) -> ApiResult<PutQueueResponse, PutCodes> {
        let name = QueueName::parse(&name.0).map_err(|error| {
            ApiError::new(ErrorCode::InvalidParameter, format!("name: {error}"))
        })?;
        let limit = body.0.concurrency_limit;
        if limit.is_some_and(|limit| !(1..=MAX_CONCURRENCY_LIMIT).contains(&limit)) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "concurrency_limit: must be between 1 and {MAX_CONCURRENCY_LIMIT}, or null for none"
                ),
            )
            .into());
        }
        let state = &self.state;
        let (record, created) = state.repo.upsert_queue(&name, limit).await?;
        state.known_queues.insert(&record.name);
        let action = if created {
            "queue.created"
        } else {
            "queue.updated"
        };
        state
            .audit(
                &caller,
                action,
                "queue",
                &record.name,
                serde_json::json!({"concurrency_limit": limit}),
            )
            .await;
        let view = Json(self.apply(&caller, record).await?);
        Ok(if created {
            PutQueueResponse::Created(view)
        } else {
            PutQueueResponse::Ok(view)
        })
    }

    /// A queue's statistics: depth by priority, delayed, running, dead, oldest waiting age.
    #[oai(path = "/v1/queues/:name", method = "get")]
    async fn get(
        &self,
        caller: Caller,
        name: Path<String>,
    ) -> ApiResult<Json<QueueView>, QueueCodes> {
        let record = match QueueName::parse(&name.0) {
            Ok(queue) => self.state.repo.queue(&queue).await?,
            Err(_) => None,
        };
        match record {
            Some(record) => Ok(Json(self.view(&caller, record).await?)),
            None => Err(unknown_queue(&name.0).into()),
        }
    }

    /// Pause a queue: workers finish what they hold and take nothing new from it.
    #[oai(path = "/v1/queues/:name/pause", method = "post")]
    async fn pause(
        &self,
        caller: Caller,
        name: Path<String>,
    ) -> ApiResult<Json<QueueView>, QueueCodes> {
        self.set_paused(&caller, &name.0, true).await
    }

    /// Resume a paused queue: idle workers are woken at once.
    #[oai(path = "/v1/queues/:name/resume", method = "post")]
    async fn resume(
        &self,
        caller: Caller,
        name: Path<String>,
    ) -> ApiResult<Json<QueueView>, QueueCodes> {
        self.set_paused(&caller, &name.0, false).await
    }
}

impl QueuesApi {
    async fn set_paused(
        &self,
        caller: &Caller,
        name: &str,
        paused: bool,
    ) -> ApiResult<Json<QueueView>, QueueCodes> {
        let Ok(queue) = QueueName::parse(name) else {
            return Err(unknown_queue(name).into());
        };
        let Some(record) = self.state.repo.set_queue_paused(&queue, paused).await? else {
            return Err(unknown_queue(name).into());
        };
        let action = if paused {
            "queue.paused"
        } else {
            "queue.resumed"
        };
        self.state
            .audit(caller, action, "queue", &queue, serde_json::json!({}))
            .await;
        Ok(Json(self.apply(caller, record).await?))
    }

    /// Applies a queue's recorded controls to the queue backend; the queue as it is now.
    async fn apply(&self, caller: &Caller, record: QueueRecord) -> Result<QueueView, ApiError> {
        self.state
            .queue
            .configure(&record.name, record.controls)
            .await?;
        self.view(caller, record).await
    }

    async fn view(&self, caller: &Caller, record: QueueRecord) -> Result<QueueView, ApiError> {
        let state = &self.state;
        // Every tenant's depth is the platform's to see.
        let stats = if caller.platform_admin {
            Some(state.queue.stats(&record.name).await?)
        } else {
            None
        };
        let mut tasks = TaskCounts::default();
        for (task_state, count) in state
            .repo
            .count_by_state(&caller.tenant, &record.name)
            .await?
        {
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
        let oldest = stats.as_ref().and_then(|stats| stats.oldest_ready_at);
        Ok(QueueView {
            name: record.name.into(),
            // The database's word: the backend catches up at the next reconciliation.
            paused: record.controls.paused,
            concurrency_limit: record.controls.concurrency_limit,
            ready: stats.as_ref().map(|stats| ReadyCounts {
                high: stats.ready_by_priority.high,
                normal: stats.ready_by_priority.normal,
                low: stats.ready_by_priority.low,
                total: stats.ready(),
            }),
            delayed: stats.as_ref().map(|stats| stats.delayed),
            running: stats.as_ref().map(|stats| stats.leased),
            oldest_waiting_seconds: oldest
                .map(|since| (Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0),
            oldest_waiting_since: oldest,
            tasks,
        })
    }
}

fn unknown_queue(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::QueueNotFound,
        format!("no queue {name:?}; create it with PUT /v1/queues/{{name}}"),
    )
}
