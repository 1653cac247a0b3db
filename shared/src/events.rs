//! Live task events: the bus that tells every process a task has new events, and the
//! stream a client reads them from.
//!
//! The `task_events` table is the truth: every event is a row, written in the
//! transaction of the change it describes, and ids grow in commit order per task
//! (each write first updates the task's row, which serializes them). The bus carries
//! only a notice, "task T of tenant X has something new"; a reader then reads the rows
//! after the last id it sent. A lost or duplicated notice therefore costs nothing but
//! latency: readers also re-read every `events.resync_interval`, and an id is never
//! sent twice. Reconnecting with `Last-Event-ID` resumes from the table.
//!
//! The bus is an in-process broadcast for the one-process setup, plus Redis pub/sub
//! when Redis is configured, so a worker's events reach clients of every API replica.
//! Channels are per tenant: `<redis.key_prefix>:events:<tenant>`, carrying task ids.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use futures::Stream;
use secrecy::ExposeSecret;
use tokio::sync::broadcast;
use tracing::warn;

use crate::config::RedisSettings;
use crate::db::{RepoError, TaskEvent, TaskRepository};
use crate::domain::{TaskId, TaskState, TenantId};

/// "This task has new events."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNotice {
    pub tenant: TenantId,
    pub task_id: TaskId,
}

#[derive(Debug, thiserror::Error)]
#[error("event bus: {0}")]
pub struct EventBusError(#[from] fred::error::Error);

/// Notices buffered per subscriber; one that falls further behind re-reads the table.
const LOCAL_CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct EventBus {
    local: broadcast::Sender<EventNotice>,
    redis: Option<Arc<RedisBus>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EventBus")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

struct RedisBus {
    publisher: Client,
    prefix: String,
    /// Kept so the subscription lives as long as the bus.
    _subscriber: Client,
}

impl EventBus {
    /// The one-process bus.
    pub fn in_process() -> Self {
        let (local, _) = broadcast::channel(LOCAL_CAPACITY);
        Self { local, redis: None }
    }

    /// The bus the settings call for: Redis pub/sub when Redis is configured.
    pub async fn connect(redis: &RedisSettings) -> Result<Self, EventBusError> {
        let Some(url) = &redis.url else {
            return Ok(Self::in_process());
        };
        let config = Config::from_url(url.expose_secret())?;
        let builder = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = Duration::from_secs(5);
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = redis.command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .to_owned();
        let publisher = builder.build()?;
        publisher.init().await?;
        let subscriber = builder.build()?;
        subscriber.init().await?;
        let bus = Self::in_process();
        let prefix = format!("{}:events:", redis.key_prefix);
        // A reconnect drops the subscription: subscribe again (notices lost meanwhile
        // are covered by the readers' resync).
        let mut reconnects = subscriber.reconnect_rx();
        let resubscriber = subscriber.clone();
        let pattern = format!("{prefix}*");
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                if let Err(error) = resubscriber.psubscribe(pattern.clone()).await {
                    warn!(error = %error, "re-subscribing to task event notices failed");
                }
            }
        });
        let mut messages = subscriber.message_rx();
        let local = bus.local.clone();
        let channel_prefix = prefix.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let tenant = message
                            .channel
                            .strip_prefix(channel_prefix.as_str())
                            .and_then(|tenant| TenantId::parse(tenant).ok());
                        let task_id = message
                            .value
                            .as_str()
                            .and_then(|text| TaskId::parse(&text).ok());
                        if let (Some(tenant), Some(task_id)) = (tenant, task_id) {
                            let _ = local.send(EventNotice { tenant, task_id });
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        subscriber.psubscribe(format!("{prefix}*")).await?;
        Ok(Self {
            redis: Some(Arc::new(RedisBus {
                publisher,
                prefix,
                _subscriber: subscriber,
            })),
            ..bus
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventNotice> {
        self.local.subscribe()
    }

    /// Announces new events of a task, to this process at once and to the others
    /// through Redis (in the background: a slow Redis never delays the writer).
    pub fn publish(&self, notice: EventNotice) {
        let _ = self.local.send(notice.clone());
        if let Some(redis) = &self.redis {
            let redis = Arc::clone(redis);
            tokio::spawn(async move {
                let channel = format!("{}{}", redis.prefix, notice.tenant);
                let published: Result<i64, _> = redis
                    .publisher
                    .publish(channel, notice.task_id.to_string())
                    .await;
                if let Err(error) = published {
                    warn!(task_id = %notice.task_id, error = %error, "publishing a task event notice failed; readers resync");
                }
            });
        }
    }
}

/// Whether this event ends the task's stream.
pub fn is_terminal(event: &TaskEvent) -> bool {
    event.kind == "state"
        && event
            .data
            .get("state")
            .and_then(|state| state.as_str())
            .and_then(|state| TaskState::parse(state).ok())
            .is_some_and(TaskState::is_terminal)
}

struct Reader {
    repo: TaskRepository,
    notices: Option<broadcast::Receiver<EventNotice>>,
    task_id: TaskId,
    last_id: Option<i64>,
    pending: VecDeque<TaskEvent>,
    resync: Duration,
    first_read: bool,
    done: bool,
}

impl Reader {
    async fn next_event(&mut self) -> Option<Result<TaskEvent, RepoError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last_id = Some(event.id);
                if is_terminal(&event) {
                    self.done = true;
                    self.pending.clear();
                }
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if !self.first_read {
                self.wait_for_news().await;
            }
            self.first_read = false;
            match self.repo.events(self.task_id, self.last_id).await {
                Ok(events) => self.pending.extend(events),
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Waits for a notice about this task, or for the resync interval.
    async fn wait_for_news(&mut self) {
        let deadline = tokio::time::sleep(self.resync);
        tokio::pin!(deadline);
        let Some(notices) = self.notices.as_mut() else {
            deadline.await;
            return;
        };
        loop {
            tokio::select! {
                () = &mut deadline => return,
                notice = notices.recv() => match notice {
                    Ok(notice) if notice.task_id == self.task_id => return,
                    Ok(_) => continue,
                    // Fell behind: some notice may have been ours; read the table.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.notices = None;
                        deadline.await;
                        return;
                    }
                },
            }
        }
    }
}

/// A task's events after `after` (all of them when `None`), oldest first: what is
/// stored, then each new one as it is committed; the stream ends after the terminal
/// state event. The caller has checked that the task belongs to its tenant.
pub fn task_events(
    repo: TaskRepository,
    task_id: TaskId,
    after: Option<i64>,
    resync: Duration,
) -> impl Stream<Item = Result<TaskEvent, RepoError>> + Send + 'static {
    // Subscribe before the first read, so nothing committed in between is missed.
    let notices = repo.event_bus().map(EventBus::subscribe);
    let reader = Reader {
        repo,
        notices,
        task_id,
        last_id: after,
        pending: VecDeque::new(),
        resync,
        first_read: true,
        done: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        let next = reader.next_event().await?;
        Some((next, reader))
    })
}
