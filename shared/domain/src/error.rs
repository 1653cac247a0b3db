//! Stable, machine-readable error codes.
//!
//! Every failure a client or an operator can observe carries one of these codes:
//! API error bodies (`{code, message}`), a task's `error.code`, an attempt's record.
//! The strings are part of the public contract: add codes, never rename them.
//! Only the api crate maps codes to HTTP statuses.

use serde::{Deserialize, Serialize};

/// A stable error code. What each one means is in [`ErrorCode::meaning`], which the
/// API document shows too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // --- request validation (4xx) ---
    InvalidJson,
    InvalidRequest,
    InvalidParameter,
    UnknownKind,
    InvalidInput,
    InvalidUrl,
    UrlSchemeNotAllowed,
    UrlNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
    TaskNotFound,
    ArtifactNotFound,
    InvalidState,
    IdempotencyConflict,
    QueueNotFound,
    UnknownQueue,
    WebhookNotFound,
    DeliveryNotFound,
    Unauthenticated,
    Forbidden,
    RateLimited,
    QuotaExceeded,
    KeyNotFound,
    TenantExists,
    TenantNotFound,
    ProviderNotFound,
    MemberNotFound,
    InvitationNotFound,
    SignInFailed,
    NoMembership,

    // --- task outcomes (worker) ---
    NavigationFailed,
    WaitTimeout,
    SelectorNotFound,
    StepFailed,
    TaskTimeout,
    BrowserError,
    BrowserCrashed,
    Cancelled,
    StorageError,

    // --- agent task outcomes ---
    AgentFailed,
    AgentStuck,
    AgentMaxSteps,
    BudgetExceeded,
    InvalidOutput,
    LlmNotConfigured,
    LlmAuthFailed,
    LlmRejected,
    LlmUnavailable,

    // --- webhook delivery attempts ---
    WebhookTimeout,
    WebhookConnectionFailed,
    WebhookRejected,
    WebhookEndpointDisabled,

    // --- infrastructure (5xx) ---
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The wire form, e.g. `"invalid_url"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidParameter => "invalid_parameter",
            Self::UnknownKind => "unknown_kind",
            Self::InvalidInput => "invalid_input",
            Self::InvalidUrl => "invalid_url",
            Self::UrlSchemeNotAllowed => "url_scheme_not_allowed",
            Self::UrlNotAllowed => "url_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TaskNotFound => "task_not_found",
            Self::ArtifactNotFound => "artifact_not_found",
            Self::InvalidState => "invalid_state",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::QueueNotFound => "queue_not_found",
            Self::UnknownQueue => "unknown_queue",
            Self::WebhookNotFound => "webhook_not_found",
            Self::DeliveryNotFound => "delivery_not_found",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::KeyNotFound => "key_not_found",
            Self::TenantExists => "tenant_exists",
            Self::TenantNotFound => "tenant_not_found",
            Self::ProviderNotFound => "provider_not_found",
            Self::MemberNotFound => "member_not_found",
            Self::InvitationNotFound => "invitation_not_found",
            Self::SignInFailed => "sign_in_failed",
            Self::NoMembership => "no_membership",
            Self::NavigationFailed => "navigation_failed",
            Self::WaitTimeout => "wait_timeout",
            Self::SelectorNotFound => "selector_not_found",
            Self::StepFailed => "step_failed",
            Self::TaskTimeout => "task_timeout",
            Self::BrowserError => "browser_error",
            Self::BrowserCrashed => "browser_crashed",
            Self::Cancelled => "cancelled",
            Self::StorageError => "storage_error",
            Self::AgentFailed => "agent_failed",
            Self::AgentStuck => "agent_stuck",
            Self::AgentMaxSteps => "agent_max_steps",
            Self::BudgetExceeded => "budget_exceeded",
            Self::InvalidOutput => "invalid_output",
            Self::LlmNotConfigured => "llm_not_configured",
            Self::LlmAuthFailed => "llm_auth_failed",
            Self::LlmRejected => "llm_rejected",
            Self::LlmUnavailable => "llm_unavailable",
            Self::WebhookTimeout => "webhook_timeout",
            Self::WebhookConnectionFailed => "webhook_connection_failed",
            Self::WebhookRejected => "webhook_rejected",
            Self::WebhookEndpointDisabled => "webhook_endpoint_disabled",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// What the code means, in one sentence (the API document lists these under each
    /// status an operation can answer).
    pub fn meaning(self) -> &'static str {
        match self {
            Self::InvalidJson => "The body is not valid JSON.",
            Self::InvalidRequest => "The body is JSON but not the expected shape.",
            Self::InvalidParameter => "A path or query parameter is malformed.",
            Self::UnknownKind => "`kind` names no task kind this service runs.",
            Self::InvalidInput => "The task's `input` does not fit its kind.",
            Self::InvalidUrl => "The target URL cannot be parsed.",
            Self::UrlSchemeNotAllowed => "The target URL uses a scheme other than http or https.",
            Self::UrlNotAllowed => "The network policy refuses the target address.",
            Self::PayloadTooLarge => "The body is larger than the configured limit.",
            Self::UnsupportedMediaType => "The request's content type is not JSON.",
            Self::NotFound => "No route or resource at this path.",
            Self::MethodNotAllowed => "The route exists but not for this method.",
            Self::TaskNotFound => "No task with this id for this tenant.",
            Self::ArtifactNotFound => "No artifact with this id for this tenant.",
            Self::InvalidState => "The task is in a state that does not allow the operation.",
            Self::IdempotencyConflict => {
                "The `Idempotency-Key` was already used for a different request."
            }
            Self::QueueNotFound => "No queue with this name.",
            Self::UnknownQueue => "A submitted task names a queue nobody created.",
            Self::WebhookNotFound => "No webhook endpoint with this id for this tenant.",
            Self::DeliveryNotFound => "No webhook delivery with this id for this endpoint.",
            Self::Unauthenticated => {
                "No credentials, or credentials that are malformed, unknown, expired or revoked."
            }
            Self::Forbidden => "The caller's role lacks the permission the operation needs.",
            Self::RateLimited => {
                "Too many requests (or failed sign-ins); retry after `Retry-After`."
            }
            Self::QuotaExceeded => {
                "The tenant's monthly quota of tasks or browser time is used up; it is whole again at the start of the next month (UTC), in `Retry-After` seconds."
            }
            Self::KeyNotFound => "No API key with this id for this tenant.",
            Self::TenantExists => "A tenant with this id exists already.",
            Self::TenantNotFound => "No tenant with this id.",
            Self::ProviderNotFound => "No sign-in provider with this name is configured.",
            Self::MemberNotFound => "No member with this user id in this tenant.",
            Self::InvitationNotFound => "No invitation with this id for this tenant.",
            Self::SignInFailed => {
                "The sign-in did not verify: an unknown or used state, a refused code, or an \
                 ID token with a bad signature, issuer, audience, nonce or time."
            }
            Self::NoMembership => {
                "Signed in, but a member of no tenant: ask for an invitation (or a verified \
                 email of a mapped domain)."
            }
            Self::NavigationFailed => {
                "Navigation failed (DNS, connection refused, TLS, HTTP error page)."
            }
            Self::WaitTimeout => "A wait condition (selector, load state) was not met in time.",
            Self::SelectorNotFound => {
                "A step's selector matched no element within the step's timeout."
            }
            Self::StepFailed => {
                "A step could not do what it asks (a script threw, an option does not exist)."
            }
            Self::TaskTimeout => "The task ran past its timeout.",
            Self::BrowserError => "The browser failed while running the task.",
            Self::BrowserCrashed => "The browser process died or stopped answering.",
            Self::Cancelled => "The task was cancelled.",
            Self::StorageError => "Storing an artifact failed.",
            Self::AgentFailed => {
                "The agent gave up: the model called `fail`, saying why (the goal cannot be reached on this site)."
            }
            Self::AgentStuck => {
                "The agent repeated itself (the same action on the same element, or no change on the page) after being told so."
            }
            Self::AgentMaxSteps => "The agent took `max_steps` steps without reaching its goal.",
            Self::BudgetExceeded => {
                "The agent's budget (`max_tokens`, `max_cost_usd` or `max_duration_ms`) is spent."
            }
            Self::InvalidOutput => {
                "The agent's output did not satisfy `output_schema`, even after one repair turn."
            }
            Self::LlmNotConfigured => {
                "Agent tasks need a language model: set `llm.base_url` (and `llm.model`), or a price for the model when the budget has `max_cost_usd`."
            }
            Self::LlmAuthFailed => "The model provider refused the API key (401 or 403).",
            Self::LlmRejected => {
                "The model provider refused the request (an unknown model, a request it cannot serve)."
            }
            Self::LlmUnavailable => {
                "The model provider did not answer, or kept answering 429 or 5xx after the retries."
            }
            Self::WebhookTimeout => "The receiver did not answer within the delivery timeout.",
            Self::WebhookConnectionFailed => {
                "The receiver could not be reached (DNS, connection, TLS)."
            }
            Self::WebhookRejected => "The receiver answered with a status other than 2xx.",
            Self::WebhookEndpointDisabled => {
                "The endpoint is disabled (or deleted): the delivery is not sent."
            }
            Self::Unavailable => "A dependency (database, queue, storage) is unreachable.",
            Self::Internal => "An unexpected internal error; details are in the server log only.",
        }
    }

    /// Whether a task that failed with this code may succeed if run again.
    ///
    /// Final codes describe the task itself (bad input, a refused address): running it
    /// again would fail the same way, so it fails at once instead of burning attempts.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::NavigationFailed
                | Self::BrowserError
                | Self::BrowserCrashed
                | Self::StorageError
                | Self::LlmUnavailable
                | Self::Unavailable
                | Self::Internal
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An error that a client may see: a stable code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CodedError {
    pub code: ErrorCode,
    pub message: String,
}

impl CodedError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_serde_form() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::UrlSchemeNotAllowed,
            ErrorCode::TaskNotFound,
            ErrorCode::BrowserCrashed,
            ErrorCode::Internal,
        ] {
            let serialized = serde_json::to_value(code).expect("serializes");
            assert_eq!(serialized, serde_json::Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn input_errors_are_final_and_infrastructure_errors_retry() {
        assert!(!ErrorCode::InvalidInput.is_retryable());
        assert!(!ErrorCode::UrlNotAllowed.is_retryable());
        assert!(!ErrorCode::TaskTimeout.is_retryable());
        assert!(!ErrorCode::SelectorNotFound.is_retryable());
        assert!(!ErrorCode::StepFailed.is_retryable());
        assert!(ErrorCode::BrowserCrashed.is_retryable());
        assert!(ErrorCode::NavigationFailed.is_retryable());
    }
}
