//! `/v1/webhooks`: a tenant's webhook endpoints (create, list, update, delete, rotate
//! the secret), their deliveries and redelivery; `/v1/webhook-signing-key`: the
//! tenant's default signing key, which signs deliveries to per-task `webhook_url`s;
//! `/v1/tasks/{id}/webhook-deliveries`: every delivery of one task.

// Response enums are built once and returned at once.
#![allow(clippy::large_enum_variant)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::webhooks::EVENT_TYPES;
use operator_domain::{TargetUrl, TaskId, TenantId};
use operator_store::db::{
    Delivery, DeliveryAttempt, DeliveryFilter, EndpointUpdate, NewEndpoint, TenantSigningKey,
    WebhookEndpoint, WebhookRepository,
};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult, ErrorBody, NoCodes};
use crate::state::SharedState;

#[derive(Tags)]
pub enum WebhookTags {
    /// Signed notifications when tasks end.
    Webhooks,
}

const MAX_DESCRIPTION_LENGTH: usize = 1000;
const DEFAULT_DELIVERY_PAGE: u32 = 50;
const MAX_DELIVERY_PAGE: u32 = 200;
/// The longest overlap a rotation may ask for: a week.
const MAX_OVERLAP_SECONDS: u64 = 7 * 24 * 3600;

/// A new endpoint.
#[derive(Debug, Clone, Object)]
#[oai(rename = "CreateWebhook")]
pub struct CreateWebhookRequest {
    /// Where to POST (http or https; the network policy applies).
    pub url: String,
    pub description: Option<String>,
    /// Event types to receive (`task.succeeded`, `task.failed`, `task.cancelled`,
    /// `task.timed_out`, `task.dead`); empty or absent for all.
    pub event_types: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Debug, Clone, Object)]
#[oai(rename = "UpdateWebhook")]
pub struct UpdateWebhookRequest {
    pub url: Option<String>,
    /// `null` clears it.
    pub description: MaybeUndefined<String>,
    pub event_types: Option<Vec<String>>,
    /// Re-enabling an endpoint clears the reason it was disabled.
    pub enabled: Option<bool>,
}

/// A secret rotation (send `{}` for the default overlap).
#[derive(Debug, Clone, Object)]
#[oai(rename = "RotateSecret")]
pub struct RotateSecretRequest {
    /// How long the previous secret keeps signing (both signatures are sent), in seconds;
    /// default `webhooks.rotation_overlap` (24 h), at most a week; 0 ends it at once.
    pub overlap_seconds: Option<u64>,
}

/// A webhook endpoint.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Webhook")]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    #[oai(skip_serializing_if_is_none)]
    pub description: Option<String>,
    /// Empty: every event type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why it is disabled: by its tenant, a `410 Gone`, or failing for too long.
    #[oai(skip_serializing_if_is_none)]
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed.
    #[oai(skip_serializing_if_is_none)]
    pub failing_since: Option<DateTime<Utc>>,
    /// `whsec_…`: only in the answers to creation and rotation.
    #[oai(skip_serializing_if_is_none)]
    pub secret: Option<String>,
    /// Until when the previous secret still signs too.
    #[oai(skip_serializing_if_is_none)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookView {
    fn from_endpoint(endpoint: WebhookEndpoint, show_secret: bool) -> Self {
        let now = Utc::now();
        Self {
            id: endpoint.id,
            secret: show_secret.then(|| endpoint.secret.expose().to_owned()),
            previous_secret_expires_at: endpoint
                .previous_secret_expires_at
                .filter(|until| *until > now),
            url: endpoint.url,
            description: endpoint.description,
            event_types: endpoint.event_types,
            enabled: endpoint.enabled,
            disabled_reason: endpoint.disabled_reason,
            failing_since: endpoint.failing_since,
            created_at: endpoint.created_at,
            updated_at: endpoint.updated_at,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "WebhookList")]
pub struct WebhookList {
    pub items: Vec<WebhookView>,
}

/// The tenant's default signing key.
#[derive(Debug, Clone, Object)]
#[oai(rename = "SigningKey")]
pub struct SigningKeyView {
    /// `whsec_…`; signs deliveries to per-task `webhook_url`s.
    pub secret: String,
    #[oai(skip_serializing_if_is_none)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<TenantSigningKey> for SigningKeyView {
    fn from(key: TenantSigningKey) -> Self {
        let now = Utc::now();
        Self {
            secret: key.secret.expose().to_owned(),
            previous_secret_expires_at: key.previous_secret_expires_at.filter(|until| *until > now),
            updated_at: key.updated_at,
        }
    }
}

/// One attempt to send a delivery.
#[derive(Debug, Clone, Object)]
#[oai(rename = "DeliveryAttempt")]
pub struct DeliveryAttemptView {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    /// The receiver's status, when it answered.
    #[oai(skip_serializing_if_is_none)]
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// `webhook_timeout`, `webhook_connection_failed`, `webhook_rejected`,
    /// `webhook_endpoint_disabled`, `url_not_allowed` (refused by the network policy; final)…
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<ErrorBody>,
    /// The beginning of the receiver's answer.
    #[oai(skip_serializing_if_is_none)]
    pub response_excerpt: Option<String>,
}

impl From<DeliveryAttempt> for DeliveryAttemptView {
    fn from(attempt: DeliveryAttempt) -> Self {
        Self {
            attempt: attempt.attempt,
            started_at: attempt.started_at,
            status_code: attempt.status_code,
            latency_ms: attempt.latency_ms,
            error: attempt.error.map(ErrorBody::from),
            response_excerpt: attempt.response_excerpt,
        }
    }
}

/// One message to one destination; its id is the `webhook-id` header of every attempt.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Delivery")]
pub struct DeliveryView {
    pub id: Uuid,
    pub task_id: Uuid,
    /// Absent for the task's own `webhook_url`.
    #[oai(skip_serializing_if_is_none)]
    pub endpoint_id: Option<Uuid>,
    pub url: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries).
    #[oai(skip_serializing_if_is_none)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub last_status: Option<u16>,
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<DeliveryAttemptView>,
}

impl DeliveryView {
    fn new(delivery: Delivery, attempts: Vec<DeliveryAttempt>) -> Self {
        let pending = delivery.state == operator_store::db::DeliveryState::Pending;
        Self {
            id: delivery.id,
            task_id: delivery.task_id.as_uuid(),
            endpoint_id: delivery.endpoint_id,
            url: delivery.url,
            event_type: delivery.event_type,
            state: delivery.state.as_str().to_owned(),
            attempts: delivery.attempts,
            next_attempt_at: pending.then_some(delivery.next_attempt_at),
            last_status: delivery.last_status,
            last_error: delivery.last_error,
            created_at: delivery.created_at,
            finished_at: delivery.finished_at,
            attempt_log: attempts.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename = "DeliveryList")]
pub struct DeliveryList {
    pub items: Vec<DeliveryView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

codes!(CreateCodes: InvalidJson, InvalidRequest, InvalidUrl, UrlSchemeNotAllowed, UrlNotAllowed);
codes!(EndpointCodes: InvalidParameter, WebhookNotFound);
codes!(UpdateCodes: InvalidJson, InvalidParameter, WebhookNotFound, InvalidRequest, InvalidUrl,
    UrlSchemeNotAllowed, UrlNotAllowed);
codes!(RotateCodes: InvalidJson, InvalidParameter, WebhookNotFound, InvalidRequest);
codes!(RedeliverCodes: InvalidParameter, DeliveryNotFound, InvalidState);
codes!(TaskDeliveriesCodes: InvalidParameter, TaskNotFound);
codes!(RotateKeyCodes: InvalidJson, InvalidRequest);

#[derive(ApiResponse)]
pub enum CreatedWebhook {
    /// Created; the answer carries its secret.
    #[oai(status = 201)]
    Created(Json<WebhookView>),
}

#[derive(ApiResponse)]
pub enum DeletedWebhook {
    /// Deleted, with its deliveries.
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
pub enum Redelivered {
    /// Queued for one more attempt, now.
    #[oai(status = 202)]
    Accepted(Json<DeliveryView>),
}

pub struct WebhooksApi {
    pub state: SharedState,
}

fn webhook_not_found(id: Uuid) -> ApiError {
    ApiError::new(ErrorCode::WebhookNotFound, format!("no webhook {id}"))
}

impl WebhooksApi {
    fn repo(&self) -> WebhookRepository {
        WebhookRepository::new(self.state.repo.connection().clone())
    }

    fn validate_url(&self, url: &str) -> Result<String, CodedError> {
        let parsed = TargetUrl::parse(url)
            .map_err(|error| CodedError::new(error.code, format!("url: {}", error.message)))?;
        self.state
            .policy
            .check_url_statically(parsed.as_url())
            .map_err(|error| CodedError::new(error.code, format!("url: {}", error.message)))?;
        Ok(parsed.as_str().to_owned())
    }

    fn overlap(&self, request: Json<RotateSecretRequest>) -> Result<Duration, CodedError> {
        match request.0.overlap_seconds {
            None => Ok(self.state.settings.webhooks.rotation_overlap),
            Some(seconds) if seconds <= MAX_OVERLAP_SECONDS => Ok(Duration::from_secs(seconds)),
            Some(_) => Err(CodedError::new(
                ErrorCode::InvalidRequest,
                format!("overlap_seconds: must be at most {MAX_OVERLAP_SECONDS}"),
            )),
        }
    }

    async fn delivery_views(
        &self,
        tenant: &TenantId,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<DeliveryView>, ApiError> {
        let repo = self.repo();
        let mut views = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let attempts = repo.delivery_attempts(tenant, delivery.id).await?;
            views.push(DeliveryView::new(delivery, attempts));
        }
        Ok(views)
    }
}

fn validate_event_types(event_types: &[String]) -> Result<(), CodedError> {
    match event_types
        .iter()
        .find(|event_type| !EVENT_TYPES.contains(&event_type.as_str()))
    {
        Some(unknown) => Err(CodedError::new(
            ErrorCode::InvalidRequest,
            format!(
                "event_types: {unknown:?} is not one of {}",
                EVENT_TYPES.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn validate_description(description: Option<&String>) -> Result<(), CodedError> {
    if description.is_some_and(|text| text.len() > MAX_DESCRIPTION_LENGTH) {
        return Err(CodedError::new(
            ErrorCode::InvalidRequest,
            format!("description: longer than {MAX_DESCRIPTION_LENGTH} characters"),
        ));
    }
    Ok(())
}

fn page_limit(limit: Option<u32>) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_DELIVERY_PAGE);
    if !(1..=MAX_DELIVERY_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("limit: must be between 1 and {MAX_DELIVERY_PAGE}"),
        ));
    }
    Ok(u64::from(limit))
}

#[OpenApi(tag = "WebhookTags::Webhooks")]
impl WebhooksApi {
    /// Register an endpoint.
    ///
    /// The answer carries the endpoint's secret (`whsec_…`), which signs every delivery
    /// to it (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[oai(path = "/v1/webhooks", method = "post")]
    async fn create(
        &self,
        caller: Caller,
        body: Json<CreateWebhookRequest>,
    ) -> ApiResult<CreatedWebhook, CreateCodes> {
        let Json(request) = body;
        let url = self.validate_url(&request.url)?;
        let event_types = request.event_types.unwrap_or_default();
        validate_event_types(&event_types)?;
        validate_description(request.description.as_ref())?;
        let endpoint = self
            .repo()
            .create_endpoint(NewEndpoint {
                tenant: caller.tenant.clone(),
                url,
                description: request.description,
                event_types,
                enabled: request.enabled.unwrap_or(true),
            })
            .await?;
        self.state
            .audit(
                &caller,
                "webhook.created",
                "webhook",
                &endpoint.id,
                serde_json::json!({"url": endpoint.url, "event_types": endpoint.event_types}),
            )
            .await;
        Ok(CreatedWebhook::Created(Json(WebhookView::from_endpoint(
            endpoint, true,
        ))))
    }

    /// List the tenant's endpoints.
    #[oai(path = "/v1/webhooks", method = "get")]
    async fn list(&self, caller: Caller) -> ApiResult<Json<WebhookList>, NoCodes> {
        let items = self
            .repo()
            .endpoints(&caller.tenant)
            .await?
            .into_iter()
            .map(|endpoint| WebhookView::from_endpoint(endpoint, false))
            .collect();
        Ok(Json(WebhookList { items }))
    }

    /// Get an endpoint (without its secret).
    #[oai(path = "/v1/webhooks/:id", method = "get")]
    async fn get(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<WebhookView>, EndpointCodes> {
        match self.repo().endpoint(&caller.tenant, id.0).await? {
            Some(endpoint) => Ok(Json(WebhookView::from_endpoint(endpoint, false))),
            None => Err(webhook_not_found(id.0).into()),
        }
    }

    /// Change an endpoint: its URL, description, event filter, or enable/disable it.
    #[oai(path = "/v1/webhooks/:id", method = "patch")]
    async fn update(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        body: Json<UpdateWebhookRequest>,
    ) -> ApiResult<Json<WebhookView>, UpdateCodes> {
        let Json(request) = body;
        let url = request
            .url
            .as_deref()
            .map(|url| self.validate_url(url))
            .transpose()?;
        validate_event_types(request.event_types.as_deref().unwrap_or_default())?;
        validate_description(request.description.value())?;
        let description = match request.description {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(text) => Some(Some(text)),
        };
        let update = EndpointUpdate {
            url,
            description,
            event_types: request.event_types,
            enabled: request.enabled,
        };
        match self
            .repo()
            .update_endpoint(&caller.tenant, id.0, update)
            .await?
        {
            Some(endpoint) => {
                self.state
                    .audit(
                        &caller,
                        "webhook.updated",
                        "webhook",
                &endpoint.id,
                        serde_json::json!({"url": endpoint.url, "event_types": endpoint.event_types, "enabled": endpoint.enabled}),
                    )
                    .await;
                Ok(Json(WebhookView::from_endpoint(endpoint, false)))
            }
            None => Err(webhook_not_found(id.0).into()),
        }
    }

    /// Delete an endpoint and its deliveries.
    #[oai(path = "/v1/webhooks/:id", method = "delete")]
    async fn delete(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<DeletedWebhook, EndpointCodes> {
        if self.repo().delete_endpoint(&caller.tenant, id.0).await? {
            self.state
                .audit(
                    &caller,
                    "webhook.deleted",
                    "webhook",
                    &id.0,
                    serde_json::json!({}),
                )
                .await;
            Ok(DeletedWebhook::Deleted)
        } else {
            Err(webhook_not_found(id.0).into())
        }
    }

    /// Rotate an endpoint's secret.
    ///
    /// The answer carries the new secret. During the overlap every delivery is signed
    /// with both secrets, so the receiver can switch at its own pace.
    #[oai(path = "/v1/webhooks/:id/rotate-secret", method = "post")]
    async fn rotate(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        body: Json<RotateSecretRequest>,
    ) -> ApiResult<Json<WebhookView>, RotateCodes> {
        let overlap = self.overlap(body)?;
        match self
            .repo()
            .rotate_endpoint_secret(&caller.tenant, id.0, overlap)
            .await?
        {
            Some(endpoint) => {
                self.state
                    .audit(
                        &caller,
                        "webhook.secret_rotated",
                        "webhook",
                        &endpoint.id,
                        serde_json::json!({"overlap_seconds": overlap.as_secs()}),
                    )
                    .await;
                Ok(Json(WebhookView::from_endpoint(endpoint, true)))
            }
            None => Err(webhook_not_found(id.0).into()),
        }
    }

    /// An endpoint's deliveries, newest first, each with its attempts.
    #[oai(path = "/v1/webhooks/:id/deliveries", method = "get")]
    async fn deliveries(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<DeliveryList>, EndpointCodes> {
        let limit = page_limit(limit.0)?;
        let before = cursor
            .0
            .as_deref()
            .filter(|cursor| !cursor.is_empty())
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    "cursor: not a cursor this API returned",
                )
            })?;
        let tenant = caller.tenant.clone();
        let repo = self.repo();
        if repo.endpoint(&tenant, id.0).await?.is_none() {
            return Err(webhook_not_found(id.0).into());
        }
        let filter = DeliveryFilter {
            endpoint_id: Some(id.0),
            before,
            // One extra row tells whether another page follows.
            limit: limit + 1,
            ..DeliveryFilter::default()
        };
        let mut deliveries = repo.deliveries(&tenant, &filter).await?;
        let next_cursor = if deliveries.len() as u64 > limit {
            deliveries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            deliveries.last().map(|delivery| delivery.id.to_string())
        } else {
            None
        };
        let items = self.delivery_views(&caller.tenant, deliveries).await?;
        Ok(Json(DeliveryList { items, next_cursor }))
    }

    /// Send a finished delivery once more, now (same `webhook-id`).
    #[oai(
        path = "/v1/webhooks/:id/deliveries/:delivery_id/redeliver",
        method = "post"
    )]
    async fn redeliver(
        &self,
        caller: Caller,
        id: Path<Uuid>,
        delivery_id: Path<Uuid>,
    ) -> ApiResult<Redelivered, RedeliverCodes> {
        let tenant = caller.tenant.clone();
        let repo = self.repo();
        let not_found = || {
            ApiError::new(
                ErrorCode::DeliveryNotFound,
                format!("no delivery {} for webhook {}", delivery_id.0, id.0),
            )
        };
        match repo.delivery(&tenant, delivery_id.0).await? {
            Some(delivery) if delivery.endpoint_id == Some(id.0) => {}
            _ => return Err(not_found().into()),
        }
        match repo.redeliver(&tenant, delivery_id.0).await? {
            None => Err(not_found().into()),
            Some(false) => Err(ApiError::new(
                ErrorCode::InvalidState,
                "the delivery is still pending; it is sent on its schedule",
            )
            .into()),
            Some(true) => {
                self.state
                    .audit(
                        &caller,
                        "delivery.redelivered",
                        "delivery",
                        &delivery_id.0,
                        serde_json::json!({"webhook": id.0}),
                    )
                    .await;
                let delivery = repo
                    .delivery(&tenant, delivery_id.0)
                    .await?
                    .ok_or_else(|| ApiError::internal(&"a redelivered delivery vanished"))?;
                let mut views = self.delivery_views(&caller.tenant, vec![delivery]).await?;
                let view = views
                    .pop()
                    .ok_or_else(|| ApiError::internal(&"no view for a delivery"))?;
                Ok(Redelivered::Accepted(Json(view)))
            }
        }
    }

    /// Every webhook delivery of one task (its own `webhook_url` and the endpoints').
    #[oai(path = "/v1/tasks/:id/webhook-deliveries", method = "get")]
    async fn task_deliveries(
        &self,
        caller: Caller,
        id: Path<Uuid>,
    ) -> ApiResult<Json<DeliveryList>, TaskDeliveriesCodes> {
        let tenant = caller.tenant.clone();
        let task_id = TaskId::from(id.0);
        if self.state.repo.get(&tenant, task_id).await?.is_none() {
            return Err(ApiError::new(ErrorCode::TaskNotFound, format!("no task {}", id.0)).into());
        }
        let filter = DeliveryFilter {
            task_id: Some(task_id),
            limit: u64::from(MAX_DELIVERY_PAGE),
            ..DeliveryFilter::default()
        };
        let deliveries = self.repo().deliveries(&tenant, &filter).await?;
        let items = self.delivery_views(&caller.tenant, deliveries).await?;
        Ok(Json(DeliveryList {
            items,
            next_cursor: None,
        }))
    }

    /// The tenant's default signing key (created on first use): it signs deliveries to
    /// per-task `webhook_url`s.
    #[oai(path = "/v1/webhook-signing-key", method = "get")]
    async fn signing_key(&self, caller: Caller) -> ApiResult<Json<SigningKeyView>, NoCodes> {
        let key = self.repo().signing_key(&caller.tenant).await?;
        Ok(Json(key.into()))
    }

    /// Rotate the tenant's default signing key; the previous one keeps signing during
    /// the overlap.
    #[oai(path = "/v1/webhook-signing-key/rotate", method = "post")]
    async fn rotate_signing_key(
        &self,
        caller: Caller,
        body: Json<RotateSecretRequest>,
    ) -> ApiResult<Json<SigningKeyView>, RotateKeyCodes> {
        let overlap = self.overlap(body)?;
        let key = self
            .repo()
            .rotate_signing_key(&caller.tenant, overlap)
            .await?;
        self.state
            .audit(
                &caller,
                "signing_key.rotated",
                "signing_key",
                &caller.tenant,
                serde_json::json!({"overlap_seconds": overlap.as_secs()}),
            )
            .await;
        Ok(Json(key.into()))
    }
}
