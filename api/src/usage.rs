//! `/v1/usage`: the tenant's use of its monthly quotas, this month or an earlier one.

use chrono::{DateTime, Utc};
use operator_domain::error::ErrorCode;
use operator_store::db::{ModelUsage, Period, Usage};
use operator_store::limits::MonthlyQuotas;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;

#[derive(Tags)]
pub enum UsageTags {
    /// Monthly use and quotas.
    Usage,
}

/// How many earlier months `GET /v1/usage` lists.
const HISTORY_MONTHS: u64 = 12;

/// Tasks created against the monthly quota.
#[derive(Debug, Clone, Object)]
#[oai(rename = "TaskUsage")]
pub struct TaskUsageView {
    pub used: u64,
    /// The month's quota (null: none).
    pub limit: Option<u64>,
    /// What is left of it (null: no quota).
    pub remaining: Option<u64>,
}

/// Browser time against the monthly quota, in seconds.
#[derive(Debug, Clone, Object)]
#[oai(rename = "BrowserUsage")]
pub struct BrowserUsageView {
    /// The attempts that ended this month, from each one's start to its end (to the
    /// millisecond).
    pub used: f64,
    /// The month's quota (null: none).
    pub limit: Option<u64>,
    /// What is left of it, never below 0 (null: no quota).
    pub remaining: Option<f64>,
}

/// Agent tasks' language-model use, counted as each step is recorded.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ModelUsage")]
pub struct ModelUsageView {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// At the `llm.prices` of each call's model (models without a price add nothing).
    pub cost_usd: f64,
}

impl From<ModelUsage> for ModelUsageView {
    fn from(used: ModelUsage) -> Self {
        Self {
            calls: used.calls,
            prompt_tokens: used.prompt_tokens,
            completion_tokens: used.completion_tokens,
            total_tokens: used.prompt_tokens + used.completion_tokens,
            cost_usd: used.cost_micro_usd as f64 / 1e6,
        }
    }
}

/// A tenant's use in one calendar month (UTC).
#[derive(Debug, Clone, Object)]
#[oai(rename = "Usage")]
pub struct UsageView {
    /// `YYYY-MM`.
    pub period: String,
    pub period_start: DateTime<Utc>,
    /// The first instant of the next month, when the quotas are whole again.
    pub period_end: DateTime<Utc>,
    pub tasks: TaskUsageView,
    pub browser_seconds: BrowserUsageView,
    pub model: ModelUsageView,
}

/// One earlier month, without quotas.
#[derive(Debug, Clone, Object)]
#[oai(rename = "UsageMonth")]
pub struct MonthView {
    pub period: String,
    pub tasks: u64,
    pub browser_seconds: f64,
    pub model: ModelUsageView,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "UsageReport")]
pub struct UsageReport {
    pub tenant: String,
    /// The month asked for (this month by default), against the quotas as they are now.
    #[oai(flatten)]
    pub usage: UsageView,
    /// The tenant's months with any use, newest first, at most 12.
    pub history: Vec<MonthView>,
}

fn seconds(usage: &Usage) -> f64 {
    usage.browser_ms as f64 / 1000.0
}

fn view(usage: &Usage, quotas: MonthlyQuotas) -> UsageView {
    UsageView {
        period: usage.period.label(),
        period_start: usage.period.start(),
        period_end: usage.period.end(),
        tasks: TaskUsageView {
            used: usage.tasks,
            limit: quotas.tasks,
            remaining: quotas.tasks.map(|limit| limit.saturating_sub(usage.tasks)),
        },
        browser_seconds: BrowserUsageView {
            used: seconds(usage),
            limit: quotas.browser_seconds,
            remaining: quotas
                .browser_seconds
                .map(|limit| (limit as f64 - seconds(usage)).max(0.0)),
        },
        model: usage.model.into(),
    }
}

codes!(UsageCodes: InvalidParameter);

pub struct UsageApi {
    pub state: SharedState,
}

#[OpenApi(tag = "UsageTags::Usage")]
impl UsageApi {
    /// The tenant's use of its monthly quotas.
    ///
    /// Tasks created and browser time used in a calendar month (UTC), with the quotas
    /// that apply (`PUT /v1/admin/tenants/{id}/limits` or the `limits.monthly_*`
    /// settings), and the earlier months. A submission past a quota gets
    /// `429 quota_exceeded` with `Retry-After` until the next month.
    #[oai(path = "/v1/usage", method = "get")]
    async fn get(
        &self,
        caller: Caller,
        /// The month, `YYYY-MM` (default: this month).
        period: Query<Option<String>>,
    ) -> ApiResult<Json<UsageReport>, UsageCodes> {
        let period = match period.0.as_deref().filter(|text| !text.is_empty()) {
            Some(text) => Period::parse(text).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("period: {text:?} is not a month written YYYY-MM"),
                )
            })?,
            None => Period::containing(Utc::now()),
        };
        let quotas = &self.state.quotas;
        let usage = quotas.usage(&caller.tenant, period).await?;
        let limits = quotas.quotas(&caller.tenant).await?;
        let history = quotas
            .history(&caller.tenant, HISTORY_MONTHS)
            .await?
            .iter()
            .map(|month| MonthView {
                period: month.period.label(),
                tasks: month.tasks,
                browser_seconds: seconds(month),
                model: month.model.into(),
            })
            .collect();
        Ok(Json(UsageReport {
            tenant: caller.tenant.to_string(),
            usage: view(&usage, limits),
            history,
        }))
    }
}
