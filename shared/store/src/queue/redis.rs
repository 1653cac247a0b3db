//! The Redis queue backend (fred).
//!
//! Keys, all under one hash tag `{p}` so the scripts also run on a cluster. Each named
//! queue has its own key base `<q>`: `{p}` for `default` (the layout from before named
//! queues), `{p}:q:<name>` for every other queue. Under each base:
//! - `<q>:ready:<tenant>` one sorted set of ready task ids per tenant; score = priority
//!   band + the time the task became ready (ms), so `ZPOPMIN` gives the tenant's highest
//!   priority, oldest task;
//! - `<q>:tenants` the dispatch ring: tenants that have ready tasks, scored by the
//!   priority band of their best task, then by their turn (a counter drawn from
//!   `<q>:seq` each time the tenant is served). A claim serves the first tenant in
//!   the ring that is under its concurrency limit, so tenants take turns and one
//!   tenant's flood cannot starve another tenant's single task;
//! - `<q>:running` hash tenant → number of leased tasks (the per-tenant limit);
//! - `<q>:delayed` sorted set of task ids scored by the time they become due;
//! - `<q>:leases`  sorted set of claimed task ids scored by lease deadline;
//! - `<q>:tokens`  hash task id → lease token of the current owner;
//! - `<q>:jobs`    hash task id → `tenant|priority`, the routing data;
//! - `<q>:controls` hash: `paused` (present while the queue is paused: nothing is
//!   claimed) and `limit` (the queue's own concurrency cap, when it has one);
//! - `<q>:signal`  list; each enqueue pushes one element, and an idle worker blocks on
//!   `BLPOP` of the signal lists of the queues it serves, so a new task wakes one worker
//!   at once instead of being polled for.
//!
//! Every step that touches more than one key is one Lua script (atomic, loaded once and
//! run by `EVALSHA`). The scripts get the queue's key base as their first argument and
//! derive the other keys from it; the first declared key carries the hash tag, so the
//! script is routed to the slot every one of its keys lives in. A claim gets the bases of
//! every queue the worker serves and looks at them in one script. Times come from the
//! Redis server's clock (`TIME`), one clock for all workers. The claim script also moves
//! due delayed tasks and expired leases back to ready, so recovery needs no sweeper.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    Claim, Dispatch, ParkedClaims, PriorityCounts, Queue, QueueError, QueueLimits, QueueStats,
    Swappable, served_queues,
};
use operator_config::RedisSettings;
use operator_domain::QueueControls;
use operator_domain::{LeaseToken, Priority, QueueName, TaskId, TenantId};

/// Priority bands of the ready sets are this many milliseconds apart: above any time
/// until the year 2286, so a higher band always sorts first.
const PRIORITY_BAND_MS: i64 = 10_000_000_000_000;
/// Priority bands of the dispatch ring are this many turns apart. Scores are doubles,
/// exact up to 2^53, so three bands of 10^12 turns each stay exact.
const TURN_BAND: i64 = 1_000_000_000_000;
const HIGHEST_RANK: i16 = 2;
/// How many tenants a claim looks at before giving up when all of them are at their
/// limit; the rest of the ring waits for the next claim.
const RING_SCAN: usize = 64;

/// Shared Lua prelude. `ARGV[1]` of every script is the key base `{prefix}`.
const LUA_PRELUDE: &str = r#"
local base = ARGV[1]
local function key(name) return base .. ':' .. name end
local function ready_key(tenant) return base .. ':ready:' .. tenant end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- `{p}:active`: the bases of the queues that may hold work, so that a claim over many
-- queues skips the idle ones in one command. Added to by every script that adds work;
-- a claim removes a queue it finds empty.
local active_key = string.sub(KEYS[1], 1, -6) .. ':active'
local function mark_active() redis.call('SADD', active_key, base) end
local function job_tenant(job) return string.match(job, '^(.*)|') or job end
local function job_rank(job) return tonumber(string.match(job, '|(%-?%d+)$')) or 1 end
local function signal(count)
  for _ = 1, math.min(count, 1024) do redis.call('LPUSH', key('signal'), '1') end
  redis.call('LTRIM', key('signal'), 0, 1023)
end
-- Places the tenant in the dispatch ring by the band of its best ready task. `served`
-- sends it to the back of its band (it just had a turn); otherwise it keeps its turn,
-- or joins at the back when it was not in the ring.
local function touch_tenant(tenant, served)
  local head = redis.call('ZRANGE', ready_key(tenant), 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', key('tenants'), tenant)
    return
  end
  local band = math.floor(tonumber(head[2]) / PRIORITY_BAND)
  local current = redis.call('ZSCORE', key('tenants'), tenant)
  local turn
  if served or not current then
    turn = redis.call('INCR', key('seq'))
  else
    turn = tonumber(current) % TURN_BAND
  end
  redis.call('ZADD', key('tenants'), band * TURN_BAND + turn, tenant)
end
local function make_ready(id, job, at)
  local tenant = job_tenant(job)
  local score = (HIGHEST_RANK - job_rank(job)) * PRIORITY_BAND + at
  redis.call('ZADD', ready_key(tenant), 'NX', score, id)
  touch_tenant(tenant, false)
end
local function release_slot(job)
  local tenant = job_tenant(job)
  if redis.call('HINCRBY', key('running'), tenant, -1) <= 0 then
    redis.call('HDEL', key('running'), tenant)
  end
end
-- Drops the lease of `id` if `token` owns it; false when it does not.
local function drop_lease(id, token)
  if redis.call('HGET', key('tokens'), id) ~= token then return false end
  redis.call('HDEL', key('tokens'), id)
  redis.call('ZREM', key('leases'), id)
  local job = redis.call('HGET', key('jobs'), id)
  if job then release_slot(job) end
  return true
end
"#;

/// ARGV: base, id, tenant|priority, not_before_ms. 1 when added, 0 when already held.
const ENQUEUE: &str = r#"
local id, job = ARGV[2], ARGV[3]
mark_active()
if redis.call('HEXISTS', key('tokens'), id) == 1 then return 0 end
if redis.call('ZSCORE', key('delayed'), id) then return 0 end
if redis.call('ZSCORE', ready_key(job_tenant(job)), id) then return 0 end
redis.call('HSET', key('jobs'), id, job)
local now = now_ms()
local at = tonumber(ARGV[4])
if at > now then
  redis.call('ZADD', key('delayed'), at, id)
else
  make_ready(id, job, now)
  signal(1)
end
return 1
"#;

/// ARGV: base (unused), token, ttl_ms, tenant_limit, default_queue_limit (0 = none), then
/// the base of each queue to claim from, in the order ties are broken. Returns
/// {id, job, deadline_ms, queue_index (1-based)}, or {'', wait_hint_ms} when nothing may
/// be claimed.
const CLAIM: &str = r#"
local now = now_ms()
local tenant_limit, default_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local first_queue = 6
-- Tenants with a cap of their own (`{p}:tenant-limits`, tenant -> running per queue).
local own_limits_key = string.sub(KEYS[1], 1, -6) .. ':tenant-limits'
-- Per queue: recover due and expired tasks, and find the band of its best ready tenant
-- when it may hand a task out.
local candidates = {}
local many = #ARGV > first_queue
-- With several queues, only the active ones are looked at.
local active = {}
if many then
  local bases = {}
  for index = first_queue, #ARGV do bases[#bases + 1] = ARGV[index] end
  local members = redis.call('SMISMEMBER', active_key, unpack(bases))
  for position, member in ipairs(members) do
    active[first_queue + position - 1] = member == 1
  end
end
local function looked_at(index) return not many or active[index] end
for index = first_queue, #ARGV do
  if looked_at(index) then
    base = ARGV[index]
    local due = redis.call('ZRANGEBYSCORE', key('delayed'), '-inf', now, 'LIMIT', 0, 512)
    for _, id in ipairs(due) do
      redis.call('ZREM', key('delayed'), id)
      local job = redis.call('HGET', key('jobs'), id)
      if job then make_ready(id, job, now) end
    end
    local expired = redis.call('ZRANGEBYSCORE', key('leases'), '-inf', now, 'LIMIT', 0, 512)
    for _, id in ipairs(expired) do
      redis.call('ZREM', key('leases'), id)
      redis.call('HDEL', key('tokens'), id)
      local job = redis.call('HGET', key('jobs'), id)
      if job then
        release_slot(job)
        make_ready(id, job, now)
      end
    end
    local controls = redis.call('HMGET', key('controls'), 'paused', 'limit')
    if not controls[1] then
      local limit = tonumber(controls[2] or default_limit)
      if limit == 0 or redis.call('ZCARD', key('leases')) < limit then
        if not many then
          -- One queue: nothing to rank.
          candidates[1] = {index, 0}
        else
          local head = redis.call('ZRANGE', key('tenants'), 0, 0, 'WITHSCORES')
          if #head > 0 then
            candidates[#candidates + 1] = {index, math.floor(tonumber(head[2]) / TURN_BAND)}
          elseif redis.call('ZCARD', key('delayed')) == 0
            and redis.call('ZCARD', key('leases')) == 0 then
            -- Nothing ready, waiting or running: idle until an enqueue marks it again.
            redis.call('SREM', active_key, base)
          end
        end
      end
    end
  end
end
-- The best priority band first; among equals, the order the claimer gave.
if #candidates > 1 then
  table.sort(candidates, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
end
for _, candidate in ipairs(candidates) do
  base = ARGV[candidate[1]]
  local ring = redis.call('ZRANGE', key('tenants'), 0, RING_SCAN - 1)
  for _, tenant in ipairs(ring) do
    local running = tonumber(redis.call('HGET', key('running'), tenant) or '0')
    local limit = tonumber(redis.call('HGET', own_limits_key, tenant) or tenant_limit)
    if limit == 0 or running < limit then
      local popped = redis.call('ZPOPMIN', ready_key(tenant))
      touch_tenant(tenant, true)
      if #popped > 0 then
        local id = popped[1]
        local deadline = now + tonumber(ARGV[3])
        redis.call('ZADD', key('leases'), deadline, id)
        redis.call('HSET', key('tokens'), id, ARGV[2])
        redis.call('HINCRBY', key('running'), tenant, 1)
        local job = redis.call('HGET', key('jobs'), id) or (tenant .. '|1')
        return {id, job, deadline, candidate[1] - first_queue + 1}
      end
    end
  end
end
-- Nothing to hand out: how long until a delayed task comes due or a lease runs out.
local hint = -1
for index = first_queue, #ARGV do
  if looked_at(index) then
    base = ARGV[index]
    for _, name in ipairs({'delayed', 'leases'}) do
      local head = redis.call('ZRANGE', key(name), 0, 0, 'WITHSCORES')
      if #head > 0 then
        local wait = tonumber(head[2]) - now
        if hint < 0 or wait < hint then hint = wait end
      end
    end
  end
end
return {'', hint}
"#;

/// ARGV: base, id, token, ttl_ms. Returns the new deadline, or 0 when the lease is lost.
const RENEW: &str = r#"
if redis.call('HGET', key('tokens'), ARGV[2]) ~= ARGV[3] then return 0 end
local deadline = now_ms() + tonumber(ARGV[4])
redis.call('ZADD', key('leases'), 'XX', deadline, ARGV[2])
return deadline
"#;

/// ARGV: base, id, token, limited (1 when this worker has concurrency limits). Wakes a
/// worker when others wait, since a slot under a concurrency limit may have opened.
/// Without limits nobody can be waiting for one: an idle worker would have claimed the
/// ready tasks already. (A worker configured with limits that another lacks still finds
/// the slot at its next claim, within its claim wait.)
const ACK: &str = r#"
if not drop_lease(ARGV[2], ARGV[3]) then return 0 end
redis.call('HDEL', key('jobs'), ARGV[2])
local limited = ARGV[4] == '1' or redis.call('HEXISTS', key('controls'), 'limit') == 1
if limited and redis.call('EXISTS', key('tenants')) == 1 then signal(1) end
return 1
"#;

/// ARGV: base, id, token, not_before_ms.
const REQUEUE: &str = r#"
local id = ARGV[2]
if not drop_lease(id, ARGV[3]) then return 0 end
mark_active()
local job = redis.call('HGET', key('jobs'), id)
if not job then return 1 end
local now = now_ms()
local at = tonumber(ARGV[4])
if at > now then
  redis.call('ZADD', key('delayed'), at, id)
else
  make_ready(id, job, now)
end
signal(1)
return 1
"#;

/// ARGV: base, id.
const REMOVE: &str = r#"
local id = ARGV[2]
if redis.call('HEXISTS', key('tokens'), id) == 1 then return 0 end
local job = redis.call('HGET', key('jobs'), id)
local removed = redis.call('ZREM', key('delayed'), id)
if job then
  local tenant = job_tenant(job)
  removed = removed + redis.call('ZREM', ready_key(tenant), id)
  redis.call('HDEL', key('jobs'), id)
  touch_tenant(tenant, false)
end
return removed
"#;

/// ARGV: base, paused (1|0), limit (-1 = none). Resuming, or changing the limit, wakes
/// as many idle workers as there is work.
const CONFIGURE: &str = r#"
local old = redis.call('HMGET', key('controls'), 'paused', 'limit')
local was_paused, old_limit = old[1] ~= false, tonumber(old[2] or '-1')
local paused, limit = ARGV[2] == '1', tonumber(ARGV[3])
if paused then
  redis.call('HSET', key('controls'), 'paused', '1')
else
  redis.call('HDEL', key('controls'), 'paused')
end
if limit < 0 then
  redis.call('HDEL', key('controls'), 'limit')
else
  redis.call('HSET', key('controls'), 'limit', limit)
end
if not paused and (was_paused or limit ~= old_limit) then
  local ready = 0
  for _, tenant in ipairs(redis.call('ZRANGE', key('tenants'), 0, 1023)) do
    ready = ready + redis.call('ZCARD', ready_key(tenant))
  end
  signal(ready)
end
return 1
"#;

/// ARGV: base. Returns {high, normal, low, delayed, leased, paused, oldest_ready_ms, now}.
const STATS: &str = r#"
local counts = {0, 0, 0}
local oldest = -1
for _, tenant in ipairs(redis.call('ZRANGE', key('tenants'), 0, -1)) do
  for band = 0, 2 do
    local low, high = band * PRIORITY_BAND, (band + 1) * PRIORITY_BAND
    local count = redis.call('ZCOUNT', ready_key(tenant), low, '(' .. high)
    if count > 0 then
      counts[band + 1] = counts[band + 1] + count
      local first = redis.call('ZRANGEBYSCORE', ready_key(tenant), low, '(' .. high, 'WITHSCORES', 'LIMIT', 0, 1)
      local at = tonumber(first[2]) - low
      if oldest < 0 or at < oldest then oldest = at end
    end
  end
end
return {counts[1], counts[2], counts[3], redis.call('ZCARD', key('delayed')),
  redis.call('ZCARD', key('leases')), redis.call('HEXISTS', key('controls'), 'paused'), oldest,
  now_ms()}
"#;

/// ARGV: base. Deletes every key under the base (for `{p}`, every queue's).
const PURGE: &str = r#"
local cursor = '0'
local deleted = 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', base .. ':*', 'COUNT', 1000)
  cursor = reply[1]
  for _, name in ipairs(reply[2]) do deleted = deleted + redis.call('DEL', name) end
until cursor == '0'
return deleted
"#;

struct Scripts {
    enqueue: Script,
    claim: Script,
    renew: Script,
    ack: Script,
    requeue: Script,
    remove: Script,
    configure: Script,
    stats: Script,
    purge: Script,
}

impl Scripts {
    fn new() -> Self {
        let prelude = LUA_PRELUDE
            .replace("HIGHEST_RANK", &HIGHEST_RANK.to_string())
            .replace("PRIORITY_BAND", &PRIORITY_BAND_MS.to_string())
            .replace("TURN_BAND", &TURN_BAND.to_string());
        let with_prelude = |body: &str| {
            let body = body
                .replace("RING_SCAN", &RING_SCAN.to_string())
                .replace("PRIORITY_BAND", &PRIORITY_BAND_MS.to_string())
                .replace("TURN_BAND", &TURN_BAND.to_string());
            Script::from_lua(format!("{prelude}\n{body}"))
        };
        Self {
            enqueue: with_prelude(ENQUEUE),
            claim: with_prelude(CLAIM),
            renew: with_prelude(RENEW),
            ack: with_prelude(ACK),
            requeue: with_prelude(REQUEUE),
            remove: with_prelude(REMOVE),
            configure: with_prelude(CONFIGURE),
            stats: with_prelude(STATS),
            purge: with_prelude(PURGE),
        }
    }
}

/// The queues a claimer serves.
#[derive(Default)]
struct Served {
    names: Vec<QueueName>,
    bases: Vec<String>,
    signal_keys: Vec<String>,
}

pub struct RedisQueue {
    client: Client,
    /// A second connection for `BLPOP`: a blocked connection cannot carry other commands.
    /// Behind an async mutex because one waiter per process is enough (the worker runtime
    /// claims one task at a time) and a second would only steal the first one's wake-up.
    waiter: Mutex<Client>,
    /// `{prefix}`: the hash-tagged root of every key, and the `default` queue's base.
    root: String,
    /// Declared to Redis as each script's key, so a cluster routes it to the slot of
    /// the hash tag.
    routing_key: String,
    /// The queues claims take from, with their key bases and signal lists; replaced
    /// whole when the worker's set of queues changes.
    served: Swappable<Served>,
    /// Rotates the order claims look at equal-priority queues in, so they take turns.
    turn: AtomicUsize,
    parked: ParkedClaims,
    scripts: Scripts,
    limits: QueueLimits,
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
        let root = format!("{{{}}}", settings.key_prefix);
        let queue = Self {
            client,
            waiter: Mutex::new(waiter),
            routing_key: format!("{root}:jobs"),
            root,
            served: Swappable::new(Served::default()),
            turn: AtomicUsize::new(0),
            parked: ParkedClaims::default(),
            scripts: Scripts::new(),
            limits: QueueLimits::default(),
            command_timeout: settings.command_timeout,
        };
        queue.serve(Vec::new());
        Ok(queue)
    }

    /// Applies per-tenant and per-queue concurrency limits to this process's claims.
    pub fn with_limits(mut self, limits: QueueLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The queues this process's claims take from (`default` when none are given).
    pub fn serving(self, queues: Vec<QueueName>) -> Self {
        self.serve(queues);
        self
    }

    /// The key base of `queue`.
    fn base(&self, queue: &QueueName) -> String {
        if queue.is_default() {
            self.root.clone()
        } else {
            format!("{}:q:{}", self.root, queue.as_str())
        }
    }

    /// Deletes every key of every queue under this prefix (tests and maintenance).
    pub async fn purge(&self) -> Result<(), QueueError> {
        let _: i64 = self
            .run(&self.scripts.purge, &self.root, Vec::new())
            .await?;
        Ok(())
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `script` with a queue's key base as its first argument, then `args`.
    async fn run<R: FromValue>(
        &self,
        script: &Script,
        base: &str,
        args: Vec<Value>,
    ) -> Result<R, QueueError> {
        let mut arguments: Vec<Value> = Vec::with_capacity(args.len() + 1);
        arguments.push(base.into());
        arguments.extend(args);
        Ok(script
            .evalsha_with_reload(&self.client, vec![self.routing_key.as_str()], arguments)
            .await?)
    }

    /// One claim attempt: the claim, or how long until something may become claimable.
    async fn try_claim(
        &self,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Result<Claim, Option<Duration>>, QueueError> {
        let served = self.served.get();
        // Equal-priority queues are looked at from a rotating start, so they take turns.
        let count = served.names.len();
        let start = if count > 1 {
            self.turn.fetch_add(1, Ordering::Relaxed) % count
        } else {
            0
        };
        let order: Vec<usize> = (0..count).map(|offset| (start + offset) % count).collect();
        let mut arguments: Vec<Value> = vec![
            token.to_string().into(),
            millis(lease).into(),
            i64::from(self.limits.tenant_concurrency).into(),
            i64::from(self.limits.global_concurrency).into(),
        ];
        arguments.extend(
            order
                .iter()
                .map(|index| Value::from(served.bases[*index].as_str())),
        );
        let reply: Vec<Value> = self
            .run(&self.scripts.claim, &served.bases[order[0]], arguments)
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
        let queue = reply
            .get(3)
            .and_then(Value::as_i64)
            .and_then(|position| usize::try_from(position).ok()?.checked_sub(1))
            .and_then(|position| order.get(position))
            .map(|index| served.names[*index].clone())
            .ok_or_else(|| QueueError::Protocol(format!("claim reply without queue: {reply:?}")))?;
        Ok(Ok(Claim {
            queue,
            task_id,
            tenant,
            priority,
            token,
            lease_until: from_millis(deadline),
        }))
    }

    fn enqueue_arguments(dispatch: &Dispatch) -> Vec<Value> {
        let not_before = dispatch
            .not_before
            .map(|at| at.timestamp_millis())
            .unwrap_or(0);
        vec![
            dispatch.task_id.to_string().into(),
            job_value(&dispatch.tenant, dispatch.priority).into(),
            not_before.into(),
        ]
    }
}

pub(crate) fn build_client(url: &str, command_timeout: Duration) -> Result<Client, QueueError> {
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

fn count(reply: &[Value], index: usize) -> u64 {
    reply
        .get(index)
        .and_then(Value::as_i64)
        .and_then(|value| u64::try_from(value).ok())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    fn parked_claims(&self) -> usize {
        self.parked.count()
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn serve(&self, queues: Vec<QueueName>) {
        let names = served_queues(queues);
        let bases: Vec<String> = names.iter().map(|queue| self.base(queue)).collect();
        let signal_keys = bases.iter().map(|base| format!("{base}:signal")).collect();
        self.served.set(Served {
            names,
            bases,
            signal_keys,
        });
    }

    async fn enqueue(&self, dispatch: &Dispatch) -> Result<bool, QueueError> {
        let added: i64 = self
            .run(
                &self.scripts.enqueue,
                &self.base(&dispatch.queue),
                Self::enqueue_arguments(dispatch),
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
        let pipeline = self.client.pipeline();
        // fred's pipelines have no Lua interface, so EVALSHA goes as a raw command whose
        // cluster slot comes from its first key (argument 2, after the sha and key count).
        let evalsha = CustomCommand::new("EVALSHA", ClusterHash::Offset(2), false);
        for dispatch in batch {
            let mut arguments: Vec<Value> = vec![
                self.scripts.enqueue.sha1().clone().into(),
                1.into(),
                self.routing_key.as_str().into(),
                self.base(&dispatch.queue).into(),
            ];
            arguments.extend(Self::enqueue_arguments(dispatch));
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
            // The signal list keeps a push that comes before the BLPOP does.
            let _parked = self.parked.park();
            let options = Options {
                timeout: Some(pause + self.command_timeout),
                ..Default::default()
            };
            let woken: Result<Option<(String, String)>, _> = waiter
                .with_options(&options)
                .blpop(self.served.get().signal_keys.clone(), seconds)
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
        let deadline: i64 = self
            .run(
                &self.scripts.renew,
                &self.base(&claim.queue),
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
        let acked: i64 = self
            .run(
                &self.scripts.ack,
                &self.base(&claim.queue),
                vec![
                    claim.task_id.to_string().into(),
                    claim.token.to_string().into(),
                    if self.limits == QueueLimits::default() {
                        "0"
                    } else {
                        "1"
                    }
                    .into(),
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
        let at = not_before.map(|at| at.timestamp_millis()).unwrap_or(0);
        let requeued: i64 = self
            .run(
                &self.scripts.requeue,
                &self.base(&claim.queue),
                vec![
                    claim.task_id.to_string().into(),
                    claim.token.to_string().into(),
                    at.into(),
                ],
            )
            .await?;
        Ok(requeued == 1)
    }

    async fn remove(&self, queue: &QueueName, task_id: TaskId) -> Result<bool, QueueError> {
        let removed: i64 = self
            .run(
                &self.scripts.remove,
                &self.base(queue),
                vec![task_id.to_string().into()],
            )
            .await?;
        Ok(removed > 0)
    }

    async fn configure(
        &self,
        queue: &QueueName,
        controls: QueueControls,
    ) -> Result<(), QueueError> {
        let flag = if controls.paused { "1" } else { "0" };
        let limit = controls.concurrency_limit.map(i64::from).unwrap_or(-1);
        let _: i64 = self
            .run(
                &self.scripts.configure,
                &self.base(queue),
                vec![flag.into(), limit.into()],
            )
            .await?;
        Ok(())
    }

    async fn limit_tenant(
        &self,
        tenant: &TenantId,
        running_per_queue: Option<u32>,
    ) -> Result<(), QueueError> {
        let key = format!("{}:tenant-limits", self.root);
        match running_per_queue {
            Some(cap) => {
                let _: i64 = self
                    .client
                    .hset(key, (tenant.as_str(), i64::from(cap)))
                    .await?;
            }
            None => {
                let _: i64 = self.client.hdel(key, tenant.as_str()).await?;
            }
        }
        // A raised cap may let a waiting tenant's task out now.
        for signal in &self.served.get().signal_keys {
            let _: i64 = self.client.lpush(signal.as_str(), "1").await?;
        }
        Ok(())
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, QueueError> {
        let reply: Vec<Value> = self
            .run(&self.scripts.stats, &self.base(queue), Vec::new())
            .await?;
        let oldest = reply.get(6).and_then(Value::as_i64).unwrap_or(-1);
        Ok(QueueStats {
            ready_by_priority: PriorityCounts {
                high: count(&reply, 0),
                normal: count(&reply, 1),
                low: count(&reply, 2),
            },
            delayed: count(&reply, 3),
            leased: count(&reply, 4),
            paused: count(&reply, 5) == 1,
            oldest_ready_at: (oldest >= 0).then(|| from_millis(oldest)),
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.client.ping(None).await?;
        Ok(())
    }
}
