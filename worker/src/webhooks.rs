//! The webhook dispatcher: drains the delivery outbox, signs each message (Standard
//! Webhooks), sends it, records every attempt and retries on the configured schedule.
//!
//! It runs in every worker process, so it scales with the workers. Rows are claimed
//! under a lease (see `WebhookRepository::claim`), so no two dispatchers send the same
//! delivery at once; a dispatcher killed mid-send leaves the lease to expire and
//! another sends the delivery again, with the same `webhook-id` (at least once).
//!
//! Destinations go through the same network policy as browsing, checked after DNS
//! resolution; the connection is then pinned to the checked addresses (reqwest's
//! `resolve_to_addrs`), so an answer that changes between the check and the connect
//! (DNS rebinding) cannot reach a refused address. Redirects are not followed and
//! proxies from the environment are not used, for the same reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use operator_config::WebhookSettings;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use operator_domain::webhooks::{LinkGrant, SigningKeys, artifact_keys, next_delay, render_body};
use operator_store::db::{
    ClaimedDelivery, DeliveryAttempt, RecordOutcome, RepoError, Verdict, WebhookRepository, now,
};
use operator_store::signing::LinkSigner;
use operator_store::storage::ArtifactStore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use url::{Host, Url};

/// Sent as `user-agent`, so receivers can tell our requests apart.
const USER_AGENT: &str = concat!("OperatorNext-Webhooks/", env!("CARGO_PKG_VERSION"));

pub struct Dispatcher {
    repo: WebhookRepository,
    policy: NetworkPolicy,
    settings: WebhookSettings,
    /// Base of the artifact links in payloads.
    public_url: String,
    /// Presigns direct download links when artifacts live on S3.
    storage: Option<ArtifactStore>,
    /// Signs the artifact links payloads carry (`signed_url`).
    links: LinkSigner,
}

/// The result of one send, before it is recorded.
struct Sent {
    attempt: DeliveryAttempt,
    verdict: Verdict,
}

impl Dispatcher {
    pub fn new(
        repo: WebhookRepository,
        policy: NetworkPolicy,
        settings: WebhookSettings,
        public_url: String,
        storage: Option<ArtifactStore>,
    ) -> Self {
        let links = LinkSigner::new(repo.connection().clone());
        Self {
            repo,
            policy,
            settings,
            public_url,
            storage,
            links,
        }
    }

    /// Presigned download URLs of the payload's artifacts, by artifact id (empty when
    /// the store cannot presign or the TTL is zero; a failure only loses the links).
    async fn signed_links(
        &self,
        payload: &serde_json::Value,
    ) -> std::collections::HashMap<String, String> {
        let mut links = std::collections::HashMap::new();
        let Some(storage) = &self.storage else {
            return links;
        };
        if self.settings.artifact_url_ttl.is_zero() {
            return links;
        }
        for (id, key) in artifact_keys(payload) {
            match storage
                .signed_get_url(&key, self.settings.artifact_url_ttl)
                .await
            {
                Ok(Some(url)) => {
                    links.insert(id, url);
                }
                Ok(None) => return links,
                Err(error) => warn!(error = %error, "presigning an artifact link failed"),
            }
        }
        links
    }

    /// Claims and sends due deliveries until `stop` fires; a batch in flight finishes
    /// (each send is bounded by the request timeout).
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        info!(
            concurrency = self.settings.concurrency,
            "webhook dispatcher running"
        );
        while !stop.is_cancelled() {
            let idle = match self.run_once().await {
                Ok(sent) => sent == 0,
                Err(error) => {
                    warn!(error = %error, "claiming webhook deliveries failed");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
        info!("webhook dispatcher stopped");
    }

    /// Claims one batch of due deliveries and sends them; returns how many it sent.
    pub async fn run_once(&self) -> Result<usize, RepoError> {
        let limit = u64::try_from(self.settings.concurrency).unwrap_or(1);
        let claimed = self.repo.claim(limit, self.settings.lease_ttl).await?;
        let count = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|claimed| {
            let span = info_span!(
                "webhook",
                delivery_id = %claimed.delivery.id,
                task_id = %claimed.delivery.task_id,
                attempt = claimed.delivery.attempts + 1,
            );
            self.deliver(claimed).instrument(span)
        }))
        .await;
        Ok(count)
    }

    async fn deliver(&self, claimed: ClaimedDelivery) {
        let sent = self.send(&claimed).await;
        let status = sent.attempt.status_code;
        match self
            .repo
            .record_attempt(
                &claimed,
                &sent.attempt,
                &sent.verdict,
                self.settings.disable_after,
            )
            .await
        {
            Ok(RecordOutcome::Recorded) => match &sent.verdict {
                Verdict::Delivered => info!(status, "webhook delivered"),
                Verdict::Retry(at) => {
                    info!(status, error = ?sent.attempt.error, retry_at = %at, "webhook attempt failed; retrying later")
                }
                Verdict::Failed => {
                    warn!(status, error = ?sent.attempt.error, "webhook delivery failed for good")
                }
                Verdict::FailedAndDisable(reason) => {
                    warn!(status, reason = %reason, "webhook endpoint disabled")
                }
            },
            Ok(RecordOutcome::LeaseLost) => {
                warn!("lease on the delivery lost before the attempt was recorded")
            }
            Err(error) => {
                warn!(error = %error, "cannot record the webhook attempt; the lease will expire and it is sent again")
            }
        }
    }

    async fn send(&self, claimed: &ClaimedDelivery) -> Sent {
        let delivery = &claimed.delivery;
        let started_at = now();
        let clock = Instant::now();
        let finish = |error: Option<CodedError>,
                      status_code: Option<u16>,
                      response_excerpt: Option<String>,
                      verdict: Verdict| Sent {
            attempt: DeliveryAttempt {
                attempt: delivery.attempts + 1,
                started_at,
                status_code,
                latency_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
                error,
                response_excerpt,
            },
            verdict,
        };
        let retry_or_fail =
            || match next_delay(&self.settings.retry_delays(), delivery.attempts + 1) {
                Some(delay) => Verdict::Retry(operator_domain::time::later(Utc::now(), delay)),
                None => Verdict::Failed,
            };

        let keys = match self.signing_keys(claimed).await {
            Ok(Some(keys)) => keys,
            Ok(None) => {
                let error = CodedError::new(
                    ErrorCode::WebhookEndpointDisabled,
                    "the endpoint is disabled or deleted; redeliver once it is enabled",
                );
                return finish(Some(error), None, None, Verdict::Failed);
            }
            Err(error) => {
                let error = CodedError::new(ErrorCode::Unavailable, error.to_string());
                return finish(Some(error), None, None, retry_or_fail());
            }
        };
        let url = match Url::parse(&delivery.url) {
            Ok(url) => url,
            Err(error) => {
                let error = CodedError::new(ErrorCode::InvalidUrl, error.to_string());
                return finish(Some(error), None, None, Verdict::Failed);
            }
        };
        // The system resolver has timeouts of its own, but they can add up to more than
        // a request may take: bound the lookup like the request.
        let checked = tokio::time::timeout(
            self.settings.request_timeout,
            crate::resolve::check_url(&self.policy, &url),
        )
        .await;
        let Ok(checked) = checked else {
            let error = CodedError::new(
                ErrorCode::WebhookConnectionFailed,
                "resolving the receiver's host timed out",
            );
            return finish(Some(error), None, None, retry_or_fail());
        };
        let addresses = match checked {
            Ok(addresses) => addresses,
            Err(error) if error.code == ErrorCode::NavigationFailed => {
                let error = CodedError::new(ErrorCode::WebhookConnectionFailed, error.message);
                return finish(Some(error), None, None, retry_or_fail());
            }
            // A refused destination is final: sending again would be refused again.
            Err(error) => return finish(Some(error), None, None, Verdict::Failed),
        };
        let client = match self.client_for(&url, &addresses) {
            Ok(client) => client,
            Err(error) => {
                let error = CodedError::new(ErrorCode::Internal, error.to_string());
                return finish(Some(error), None, None, retry_or_fail());
            }
        };
        let signed = self.signed_links(&delivery.payload).await;
        // Without the key the payload still carries `url`; the links are only lost.
        let key = match self.links.current().await {
            Ok(key) => Some(key),
            Err(error) => {
                warn!(error = %error, "cannot read the link key; the payload has no signed_url");
                None
            }
        };
        let ttl = self.settings.artifact_url_ttl;
        // `webhooks.artifact_url_ttl = 0s` leaves both kinds of link out.
        let grant = key
            .as_ref()
            .filter(|_| !ttl.is_zero())
            .map(|key| LinkGrant {
                key,
                tenant: &delivery.tenant,
                expires: operator_domain::time::later(Utc::now(), ttl).timestamp(),
            });
        let body = render_body(&delivery.payload, &self.public_url, &signed, grant.as_ref());
        let message_id = delivery.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = keys.signature_header(&message_id, timestamp, &body);
        let request = client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", USER_AGENT)
            .header("webhook-id", &message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return finish(Some(request_error(&error)), None, None, retry_or_fail()),
        };
        let status = response.status();
        let excerpt = read_excerpt(&mut response, self.settings.response_excerpt_bytes).await;
        let code = Some(status.as_u16());
        if status.is_success() {
            return finish(None, code, excerpt, Verdict::Delivered);
        }
        let error = CodedError::new(
            ErrorCode::WebhookRejected,
            format!("the receiver answered {status}"),
        );
        if status == reqwest::StatusCode::GONE {
            let verdict = if delivery.endpoint_id.is_some() {
                Verdict::FailedAndDisable(
                    "the endpoint answered 410 Gone: it asked not to be called again".to_owned(),
                )
            } else {
                Verdict::Failed
            };
            return finish(Some(error), code, excerpt, verdict);
        }
        finish(Some(error), code, excerpt, retry_or_fail())
    }

    /// The secrets that sign this delivery, or `None` when its endpoint is disabled or gone.
    async fn signing_keys(
        &self,
        claimed: &ClaimedDelivery,
    ) -> Result<Option<SigningKeys>, RepoError> {
        let delivery = &claimed.delivery;
        let at = now();
        if delivery.endpoint_id.is_some() {
            return Ok(self
                .repo
                .endpoint_for_delivery(delivery)
                .await?
                .filter(|endpoint| endpoint.enabled)
                .map(|endpoint| endpoint.signing_keys(at)));
        }
        Ok(Some(
            self.repo
                .signing_key(&delivery.tenant)
                .await?
                .signing_keys(at),
        ))
    }

    /// A client that connects only to the checked addresses and follows no redirect.
    fn client_for(
        &self,
        url: &Url,
        addresses: &[std::net::SocketAddr],
    ) -> reqwest::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.settings.request_timeout)
            .connect_timeout(self.settings.request_timeout);
        if let Some(Host::Domain(domain)) = url.host() {
            builder = builder.resolve_to_addrs(domain, addresses);
        }
        builder.build()
    }
}

fn request_error(error: &reqwest::Error) -> CodedError {
    if error.is_timeout() {
        CodedError::new(
            ErrorCode::WebhookTimeout,
            "the receiver did not answer in time",
        )
    } else {
        CodedError::new(
            ErrorCode::WebhookConnectionFailed,
            format!("cannot reach the receiver: {error}"),
        )
    }
}

/// Reads at most `cap` bytes of the answer: enough to show the tenant what the receiver
/// said, never a whole large body.
async fn read_excerpt(response: &mut reqwest::Response, cap: usize) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(cap);
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// How long the dispatcher waits after a shutdown for its batch in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
