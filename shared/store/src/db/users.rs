//! People who sign in: users, their identities at OpenID providers, their memberships
//! of tenants, the invitations and email domains that make memberships, their sessions,
//! and the sign-ins in flight (state, nonce and PKCE verifier between the redirect to
//! the provider and its callback).
//!
//! A membership comes from an invitation to the user's email, or from the user's email
//! domain mapped to a tenant; both only for an email the provider says is verified.
//! A session's refresh token is stored as its SHA-256, rotated at each refresh; the
//! tokens it traded are kept, so that one presented again ends the session.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};
use uuid::Uuid;

use super::entities::{
    invitation, membership, oidc_login, session, spent_refresh_token, tenant_email_domain, user,
    user_identity,
};
use super::rows::{RepoError, now};
use operator_domain::TenantId;
use operator_domain::auth::Role;

/// What the provider said about the person signing in.
#[derive(Debug, Clone)]
pub struct SignInIdentity {
    /// The provider's name in the settings.
    pub provider: String,
    /// The provider's stable id of the person (`sub`).
    pub subject: String,
    pub email: String,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// A signed-in user and the tenant the session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: Uuid,
    pub email: String,
    pub tenant: TenantId,
    pub role: Role,
}

/// Why a sign-in made no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInRefusal {
    /// No membership, no invitation and no mapped domain for this person (or only
    /// for an unverified email).
    NoMembership,
}

/// An invitation to a tenant, for one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: Uuid,
    pub tenant: TenantId,
    pub email: String,
    pub role: Role,
    pub invited_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
}

/// A member of a tenant, as lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

/// A session as the API checks it on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub id: Uuid,
    pub user: Uuid,
    pub tenant: TenantId,
    /// The member's current role; `None` when the membership is gone.
    pub role: Option<Role>,
    pub live: bool,
}

/// What a presented refresh token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The session's current token, traded for the next: the session, with the
    /// member's current role, and the user's email.
    Rotated(SessionState, String),
    /// No live session's token (unknown, expired, revoked, or spent a moment ago by a
    /// refresh racing this one).
    Refused,
    /// A token the session had traded before, presented again: the session is ended.
    Reused(SessionState),
}

/// A sign-in between the redirect to the provider and its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub state: String,
    pub provider: String,
    pub nonce: String,
    pub verifier: String,
    pub return_to: Option<String>,
    /// The tenant asked for, when the person is a member of several.
    pub tenant: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UserRepository {
    db: DatabaseConnection,
}

fn corrupt(what: &str) -> RepoError {
    RepoError::Corrupt(format!("a stored {what} does not parse"))
}

fn domain_of(email: &str) -> Option<String> {
    email
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_ascii_lowercase())
        .filter(|domain| !domain.is_empty())
}

impl UserRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Records a sign-in: the user (made on the first one) and the tenant its session
    /// is for: `preferred` when a member of it, else the earliest membership. Pending
    /// invitations to the verified email are accepted, and a mapped email domain adds
    /// a membership, in the same transaction.
    pub async fn sign_in(
        &self,
        identity: &SignInIdentity,
        preferred: Option<&TenantId>,
    ) -> Result<Result<Member, SignInRefusal>, RepoError> {
        let at = now();
        let email = identity.email.to_ascii_lowercase();
        let transaction = self.db.begin().await?;
        let known = user_identity::Entity::find_by_id((
            identity.provider.clone(),
            identity.subject.clone(),
        ))
        .one(&transaction)
        .await?;
        let user_id = match known {
            Some(known) => known.user_id,
            None => {
                let id = Uuid::now_v7();
                user::Entity::insert(user::ActiveModel {
                    id: Set(id),
                    email: Set(email.clone()),
                    name: Set(identity.name.clone()),
                    created_at: Set(at),
                    last_sign_in_at: Set(None),
                })
                .exec(&transaction)
                .await?;
                user_identity::Entity::insert(user_identity::ActiveModel {
                    provider: Set(identity.provider.clone()),
                    subject: Set(identity.subject.clone()),
                    user_id: Set(id),
                    email: Set(email.clone()),
                    created_at: Set(at),
                })
                .exec(&transaction)
                .await?;
                id
            }
        };
        user::Entity::update_many()
            .col_expr(user::Column::LastSignInAt, Expr::value(at))
            .col_expr(user::Column::Email, Expr::value(email.clone()))
            .filter(user::Column::Id.eq(user_id))
            .exec(&transaction)
            .await?;
        if identity.email_verified {
            let invited = invitation::Entity::find()
                .filter(invitation::Column::Email.eq(email.as_str()))
                .filter(invitation::Column::AcceptedAt.is_null())
                .filter(invitation::Column::ExpiresAt.gt(at))
                .all(&transaction)
                .await?;
            let mut grants: Vec<(String, String)> = invited
                .iter()
                .map(|invitation| (invitation.tenant_id.clone(), invitation.role.clone()))
                .collect();
            let mapped = match domain_of(&email) {
                Some(domain) => {
                    tenant_email_domain::Entity::find_by_id(domain)
                        .one(&transaction)
                        .await?
                }
                None => None,
            };
            if let Some(mapped) = mapped {
                grants.push((mapped.tenant_id, mapped.role));
            }
            for (tenant, role) in grants {
                let exists = membership::Entity::find_by_id((tenant.clone(), user_id))
                    .one(&transaction)
                    .await?
                    .is_some();
                if !exists {
                    membership::Entity::insert(membership::ActiveModel {
                        tenant_id: Set(tenant),
                        user_id: Set(user_id),
                        role: Set(role),
                        created_at: Set(at),
                    })
                    .exec(&transaction)
                    .await?;
                }
            }
            invitation::Entity::update_many()
                .col_expr(invitation::Column::AcceptedAt, Expr::value(at))
                .filter(
                    invitation::Column::Id.is_in(invited.iter().map(|invitation| invitation.id)),
                )
                .exec(&transaction)
                .await?;
        }
        let memberships = membership::Entity::find()
            .filter(membership::Column::UserId.eq(user_id))
            .order_by_asc(membership::Column::CreatedAt)
            .all(&transaction)
            .await?;
        transaction.commit().await?;
        let chosen = preferred
            .and_then(|preferred| {
                memberships
                    .iter()
                    .find(|membership| membership.tenant_id == preferred.as_str())
            })
            .or_else(|| memberships.first());
        let Some(chosen) = chosen else {
            return Ok(Err(SignInRefusal::NoMembership));
        };
        Ok(Ok(Member {
            user: user_id,
            email,
            tenant: TenantId::parse(&chosen.tenant_id).map_err(|_| corrupt("tenant"))?,
            role: Role::parse(&chosen.role).map_err(|_| corrupt("role"))?,
        }))
    }

    /// Invites `email` to `tenant` with `role`, valid until `expires_at`.
    pub async fn invite(
        &self,
        tenant: &TenantId,
        email: &str,
        role: Role,
        invited_by: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Invitation, RepoError> {
        let row = invitation::Model {
            id: Uuid::now_v7(),
            tenant_id: tenant.as_str().to_owned(),
            email: email.to_ascii_lowercase(),
            role: role.as_str().to_owned(),
            invited_by: Some(invited_by.to_owned()),
            created_at: now(),
            expires_at,
            accepted_at: None,
        };
        invitation::Entity::insert(invitation::ActiveModel {
            id: Set(row.id),
            tenant_id: Set(row.tenant_id.clone()),
            email: Set(row.email.clone()),
            role: Set(row.role.clone()),
            invited_by: Set(row.invited_by.clone()),
            created_at: Set(row.created_at),
            expires_at: Set(row.expires_at),
            accepted_at: Set(None),
        })
        .exec(&self.db)
        .await?;
        to_invitation(row)
    }

    /// Maps an email domain to a tenant: a verified email of it signs in as a member
    /// with `role`. One tenant per domain; mapping it again moves it.
    pub async fn map_email_domain(
        &self,
        domain: &str,
        tenant: &TenantId,
        role: Role,
    ) -> Result<(), RepoError> {
        let domain = domain.to_ascii_lowercase();
        let transaction = self.db.begin().await?;
        tenant_email_domain::Entity::delete_by_id(domain.clone())
            .exec(&transaction)
            .await?;
        tenant_email_domain::Entity::insert(tenant_email_domain::ActiveModel {
            domain: Set(domain),
            tenant_id: Set(tenant.as_str().to_owned()),
            role: Set(role.as_str().to_owned()),
            created_at: Set(now()),
        })
        .exec(&transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Starts a sign-in: remembers its state, nonce and verifier until `expires_at`.
    pub async fn begin_login(
        &self,
        login: &PendingLogin,
        expires_at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let at = now();
        // Sign-ins never finished are removed as new ones start.
        oidc_login::Entity::delete_many()
            .filter(oidc_login::Column::ExpiresAt.lte(at))
            .exec(&self.db)
            .await?;
        oidc_login::Entity::insert(oidc_login::ActiveModel {
            state: Set(login.state.clone()),
            provider: Set(login.provider.clone()),
            nonce: Set(login.nonce.clone()),
            verifier: Set(login.verifier.clone()),
            return_to: Set(login.return_to.clone()),
            tenant: Set(login.tenant.clone()),
            created_at: Set(at),
            expires_at: Set(expires_at),
        })
        .exec(&self.db)
        .await?;
        Ok(())
    }

    /// The sign-in `state` started, once: it is deleted as it is read, so a replayed
    /// callback finds nothing. `None` when unknown or expired.
    pub async fn take_login(&self, state: &str) -> Result<Option<PendingLogin>, RepoError> {
        let transaction = self.db.begin().await?;
        let found = oidc_login::Entity::find_by_id(state.to_owned())
            .one(&transaction)
            .await?;
        let Some(found) = found else {
            return Ok(None);
        };
        let deleted = oidc_login::Entity::delete_by_id(state.to_owned())
            .exec(&transaction)
            .await?
            .rows_affected;
        transaction.commit().await?;
        Ok(
            (deleted == 1 && found.expires_at > now()).then_some(PendingLogin {
                state: found.state,
                provider: found.provider,
                nonce: found.nonce,
                verifier: found.verifier,
                return_to: found.return_to,
                tenant: found.tenant,
            }),
        )
    }

    /// Opens a session for `member`, refreshed with the token whose SHA-256 is
    /// `refresh_hash`, until `expires_at`.
    pub async fn open_session(
        &self,
        member: &Member,
        refresh_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Uuid, RepoError> {
        let id = Uuid::now_v7();
        session::Entity::insert(session::ActiveModel {
            id: Set(id),
            user_id: Set(member.user),
            tenant_id: Set(member.tenant.as_str().to_owned()),
            refresh_hash: Set(refresh_hash.to_owned()),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            refreshed_at: Set(None),
            revoked_at: Set(None),
        })
        .exec(&self.db)
        .await?;
        Ok(id)
    }

    /// Trades a refresh token (by its hash) for the next one. The traded token is kept
    /// as spent: presented again more than `reuse_grace` after its trade, someone holds
    /// a copy of it (the client or a thief refreshed meanwhile), and the session is
    /// ended ([`Refreshed::Reused`]), so neither copy works any longer.
    pub async fn refresh_session(
        &self,
        refresh_hash: &str,
        next_hash: &str,
        reuse_grace: std::time::Duration,
    ) -> Result<Refreshed, RepoError> {
        let at = now();
        let Some(found) = self.session_row_by_refresh(refresh_hash).await? else {
            let spent = spent_refresh_token::Entity::find_by_id(refresh_hash.to_owned())
                .one(&self.db)
                .await?;
            let Some(spent) = spent else {
                return Ok(Refreshed::Refused);
            };
            let grace = chrono::TimeDelta::from_std(reuse_grace).unwrap_or(chrono::TimeDelta::MAX);
            if at - spent.spent_at <= grace {
                return Ok(Refreshed::Refused);
            }
            self.revoke_session(spent.session_id).await?;
            return Ok(match self.session(spent.session_id).await? {
                Some(session) => Refreshed::Reused(session),
                None => Refreshed::Refused,
            });
        };
        // The guarded turn and the spent token's row commit together.
        let transaction = self.db.begin().await?;
        let rotated = session::Entity::update_many()
            .col_expr(session::Column::RefreshHash, Expr::value(next_hash))
            .col_expr(session::Column::RefreshedAt, Expr::value(at))
            .filter(session::Column::Id.eq(found.id))
            .filter(session::Column::RefreshHash.eq(refresh_hash))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::ExpiresAt.gt(at))
            .exec(&transaction)
            .await?
            .rows_affected;
        if rotated != 1 {
            transaction.rollback().await?;
            return Ok(Refreshed::Refused);
        }
        spent_refresh_token::Entity::insert(spent_refresh_token::ActiveModel {
            hash: Set(refresh_hash.to_owned()),
            session_id: Set(found.id),
            spent_at: Set(at),
        })
        .exec_without_returning(&transaction)
        .await?;
        transaction.commit().await?;
        let state = self
            .session(found.id)
            .await?
            .ok_or_else(|| corrupt("session"))?;
        let email = user::Entity::find_by_id(found.user_id)
            .one(&self.db)
            .await?
            .map(|user| user.email)
            .unwrap_or_default();
        Ok(Refreshed::Rotated(state, email))
    }

    /// The session whose refresh token has this hash, without turning the token.
    pub async fn session_by_refresh(
        &self,
        refresh_hash: &str,
    ) -> Result<Option<SessionState>, RepoError> {
        match self.session_row_by_refresh(refresh_hash).await? {
            Some(found) => self.session(found.id).await,
            None => Ok(None),
        }
    }

    async fn session_row_by_refresh(
        &self,
        refresh_hash: &str,
    ) -> Result<Option<session::Model>, RepoError> {
        Ok(session::Entity::find()
            .filter(session::Column::RefreshHash.eq(refresh_hash))
            .one(&self.db)
            .await?)
    }

    /// Ends a session; `true` when it was live.
    pub async fn revoke_session(&self, id: Uuid) -> Result<bool, RepoError> {
        Ok(session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, Expr::value(now()))
            .filter(session::Column::Id.eq(id))
            .filter(session::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// The session, with the member's current role, as each request checks it.
    pub async fn session(&self, id: Uuid) -> Result<Option<SessionState>, RepoError> {
        let Some(found) = session::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        let role = membership::Entity::find_by_id((found.tenant_id.clone(), found.user_id))
            .one(&self.db)
            .await?
            .map(|membership| Role::parse(&membership.role).map_err(|_| corrupt("role")))
            .transpose()?;
        Ok(Some(SessionState {
            id: found.id,
            user: found.user_id,
            tenant: TenantId::parse(&found.tenant_id).map_err(|_| corrupt("tenant"))?,
            role,
            live: found.revoked_at.is_none() && found.expires_at > now(),
        }))
    }
}

impl UserRepository {
    /// The tenant's members, earliest first.
    pub async fn members(&self, tenant: &TenantId) -> Result<Vec<MemberRecord>, RepoError> {
        self.member_records(tenant, None).await
    }

    /// One member of the tenant.
    pub async fn member(
        &self,
        tenant: &TenantId,
        user: Uuid,
    ) -> Result<Option<MemberRecord>, RepoError> {
        Ok(self.member_records(tenant, Some(user)).await?.pop())
    }

    /// The tenant's members, or only `user` among them.
    async fn member_records(
        &self,
        tenant: &TenantId,
        user: Option<Uuid>,
    ) -> Result<Vec<MemberRecord>, RepoError> {
        let mut query = membership::Entity::find()
            .filter(membership::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(membership::Column::CreatedAt);
        if let Some(user) = user {
            query = query.filter(membership::Column::UserId.eq(user));
        }
        let memberships = query.all(&self.db).await?;
        let users = user::Entity::find()
            .filter(user::Column::Id.is_in(memberships.iter().map(|membership| membership.user_id)))
            .all(&self.db)
            .await?;
        memberships
            .into_iter()
            .map(|membership| {
                let user = users
                    .iter()
                    .find(|user| user.id == membership.user_id)
                    .ok_or_else(|| corrupt("membership's user"))?;
                Ok(MemberRecord {
                    user: user.id,
                    email: user.email.clone(),
                    name: user.name.clone(),
                    role: Role::parse(&membership.role).map_err(|_| corrupt("role"))?,
                    joined_at: membership.created_at,
                    last_sign_in_at: user.last_sign_in_at,
                })
            })
            .collect()
    }

    /// Gives a member another role; `false` when no such member.
    pub async fn set_role(
        &self,
        tenant: &TenantId,
        user: Uuid,
        role: Role,
    ) -> Result<bool, RepoError> {
        Ok(membership::Entity::update_many()
            .col_expr(membership::Column::Role, Expr::value(role.as_str()))
            .filter(membership::Column::TenantId.eq(tenant.as_str()))
            .filter(membership::Column::UserId.eq(user))
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// Removes a member and ends their sessions in the tenant; `false` when no such
    /// member.
    pub async fn remove_member(&self, tenant: &TenantId, user: Uuid) -> Result<bool, RepoError> {
        let transaction = self.db.begin().await?;
        let removed = membership::Entity::delete_many()
            .filter(membership::Column::TenantId.eq(tenant.as_str()))
            .filter(membership::Column::UserId.eq(user))
            .exec(&transaction)
            .await?
            .rows_affected;
        session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, Expr::value(now()))
            .filter(session::Column::TenantId.eq(tenant.as_str()))
            .filter(session::Column::UserId.eq(user))
            .filter(session::Column::RevokedAt.is_null())
            .exec(&transaction)
            .await?;
        transaction.commit().await?;
        Ok(removed == 1)
    }

    /// The tenant's invitations, newest first, accepted ones included.
    pub async fn invitations(&self, tenant: &TenantId) -> Result<Vec<Invitation>, RepoError> {
        invitation::Entity::find()
            .filter(invitation::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(invitation::Column::CreatedAt)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_invitation)
            .collect()
    }

    /// One of the tenant's invitations.
    pub async fn invitation(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Invitation>, RepoError> {
        invitation::Entity::find_by_id(id)
            .filter(invitation::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .map(to_invitation)
            .transpose()
    }

    /// Withdraws one of the tenant's invitations; `false` when there was none.
    pub async fn withdraw_invitation(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<bool, RepoError> {
        Ok(invitation::Entity::delete_many()
            .filter(invitation::Column::Id.eq(id))
            .filter(invitation::Column::TenantId.eq(tenant.as_str()))
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// Unmaps an email domain from the tenant; `false` when it was not mapped to it.
    pub async fn unmap_email_domain(
        &self,
        domain: &str,
        tenant: &TenantId,
    ) -> Result<bool, RepoError> {
        Ok(tenant_email_domain::Entity::delete_many()
            .filter(tenant_email_domain::Column::Domain.eq(domain.to_ascii_lowercase()))
            .filter(tenant_email_domain::Column::TenantId.eq(tenant.as_str()))
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }
}

fn to_invitation(row: invitation::Model) -> Result<Invitation, RepoError> {
    Ok(Invitation {
        id: row.id,
        tenant: TenantId::parse(&row.tenant_id).map_err(|_| corrupt("tenant"))?,
        email: row.email,
        role: Role::parse(&row.role).map_err(|_| corrupt("role"))?,
        invited_by: row.invited_by,
        created_at: row.created_at,
        expires_at: row.expires_at,
        accepted_at: row.accepted_at,
    })
}
