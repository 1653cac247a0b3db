//! Monthly usage per tenant: tasks created, browser time and agents' model use, per
//! calendar month in UTC.
//!
//! The counts are written by the hot transitions themselves, in the transaction (or the
//! one statement) that writes the rows they count: a task's creation adds one task,
//! the end of each attempt adds the attempt's time from its start. So `GET /v1/usage`
//! is exact, and a monthly quota of tasks is checked atomically with the insert it
//! guards (see [`count_created`]). An attempt lost to a worker that vanished (closed as
//! `lease_expired` when another worker takes the task over) is not counted: its time is
//! the platform's fault, not the tenant's use. An agent's model use is added with each
//! step it records (in that step's transaction), so a model call whose step was lost
//! to a crash is not counted: the next attempt asks again, and that call is.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};

use super::entities::tenant_usage;
use super::rows::{RepoError, to_i64};
use operator_domain::TenantId;

/// A calendar month in UTC: the span monthly quotas count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    /// 1 to 12.
    month: u32,
}

impl Period {
    /// The month `at` falls in.
    pub fn containing(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// `YYYY-MM`, as [`Self::label`] writes it; `None` for anything else.
    pub fn parse(label: &str) -> Option<Self> {
        let (year, month) = label.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let year: i32 = year.parse().ok()?;
        let month: u32 = month.parse().ok()?;
        ((1..=12).contains(&month) && year >= 1970).then_some(Self { year, month })
    }

    /// `YYYY-MM`, the key of a usage row.
    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// Its first instant.
    pub fn start(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The first instant of the next month.
    pub fn end(&self) -> DateTime<Utc> {
        self.next().start()
    }

    pub fn next(&self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.label())
    }
}

/// One tenant's use in one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub period: Period,
    pub tasks: u64,
    pub browser_ms: u64,
    pub model: ModelUsage,
}

/// Language-model use: calls, tokens, and cost in millionths of a US dollar (summed
/// exactly; zero for models without a price).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelUsage {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micro_usd: u64,
}

impl ModelUsage {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Usage {
    fn none(period: Period) -> Self {
        Self {
            period,
            tasks: 0,
            browser_ms: 0,
            model: ModelUsage::default(),
        }
    }
}

/// Reads usage; the writes are the hot transitions' ([`count_created`],
/// [`add_browser_time`]).
#[derive(Clone, Debug)]
pub struct UsageRepository {
    db: DatabaseConnection,
}

impl UsageRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The tenant's use in `period` (zero when nothing was counted).
    pub async fn usage(&self, tenant: &TenantId, period: Period) -> Result<Usage, RepoError> {
        let row = tenant_usage::Entity::find_by_id((tenant.as_str().to_owned(), period.label()))
            .one(&self.db)
            .await?;
        Ok(row.map_or_else(|| Usage::none(period), |row| to_usage(row, period)))
    }

    /// The tenant's months with any use, newest first, at most `limit`.
    pub async fn history(&self, tenant: &TenantId, limit: u64) -> Result<Vec<Usage>, RepoError> {
        tenant_usage::Entity::find()
            .filter(tenant_usage::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(tenant_usage::Column::Period)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                let period = Period::parse(&row.period)
                    .ok_or_else(|| RepoError::Corrupt(format!("usage period {}", row.period)))?;
                Ok(to_usage(row, period))
            })
            .collect()
    }
}

fn to_usage(row: tenant_usage::Model, period: Period) -> Usage {
    let count = |value: i64| u64::try_from(value).unwrap_or(0);
    Usage {
        period,
        tasks: count(row.tasks),
        browser_ms: count(row.browser_ms),
        model: ModelUsage {
            calls: count(row.model_calls),
            prompt_tokens: count(row.prompt_tokens),
            completion_tokens: count(row.completion_tokens),
            cost_micro_usd: count(row.cost_micro_usd),
        },
    }
}

/// Counts one created task of `tenant` in the month of `at`. With a `quota`, only if
/// the month's count stays within it: `false` (nothing written) when it would not. The
/// row stays locked until the caller's transaction ends, so concurrent creations of one
/// tenant are counted one after another and never pass the quota together.
pub(super) async fn count_created(
    connection: &impl ConnectionTrait,
    tenant: &TenantId,
    at: DateTime<Utc>,
    quota: Option<u64>,
) -> Result<bool, DbErr> {
    if quota == Some(0) {
        return Ok(false);
    }
    let mut on_conflict =
        OnConflict::columns([tenant_usage::Column::TenantId, tenant_usage::Column::Period]);
    on_conflict
        .value(
            tenant_usage::Column::Tasks,
            Expr::col((tenant_usage::Entity, tenant_usage::Column::Tasks)).add(1),
        )
        .value(tenant_usage::Column::UpdatedAt, Expr::value(at));
    if let Some(quota) = quota {
        on_conflict.action_and_where(
            Expr::col((tenant_usage::Entity, tenant_usage::Column::Tasks)).lt(to_i64(quota)),
        );
    }
    let inserted = tenant_usage::Entity::insert(row(tenant, at, 1, 0))
        .on_conflict(on_conflict)
        .exec_without_returning(connection)
        .await?;
    Ok(inserted > 0)
}

/// Adds `ms` of browser time to `tenant`'s month of `at`.
pub(super) async fn add_browser_time(
    connection: &impl ConnectionTrait,
    tenant: &TenantId,
    at: DateTime<Utc>,
    ms: u64,
) -> Result<(), DbErr> {
    if ms == 0 {
        return Ok(());
    }
    let ms = to_i64(ms);
    tenant_usage::Entity::insert(row(tenant, at, 0, ms))
        .on_conflict(
            OnConflict::columns([tenant_usage::Column::TenantId, tenant_usage::Column::Period])
                .value(
                    tenant_usage::Column::BrowserMs,
                    Expr::col((tenant_usage::Entity, tenant_usage::Column::BrowserMs)).add(ms),
                )
                .value(tenant_usage::Column::UpdatedAt, Expr::value(at))
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

/// Adds an agent step's model use to `tenant`'s month of `at`.
pub(super) async fn add_model_usage(
    connection: &impl ConnectionTrait,
    tenant: &TenantId,
    at: DateTime<Utc>,
    used: ModelUsage,
) -> Result<(), DbErr> {
    if used.is_empty() {
        return Ok(());
    }
    let columns = [
        (tenant_usage::Column::ModelCalls, used.calls),
        (tenant_usage::Column::PromptTokens, used.prompt_tokens),
        (
            tenant_usage::Column::CompletionTokens,
            used.completion_tokens,
        ),
        (tenant_usage::Column::CostMicroUsd, used.cost_micro_usd),
    ];
    let mut on_conflict =
        OnConflict::columns([tenant_usage::Column::TenantId, tenant_usage::Column::Period]);
    for (column, value) in columns {
        on_conflict.value(
            column,
            Expr::col((tenant_usage::Entity, column)).add(to_i64(value)),
        );
    }
    on_conflict.value(tenant_usage::Column::UpdatedAt, Expr::value(at));
    let row = tenant_usage::ActiveModel {
        model_calls: Set(to_i64(used.calls)),
        prompt_tokens: Set(to_i64(used.prompt_tokens)),
        completion_tokens: Set(to_i64(used.completion_tokens)),
        cost_micro_usd: Set(to_i64(used.cost_micro_usd)),
        ..row(tenant, at, 0, 0)
    };
    tenant_usage::Entity::insert(row)
        .on_conflict(on_conflict)
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

fn row(
    tenant: &TenantId,
    at: DateTime<Utc>,
    tasks: i64,
    browser_ms: i64,
) -> tenant_usage::ActiveModel {
    tenant_usage::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        period: Set(Period::containing(at).label()),
        tasks: Set(tasks),
        browser_ms: Set(browser_ms),
        updated_at: Set(at),
        ..Default::default()
    }
}

/// The milliseconds from an attempt's start to its end (none for a clock that went back).
pub(super) fn attempt_ms(started_at: DateTime<Utc>, ended_at: DateTime<Utc>) -> u64 {
    u64::try_from((ended_at - started_at).num_milliseconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_a_calendar_month_in_utc() {
        let at = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let period = Period::containing(at);
        assert_eq!(period.label(), "2026-12");
        assert_eq!(
            period.start(),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            period.end(),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(Period::parse("2026-12"), Some(period));
        assert_eq!(Period::parse("2027-01"), Some(period.next()));
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-12",
            "2026/12",
            "",
            "2026-12-01",
        ] {
            assert_eq!(Period::parse(bad), None, "{bad}");
        }
    }
}
