//! `/v1/api-keys`: a tenant's API keys (make one, shown once; list; revoke) and
//! `/v1/me`: who the credentials belong to.
//!
//! Nobody makes or revokes a key of a role above their own ([`Role::may_manage`]): an
//! admin cannot mint an owner key, nor revoke one.

use chrono::{DateTime, Utc};
use operator_domain::auth::{Permission, Role};
use operator_domain::error::ErrorCode;
use operator_store::db::{ApiKey, NewKey, TenantRepository};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::access::{Actor, Caller};
use crate::codes;
use crate::error::{ApiError, ApiResult, NoCodes};
use crate::state::SharedState;

#[derive(Tags)]
pub enum KeyTags {
    /// API keys and the caller's identity.
    Access,
}

const MAX_NAME_LENGTH: usize = 200;

/// A role, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "Role", rename_all = "lowercase")]
pub enum RoleView {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl From<Role> for RoleView {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => Self::Owner,
            Role::Admin => Self::Admin,
            Role::Member => Self::Member,
            Role::Viewer => Self::Viewer,
        }
    }
}

impl From<RoleView> for Role {
    fn from(role: RoleView) -> Self {
        match role {
            RoleView::Owner => Self::Owner,
            RoleView::Admin => Self::Admin,
            RoleView::Member => Self::Member,
            RoleView::Viewer => Self::Viewer,
        }
    }
}

/// A new key.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreateApiKey")]
pub struct CreateKeyRequest {
    /// What the key is for, e.g. `ci` or `grafana`.
    pub name: String,
    /// `owner`, `admin`, `member` (submit, cancel, retry, read) or `viewer` (read
    /// only); not above the caller's own role.
    pub role: RoleView,
    /// When the key stops working; absent for never. Must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key, without its secret.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ApiKey")]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    /// The key's first 16 characters (`opk_` and its look-up id), safe to show.
    pub prefix: String,
    pub role: RoleView,
    /// Who made it: `key:<id>`, or `operator` (the command line).
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used (recorded at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            role: key.role.into(),
            created_by: key.created_by,
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// A key just made: the only answer that carries the key itself.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreatedApiKey")]
pub struct CreatedKeyView {
    #[oai(flatten)]
    pub view: KeyView,
    /// The key (`opk_…`, 54 characters). Shown this once; only its hash is stored.
    pub key: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "ApiKeyList")]
pub struct KeyList {
    /// Newest first, revoked keys included.
    pub items: Vec<KeyView>,
}

/// Who the request's credentials belong to.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Me")]
pub struct MeView {
    pub tenant: String,
    pub role: RoleView,
    /// The key the request presented; absent for a signed-in person or with
    /// authentication off.
    pub key: Option<MeKey>,
    /// The signed-in person, for a session token.
    pub user: Option<MeUser>,
    /// What the role may do (`tasks:read`, `tasks:write`, …).
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, Object)]
pub struct MeUser {
    pub id: Uuid,
    /// The session the token belongs to.
    pub session: Uuid,
}

#[derive(Debug, Clone, Object)]
pub struct MeKey {
    pub id: Uuid,
    pub prefix: String,
}

#[derive(ApiResponse)]
pub enum CreatedKey {
    /// Made; the answer carries the key, once.
    #[oai(status = 201)]
    Created(Json<CreatedKeyView>),
}

codes!(CreateKeyCodes: InvalidJson, InvalidRequest, Forbidden);
codes!(KeyCodes: InvalidParameter, KeyNotFound);
codes!(RevokeKeyCodes: InvalidParameter, KeyNotFound, Forbidden);

pub struct KeysApi {
    pub state: SharedState,
}

fn key_not_found(id: Uuid) -> ApiError {
    ApiError::new(ErrorCode::KeyNotFound, format!("no API key {id}"))
}

fn above_caller(caller: &Caller, role: Role) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "forbidden: a {} cannot make or revoke {} keys",
            caller.role, role
        ),
    )
}

impl KeysApi {
    fn repo(&self) -> TenantRepository {
        TenantRepository::new(self.state.repo.connection().clone())
    }
}

#[OpenApi(tag = "KeyTags::Access")]
impl KeysApi {
    /// Make an API key.
    ///
    /// The answer carries the key once; store it then. The role may not be above the
    /// caller's.
    #[oai(path = "/v1/api-keys", method = "post")]
    async fn create(
        &self,
        caller: Caller,
        body: Json<CreateKeyRequest>,
    ) -> ApiResult<CreatedKey, CreateKeyCodes> {
        let Json(request) = body;
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_LENGTH {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("name: must be 1 to {MAX_NAME_LENGTH} characters"),
            )
            .into());
        }
        if request.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "expires_at: must be in the future",
            )
            .into());
        }
        let role = Role::from(request.role);
        if !caller.role.may_manage(role) {
            return Err(above_caller(&caller, role).into());
        }
        let (key, token) = self
            .repo()
            .create_key(NewKey {
                tenant: caller.tenant.clone(),
                name: name.to_owned(),
                role,
                platform_admin: false,
                expires_at: request.expires_at,
                created_by: Some(caller.actor_label()),
            })
            .await?;
        tracing::info!(tenant = %caller.tenant, key = %key.prefix, role = %role, by = %caller.actor_label(), "API key made");
        self.state
            .audit(
                &caller,
                "api_key.created",
                "api_key",
                &key.id,
                serde_json::json!({"prefix": key.prefix, "role": role.as_str(), "name": key.name, "expires_at": key.expires_at}),
            )
            .await;
        Ok(CreatedKey::Created(Json(CreatedKeyView {
            view: key.into(),
            key: token.expose().to_owned(),
        })))
    }

    /// List the tenant's API keys.
    #[oai(path = "/v1/api-keys", method = "get")]
    async fn list(&self, caller: Caller) -> ApiResult<Json<KeyList>, NoCodes> {
        let items = self
            .repo()
            .keys(&caller.tenant)
            .await?
            .into_iter()
            .map(KeyView::from)
            .collect();
        Ok(Json(KeyList { items }))
    }

    /// Get an API key (without its secret).
    #[oai(path = "/v1/api-keys/:id", method = "get")]
    async fn get(&self, caller: Caller, id: Path<Uuid>) -> ApiResult<Json<KeyView>, KeyCodes> {
        match self.repo().key(&caller.tenant, id.0).await? {
            Some(key) => Ok(Json(key.into())),
            None => Err(key_not_found(id.0).into()),
        }
    }

    /// Revoke an API key.
    ///
    /// It stops working on every API replica within a second. Revoking a revoked key
    /// answers it again, unchanged.
    #[oai(path = "/v1/api-keys/:id", method = "delete")]
    async fn revoke(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<KeyView>, RevokeKeyCodes> {
        let repo = self.repo();
        let Some(key) = repo.key(&caller.tenant, id.0).await? else {
            return Err(key_not_found(id.0).into());
        };
        if !caller.role.may_manage(key.role) {
            return Err(above_caller(&caller, key.role).into());
        }
        let Some(revoked) = repo.revoke_key(&caller.tenant, id.0).await? else {
            return Err(key_not_found(id.0).into());
        };
        if let Some(verifier) = self.state.authenticator.verifier() {
            verifier
                .revoked(&revoked)
                .await
                .map_err(|error| ApiError::unavailable("the event bus", &error))?;
        }
        tracing::info!(tenant = %caller.tenant, key = %revoked.prefix, by = %caller.actor_label(), "API key revoked");
        self.state
            .audit(
                &caller,
                "api_key.revoked",
                "api_key",
                &revoked.id,
                serde_json::json!({"prefix": revoked.prefix, "role": revoked.role.as_str()}),
            )
            .await;
        Ok(Json(revoked.into()))
    }

    /// Who the credentials belong to: tenant, role, key and permissions.
    #[oai(path = "/v1/me", method = "get")]
    async fn me(&self, caller: Caller) -> ApiResult<Json<MeView>, NoCodes> {
        let key = match &caller.actor {
            Actor::Key { id, prefix } => Some(MeKey {
                id: *id,
                prefix: prefix.clone(),
            }),
            Actor::Anonymous | Actor::Link | Actor::Ticket | Actor::User { .. } => None,
        };
        let user = match &caller.actor {
            Actor::User { id, session } => Some(MeUser {
                id: *id,
                session: *session,
            }),
            _ => None,
        };
        Ok(Json(MeView {
            tenant: caller.tenant.to_string(),
            role: caller.role.into(),
            key,
            user,
            permissions: Permission::ALL
                .into_iter()
                .filter(|permission| caller.holds(*permission))
                .map(|permission| permission.as_str().to_owned())
                .collect(),
        }))
    }
}
