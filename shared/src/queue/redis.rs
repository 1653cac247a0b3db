//! The Redis queue backend (fred).
//!
//! Keys, all under one hash tag so the scripts also run on a cluster:
//! - `{p}:ready`   sorted set of task ids; score = priority band + enqueue time (ms), so
//!   `ZPOPMIN` gives the highest priority, oldest first;
//! - `{p}:delayed` sorted set of task ids scored by the time they become due;
//! - `{p}:leases`  sorted set of claimed task ids scored by lease deadline;
//! - `{p}:tokens`  hash task id → lease token of the current owner;
//! - `{p}:jobs`    hash task id → `tenant|priority`, the routing data;
//! - `{p}:signal`  list; each enqueue pushes one element, and an idle worker blocks on
//!   `BLPOP` of it, so a new task wakes one worker at once instead of being polled for.
//!
//! Every step that touches more than one key is one Lua script (atomic, loaded once and
//! run by `EVALSHA`). Times come from the Redis server's clock (`TIME`), one clock for all
//! workers. The claim script also moves due delayed tasks and expired leases back to
//! `ready`, so recovery needs no separate sweeper.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::{Claim, Dispatch, Queue, QueueError, QueueStats};
use crate::config::RedisSettings;
use crate::domain::{LeaseToken, Priority, TaskId, TenantId};

/// Priority bands are this many milliseconds apart: above any enqueue time until the
/// year 2286, so a higher band always sorts first.
const PRIORITY_BAND_MS: i64 = 10_000_000_000_000;
const HIGHEST_RANK: i16 = 2;

/// Shared Lua prelude: the server's time in milliseconds and the ready-set score.
const LUA_PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ready_score(job, at)
  local rank = 1
  if job then rank = tonumber(string.match(job, '|(%-?%d+)$')) or 1 end
  return (HIGHEST_RANK - rank) * PRIORITY_BAND + at
end
local function signal(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 1023)
end
"#;

/// KEYS: ready, delayed, jobs, tokens, signal. ARGV: id, tenant|priority, not_before_ms.
const ENQUEUE: &str = r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[4], id) == 1 then return 0 end
if redis.call('ZSCORE', KEYS[1], id) or redis.call('ZSCORE', KEYS[2], id) then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[3], id, ARGV[2])
local at = tonumber(ARGV[3])
if at > now then
  redis.call('ZADD', KEYS[2], at, id)
else
  redis.call('ZADD', KEYS[1], ready_score(ARGV[2], now), id)
  signal(KEYS[5])
end
return 1
"#;

/// KEYS: ready, delayed, jobs, tokens, leases. ARGV: token, ttl_ms.
/// Returns {id, job, deadline_ms} or {'', wait_hint_ms} when nothing is ready.
const CLAIM: &str = r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 512)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], 'NX', ready_score(redis.call('HGET', KEYS[3], id), now), id)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 512)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[5], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZADD', KEYS[1], 'NX', ready_score(redis.call('HGET', KEYS[3], id), now), id)
end
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then
  local hint = -1
  local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #next_due > 0 then hint = tonumber(next_due[2]) - now end
  local next_expiry = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if #next_expiry > 0 then
    local until_expiry = tonumber(next_expiry[2]) - now
    if hint < 0 or until_expiry < hint then hint = until_expiry end
  end
  return {'', hint}
end
local id = popped[1]
local deadline = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[5], deadline, id)
redis.call('HSET', KEYS[4], id, ARGV[1])
local job = redis.call('HGET', KEYS[3], id) or ''
return {id, job, deadline}
"#;

/// KEYS: tokens, leases. ARGV: id, token, ttl_ms. Returns the new deadline, or 0.
const RENEW: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local deadline = now_ms() + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[1])
return deadline
"#;

/// KEYS: tokens, leases, jobs. ARGV: id, token.
const ACK: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#;

/// KEYS: tokens, leases, jobs, ready, delayed, signal. ARGV: id, token, not_before_ms.
const REQUEUE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local now = now_ms()
local at = tonumber(ARGV[3])
if at > now then
  redis.call('ZADD', KEYS[5], at, ARGV[1])
else
  redis.call('ZADD', KEYS[4], ready_score(redis.call('HGET', KEYS[3], ARGV[1]), now), ARGV[1])
  signal(KEYS[6])
end
return 1
"#;

/// KEYS: ready, delayed, jobs, tokens. ARGV: id.
const REMOVE: &str = r#"
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return 0 end
local removed = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return removed
"#;

struct Keys {
    ready: String,
    delayed: String,
    leases: String,
    tokens: String,
    jobs: String,
    signal: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Self {
            ready: key("ready"),
            delayed: key("delayed"),
            leases: key("leases"),
            tokens: key("tokens"),
            jobs: key("jobs"),
            signal: key("signal"),
        }
    }

    fn all(&self) -> [&str; 6] {
        [
            &self.ready,
            &self.delayed,
            &self.leases,
            &self.tokens,
            &self.jobs,
            &self.signal,
        ]
    }
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    renew: Script,
    ack: Script,
    requeue: Script,
    remove: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_prelude = |body: &str| {
            let prelude = LUA_PRELUDE
                .replace("HIGHEST_RANK", &HIGHEST_RANK.to_string())
                .replace("PRIORITY_BAND", &PRIORITY_BAND_MS.to_string());
            Script::from_lua(format!("{prelude}\n{body}"))
        };
        Self {
            enqueue: with_prelude(ENQUEUE),
            claim: with_prelude(CLAIM),
            renew: with_prelude(RENEW),
            ack: with_prelude(ACK),
            requeue: with_prelude(REQUEUE),
            remove: with_prelude(REMOVE),
        }
    }
}

pub struct RedisQueue {
    client: Client,
    /// A second connection for `BLPOP`: a blocked connection cannot carry other commands.
    /// Behind an async mutex because one waiter per process is enough (the worker runtime
    /// claims one task at a time) and a second would only steal the first one's wake-up.
    waiter: Mutex<Client>,
    keys: Keys,
    scripts: Scripts,
    command_timeout: Duration,
}

impl RedisQueue {
    /// Connects to Redis. An unreachable Redis at start-up is an error (a wrong URL shows
    /// at once); after that the client reconnects by itself, and commands sent while
    /// Redis is away fail after the command timeout rather than hang.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, QueueError> {
        let url = settings
            .url
            .as_ref()
            .map(|url| url.expose_secret().to_owned())
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        let client = build_client(&url, settings.command_timeout)?;
        let waiter = client.clone_new();
        for connection in [&client, &waiter] {
            connection.init().await?;
        }
        Ok(Self {
            client,
            waiter: Mutex::new(waiter),
            keys: Keys::new(&settings.key_prefix),
            scripts: Scripts::new(),
            command_timeout: settings.command_timeout,
        })
    }

    /// Deletes every key of this queue (tests and `operator` maintenance).
    pub async fn purge(&self) -> Result<(), QueueError> {
        let keys: Vec<String> = self.keys.all().iter().map(|key| key.to_string()).collect();
        let _: i64 = self.client.del(keys).await?;
        Ok(())
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn run<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<&str>,
        args: Vec<Value>,
    ) -> Result<R, QueueError> {
        let keys: Vec<Key> = keys.into_iter().map(Key::from).collect();
        Ok(script.evalsha_with_reload(&self.client, keys, args).await?)
    }

    /// One claim attempt: the claim, or how long until something may become claimable.
    async fn try_claim(
        &self,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Result<Claim, Option<Duration>>, QueueError> {
        let keys = &self.keys;
        let reply: Vec<Value> = self
            .run(
                &self.scripts.claim,
                vec![
                    &keys.ready,
                    &keys.delayed,
                    &keys.jobs,
                    &keys.tokens,
                    &keys.leases,
                ],
                vec![token.to_string().into(), millis(lease).into()],
            )
            .await?;
        let id = reply.first().and_then(Value::as_string).unwrap_or_default();
        if id.is_empty() {
            let hint = reply.get(1).and_then(Value::as_i64).unwrap_or(-1);
            let hint = u64::try_from(hint).ok().map(Duration::from_millis);
            return Ok(Err(hint));
        }
        let job = reply.get(1).and_then(Value::as_string).unwrap_or_default();
        let deadline = reply.get(2).and_then(Value::as_i64).ok_or_else(|| {
            QueueError::Protocol(format!("claim reply without deadline: {reply:?}"))
        })?;
        let task_id = TaskId::parse(&id)
            .map_err(|error| QueueError::Protocol(format!("bad task id {id:?}: {error}")))?;
        let (tenant, priority) = parse_job(&job);
        Ok(Ok(Claim {
            task_id,
            tenant,
            priority,
            token,
            lease_until: from_millis(deadline),
        }))
    }
}

fn build_client(url: &str, command_timeout: Duration) -> Result<Client, QueueError> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(5);
            connection.internal_command_timeout = Duration::from_secs(5);
            connection.max_command_attempts = 3;
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    Ok(client)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn from_millis(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_else(Utc::now)
}

fn job_value(tenant: &TenantId, priority: Priority) -> String {
    format!("{}|{}", tenant.as_str(), priority.rank())
}

fn parse_job(job: &str) -> (TenantId, Priority) {
    let (tenant, rank) = job.rsplit_once('|').unwrap_or((job, "1"));
    let tenant = TenantId::parse(tenant).unwrap_or_else(|_| TenantId::default_tenant());
    (tenant, Priority::from_rank(rank.parse().unwrap_or(1)))
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, dispatch: &Dispatch) -> Result<bool, QueueError> {
        let keys = &self.keys;
        let not_before = dispatch
            .not_before
            .map(|at| at.timestamp_millis())
            .unwrap_or(0);
        let added: i64 = self
            .run(
                &self.scripts.enqueue,
                vec![
                    &keys.ready,
                    &keys.delayed,
                    &keys.jobs,
                    &keys.tokens,
                    &keys.signal,
                ],
                vec![
                    dispatch.task_id.to_string().into(),
                    job_value(&dispatch.tenant, dispatch.priority).into(),
                    not_before.into(),
                ],
            )
            .await?;
        Ok(added == 1)
    }

    async fn enqueue_many(&self, batch: &[Dispatch]) -> Result<usize, QueueError> {
        if batch.is_empty() {
            return Ok(0);
        }
        // Load once, then pipeline EVALSHA: one round trip for the whole batch.
        self.scripts.enqueue.load(&self.client).await?;
        let keys = &self.keys;
        let pipeline = self.client.pipeline();
        // fred's pipelines have no Lua interface, so EVALSHA goes as a raw command whose
        // cluster slot comes from its first key (argument 2, after the sha and key count).
        let evalsha = CustomCommand::new("EVALSHA", ClusterHash::Offset(2), false);
        for dispatch in batch {
            let not_before = dispatch
                .not_before
                .map(|at| at.timestamp_millis())
                .unwrap_or(0);
            let arguments: Vec<Value> = vec![
                self.scripts.enqueue.sha1().clone().into(),
                5.into(),
                keys.ready.as_str().into(),
                keys.delayed.as_str().into(),
                keys.jobs.as_str().into(),
                keys.tokens.as_str().into(),
                keys.signal.as_str().into(),
                dispatch.task_id.to_string().into(),
                job_value(&dispatch.tenant, dispatch.priority).into(),
                not_before.into(),
            ];
            let _: () = pipeline.custom(evalsha.clone(), arguments).await?;
        }
        let results: Vec<i64> = pipeline.all().await?;
        Ok(results.into_iter().filter(|added| *added == 1).count())
    }

    async fn claim(
        &self,
        _worker: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let token = LeaseToken::new();
            let hint = match self.try_claim(token, lease).await? {
                Ok(claim) => return Ok(Some(claim)),
                Err(hint) => hint,
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            // Sleep on the signal list until an enqueue, the next due task, or the deadline.
            let mut pause = remaining;
            if let Some(hint) = hint {
                pause = pause.min(hint.max(Duration::from_millis(1)));
            }
            // BLPOP's timeout has a resolution of milliseconds, given as seconds.
            let seconds = pause.as_secs_f64().max(0.001);
            let waiter = self.waiter.lock().await;
            let options = Options {
                timeout: Some(pause + self.command_timeout),
                ..Default::default()
            };
            let woken: Result<Option<(String, String)>, _> = waiter
                .with_options(&options)
                .blpop(self.keys.signal.as_str(), seconds)
                .await;
            match woken {
                Ok(_) => {}
                // fred reports BLPOP's null reply (nothing arrived in time) as a timeout.
                Err(error) if *error.kind() == ErrorKind::Timeout => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn renew(
        &self,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<DateTime<Utc>>, QueueError> {
        let keys = &self.keys;
        let deadline: i64 = self
            .run(
                &self.scripts.renew,
                vec![&keys.tokens, &keys.leases],
                vec![
                    claim.task_id.to_string().into(),
                    claim.token.to_string().into(),
                    millis(lease).into(),
                ],
            )
            .await?;
        Ok((deadline > 0).then(|| from_millis(deadline)))
    }

    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError> {
        let keys = &self.keys;
        let acked: i64 = self
            .run(
                &self.scripts.ack,
                vec![&keys.tokens, &keys.leases, &keys.jobs],
                vec![
                    claim.task_id.to_string().into(),
                    claim.token.to_string().into(),
                ],
            )
            .await?;
        Ok(acked == 1)
    }

    async fn requeue(
        &self,
        claim: &Claim,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<bool, QueueError> {
        let keys = &self.keys;
        let at = not_before.map(|at| at.timestamp_millis()).unwrap_or(0);
        let requeued: i64 = self
            .run(
                &self.scripts.requeue,
                vec![
                    &keys.tokens,
                    &keys.leases,
                    &keys.jobs,
                    &keys.ready,
                    &keys.delayed,
                    &keys.signal,
                ],
                vec![
                    claim.task_id.to_string().into(),
                    claim.token.to_string().into(),
                    at.into(),
                ],
            )
            .await?;
        Ok(requeued == 1)
    }

    async fn remove(&self, task_id: TaskId) -> Result<bool, QueueError> {
        let keys = &self.keys;
        let removed: i64 = self
            .run(
                &self.scripts.remove,
                vec![&keys.ready, &keys.delayed, &keys.jobs, &keys.tokens],
                vec![task_id.to_string().into()],
            )
            .await?;
        Ok(removed > 0)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline.zcard(self.keys.ready.as_str()).await?;
        let _: () = pipeline.zcard(self.keys.delayed.as_str()).await?;
        let _: () = pipeline.zcard(self.keys.leases.as_str()).await?;
        let (ready, delayed, leased): (u64, u64, u64) = pipeline.all().await?;
        Ok(QueueStats {
            ready,
            delayed,
            leased,
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.client.ping(None).await?;
        Ok(())
    }
}
