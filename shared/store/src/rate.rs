//! Submission rate limits per tenant: the generic cell rate algorithm (GCRA), which
//! keeps one number per tenant, the theoretical arrival time (TAT) of its next
//! submission.
//!
//! A tenant may submit `rate` tasks a second, and `burst` at once above it: a
//! submission at `now` is allowed when `TAT − now ≤ (burst − 1) × T` (with `T = 1/rate`),
//! and then moves the TAT to `max(TAT, now) + T`. With Redis the TAT lives in Redis
//! (`<redis.key_prefix>:rate:<tenant>:<interval µs>:<burst>`) and one script checks and moves it, with
//! Redis' own clock, so every API replica shares one budget; without, it lives in this
//! process. Each tenant's rate and burst are its own (`tenants` row) or the
//! `limits.*` settings, read at most every
//! [`LIMITS_TTL`](crate::limits::LIMITS_TTL).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

use crate::db::RepoError;
use crate::limits::TenantLimitsCache;
use crate::queue::redis::build_client;
use operator_config::{LimitSettings, RedisSettings};
use operator_domain::TenantId;

/// KEYS[1]: the TAT; ARGV: the interval T and the tolerance (burst − 1) × T, in
/// microseconds. Returns {allowed, wait µs, remaining, µs until the burst is whole}.
const GCRA: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - now - tolerance, 0, tat - now}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return {1, 0, math.floor((tolerance + interval - (next_tat - now)) / interval), next_tat - now}
"#;

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The burst: submissions that may come at once.
    pub limit: u32,
    /// Submissions left right now.
    pub remaining: u32,
    /// When refused: how long until one more is allowed.
    pub retry_after: Duration,
    /// How long until the whole burst is available again.
    pub reset: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the rate limiter's Redis: {0}")]
    Redis(String),
}

/// A tenant's budget: one submission every `interval`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Budget {
    interval: Duration,
    burst: u32,
}

pub struct SubmissionLimiter {
    limits: std::sync::Arc<TenantLimitsCache>,
    defaults: LimitSettings,
    redis: Option<RedisSettings>,
    client: OnceCell<(Client, Script)>,
    /// Without Redis: each tenant's TAT, as an instant, and the budget it counts in.
    local: Mutex<HashMap<TenantId, (Instant, Budget)>>,
}

impl std::fmt::Debug for SubmissionLimiter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SubmissionLimiter")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl SubmissionLimiter {
    /// With Redis settings that name a server, the budget is shared through it.
    pub fn new(
        limits: std::sync::Arc<TenantLimitsCache>,
        defaults: LimitSettings,
        redis: &RedisSettings,
    ) -> Self {
        Self {
            limits,
            defaults,
            redis: redis.url.is_some().then(|| redis.clone()),
            client: OnceCell::new(),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one submission of `tenant`; `None` when the tenant has no limit.
    pub async fn check(&self, tenant: &TenantId) -> Result<Option<Decision>, RateError> {
        let Some(budget) = self.budget(tenant).await? else {
            return Ok(None);
        };
        let tolerance = budget.interval * (budget.burst - 1);
        let decision = match &self.redis {
            Some(settings) => {
                self.check_redis(settings, tenant, budget, tolerance)
                    .await?
            }
            None => self.check_local(tenant, budget, tolerance),
        };
        Ok(Some(decision))
    }

    fn check_local(&self, tenant: &TenantId, budget: Budget, tolerance: Duration) -> Decision {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        // A changed budget starts afresh rather than inheriting a TAT counted in
        // another interval.
        let tat = match local.get(tenant) {
            Some((tat, counted_in)) if *counted_in == budget => (*tat).max(now),
            _ => now,
        };
        let ahead = tat - now;
        if ahead > tolerance {
            return Decision {
                allowed: false,
                limit: budget.burst,
                remaining: 0,
                retry_after: ahead - tolerance,
                reset: ahead,
            };
        }
        let next = tat + budget.interval;
        local.insert(tenant.clone(), (next, budget));
        let left = (tolerance + budget.interval).saturating_sub(next - now);
        Decision {
            allowed: true,
            limit: budget.burst,
            remaining: (left.as_micros() / budget.interval.as_micros().max(1)) as u32,
            retry_after: Duration::ZERO,
            reset: next - now,
        }
    }

    async fn check_redis(
        &self,
        settings: &RedisSettings,
        tenant: &TenantId,
        budget: Budget,
        tolerance: Duration,
    ) -> Result<Decision, RateError> {
        let (client, script) = self
            .client
            .get_or_try_init(|| async {
                let url = settings
                    .url
                    .as_ref()
                    .map(|url| url.expose_secret().to_owned());
                let client = build_client(&url.unwrap_or_default(), settings.command_timeout)
                    .map_err(|error| RateError::Redis(error.to_string()))?;
                client
                    .init()
                    .await
                    .map_err(|error| RateError::Redis(error.to_string()))?;
                Ok::<_, RateError>((client, Script::from_lua(GCRA)))
            })
            .await?;
        // The budget is part of the key: a changed limit starts afresh (the old key
        // expires on its own).
        let key = format!(
            "{}:rate:{tenant}:{}:{}",
            settings.key_prefix,
            budget.interval.as_micros(),
            budget.burst
        );
        let micros = |duration: Duration| i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        let (allowed, wait, remaining, reset): (i64, i64, i64, i64) = script
            .evalsha_with_reload(
                client,
                vec![key],
                vec![micros(budget.interval), micros(tolerance)],
            )
            .await
            .map_err(|error| RateError::Redis(error.to_string()))?;
        Ok(Decision {
            allowed: allowed == 1,
            limit: budget.burst,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            retry_after: Duration::from_micros(u64::try_from(wait.max(0)).unwrap_or(0)),
            reset: Duration::from_micros(u64::try_from(reset.max(0)).unwrap_or(0)),
        })
    }

    /// The tenant's budget, from its own limits or the settings.
    async fn budget(&self, tenant: &TenantId) -> Result<Option<Budget>, RepoError> {
        let own = self.limits.get(tenant).await?;
        let rate = own
            .submissions_per_second
            .unwrap_or(self.defaults.submissions_per_second);
        let burst = own
            .submission_burst
            .unwrap_or(self.defaults.submission_burst)
            .max(1);
        Ok((rate > 0.0 && rate.is_finite()).then(|| Budget {
            interval: Duration::from_secs_f64(1.0 / rate),
            burst,
        }))
    }
}
