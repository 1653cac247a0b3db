//! Each tenant's limits, as the API applies them: its own (`tenants` row) or the
//! `limits.*` settings, read at most every [`LIMITS_TTL`]; and its monthly quotas.
//!
//! Monthly quotas count per calendar month in UTC ([`Period`]):
//! - **tasks**: exact. The creation counts itself in the tenant's usage row in its own
//!   transaction and is refused when the count has reached the quota
//!   ([`TaskRepository::create_within`](crate::db::TaskRepository::create_within)), so
//!   concurrent submissions on any number of replicas never pass it together.
//! - **browser seconds**: checked when a task is submitted or retried, against the
//!   time the tenant's finished attempts used. A running task is not stopped when the
//!   quota runs out; the tasks admitted before run to their end, so the month's use can
//!   pass the quota by what was running or queued then.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use operator_config::LimitSettings;
use operator_domain::TenantId;

use crate::db::{Period, RepoError, TenantLimits, TenantRepository, Usage, UsageRepository};

/// How long a tenant's own limits are trusted before they are read again.
pub const LIMITS_TTL: Duration = Duration::from_secs(5);

/// The tenants' own limits, cached for [`LIMITS_TTL`]; shared by the submission rate
/// limiter and the quotas.
pub struct TenantLimitsCache {
    tenants: TenantRepository,
    cached: Mutex<HashMap<TenantId, (TenantLimits, Instant)>>,
}

impl std::fmt::Debug for TenantLimitsCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TenantLimitsCache")
            .finish_non_exhaustive()
    }
}

impl TenantLimitsCache {
    pub fn new(tenants: TenantRepository) -> Self {
        Self {
            tenants,
            cached: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's own limits (all `None` for a tenant without a row).
    pub async fn get(&self, tenant: &TenantId) -> Result<TenantLimits, RepoError> {
        if let Some((limits, read)) = self
            .cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .copied()
            && read.elapsed() < LIMITS_TTL
        {
            return Ok(limits);
        }
        let limits = self
            .tenants
            .tenant(tenant)
            .await?
            .map(|tenant| tenant.limits)
            .unwrap_or_default();
        self.cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.clone(), (limits, Instant::now()));
        Ok(limits)
    }

    /// Forgets what was read (after a tenant's limits changed in this process).
    pub fn forget(&self) {
        self.cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// A tenant's monthly quotas as they apply (its own, or the settings').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonthlyQuotas {
    pub tasks: Option<u64>,
    pub browser_seconds: Option<u64>,
}

/// Which monthly quota refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Tasks,
    BrowserSeconds,
}

impl QuotaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tasks => "tasks",
            Self::BrowserSeconds => "browser_seconds",
        }
    }
}

/// A submission the quotas refuse until `period` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub kind: QuotaKind,
    pub limit: u64,
    pub period: Period,
}

impl QuotaRefusal {
    /// How long until the next month, when the quota is whole again.
    pub fn retry_after(&self, now: DateTime<Utc>) -> Duration {
        (self.period.end() - now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// The monthly quotas.
#[derive(Debug)]
pub struct Quotas {
    limits: std::sync::Arc<TenantLimitsCache>,
    usage: UsageRepository,
    defaults: LimitSettings,
}

impl Quotas {
    pub fn new(
        limits: std::sync::Arc<TenantLimitsCache>,
        usage: UsageRepository,
        defaults: LimitSettings,
    ) -> Self {
        Self {
            limits,
            usage,
            defaults,
        }
    }

    pub async fn quotas(&self, tenant: &TenantId) -> Result<MonthlyQuotas, RepoError> {
        let own = self.limits.get(tenant).await?;
        Ok(MonthlyQuotas {
            tasks: own.monthly_tasks.or(self.defaults.monthly_tasks),
            browser_seconds: own
                .monthly_browser_seconds
                .or(self.defaults.monthly_browser_seconds),
        })
    }

    /// Whether `tenant` may start more browser work now: refused when its browser time
    /// this month has reached its quota. Otherwise the quota of tasks its creation must
    /// stay within (`None`: no quota).
    pub async fn admit(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Result<Option<u64>, QuotaRefusal>, RepoError> {
        let quotas = self.quotas(tenant).await?;
        if let Some(limit) = quotas.browser_seconds {
            let period = Period::containing(now);
            let used = self.usage.usage(tenant, period).await?;
            if used.browser_ms >= limit.saturating_mul(1000) {
                return Ok(Err(QuotaRefusal {
                    kind: QuotaKind::BrowserSeconds,
                    limit,
                    period,
                }));
            }
        }
        Ok(Ok(quotas.tasks))
    }

    /// The tenant's use in `period`.
    pub async fn usage(&self, tenant: &TenantId, period: Period) -> Result<Usage, RepoError> {
        self.usage.usage(tenant, period).await
    }

    /// The tenant's months with any use, newest first.
    pub async fn history(&self, tenant: &TenantId, months: u64) -> Result<Vec<Usage>, RepoError> {
        self.usage.history(tenant, months).await
    }
}
