//! API errors: the only place error codes become HTTP statuses.
//!
//! A handler returns its value or an [`ApiError`], which knows its code; [`status_for`]
//! turns the code into the status, here and nowhere else. An operation declares the
//! codes it can answer with once, as a [`Codes`] list (see [`codes!`]), and its return
//! type `Result<T, Failure<List>>` puts one response per status in the OpenAPI
//! document, with the codes behind it; `internal` (500) and `unavailable` (503) are on
//! every operation.
//!
//! Every error body is `{code, message}`. Errors raised before a handler runs (an
//! unknown route, a malformed path parameter, a body over the size limit) go through
//! [`error_response`], so they carry a code too. 5xx bodies stay opaque; the cause is
//! logged.

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Mutex, OnceLock};

use operator_domain::error::{CodedError, ErrorCode};
use operator_store::db::RepoError;
use operator_store::limits::{QuotaKind, QuotaRefusal};
use operator_store::queue::QueueError;
use operator_store::storage::StorageError;
use poem::Response;
use poem::http::StatusCode;
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};
use tracing::error;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Deserialize)]
#[oai(rename = "Error")]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `invalid_url`.
    pub code: String,
    /// What went wrong, for humans.
    pub message: String,
}

impl From<CodedError> for ErrorBody {
    fn from(error: CodedError) -> Self {
        Self {
            code: error.code.as_str().to_owned(),
            message: error.message,
        }
    }
}

/// The HTTP status for a code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson | ErrorCode::InvalidParameter => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest
        | ErrorCode::UnknownKind
        | ErrorCode::UnknownQueue
        | ErrorCode::InvalidInput
        | ErrorCode::InvalidUrl
        | ErrorCode::UrlSchemeNotAllowed
        | ErrorCode::UrlNotAllowed
        | ErrorCode::LlmNotConfigured => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::NotFound
        | ErrorCode::TaskNotFound
        | ErrorCode::ArtifactNotFound
        | ErrorCode::QueueNotFound
        | ErrorCode::WebhookNotFound
        | ErrorCode::DeliveryNotFound
        | ErrorCode::KeyNotFound
        | ErrorCode::TenantNotFound
        | ErrorCode::ProviderNotFound
        | ErrorCode::MemberNotFound
        | ErrorCode::InvitationNotFound => StatusCode::NOT_FOUND,
        ErrorCode::Unauthenticated | ErrorCode::SignInFailed => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::NoMembership => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited | ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InvalidState | ErrorCode::IdempotencyConflict | ErrorCode::TenantExists => {
            StatusCode::CONFLICT
        }
        // How a task failed, when a one-call endpoint answers with it: the page did not
        // have what the steps asked for (422), the task was cancelled (409), the target
        // site failed (502) or did not answer in time (504).
        ErrorCode::SelectorNotFound | ErrorCode::StepFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Cancelled => StatusCode::CONFLICT,
        ErrorCode::NavigationFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::WaitTimeout | ErrorCode::TaskTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    error: CodedError,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: CodedError::new(code, message),
            retry_after: None,
        }
    }

    /// With a `Retry-After` header of `duration` (whole seconds, rounded up, at least 1).
    pub fn retry_after(mut self, duration: std::time::Duration) -> Self {
        let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.error.code
    }

    /// An internal failure: logged with its cause, answered without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// A dependency that does not answer.
    pub fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Self {
        error!(dependency = what, error = %cause, "dependency unavailable");
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable; retry later"),
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::from(self.error.clone())
    }
}

impl From<CodedError> for ApiError {
    fn from(error: CodedError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl From<operator_store::sessions::SessionTokenError> for ApiError {
    fn from(error: operator_store::sessions::SessionTokenError) -> Self {
        match error {
            operator_store::sessions::SessionTokenError::Invalid => {
                Self::new(ErrorCode::Unauthenticated, error.to_string())
            }
            operator_store::sessions::SessionTokenError::Store(error) => error.into(),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Database(cause) => Self::unavailable("the database", &cause),
            RepoError::Corrupt(cause) => Self::internal(&cause),
            RepoError::QuotaExceeded { limit } => QuotaRefusal {
                kind: QuotaKind::Tasks,
                limit,
                period: operator_store::db::Period::containing(chrono::Utc::now()),
            }
            .into(),
        }
    }
}

/// `429 quota_exceeded`, with `Retry-After` until the quota is whole again.
impl From<QuotaRefusal> for ApiError {
    fn from(refusal: QuotaRefusal) -> Self {
        let now = chrono::Utc::now();
        Self::new(
            ErrorCode::QuotaExceeded,
            format!(
                "the tenant has used its monthly quota of {} {} in {}; more from {}",
                refusal.limit,
                refusal.kind.as_str().replace('_', " "),
                refusal.period,
                refusal.period.end().to_rfc3339()
            ),
        )
        .retry_after(refusal.retry_after(now))
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        Self::unavailable("the queue", &error)
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::NotFound(key) => {
                error!(key = %key, "artifact recorded but missing from storage");
                Self::new(
                    ErrorCode::ArtifactNotFound,
                    "the artifact's file is missing from storage",
                )
            }
            other => Self::unavailable("artifact storage", &other),
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        status_for(self.error.code)
    }

    fn as_response(&self) -> Response {
        let mut response = json_error(status_for(self.error.code), self.body());
        if let Some(seconds) = self.retry_after
            && let Ok(value) = seconds.to_string().parse()
        {
            response.headers_mut().insert("retry-after", value);
        }
        response
    }
}

/// The codes one operation can answer with (besides `internal` and `unavailable`,
/// which every operation can). Declared with [`codes!`].
pub trait Codes: Send + Sync + 'static {
    const CODES: &'static [ErrorCode];
}

/// Declares a zero-sized [`Codes`] list: `codes!(GetTask: InvalidParameter, TaskNotFound);`
#[macro_export]
macro_rules! codes {
    ($(#[$meta:meta])* $name:ident: $($code:ident),* $(,)?) => {
        $(#[$meta])*
        pub struct $name;

        impl $crate::error::Codes for $name {
            const CODES: &'static [operator_domain::error::ErrorCode] =
                &[$(operator_domain::error::ErrorCode::$code),*];
        }
    };
}

codes!(
    /// An operation that fails only when the server or a dependency does.
    NoCodes:
);

/// The error an operation answers with; `C` lists the codes it may carry, for the
/// OpenAPI document. Anything that converts into an [`ApiError`] converts into it, so
/// handlers use `?` on repository, queue and storage errors alike.
pub struct Failure<C: Codes> {
    error: ApiError,
    codes: PhantomData<fn() -> C>,
}

/// What a handler returns.
pub type ApiResult<T, C> = Result<T, Failure<C>>;

impl<C: Codes> Failure<C> {
    pub fn code(&self) -> ErrorCode {
        self.error.code()
    }
}

impl<C: Codes> std::fmt::Debug for Failure<C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(formatter)
    }
}

impl<C: Codes, E: Into<ApiError>> From<E> for Failure<C> {
    fn from(error: E) -> Self {
        let error = error.into();
        debug_assert!(
            is_declared(C::CODES, error.code()),
            "{} answered with `{}`, which its code list does not declare",
            std::any::type_name::<C>(),
            error.code()
        );
        Self {
            error,
            codes: PhantomData,
        }
    }
}

impl<C: Codes> From<Failure<C>> for poem::Error {
    fn from(failure: Failure<C>) -> Self {
        poem::Error::from(failure.error)
    }
}

/// Codes every operation can answer with: the server failed, or a dependency did not
/// answer.
const ALWAYS: [ErrorCode; 2] = [ErrorCode::Internal, ErrorCode::Unavailable];

fn is_declared(codes: &[ErrorCode], code: ErrorCode) -> bool {
    codes.contains(&code) || ALWAYS.contains(&code)
}

impl<C: Codes> ApiResponse for Failure<C> {
    fn meta() -> MetaResponses {
        let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
        for &code in C::CODES.iter().chain(ALWAYS.iter()) {
            let codes = by_status.entry(status_for(code).as_u16()).or_default();
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        let responses = by_status
            .into_iter()
            .map(|(status, codes)| MetaResponse {
                description: intern(describe(&codes)),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: <Json<ErrorBody> as Payload>::CONTENT_TYPE,
                    schema: <Json<ErrorBody> as Payload>::schema_ref(),
                }],
                headers: Vec::new(),
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// One line per code: `` `task_not_found`: No task with this id for this tenant. ``
fn describe(codes: &[ErrorCode]) -> String {
    codes
        .iter()
        .map(|code| format!("`{code}`: {}", code.meaning()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The document wants `&'static str` descriptions; each distinct one is leaked once,
/// however often the document is built.
fn intern(text: String) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = seen.get(text.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    seen.insert(leaked);
    leaked
}

fn json_error(status: StatusCode, body: ErrorBody) -> Response {
    let text = serde_json::json!({"code": body.code, "message": body.message}).to_string();
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(text)
}

/// Turns any error that reaches the top of the router into a `{code, message}` body.
pub async fn error_response(error: poem::Error) -> Response {
    if let Some(api_error) = error.downcast_ref::<ApiError>() {
        return poem::error::ResponseError::as_response(api_error);
    }
    let status = error.status();
    if status.is_server_error() {
        error!(status = status.as_u16(), error = %error, "request failed");
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        return json_error(
            status,
            ErrorBody {
                code: code.as_str().to_owned(),
                message: "internal error; see the server log".to_owned(),
            },
        );
    }
    let (code, message) = if error.is::<poem_openapi::error::ParseRequestPayloadError>() {
        (ErrorCode::InvalidRequest, error.to_string())
    } else if error.is::<poem_openapi::error::ParseParamError>()
        || error.is::<poem_openapi::error::ParsePathError>()
    {
        (ErrorCode::InvalidParameter, error.to_string())
    } else if error.is::<poem_openapi::error::ContentTypeError>() {
        (ErrorCode::UnsupportedMediaType, error.to_string())
    } else {
        match status {
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route".to_owned()),
            StatusCode::METHOD_NOT_ALLOWED => (
                ErrorCode::MethodNotAllowed,
                "this route does not accept that method".to_owned(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, error.to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (ErrorCode::UnsupportedMediaType, error.to_string())
            }
            _ => (ErrorCode::InvalidRequest, error.to_string()),
        }
    };
    json_error(
        status,
        ErrorBody {
            code: code.as_str().to_owned(),
            message,
        },
    )
}
