//! `/v1/admin/tenants`: the platform's tenants, for platform-admin keys only
//! (`tenants:manage`, which no tenant role grants; see `operator keys create
//! --platform-admin`). Creating a tenant also makes its first owner key, shown once,
//! as `operator tenants create` does.

use chrono::{DateTime, Utc};
use operator_domain::TenantId;
use operator_domain::error::ErrorCode;
use operator_store::db::{CreateTenantError, Tenant, TenantLimits, TenantRepository};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult, NoCodes};
use crate::keys::CreatedKeyView;
use crate::state::SharedState;

#[derive(Tags)]
pub enum AdminTags {
    /// The platform: tenants (platform-admin keys only).
    Admin,
}

const MAX_NAME_LENGTH: usize = 200;

/// A new tenant.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreateTenant")]
pub struct CreateTenantRequest {
    /// Lowercase letters, digits, `-` and `_`, at most 64 (e.g. `acme`).
    pub id: String,
    /// A display name (default: the id).
    pub name: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "Tenant")]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Its own limits (absent fields follow the `limits.*` settings).
    pub limits: TenantLimitsView,
}

/// A tenant's own limits; `null` or absent: the `limits.*` setting.
#[derive(Debug, Clone, Object)]
#[oai(rename = "TenantLimits")]
pub struct TenantLimitsView {
    /// Task submissions per second, above 0 (null: `limits.submissions_per_second`,
    /// where 0 means no limit).
    pub submissions_per_second: Option<f64>,
    /// Submissions at once above the rate, at least 1 (null: `limits.submission_burst`).
    pub submission_burst: Option<u32>,
    /// Running tasks per queue, at least 1 (null: `queue.tenant_concurrency`, where 0
    /// means no cap). Checked by every claim, atomically with it.
    pub running_tasks_per_queue: Option<u32>,
    /// Tasks it may create per calendar month in UTC (null: `limits.monthly_tasks`,
    /// unset there: no quota); 0 stops all submissions. Exact across replicas: the
    /// creation is refused with `429 quota_exceeded` once the month's count reaches it.
    pub monthly_tasks: Option<u64>,
    /// Browser time it may use per calendar month in UTC, in seconds (null:
    /// `limits.monthly_browser_seconds`). Checked when a task is submitted or retried;
    /// running tasks are not stopped.
    pub monthly_browser_seconds: Option<u64>,
}

impl From<Tenant> for TenantView {
    fn from(tenant: Tenant) -> Self {
        Self {
            id: tenant.id.to_string(),
            name: tenant.name,
            created_at: tenant.created_at,
            limits: TenantLimitsView {
                submissions_per_second: tenant.limits.submissions_per_second,
                submission_burst: tenant.limits.submission_burst,
                running_tasks_per_queue: tenant.limits.running_per_queue,
                monthly_tasks: tenant.limits.monthly_tasks,
                monthly_browser_seconds: tenant.limits.monthly_browser_seconds,
            },
        }
    }
}

/// A tenant just made, with its first owner key (shown once).
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreatedTenant")]
pub struct CreatedTenantView {
    pub tenant: TenantView,
    pub owner_key: CreatedKeyView,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "TenantList")]
pub struct TenantList {
    pub items: Vec<TenantView>,
}

#[derive(ApiResponse)]
pub enum CreatedTenant {
    /// Made, with its first owner key.
    #[oai(status = 201)]
    Created(Json<CreatedTenantView>),
}

codes!(CreateTenantCodes: InvalidJson, InvalidRequest, TenantExists);
codes!(LimitCodes: InvalidJson, InvalidRequest, TenantNotFound);

pub struct AdminApi {
    pub state: SharedState,
}

#[OpenApi(tag = "AdminTags::Admin")]
impl AdminApi {
    /// Create a tenant and its first owner key.
    #[oai(path = "/v1/admin/tenants", method = "post")]
    async fn create(
        &self,
        caller: Caller,
        body: Json<CreateTenantRequest>,
    ) -> ApiResult<CreatedTenant, CreateTenantCodes> {
        let Json(request) = body;
        let id = TenantId::parse(&request.id)
            .map_err(|error| ApiError::new(ErrorCode::InvalidRequest, format!("id: {error}")))?;
        let name = request
            .name
            .as_deref()
            .map(str::trim)
            .unwrap_or(id.as_str());
        if name.is_empty() || name.chars().count() > MAX_NAME_LENGTH {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("name: must be 1 to {MAX_NAME_LENGTH} characters"),
            )
            .into());
        }
        let repo = TenantRepository::new(self.state.repo.connection().clone());
        let (tenant, key, token) = match repo
            .create_tenant_with_owner(&id, name, &caller.actor_label())
            .await
        {
            Ok(created) => created,
            Err(CreateTenantError::Exists(id)) => {
                return Err(ApiError::new(
                    ErrorCode::TenantExists,
                    format!("tenant {id} exists already"),
                )
                .into());
            }
            Err(CreateTenantError::Repo(error)) => return Err(error.into()),
        };
        self.state
            .audit(
                &caller,
                "tenant.created",
                "tenant",
                &tenant.id,
                serde_json::json!({"owner_key": key.prefix}),
            )
            .await;
        Ok(CreatedTenant::Created(Json(CreatedTenantView {
            tenant: tenant.into(),
            owner_key: CreatedKeyView {
                view: key.into(),
                key: token.expose().to_owned(),
            },
        })))
    }

    /// Set a tenant's own limits.
    ///
    /// They replace all the tenant's limits at once; `null` returns one to its setting.
    /// Every API replica applies them within 5 s.
    #[oai(path = "/v1/admin/tenants/:id/limits", method = "put")]
    async fn set_limits(
        &self,
        caller: Caller,
        id: poem_openapi::param::Path<String>,
        body: Json<TenantLimitsView>,
    ) -> ApiResult<Json<TenantView>, LimitCodes> {
        let Json(limits) = body;
        if limits
            .submissions_per_second
            .is_some_and(|rate| !(rate > 0.0 && rate <= 100_000.0))
        {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "submissions_per_second: must be above 0 and at most 100000, or null",
            )
            .into());
        }
        if limits.running_tasks_per_queue == Some(0) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "running_tasks_per_queue: must be at least 1, or null",
            )
            .into());
        }
        if limits.submission_burst == Some(0) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "submission_burst: must be at least 1, or null",
            )
            .into());
        }
        let not_found = || ApiError::new(ErrorCode::TenantNotFound, format!("no tenant {}", id.0));
        let tenant = TenantId::parse(&id.0).map_err(|_| not_found())?;
        let own = TenantLimits {
            submissions_per_second: limits.submissions_per_second,
            submission_burst: limits.submission_burst,
            running_per_queue: limits.running_tasks_per_queue,
            monthly_tasks: limits.monthly_tasks,
            monthly_browser_seconds: limits.monthly_browser_seconds,
        };
        let Some(updated) = TenantRepository::new(self.state.repo.connection().clone())
            .set_limits(&tenant, own)
            .await?
        else {
            return Err(not_found().into());
        };
        self.state.limits.forget();
        if let Err(error) = self
            .state
            .queue
            .limit_tenant(&tenant, own.running_per_queue)
            .await
        {
            // Stored: the scheduler's next pass applies it to the queue.
            tracing::warn!(tenant = %tenant, error = %error, "applying a tenant's running cap to the queue failed");
        }
        self.state
            .audit(
                &caller,
                "tenant.limits_changed",
                "tenant",
                &tenant,
                serde_json::json!({"submissions_per_second": own.submissions_per_second, "submission_burst": own.submission_burst, "running_tasks_per_queue": own.running_per_queue, "monthly_tasks": own.monthly_tasks, "monthly_browser_seconds": own.monthly_browser_seconds}),
            )
            .await;
        Ok(Json(updated.into()))
    }

    /// Every tenant of the platform.
    #[oai(path = "/v1/admin/tenants", method = "get")]
    async fn list(&self, _caller: Caller) -> ApiResult<Json<TenantList>, NoCodes> {
        let tenants = TenantRepository::new(self.state.repo.connection().clone())
            .tenants()
            .await?;
        Ok(Json(TenantList {
            items: tenants.into_iter().map(TenantView::from).collect(),
        }))
    }
}
