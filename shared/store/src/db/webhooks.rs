//! The webhook repository: endpoints, the tenant signing key, the delivery outbox and
//! its attempts.
//!
//! Outbox rows are written by [`write_outbox`] inside the transaction that writes a
//! task's terminal state (see `repo.rs`), so a task never ends without its deliveries
//! and a delivery never exists for a task that did not end. Dispatchers claim due rows
//! with a lease (`lease_token`, `lease_expires_at`): on PostgreSQL the candidates are
//! read `FOR UPDATE SKIP LOCKED`, and on both databases the claim itself is a guarded
//! `UPDATE`, so no two dispatchers hold the same row. A dispatcher that dies mid-send
//! leaves its lease to expire and another sends the delivery again (at least once, with
//! the same `webhook-id`).

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;
use serde_json::Value;
use tracing::instrument;
use uuid::Uuid;

use super::entities::{webhook_attempt, webhook_delivery, webhook_endpoint, webhook_signing_key};
use super::rows::{RepoError, now};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::webhooks::{
    SigningKeys, SigningSecret, event_type_for, filter_matches, outbox_payload,
};
use operator_domain::{TaskId, TaskRecord, TenantId};

/// A tenant's registered endpoint.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub tenant: TenantId,
    pub url: String,
    pub description: Option<String>,
    /// The event types it receives; empty means all.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why it was disabled (by its tenant, by a `410 Gone`, or by failing for too long).
    pub disabled_reason: Option<String>,
    pub secret: SigningSecret,
    pub previous_secret: Option<SigningSecret>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Since when every delivery to it has failed; cleared by a success.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    pub fn signing_keys(&self, at: DateTime<Utc>) -> SigningKeys {
        SigningKeys {
            current: self.secret.clone(),
            previous: overlapping(&self.previous_secret, self.previous_secret_expires_at, at),
        }
    }
}

fn overlapping(
    previous: &Option<SigningSecret>,
    expires_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Option<SigningSecret> {
    match (previous, expires_at) {
        (Some(secret), Some(until)) if until > at => Some(secret.clone()),
        _ => None,
    }
}

/// A new endpoint, validated by the caller.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub tenant: TenantId,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Vec<String>,
    pub enabled: bool,
}

/// Changes to an endpoint; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// A tenant's default signing key: it signs deliveries to per-task `webhook_url`s.
#[derive(Debug, Clone)]
pub struct TenantSigningKey {
    pub tenant: TenantId,
    pub secret: SigningSecret,
    pub previous_secret: Option<SigningSecret>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl TenantSigningKey {
    pub fn signing_keys(&self, at: DateTime<Utc>) -> SigningKeys {
        SigningKeys {
            current: self.secret.clone(),
            previous: overlapping(&self.previous_secret, self.previous_secret_expires_at, at),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    Delivered,
    /// Given up: the schedule is spent, or the failure was final.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, RepoError> {
        match text {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => Err(RepoError::Corrupt(format!("delivery state {other:?}"))),
        }
    }
}

/// One message to one destination. Its id is the `webhook-id` of every attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub tenant: TenantId,
    pub task_id: TaskId,
    /// `None` for the task's own `webhook_url`.
    pub endpoint_id: Option<Uuid>,
    pub url: String,
    pub event_type: String,
    pub payload: Value,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One attempt to send a delivery.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<CodedError>,
    pub response_excerpt: Option<String>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<Uuid>,
    pub task_id: Option<TaskId>,
    /// Only deliveries created before this one (ids are UUIDv7: the previous page's cursor).
    pub before: Option<Uuid>,
    pub limit: u64,
}

/// A delivery a dispatcher holds under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: Delivery,
    pub token: Uuid,
}

/// What the dispatcher decided after an attempt.
#[derive(Debug, Clone)]
pub enum Verdict {
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// Give up on this delivery.
    Failed,
    /// Give up, and disable the endpoint (it answered `410 Gone`).
    FailedAndDisable(String),
}

/// What happened when an attempt was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    Recorded,
    /// The dispatcher's lease was gone (another dispatcher owns the delivery now).
    LeaseLost,
}

#[derive(Clone, Debug)]
pub struct WebhookRepository {
    db: DatabaseConnection,
}

impl WebhookRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    // --- endpoints ---

    #[instrument(skip_all, fields(tenant = %new.tenant))]
    pub async fn create_endpoint(&self, new: NewEndpoint) -> Result<WebhookEndpoint, RepoError> {
        let now = now();
        let id = Uuid::now_v7();
        let secret = SigningSecret::generate();
        webhook_endpoint::Entity::insert(webhook_endpoint::ActiveModel {
            id: Set(id),
            tenant_id: Set(new.tenant.as_str().to_owned()),
            url: Set(new.url),
            description: Set(new.description),
            event_types: Set(Value::from(new.event_types)),
            enabled: Set(new.enabled),
            disabled_reason: Set((!new.enabled).then(|| "disabled by its tenant".to_owned())),
            secret: Set(secret.expose().to_owned()),
            previous_secret: Set(None),
            previous_secret_expires_at: Set(None),
            failing_since: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(&self.db)
        .await?;
        self.endpoint(&new.tenant, id)
            .await?
            .ok_or_else(|| RepoError::Corrupt(format!("endpoint {id} vanished after insert")))
    }

    pub async fn endpoint(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<WebhookEndpoint>, RepoError> {
        webhook_endpoint::Entity::find_by_id(id)
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .map(to_endpoint)
            .transpose()
    }

    pub async fn endpoints(&self, tenant: &TenantId) -> Result<Vec<WebhookEndpoint>, RepoError> {
        webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(webhook_endpoint::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_endpoint)
            .collect()
    }

    pub async fn update_endpoint(
        &self,
        tenant: &TenantId,
        id: Uuid,
        update: EndpointUpdate,
    ) -> Result<Option<WebhookEndpoint>, RepoError> {
        let now = now();
        let mut query = webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(now));
        if let Some(url) = update.url {
            query = query.col_expr(webhook_endpoint::Column::Url, Expr::value(url));
        }
        if let Some(description) = update.description {
            query = query.col_expr(
                webhook_endpoint::Column::Description,
                Expr::value(description),
            );
        }
        if let Some(event_types) = update.event_types {
            query = query.col_expr(
                webhook_endpoint::Column::EventTypes,
                Expr::value(Value::from(event_types)),
            );
        }
        if let Some(enabled) = update.enabled {
            let reason = (!enabled).then(|| "disabled by its tenant".to_owned());
            query = query
                .col_expr(webhook_endpoint::Column::Enabled, Expr::value(enabled))
                .col_expr(
                    webhook_endpoint::Column::DisabledReason,
                    Expr::value(reason),
                )
                .col_expr(
                    webhook_endpoint::Column::FailingSince,
                    Expr::value(Option::<DateTime<Utc>>::None),
                );
        }
        let updated = query
            .filter(webhook_endpoint::Column::Id.eq(id))
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.as_str()))
            .exec(&self.db)
            .await?
            .rows_affected;
        if updated == 0 {
            return Ok(None);
        }
        self.endpoint(tenant, id).await
    }

    /// Deletes an endpoint with its deliveries and their attempts.
    pub async fn delete_endpoint(&self, tenant: &TenantId, id: Uuid) -> Result<bool, RepoError> {
        let transaction = self.db.begin().await?;
        let deleted = webhook_endpoint::Entity::delete_many()
            .filter(webhook_endpoint::Column::Id.eq(id))
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.as_str()))
            .exec(&transaction)
            .await?
            .rows_affected;
        if deleted == 1 {
            let deliveries: Vec<Uuid> = webhook_delivery::Entity::find()
                .select_only()
                .column(webhook_delivery::Column::Id)
                .filter(webhook_delivery::Column::EndpointId.eq(id))
                .into_tuple()
                .all(&transaction)
                .await?;
            if !deliveries.is_empty() {
                webhook_attempt::Entity::delete_many()
                    .filter(webhook_attempt::Column::DeliveryId.is_in(deliveries.clone()))
                    .exec(&transaction)
                    .await?;
                webhook_delivery::Entity::delete_many()
                    .filter(webhook_delivery::Column::Id.is_in(deliveries))
                    .exec(&transaction)
                    .await?;
            }
        }
        transaction.commit().await?;
        Ok(deleted == 1)
    }

    /// Replaces an endpoint's secret; the previous one keeps signing for `overlap`.
    pub async fn rotate_endpoint_secret(
        &self,
        tenant: &TenantId,
        id: Uuid,
        overlap: Duration,
    ) -> Result<Option<WebhookEndpoint>, RepoError> {
        let now = now();
        let transaction = self.db.begin().await?;
        let Some(current) = webhook_endpoint::Entity::find_by_id(id)
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.as_str()))
            .one(&transaction)
            .await?
        else {
            transaction.rollback().await?;
            return Ok(None);
        };
        let secret = SigningSecret::generate();
        let until = operator_domain::time::later(now, overlap);
        webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::Secret,
                Expr::value(secret.expose().to_owned()),
            )
            .col_expr(
                webhook_endpoint::Column::PreviousSecret,
                Expr::value(Some(current.secret.clone())),
            )
            .col_expr(
                webhook_endpoint::Column::PreviousSecretExpiresAt,
                Expr::value(Some(until.trunc_subsecs(6))),
            )
            .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(now))
            .filter(webhook_endpoint::Column::Id.eq(id))
            // Guard against a concurrent rotation: only the secret we read is replaced.
            .filter(webhook_endpoint::Column::Secret.eq(current.secret))
            .exec(&transaction)
            .await?;
        transaction.commit().await?;
        self.endpoint(tenant, id).await
    }

    // --- the tenant's default signing key ---

    /// The tenant's default signing key, created on first use.
    pub async fn signing_key(&self, tenant: &TenantId) -> Result<TenantSigningKey, RepoError> {
        if let Some(key) = self.find_signing_key(tenant).await? {
            return Ok(key);
        }
        let now = now();
        // Two processes may get here at once: the first insert wins, both read it back.
        webhook_signing_key::Entity::insert(webhook_signing_key::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            secret: Set(SigningSecret::generate().expose().to_owned()),
            previous_secret: Set(None),
            previous_secret_expires_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(webhook_signing_key::Column::TenantId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        self.find_signing_key(tenant)
            .await?
            .ok_or_else(|| RepoError::Corrupt(format!("signing key of {tenant} vanished")))
    }

    async fn find_signing_key(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<TenantSigningKey>, RepoError> {
        webhook_signing_key::Entity::find_by_id(tenant.as_str().to_owned())
            .one(&self.db)
            .await?
            .map(|row| {
                let corrupt = |_| RepoError::Corrupt(format!("signing key of {}", row.tenant_id));
                Ok(TenantSigningKey {
                    tenant: TenantId::parse(&row.tenant_id)
                        .map_err(|error| RepoError::Corrupt(error.to_string()))?,
                    secret: SigningSecret::parse(&row.secret).map_err(corrupt)?,
                    previous_secret: row
                        .previous_secret
                        .as_deref()
                        .map(SigningSecret::parse)
                        .transpose()
                        .map_err(corrupt)?,
                    previous_secret_expires_at: row.previous_secret_expires_at,
                    updated_at: row.updated_at,
                })
            })
            .transpose()
    }

    /// Replaces the tenant's default signing key; the previous one keeps signing for
    /// `overlap`.
    pub async fn rotate_signing_key(
        &self,
        tenant: &TenantId,
        overlap: Duration,
    ) -> Result<TenantSigningKey, RepoError> {
        let current = self.signing_key(tenant).await?;
        let now = now();
        let until = operator_domain::time::later(now, overlap);
        webhook_signing_key::Entity::update_many()
            .col_expr(
                webhook_signing_key::Column::Secret,
                Expr::value(SigningSecret::generate().expose().to_owned()),
            )
            .col_expr(
                webhook_signing_key::Column::PreviousSecret,
                Expr::value(Some(current.secret.expose().to_owned())),
            )
            .col_expr(
                webhook_signing_key::Column::PreviousSecretExpiresAt,
                Expr::value(Some(until.trunc_subsecs(6))),
            )
            .col_expr(webhook_signing_key::Column::UpdatedAt, Expr::value(now))
            .filter(webhook_signing_key::Column::TenantId.eq(tenant.as_str()))
            .filter(webhook_signing_key::Column::Secret.eq(current.secret.expose()))
            .exec(&self.db)
            .await?;
        self.signing_key(tenant).await
    }

    // --- deliveries ---

    /// A tenant's deliveries, newest first.
    pub async fn deliveries(
        &self,
        tenant: &TenantId,
        filter: &DeliveryFilter,
    ) -> Result<Vec<Delivery>, RepoError> {
        let mut query = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(webhook_delivery::Column::Id)
            .limit(filter.limit);
        if let Some(endpoint_id) = filter.endpoint_id {
            query = query.filter(webhook_delivery::Column::EndpointId.eq(endpoint_id));
        }
        if let Some(task_id) = filter.task_id {
            query = query.filter(webhook_delivery::Column::TaskId.eq(task_id.as_uuid()));
        }
        if let Some(before) = filter.before {
            query = query.filter(webhook_delivery::Column::Id.lt(before));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_delivery)
            .collect()
    }

    pub async fn delivery(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Delivery>, RepoError> {
        webhook_delivery::Entity::find_by_id(id)
            .filter(webhook_delivery::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?
            .map(to_delivery)
            .transpose()
    }

    pub async fn delivery_attempts(
        &self,
        tenant: &TenantId,
        delivery_id: Uuid,
    ) -> Result<Vec<DeliveryAttempt>, RepoError> {
        Ok(webhook_attempt::Entity::find()
            .filter(webhook_attempt::Column::DeliveryId.eq(delivery_id))
            .filter(webhook_attempt::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(webhook_attempt::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| DeliveryAttempt {
                attempt: u32::try_from(row.attempt).unwrap_or_default(),
                started_at: row.started_at,
                status_code: row.status_code.and_then(|code| u16::try_from(code).ok()),
                latency_ms: u64::try_from(row.latency_ms).unwrap_or_default(),
                error: row.error_code.map(|code| {
                    CodedError::new(
                        serde_json::from_value(Value::String(code)).unwrap_or(ErrorCode::Internal),
                        row.error_message.unwrap_or_default(),
                    )
                }),
                response_excerpt: row.response_excerpt,
            })
            .collect())
    }

    /// Sends a finished delivery once more, now. A pending one is left alone (`None`
    /// when there is no such delivery, `Some(false)` when it is still pending).
    pub async fn redeliver(&self, tenant: &TenantId, id: Uuid) -> Result<Option<bool>, RepoError> {
        let now = now();
        let updated = webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::State,
                Expr::value(DeliveryState::Pending.as_str()),
            )
            .col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(now))
            .col_expr(
                webhook_delivery::Column::FinishedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(now))
            .filter(webhook_delivery::Column::Id.eq(id))
            .filter(webhook_delivery::Column::TenantId.eq(tenant.as_str()))
            .filter(webhook_delivery::Column::State.ne(DeliveryState::Pending.as_str()))
            .exec(&self.db)
            .await?
            .rows_affected;
        if updated == 1 {
            return Ok(Some(true));
        }
        Ok(self.delivery(tenant, id).await?.map(|_| false))
    }

    /// Claims up to `limit` due deliveries for `lease`.
    #[instrument(skip_all)]
    pub async fn claim(
        &self,
        limit: u64,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, RepoError> {
        let now = now();
        let token = Uuid::new_v4();
        let lease_until = operator_domain::time::later(now, lease).trunc_subsecs(6);
        let claimable = || {
            Condition::all()
                .add(webhook_delivery::Column::State.eq(DeliveryState::Pending.as_str()))
                .add(webhook_delivery::Column::NextAttemptAt.lte(now))
                .add(
                    Condition::any()
                        .add(webhook_delivery::Column::LeaseExpiresAt.is_null())
                        .add(webhook_delivery::Column::LeaseExpiresAt.lte(now)),
                )
        };
        let transaction = self.db.begin().await?;
        let mut candidates = webhook_delivery::Entity::find()
            .select_only()
            .column(webhook_delivery::Column::Id)
            .filter(claimable())
            .order_by_asc(webhook_delivery::Column::NextAttemptAt)
            .limit(limit);
        if transaction.get_database_backend() == DatabaseBackend::Postgres {
            // Concurrent dispatchers skip each other's rows instead of queueing on them.
            candidates = candidates.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let ids: Vec<Uuid> = candidates.into_tuple().all(&transaction).await?;
        if ids.is_empty() {
            transaction.commit().await?;
            return Ok(Vec::new());
        }
        // The guard repeats the claim condition: on SQLite (no row locks) it is what
        // keeps two dispatchers from taking the same row.
        webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::LeaseToken,
                Expr::value(Some(token)),
            )
            .col_expr(
                webhook_delivery::Column::LeaseExpiresAt,
                Expr::value(Some(lease_until)),
            )
            .filter(webhook_delivery::Column::Id.is_in(ids))
            .filter(claimable())
            .exec(&transaction)
            .await?;
        let rows = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::LeaseToken.eq(token))
            .order_by_asc(webhook_delivery::Column::NextAttemptAt)
            .all(&transaction)
            .await?;
        transaction.commit().await?;
        rows.into_iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    delivery: to_delivery(row)?,
                    token,
                })
            })
            .collect()
    }

    /// The endpoint a delivery goes to, whatever its tenant (the dispatcher's view).
    pub async fn endpoint_for_delivery(
        &self,
        delivery: &Delivery,
    ) -> Result<Option<WebhookEndpoint>, RepoError> {
        let Some(endpoint_id) = delivery.endpoint_id else {
            return Ok(None);
        };
        self.endpoint(&delivery.tenant, endpoint_id).await
    }

    /// Records an attempt and the verdict on it, guarded by the dispatcher's lease;
    /// also keeps the endpoint's health: a success clears `failing_since`, a failure
    /// sets it, and an endpoint failing for longer than `disable_after` (or answering
    /// `410 Gone`) is disabled with the reason.
    #[instrument(skip_all, fields(delivery_id = %claimed.delivery.id))]
    pub async fn record_attempt(
        &self,
        claimed: &ClaimedDelivery,
        attempt: &DeliveryAttempt,
        verdict: &Verdict,
        disable_after: Duration,
    ) -> Result<RecordOutcome, RepoError> {
        let now = now();
        let delivery = &claimed.delivery;
        let (state, next_attempt_at) = match verdict {
            Verdict::Delivered => (DeliveryState::Delivered, delivery.next_attempt_at),
            Verdict::Retry(at) => (DeliveryState::Pending, at.trunc_subsecs(6)),
            Verdict::Failed | Verdict::FailedAndDisable(_) => {
                (DeliveryState::Failed, delivery.next_attempt_at)
            }
        };
        let finished_at = (state != DeliveryState::Pending).then_some(now);
        let last_error = attempt.error.as_ref().map(ToString::to_string);
        let transaction = self.db.begin().await?;
        let updated = webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::State, Expr::value(state.as_str()))
            .col_expr(
                webhook_delivery::Column::Attempts,
                Expr::col(webhook_delivery::Column::Attempts).add(1),
            )
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(next_attempt_at),
            )
            .col_expr(
                webhook_delivery::Column::LeaseToken,
                Expr::value(Option::<Uuid>::None),
            )
            .col_expr(
                webhook_delivery::Column::LeaseExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                webhook_delivery::Column::LastStatus,
                Expr::value(attempt.status_code.map(i32::from)),
            )
            .col_expr(
                webhook_delivery::Column::LastError,
                Expr::value(last_error.clone()),
            )
            .col_expr(
                webhook_delivery::Column::FinishedAt,
                Expr::value(finished_at),
            )
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(now))
            .filter(webhook_delivery::Column::Id.eq(delivery.id))
            .filter(webhook_delivery::Column::LeaseToken.eq(claimed.token))
            .exec(&transaction)
            .await?
            .rows_affected;
        if updated == 0 {
            transaction.rollback().await?;
            return Ok(RecordOutcome::LeaseLost);
        }
        let number = webhook_delivery::Entity::find_by_id(delivery.id)
            .select_only()
            .column(webhook_delivery::Column::Attempts)
            .into_tuple::<i32>()
            .one(&transaction)
            .await?
            .unwrap_or_default();
        webhook_attempt::Entity::insert(webhook_attempt::ActiveModel {
            id: NotSet,
            delivery_id: Set(delivery.id),
            tenant_id: Set(delivery.tenant.as_str().to_owned()),
            attempt: Set(number),
            started_at: Set(attempt.started_at.trunc_subsecs(6)),
            status_code: Set(attempt.status_code.map(i32::from)),
            latency_ms: Set(i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX)),
            error_code: Set(attempt
                .error
                .as_ref()
                .map(|error| error.code.as_str().to_owned())),
            error_message: Set(attempt.error.as_ref().map(|error| error.message.clone())),
            response_excerpt: Set(attempt.response_excerpt.clone()),
        })
        .exec_without_returning(&transaction)
        .await?;
        if let Some(endpoint_id) = delivery.endpoint_id {
            update_endpoint_health(
                &transaction,
                endpoint_id,
                verdict,
                last_error,
                disable_after,
                now,
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(RecordOutcome::Recorded)
    }
}

async fn update_endpoint_health(
    transaction: &DatabaseTransaction,
    endpoint_id: Uuid,
    verdict: &Verdict,
    last_error: Option<String>,
    disable_after: Duration,
    now: DateTime<Utc>,
) -> Result<(), RepoError> {
    let base = webhook_endpoint::Entity::update_many()
        .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(now))
        .filter(webhook_endpoint::Column::Id.eq(endpoint_id));
    match verdict {
        Verdict::Delivered => {
            base.col_expr(
                webhook_endpoint::Column::FailingSince,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .exec(transaction)
            .await?;
        }
        Verdict::FailedAndDisable(reason) => {
            disable(base, reason.clone()).exec(transaction).await?;
        }
        Verdict::Retry(_) | Verdict::Failed => {
            let failing_since = webhook_endpoint::Entity::find_by_id(endpoint_id)
                .select_only()
                .column(webhook_endpoint::Column::FailingSince)
                .into_tuple::<Option<DateTime<Utc>>>()
                .one(transaction)
                .await?
                .flatten();
            match failing_since {
                None => {
                    base.col_expr(
                        webhook_endpoint::Column::FailingSince,
                        Expr::value(Some(now)),
                    )
                    .exec(transaction)
                    .await?;
                }
                Some(since) if (now - since).to_std().unwrap_or_default() >= disable_after => {
                    let reason = format!(
                        "every delivery has failed since {}; last error: {}",
                        since.to_rfc3339(),
                        last_error.unwrap_or_else(|| "none recorded".to_owned())
                    );
                    disable(base, reason)
                        .filter(webhook_endpoint::Column::Enabled.eq(true))
                        .exec(transaction)
                        .await?;
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn disable(
    update: sea_orm::UpdateMany<webhook_endpoint::Entity>,
    reason: String,
) -> sea_orm::UpdateMany<webhook_endpoint::Entity> {
    update
        .col_expr(webhook_endpoint::Column::Enabled, Expr::value(false))
        .col_expr(
            webhook_endpoint::Column::DisabledReason,
            Expr::value(Some(reason)),
        )
}

/// The outbox rule, part one, as SQL over a `tasks` row named `task`: whether a task
/// ending now may have deliveries due, because it has its own `webhook_url` or its
/// tenant has an enabled endpoint. A statement that finishes tasks in bulk without
/// writing outbox rows must leave these tasks to [`write_outbox`], which applies part
/// two (each endpoint's event filter) and writes the rows; the two read the same
/// columns, here, side by side.
pub(crate) fn may_have_deliveries_sql(task: &str) -> String {
    format!(
        "({task}.webhook_url IS NOT NULL OR EXISTS (SELECT 1 FROM webhook_endpoints w \
         WHERE w.tenant_id = {task}.tenant_id AND w.enabled))"
    )
}

/// Writes the deliveries of a task's end: one per enabled endpoint of its tenant whose
/// filter wants the event, and one for the task's own `webhook_url`. Called inside the
/// transaction that writes the terminal state. Reads what
/// [`may_have_deliveries_sql`] reads (`webhook_url`, the tenant's enabled endpoints).
pub(crate) async fn write_outbox(
    transaction: &DatabaseTransaction,
    record: &TaskRecord,
    artifacts: Vec<Value>,
    at: DateTime<Utc>,
) -> Result<(), RepoError> {
    let Some(event_type) = event_type_for(record.state) else {
        return Ok(());
    };
    let endpoints = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::TenantId.eq(record.tenant.as_str()))
        .filter(webhook_endpoint::Column::Enabled.eq(true))
        .all(transaction)
        .await?;
    let mut destinations: Vec<(Option<Uuid>, String)> = endpoints
        .into_iter()
        .filter(|endpoint| filter_matches(&event_filter(&endpoint.event_types), event_type))
        .map(|endpoint| (Some(endpoint.id), endpoint.url))
        .collect();
    if let Some(url) = &record.webhook_url {
        destinations.push((None, url.clone()));
    }
    if destinations.is_empty() {
        return Ok(());
    }
    let payload = outbox_payload(event_type, record, artifacts, at);
    let rows = destinations
        .into_iter()
        .map(|(endpoint_id, url)| webhook_delivery::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(record.tenant.as_str().to_owned()),
            task_id: Set(record.id.as_uuid()),
            endpoint_id: Set(endpoint_id),
            url: Set(url),
            event_type: Set(event_type.to_owned()),
            payload: Set(payload.clone()),
            state: Set(DeliveryState::Pending.as_str().to_owned()),
            attempts: Set(0),
            next_attempt_at: Set(at),
            lease_token: Set(None),
            lease_expires_at: Set(None),
            last_status: Set(None),
            last_error: Set(None),
            created_at: Set(at),
            updated_at: Set(at),
            finished_at: Set(None),
        });
    webhook_delivery::Entity::insert_many(rows)
        .exec_without_returning(transaction)
        .await?;
    Ok(())
}

fn event_filter(stored: &Value) -> Vec<String> {
    stored
        .as_array()
        .map(|types| {
            types
                .iter()
                .filter_map(|value| value.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn to_endpoint(row: webhook_endpoint::Model) -> Result<WebhookEndpoint, RepoError> {
    let corrupt = |what: &str| RepoError::Corrupt(format!("endpoint {}: {what}", row.id));
    Ok(WebhookEndpoint {
        id: row.id,
        tenant: TenantId::parse(&row.tenant_id).map_err(|_| corrupt("tenant"))?,
        event_types: event_filter(&row.event_types),
        secret: SigningSecret::parse(&row.secret).map_err(|_| corrupt("secret"))?,
        previous_secret: row
            .previous_secret
            .as_deref()
            .map(SigningSecret::parse)
            .transpose()
            .map_err(|_| corrupt("previous secret"))?,
        url: row.url,
        description: row.description,
        enabled: row.enabled,
        disabled_reason: row.disabled_reason,
        previous_secret_expires_at: row.previous_secret_expires_at,
        failing_since: row.failing_since,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn to_delivery(row: webhook_delivery::Model) -> Result<Delivery, RepoError> {
    Ok(Delivery {
        id: row.id,
        tenant: TenantId::parse(&row.tenant_id)
            .map_err(|error| RepoError::Corrupt(format!("delivery {}: {error}", row.id)))?,
        task_id: TaskId::from(row.task_id),
        endpoint_id: row.endpoint_id,
        url: row.url,
        event_type: row.event_type,
        payload: row.payload,
        state: DeliveryState::parse(&row.state)?,
        attempts: u32::try_from(row.attempts).unwrap_or_default(),
        next_attempt_at: row.next_attempt_at,
        last_status: row.last_status.and_then(|code| u16::try_from(code).ok()),
        last_error: row.last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
    })
}
