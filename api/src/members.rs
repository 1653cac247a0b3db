//! `/v1/members` and `/v1/invitations`: the people of a tenant, who signed in through
//! OpenID Connect, and the invitations that make more of them; the platform's mapping of
//! email domains to tenants (`/v1/admin/tenants/{id}/email-domains/{domain}`).
//!
//! As with keys, nobody invites, promotes, demotes or removes anyone above their own
//! role ([`Role::may_manage`]). Removing a member ends their sessions in the tenant at
//! once.

use chrono::{DateTime, Utc};
use operator_domain::TenantId;
use operator_domain::auth::Role;
use operator_domain::error::ErrorCode;
use operator_store::db::{Invitation, MemberRecord, UserRepository};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult, NoCodes};
use crate::keys::RoleView;
use crate::state::SharedState;

#[derive(Tags)]
pub enum MemberTags {
    /// People signed in through OpenID Connect, and invitations.
    Members,
}

/// Days an invitation is valid by default, and at most.
const DEFAULT_INVITATION_DAYS: u32 = 7;
const MAX_INVITATION_DAYS: u32 = 90;

/// A member of the tenant.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Member")]
pub struct MemberView {
    pub user_id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub role: RoleView,
    pub joined_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

impl From<MemberRecord> for MemberView {
    fn from(member: MemberRecord) -> Self {
        Self {
            user_id: member.user,
            email: member.email,
            name: member.name,
            role: member.role.into(),
            joined_at: member.joined_at,
            last_sign_in_at: member.last_sign_in_at,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "MemberList")]
pub struct MemberList {
    /// Earliest first.
    pub items: Vec<MemberView>,
}

/// A member's new role.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ChangeMember")]
pub struct ChangeMemberRequest {
    pub role: RoleView,
}

/// An invitation to make.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreateInvitation")]
pub struct CreateInvitationRequest {
    /// The email the person signs in with; the provider must say it is verified.
    pub email: String,
    /// Not above the caller's own role.
    pub role: RoleView,
    /// How many days it may be accepted (default 7, at most 90).
    #[oai(validator(minimum(value = "1"), maximum(value = "90")))]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "Invitation")]
pub struct InvitationView {
    pub id: Uuid,
    pub email: String,
    pub role: RoleView,
    /// Who made it: `key:<id>` or `user:<id>`.
    pub invited_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When its person first signed in with it.
    pub accepted_at: Option<DateTime<Utc>>,
}

impl From<Invitation> for InvitationView {
    fn from(invitation: Invitation) -> Self {
        Self {
            id: invitation.id,
            email: invitation.email,
            role: invitation.role.into(),
            invited_by: invitation.invited_by,
            created_at: invitation.created_at,
            expires_at: invitation.expires_at,
            accepted_at: invitation.accepted_at,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "InvitationList")]
pub struct InvitationList {
    /// Newest first, accepted ones included.
    pub items: Vec<InvitationView>,
}

/// An email domain whose verified addresses sign in as members.
#[derive(Debug, Clone, Object)]
#[oai(rename = "MapEmailDomain")]
pub struct MapDomainRequest {
    pub role: RoleView,
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "EmailDomain")]
pub struct DomainView {
    pub domain: String,
    pub tenant: String,
    pub role: RoleView,
}

#[derive(ApiResponse)]
pub enum CreatedInvitation {
    /// Made: the person becomes a member at their first sign-in with this email.
    #[oai(status = 201)]
    Created(Json<InvitationView>),
}

codes!(MemberCodes: InvalidParameter, MemberNotFound);
codes!(ChangeMemberCodes: InvalidJson, InvalidParameter, MemberNotFound, Forbidden);
codes!(RemoveMemberCodes: InvalidParameter, MemberNotFound, Forbidden);
codes!(InviteCodes: InvalidJson, InvalidRequest, Forbidden);
codes!(WithdrawCodes: InvalidParameter, InvitationNotFound, Forbidden);
codes!(DomainCodes: InvalidJson, InvalidRequest, TenantNotFound);
codes!(UnmapCodes: InvalidRequest, TenantNotFound, NotFound);

pub struct MembersApi {
    pub state: SharedState,
}

fn member_not_found(id: Uuid) -> ApiError {
    ApiError::new(ErrorCode::MemberNotFound, format!("no member {id}"))
}

fn above_caller(caller: &Caller, role: Role) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "forbidden: a {} cannot invite, change or remove an {}",
            caller.role, role
        ),
    )
}

/// A plausible email: one `@`, something on both sides, a dot in the domain.
fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_ascii_lowercase();
    let well_formed = email.len() <= 320
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if well_formed {
        Ok(email)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "email: must be an address like ada@example.com",
        ))
    }
}

fn check_domain(domain: &str) -> Result<String, ApiError> {
    let domain = domain.trim().to_ascii_lowercase();
    let well_formed = domain.len() <= 253
        && domain.contains('.')
        && domain
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
    if well_formed {
        Ok(domain)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "domain: must be a domain name like example.com",
        ))
    }
}

impl MembersApi {
    fn users(&self) -> UserRepository {
        self.state.sign_in.users().clone()
    }

    async fn tenant_exists(&self, id: &str) -> Result<TenantId, ApiError> {
        let not_found = || ApiError::new(ErrorCode::TenantNotFound, format!("no tenant {id}"));
        let tenant = TenantId::parse(id).map_err(|_| not_found())?;
        operator_store::db::TenantRepository::new(self.state.repo.connection().clone())
            .tenant(&tenant)
            .await?
            .map(|_| tenant)
            .ok_or_else(not_found)
    }
}

#[OpenApi(tag = "MemberTags::Members")]
impl MembersApi {
    /// List the tenant's members.
    #[oai(path = "/v1/members", method = "get")]
    async fn list(&self, caller: Caller) -> ApiResult<Json<MemberList>, NoCodes> {
        let items = self
            .users()
            .members(&caller.tenant)
            .await?
            .into_iter()
            .map(MemberView::from)
            .collect();
        Ok(Json(MemberList { items }))
    }

    /// Get a member.
    #[oai(path = "/v1/members/:user_id", method = "get")]
    async fn get(
        &self,
        caller: Caller,
        user_id: Path<Uuid>,
    ) -> ApiResult<Json<MemberView>, MemberCodes> {
        match self.users().member(&caller.tenant, user_id.0).await? {
            Some(member) => Ok(Json(member.into())),
            None => Err(member_not_found(user_id.0).into()),
        }
    }

    /// Change a member's role.
    ///
    /// It applies to their next request. Neither their current nor their new role may
    /// be above the caller's.
    #[oai(path = "/v1/members/:user_id", method = "put")]
    async fn change(
        &self,
        caller: Caller,
        user_id: Path<Uuid>,
        body: Json<ChangeMemberRequest>,
    ) -> ApiResult<Json<MemberView>, ChangeMemberCodes> {
        let users = self.users();
        let Some(member) = users.member(&caller.tenant, user_id.0).await? else {
            return Err(member_not_found(user_id.0).into());
        };
        let role = Role::from(body.0.role);
        for involved in [member.role, role] {
            if !caller.role.may_manage(involved) {
                return Err(above_caller(&caller, involved).into());
            }
        }
        users.set_role(&caller.tenant, user_id.0, role).await?;
        self.state
            .audit(
                &caller,
                "member.role_changed",
                "user",
                user_id.0,
                serde_json::json!({"email": member.email, "from": member.role.as_str(), "to": role.as_str()}),
            )
            .await;
        let changed = users
            .member(&caller.tenant, user_id.0)
            .await?
            .ok_or_else(|| member_not_found(user_id.0))?;
        Ok(Json(changed.into()))
    }

    /// Remove a member.
    ///
    /// Their sessions in this tenant end at once.
    #[oai(path = "/v1/members/:user_id", method = "delete")]
    async fn remove(
        &self,
        caller: Caller,
        user_id: Path<Uuid>,
    ) -> ApiResult<Json<MemberView>, RemoveMemberCodes> {
        let users = self.users();
        let Some(member) = users.member(&caller.tenant, user_id.0).await? else {
            return Err(member_not_found(user_id.0).into());
        };
        if !caller.role.may_manage(member.role) {
            return Err(above_caller(&caller, member.role).into());
        }
        users.remove_member(&caller.tenant, user_id.0).await?;
        self.state
            .audit(
                &caller,
                "member.removed",
                "user",
                user_id.0,
                serde_json::json!({"email": member.email, "role": member.role.as_str()}),
            )
            .await;
        Ok(Json(member.into()))
    }

    /// Invite someone.
    ///
    /// They become a member with the role at their first sign-in with this email (the
    /// provider must say it is verified) before the invitation expires.
    #[oai(path = "/v1/invitations", method = "post")]
    async fn invite(
        &self,
        caller: Caller,
        body: Json<CreateInvitationRequest>,
    ) -> ApiResult<CreatedInvitation, InviteCodes> {
        let Json(request) = body;
        let email = check_email(&request.email)?;
        let role = Role::from(request.role);
        if !caller.role.may_manage(role) {
            return Err(above_caller(&caller, role).into());
        }
        let days = request
            .expires_in_days
            .unwrap_or(DEFAULT_INVITATION_DAYS)
            .clamp(1, MAX_INVITATION_DAYS);
        let expires_at = Utc::now() + chrono::Duration::days(i64::from(days));
        let invitation = self
            .users()
            .invite(
                &caller.tenant,
                &email,
                role,
                &caller.actor_label(),
                expires_at,
            )
            .await?;
        self.state
            .audit(
                &caller,
                "invitation.created",
                "invitation",
                invitation.id,
                serde_json::json!({"email": invitation.email, "role": role.as_str()}),
            )
            .await;
        Ok(CreatedInvitation::Created(Json(invitation.into())))
    }

    /// List the tenant's invitations.
    #[oai(path = "/v1/invitations", method = "get")]
    async fn invitations(&self, caller: Caller) -> ApiResult<Json<InvitationList>, NoCodes> {
        let items = self
            .users()
            .invitations(&caller.tenant)
            .await?
            .into_iter()
            .map(InvitationView::from)
            .collect();
        Ok(Json(InvitationList { items }))
    }

    /// Withdraw an invitation.
    #[oai(path = "/v1/invitations/:id", method = "delete")]
    async fn withdraw(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<InvitationView>, WithdrawCodes> {
        let users = self.users();
        let not_found = || {
            ApiError::new(
                ErrorCode::InvitationNotFound,
                format!("no invitation {}", id.0),
            )
        };
        let Some(withdrawn) = users.invitation(&caller.tenant, id.0).await? else {
            return Err(not_found().into());
        };
        if !caller.role.may_manage(withdrawn.role) {
            return Err(above_caller(&caller, withdrawn.role).into());
        }
        if !users.withdraw_invitation(&caller.tenant, id.0).await? {
            return Err(not_found().into());
        }
        self.state
            .audit(
                &caller,
                "invitation.withdrawn",
                "invitation",
                id.0,
                serde_json::json!({"email": withdrawn.email}),
            )
            .await;
        Ok(Json(withdrawn.into()))
    }

    /// Map an email domain to a tenant.
    ///
    /// Whoever signs in with a verified address of the domain becomes a member with the
    /// role. One tenant per domain: mapping it again moves it. Platform admins only.
    #[oai(path = "/v1/admin/tenants/:id/email-domains/:domain", method = "put")]
    async fn map_domain(
        &self,
        caller: Caller,
        id: Path<String>,
        domain: Path<String>,
        body: Json<MapDomainRequest>,
    ) -> ApiResult<Json<DomainView>, DomainCodes> {
        let domain = check_domain(&domain.0)?;
        let tenant = self.tenant_exists(&id.0).await?;
        let role = Role::from(body.0.role);
        self.users()
            .map_email_domain(&domain, &tenant, role)
            .await?;
        let recorded_for = Caller {
            tenant: tenant.clone(),
            ..caller
        };
        self.state
            .audit(
                &recorded_for,
                "email_domain.mapped",
                "email_domain",
                &domain,
                serde_json::json!({"role": role.as_str()}),
            )
            .await;
        Ok(Json(DomainView {
            domain,
            tenant: tenant.to_string(),
            role: role.into(),
        }))
    }

    /// Unmap an email domain from a tenant.
    #[oai(
        path = "/v1/admin/tenants/:id/email-domains/:domain",
        method = "delete"
    )]
    async fn unmap_domain(
        &self,
        caller: Caller,
        id: Path<String>,
        domain: Path<String>,
    ) -> ApiResult<Json<serde_json::Value>, UnmapCodes> {
        let domain = check_domain(&domain.0)?;
        let tenant = self.tenant_exists(&id.0).await?;
        if !self.users().unmap_email_domain(&domain, &tenant).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{domain} is not mapped to {tenant}"),
            )
            .into());
        }
        let recorded_for = Caller {
            tenant: tenant.clone(),
            ..caller
        };
        self.state
            .audit(
                &recorded_for,
                "email_domain.unmapped",
                "email_domain",
                &domain,
                serde_json::json!({}),
            )
            .await;
        Ok(Json(
            serde_json::json!({"domain": domain, "tenant": tenant}),
        ))
    }
}
