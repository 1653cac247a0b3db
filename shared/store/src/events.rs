//! Live task events: the bus that tells every process a task has new events (the
//! stream a client reads them from is [`crate::task_stream`]).
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
//!
//! The bus also carries requests to stop running tasks (`<redis.key_prefix>:cancels`,
//! carrying a task id), so the worker running a cancelled task hears of it at once
//! rather than at its next lease renewal (which still carries the request, should the
//! notice be lost); and API key revocations (`<redis.key_prefix>:revocations`, carrying
//! a key's look-up id), so every API replica drops its cached verification at once
//! (see [`crate::credentials`]). After a reconnect, when notices may have been missed,
//! subscribers get [`Revocation::All`].

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use secrecy::ExposeSecret;
use tokio::sync::broadcast;
use tracing::warn;

use operator_config::RedisSettings;
use operator_domain::{TaskId, TenantId};

/// "This task has new events."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNotice {
    pub tenant: TenantId,
    pub task_id: TaskId,
}

/// "Forget what you cached about this key" (or about every key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The key with this look-up id.
    Key(String),
    /// Every key: notices may have been lost while Redis was unreachable.
    All,
}

#[derive(Debug, thiserror::Error)]
#[error("event bus: {0}")]
pub struct EventBusError(#[from] fred::error::Error);

/// Notices buffered per subscriber; one that falls further behind re-reads the table.
const LOCAL_CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct EventBus {
    local: broadcast::Sender<EventNotice>,
    cancels: broadcast::Sender<TaskId>,
    revocations: broadcast::Sender<Revocation>,
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
    cancel_channel: String,
    revocation_channel: String,
    /// Kept so the subscription lives as long as the bus.
    _subscriber: Client,
}

impl EventBus {
    /// The one-process bus.
    pub fn in_process() -> Self {
        let (local, _) = broadcast::channel(LOCAL_CAPACITY);
        let (cancels, _) = broadcast::channel(LOCAL_CAPACITY);
        let (revocations, _) = broadcast::channel(LOCAL_CAPACITY);
        Self {
            local,
            cancels,
            revocations,
            redis: None,
        }
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
        let cancel_channel = format!("{}:cancels", redis.key_prefix);
        let revocation_channel = format!("{}:revocations", redis.key_prefix);
        // A reconnect drops the subscriptions: subscribe again (task notices lost
        // meanwhile are covered by the readers' resync; lost revocations by forgetting
        // every cached key).
        let mut reconnects = subscriber.reconnect_rx();
        let resubscriber = subscriber.clone();
        let pattern = format!("{prefix}*");
        let channels = [revocation_channel.clone(), cancel_channel.clone()];
        let revocations = bus.revocations.clone();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                let _ = revocations.send(Revocation::All);
                if let Err(error) = resubscriber.psubscribe(pattern.clone()).await {
                    warn!(error = %error, "re-subscribing to task event notices failed");
                }
                if let Err(error) = resubscriber.subscribe(channels.to_vec()).await {
                    warn!(error = %error, "re-subscribing to key revocations and cancellations failed");
                }
                let _ = revocations.send(Revocation::All);
            }
        });
        let mut messages = subscriber.message_rx();
        let local = bus.local.clone();
        let revocations = bus.revocations.clone();
        let cancels = bus.cancels.clone();
        let channel_prefix = prefix.clone();
        let channel = revocation_channel.clone();
        let cancels_channel = cancel_channel.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) if message.channel == channel => {
                        if let Some(lookup) = message.value.as_string() {
                            let _ = revocations.send(Revocation::Key(lookup));
                        }
                    }
                    Ok(message) if message.channel == cancels_channel => {
                        let task_id = message
                            .value
                            .as_str()
                            .and_then(|text| TaskId::parse(&text).ok());
                        if let Some(task_id) = task_id {
                            let _ = cancels.send(task_id);
                        }
                    }
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
        subscriber
            .subscribe(vec![revocation_channel.clone(), cancel_channel.clone()])
            .await?;
        Ok(Self {
            redis: Some(Arc::new(RedisBus {
                publisher,
                prefix,
                cancel_channel,
                revocation_channel,
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

    /// Whether notices reach other processes (Redis), not only this one.
    pub fn reaches_other_processes(&self) -> bool {
        self.redis.is_some()
    }

    /// Requests to stop running tasks, by id, from every process.
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<TaskId> {
        self.cancels.subscribe()
    }

    /// Tells the worker running `task_id`, in this process or another, that a client
    /// cancelled it (in the background, like [`Self::publish`]: a lost request is still
    /// seen at the worker's next lease renewal).
    pub fn publish_cancel(&self, task_id: TaskId) {
        let _ = self.cancels.send(task_id);
        if let Some(redis) = &self.redis {
            let redis = Arc::clone(redis);
            tokio::spawn(async move {
                let published: Result<i64, _> = redis
                    .publisher
                    .publish(redis.cancel_channel.clone(), task_id.to_string())
                    .await;
                if let Err(error) = published {
                    warn!(task_id = %task_id, error = %error, "publishing a cancellation failed; the worker sees it at its next lease renewal");
                }
            });
        }
    }

    pub fn subscribe_revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    /// Tells this process at once, and the others through Redis, that a key was revoked.
    /// Waits for Redis (a revocation is rare and must not be lost silently).
    pub async fn publish_revocation(&self, lookup: &str) -> Result<(), EventBusError> {
        let _ = self.revocations.send(Revocation::Key(lookup.to_owned()));
        if let Some(redis) = &self.redis {
            let _receivers: i64 = redis
                .publisher
                .publish(redis.revocation_channel.clone(), lookup.to_owned())
                .await?;
        }
        Ok(())
    }
}
