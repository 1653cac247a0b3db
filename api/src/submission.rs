//! Parsing and validating a task submission.
//!
//! The body is parsed by hand rather than by poem-openapi's `Json<T>`, so that each kind
//! of mistake gets its own code (`invalid_json`, `invalid_request`, `unknown_kind`,
//! `invalid_input`, `invalid_url`, `url_scheme_not_allowed`, `url_not_allowed`) and a
//! message naming the field. The OpenAPI document still shows the `CreateTask` schema:
//! [`TaskSubmission`] reports it as its own.

use chrono::{DateTime, Utc};
use operator_config::Settings;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use operator_domain::{NewTask, Priority, QueueName, TargetUrl, TaskKind, TaskSpec, TenantId};
use operator_store::storage::sha256_hex;
use poem::{Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Deserialize;

use crate::dto::CreateTaskRequest;
use crate::error::ApiError;

/// The raw submission, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubmission {
    kind: String,
    input: serde_json::Value,
    #[serde(default)]
    queue: Option<QueueName>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    run_at: Option<DateTime<Utc>>,
    /// Run after this long, e.g. `"90s"` or `"1h 30m"`; an alternative to `run_at`.
    #[serde(default, with = "humantime_serde")]
    delay: Option<std::time::Duration>,
}

/// The latest a task may be scheduled, from now.
const MAX_SCHEDULE_AHEAD: chrono::TimeDelta = chrono::TimeDelta::days(365);

/// The largest accepted body, in request data (from `server.max_body_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// A submission body that parsed as JSON; validated by [`TaskSubmission::validate`].
pub struct TaskSubmission {
    body: serde_json::Value,
}

impl Payload for TaskSubmission {
    const CONTENT_TYPE: &'static str = "application/json";

    /// `application/json` and `application/*+json`, with any parameters.
    fn check_content_type(content_type: &str) -> bool {
        content_type.parse::<mime::Mime>().is_ok_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        })
    }

    fn schema_ref() -> MetaSchemaRef {
        CreateTaskRequest::schema_ref()
    }

    fn register(registry: &mut Registry) {
        CreateTaskRequest::register(registry);
    }
}

/// Declares the body for the OpenAPI document and reads it (poem-openapi's own helper for
/// this is private to it).
impl<'a> poem_openapi::ApiExtractor<'a> for TaskSubmission {
    const TYPES: &'static [poem_openapi::ApiExtractorType] =
        &[poem_openapi::ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<poem_openapi::registry::MetaRequest> {
        Some(poem_openapi::registry::MetaRequest {
            description: None,
            content: vec![poem_openapi::registry::MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _options: poem_openapi::ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        // A missing content type is read as JSON; a different one is refused.
        if let Some(content_type) = request.content_type()
            && !<Self as Payload>::check_content_type(content_type)
        {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("content type {content_type:?} is not JSON; send application/json"),
            )
            .into());
        }
        <Self as ParsePayload>::from_request(request, body).await
    }
}

impl ParsePayload for TaskSubmission {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |limit| limit.0);
        let bytes = body
            .take()?
            .into_bytes_limit(limit)
            .await
            .map_err(|error| match error {
                poem::error::ReadBodyError::PayloadTooLarge => ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is larger than {limit} bytes"),
                ),
                other => ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("cannot read the body: {other}"),
                ),
            })?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                "the request body is empty; send a JSON task",
            )
            .into());
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body is not valid JSON: {error}"),
            )
        })?;
        Ok(Self { body })
    }
}

/// Limits a submission is checked against.
pub struct SubmissionRules<'a> {
    pub settings: &'a Settings,
    pub policy: &'a NetworkPolicy,
    /// The submitting tenant's own model, when it set one (agent tasks only look).
    pub tenant_model: Option<&'a operator_config::TenantModel>,
}

impl TaskSubmission {
    /// Whether the body asks for this kind (before it is validated).
    pub fn is_kind(&self, kind: &str) -> bool {
        self.body.get("kind").and_then(serde_json::Value::as_str) == Some(kind)
    }

    /// A submission the server makes itself (a replay), validated as a client's is.
    pub fn from_body(body: serde_json::Value) -> Self {
        Self { body }
    }

    /// A submission of `kind` whose body was only the task's input (the one-call
    /// endpoints); task options come from the query.
    pub fn from_input(kind: TaskKind, input: TaskSubmission, options: serde_json::Value) -> Self {
        let mut body = match options {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        body.insert("kind".to_owned(), serde_json::Value::from(kind.as_str()));
        body.insert("input".to_owned(), input.body);
        Self {
            body: serde_json::Value::Object(body),
        }
    }

    /// Validates the submission into a task to store.
    pub fn validate(
        self,
        rules: &SubmissionRules<'_>,
        tenant: TenantId,
        idempotency_key: Option<String>,
        trace_parent: Option<String>,
    ) -> Result<NewTask, ApiError> {
        if !self.body.is_object() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "the body must be a JSON object",
            ));
        }
        let raw: RawSubmission = serde_path_to_error::deserialize(&self.body).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let message = if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            };
            ApiError::new(ErrorCode::InvalidRequest, message)
        })?;
        let run_at = match (raw.run_at, raw.delay) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "run_at and delay: give one or the other",
                ));
            }
            (Some(run_at), None) => Some(run_at),
            (None, Some(delay)) => Some(
                chrono::TimeDelta::from_std(delay)
                    .ok()
                    .and_then(|delay| Utc::now().checked_add_signed(delay))
                    .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "delay: too long"))?,
            ),
            (None, None) => None,
        };
        if run_at.is_some_and(|at| at > Utc::now() + MAX_SCHEDULE_AHEAD) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "run_at: at most 365 days ahead",
            ));
        }
        let kind = TaskKind::parse(&raw.kind)?;
        let spec = TaskSpec::parse(kind, &raw.input)?;
        for url in spec.urls() {
            rules.policy.check_url_statically(url.as_url())?;
        }
        if let TaskSpec::Agent(input) = &spec {
            check_model(rules, input)?;
        }

        let tasks = &rules.settings.tasks;
        let max_timeout_ms = millis(tasks.max_timeout);
        let timeout_ms = raw
            .timeout_ms
            .unwrap_or_else(|| millis(tasks.default_timeout));
        if !(1_000..=max_timeout_ms).contains(&timeout_ms) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("timeout_ms: must be between 1000 and {max_timeout_ms}"),
            ));
        }
        let max_attempts = raw.max_attempts.unwrap_or(tasks.default_max_attempts);
        if !(1..=tasks.max_attempts_limit).contains(&max_attempts) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "max_attempts: must be between 1 and {}",
                    tasks.max_attempts_limit
                ),
            ));
        }
        let webhook_url = match raw.webhook_url {
            Some(url) => {
                let parsed = TargetUrl::parse(&url).map_err(|error| {
                    CodedError::new(error.code, format!("webhook_url: {}", error.message))
                })?;
                rules
                    .policy
                    .check_url_statically(parsed.as_url())
                    .map_err(|error| {
                        CodedError::new(error.code, format!("webhook_url: {}", error.message))
                    })?;
                Some(parsed.as_str().to_owned())
            }
            None => None,
        };
        let request_hash = idempotency_key.as_ref().map(|_| request_hash(&self.body));
        Ok(NewTask {
            tenant,
            queue: raw.queue.unwrap_or_default(),
            spec,
            priority: raw.priority.unwrap_or_default(),
            max_attempts,
            timeout_ms,
            idempotency_key,
            request_hash,
            webhook_url,
            run_at,
            trace_parent,
        })
    }
}

/// An agent task needs a model, and a price for it when its budget is in dollars: both
/// are refused at submission rather than failing on a worker.
fn check_model(
    rules: &SubmissionRules<'_>,
    input: &operator_domain::agent::AgentInput,
) -> Result<(), ApiError> {
    let tenant_llm = rules
        .tenant_model
        .map(|model| rules.settings.llm.for_tenant(model));
    let llm = tenant_llm.as_ref().unwrap_or(&rules.settings.llm);
    if llm.base_url.is_none() {
        return Err(ApiError::new(
            ErrorCode::LlmNotConfigured,
            "agent tasks need a language model: the service has no llm.base_url and the tenant none of its own (PUT /v1/model-settings)",
        ));
    }
    let model = input.model.as_deref().unwrap_or(&llm.model);
    if input.budget.max_cost_usd.is_some() && llm.price(model).is_none() {
        return Err(ApiError::new(
            ErrorCode::LlmNotConfigured,
            format!(
                "input.budget.max_cost_usd: there is no price for model {model:?} (llm.prices, or the tenant's model settings)"
            ),
        ));
    }
    Ok(())
}

/// SHA-256 (hex) of the body in a canonical form (object keys sorted, no spaces), so the
/// same request hashes the same whatever the client's key order or formatting.
fn request_hash(body: &serde_json::Value) -> String {
    fn canonical(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|left, right| left.0.cmp(right.0));
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(key, value)| (key.clone(), canonical(value)))
                        .collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(canonical).collect())
            }
            other => other.clone(),
        }
    }
    sha256_hex(canonical(body).to_string().as_bytes())
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
