//! The tenant repository: tenants and their API keys.
//!
//! A key row holds the look-up id, the SHA-256 of the secret and the public prefix,
//! never the key itself (see `operator_domain::auth`). Revoking sets `revoked_at`; the
//! row stays, so lists show who had access until when. Which key a request presents is
//! checked by [`crate::credentials::KeyVerifier`], which reads rows through
//! [`TenantRepository::key_by_lookup`].

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use super::entities::{api_key, tenant};
use super::rows::{RepoError, now, to_i64};
use operator_domain::TenantId;
use operator_domain::auth::{ApiKeyToken, Role};

/// A tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub limits: TenantLimits,
}

/// A tenant's own limits; `None` falls back to the `limits.*` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TenantLimits {
    pub submissions_per_second: Option<f64>,
    pub submission_burst: Option<u32>,
    /// Running tasks per queue (overrides `queue.tenant_concurrency`).
    pub running_per_queue: Option<u32>,
    /// Tasks created per calendar month (UTC).
    pub monthly_tasks: Option<u64>,
    /// Browser time per calendar month (UTC), in seconds.
    pub monthly_browser_seconds: Option<u64>,
}

/// An API key as lists show it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant: TenantId,
    pub name: String,
    /// `opk_` and the look-up id.
    pub prefix: String,
    pub role: Role,
    /// Whether it may also manage tenants (made only with `operator keys create
    /// --platform-admin`).
    pub platform_admin: bool,
    /// Who made it: `key:<id>`, `user:<id>`, or `operator` (the command line).
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key row as verification needs it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key: ApiKey,
    pub secret_hash: String,
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub tenant: TenantId,
    pub name: String,
    pub role: Role,
    pub platform_admin: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("tenant {0} exists already")]
    Exists(TenantId),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

#[derive(Clone, Debug)]
pub struct TenantRepository {
    db: DatabaseConnection,
}

impl TenantRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn create_tenant(
        &self,
        id: &TenantId,
        name: &str,
    ) -> Result<Tenant, CreateTenantError> {
        let created_at = now();
        let inserted = tenant::Entity::insert(tenant::ActiveModel {
            id: Set(id.as_str().to_owned()),
            name: Set(name.to_owned()),
            created_at: Set(created_at),
            submissions_per_second: Set(None),
            submission_burst: Set(None),
            running_per_queue: Set(None),
            monthly_tasks: Set(None),
            monthly_browser_seconds: Set(None),
        })
        .on_conflict(
            OnConflict::column(tenant::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await
        .map_err(RepoError::from)?;
        if inserted == 0 {
            return Err(CreateTenantError::Exists(id.clone()));
        }
        Ok(Tenant {
            id: id.clone(),
            name: name.to_owned(),
            created_at,
            limits: TenantLimits::default(),
        })
    }

    /// A tenant and its first owner key (the token is returned here only).
    pub async fn create_tenant_with_owner(
        &self,
        id: &TenantId,
        name: &str,
        created_by: &str,
    ) -> Result<(Tenant, ApiKey, ApiKeyToken), CreateTenantError> {
        let tenant = self.create_tenant(id, name).await?;
        let (key, token) = self
            .create_owner_key(&tenant.id, "first owner key", created_by)
            .await?;
        Ok((tenant, key, token))
    }

    /// An owner key of `tenant` that never expires (the token is returned here only).
    pub async fn create_owner_key(
        &self,
        tenant: &TenantId,
        name: &str,
        created_by: &str,
    ) -> Result<(ApiKey, ApiKeyToken), RepoError> {
        self.create_key(NewKey {
            tenant: tenant.clone(),
            name: name.to_owned(),
            role: Role::Owner,
            platform_admin: false,
            expires_at: None,
            created_by: Some(created_by.to_owned()),
        })
        .await
    }

    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, RepoError> {
        tenant::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await?
            .map(to_tenant)
            .transpose()
    }

    /// Sets a tenant's own limits (`None` in a field: the setting); the tenant after.
    pub async fn set_limits(
        &self,
        id: &TenantId,
        limits: TenantLimits,
    ) -> Result<Option<Tenant>, RepoError> {
        tenant::Entity::update_many()
            .col_expr(
                tenant::Column::SubmissionsPerSecond,
                Expr::value(limits.submissions_per_second),
            )
            .col_expr(
                tenant::Column::SubmissionBurst,
                Expr::value(
                    limits
                        .submission_burst
                        .map(|burst| burst.min(i32::MAX as u32) as i32),
                ),
            )
            .col_expr(
                tenant::Column::RunningPerQueue,
                Expr::value(
                    limits
                        .running_per_queue
                        .map(|cap| cap.min(i32::MAX as u32) as i32),
                ),
            )
            .col_expr(
                tenant::Column::MonthlyTasks,
                Expr::value(limits.monthly_tasks.map(to_i64)),
            )
            .col_expr(
                tenant::Column::MonthlyBrowserSeconds,
                Expr::value(limits.monthly_browser_seconds.map(to_i64)),
            )
            .filter(tenant::Column::Id.eq(id.as_str()))
            .exec(&self.db)
            .await?;
        self.tenant(id).await
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>, RepoError> {
        tenant::Entity::find()
            .order_by_asc(tenant::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_tenant)
            .collect()
    }

    /// Makes a key; the token is returned here only.
    pub async fn create_key(&self, new: NewKey) -> Result<(ApiKey, ApiKeyToken), RepoError> {
        let token = ApiKeyToken::generate();
        let row = api_key::Model {
            id: Uuid::now_v7(),
            tenant_id: new.tenant.as_str().to_owned(),
            lookup: token.lookup().to_owned(),
            secret_hash: token.secret_hash(),
            display_prefix: token.display_prefix().to_owned(),
            name: new.name,
            role: new.role.as_str().to_owned(),
            platform_admin: new.platform_admin,
            created_by: new.created_by,
            created_at: now(),
            expires_at: new.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        api_key::Entity::insert(api_key::ActiveModel::from(row.clone()).reset_all())
            .exec_without_returning(&self.db)
            .await?;
        Ok((to_key(row)?, token))
    }

    /// The tenant's keys, newest first, revoked ones included.
    pub async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>, RepoError> {
        api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(api_key::Column::CreatedAt)
            .order_by_desc(api_key::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_key)
            .collect()
    }

    pub async fn key(&self, tenant: &TenantId, id: Uuid) -> Result<Option<ApiKey>, RepoError> {
        api_key::Entity::find_by_id(id)
            .filter(api_key::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .map(to_key)
            .transpose()
    }

    /// Revokes a key of the tenant (again is a no-op that keeps the first time);
    /// `None` when the tenant has no such key.
    pub async fn revoke_key(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<ApiKey>, RepoError> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now()))
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::TenantId.eq(tenant.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        self.key(tenant, id).await
    }

    /// The key with this look-up id, with its hash, whatever its state.
    pub async fn key_by_lookup(&self, lookup: &str) -> Result<Option<StoredKey>, RepoError> {
        let Some(row) = api_key::Entity::find()
            .filter(api_key::Column::Lookup.eq(lookup))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let secret_hash = row.secret_hash.clone();
        Ok(Some(StoredKey {
            key: to_key(row)?,
            secret_hash,
        }))
    }

    /// Records that keys were used, at most once per key per call.
    pub async fn touch_keys(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), RepoError> {
        for (id, at) in used {
            api_key::Entity::update_many()
                .col_expr(api_key::Column::LastUsedAt, Expr::value(*at))
                .filter(api_key::Column::Id.eq(*id))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }
}

fn to_tenant(row: tenant::Model) -> Result<Tenant, RepoError> {
    Ok(Tenant {
        id: TenantId::parse(&row.id).map_err(|error| RepoError::Corrupt(error.to_string()))?,
        name: row.name,
        created_at: row.created_at,
        limits: TenantLimits {
            submissions_per_second: row.submissions_per_second,
            submission_burst: row
                .submission_burst
                .and_then(|burst| u32::try_from(burst).ok()),
            running_per_queue: row
                .running_per_queue
                .and_then(|cap| u32::try_from(cap).ok()),
            monthly_tasks: row
                .monthly_tasks
                .and_then(|quota| u64::try_from(quota).ok()),
            monthly_browser_seconds: row
                .monthly_browser_seconds
                .and_then(|quota| u64::try_from(quota).ok()),
        },
    })
}

fn to_key(row: api_key::Model) -> Result<ApiKey, RepoError> {
    let corrupt = |what: &str| RepoError::Corrupt(format!("api key {}: {what}", row.id));
    Ok(ApiKey {
        id: row.id,
        tenant: TenantId::parse(&row.tenant_id).map_err(|_| corrupt("tenant"))?,
        role: Role::parse(&row.role).map_err(|_| corrupt("role"))?,
        platform_admin: row.platform_admin,
        name: row.name,
        prefix: row.display_prefix,
        created_by: row.created_by,
        created_at: row.created_at,
        expires_at: row.expires_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
    })
}
