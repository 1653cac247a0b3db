//! The language model: any OpenAI-compatible chat-completions endpoint, spoken through
//! async-openai with requests and answers as plain JSON (`byot`), since compatible
//! servers (llama.cpp, vLLM, Ollama, gateways) differ in the fields they send.
//!
//! async-openai's own errors drop the response headers, so the transport under it is
//! ours ([`Transport`], its `middleware` hook): it retries a 429, a 5xx or a failed
//! connection after the provider's `Retry-After` (seconds or an HTTP date, capped by
//! `llm.retry_max_delay`) or an exponential backoff with full jitter, and turns every
//! other non-2xx answer into an error that keeps its status. [`ModelClient::complete`]
//! maps those to the task's codes: 401 and 403 `llm_auth_failed` and other 4xx
//! `llm_rejected` (both final), the rest `llm_unavailable` (retryable).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::{ApiError, ApiErrorResponse, OpenAIError};
use async_openai::middleware::HttpRequestFactory;
use operator_config::{LlmProtocol, LlmSettings, ModelPrice};
use operator_domain::error::{CodedError, ErrorCode};
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tracing::{info, warn};

/// The first backoff between retries without a `Retry-After`.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// A chat-completions client for one worker, shared by its agent tasks.
pub struct ModelClient {
    client: Client<OpenAIConfig>,
    settings: LlmSettings,
    /// Set once a server refused tools (`llm.protocol = auto`): later requests of this
    /// worker go in JSON mode at once.
    json_mode: AtomicBool,
    retries: Arc<AtomicU32>,
}

/// One model answer.
#[derive(Debug, Clone)]
pub struct ModelAnswer {
    /// The text the model wrote, if any (its reasoning, or a JSON-mode action).
    pub content: Option<String>,
    /// The tool calls: id, function name, arguments (parsed; `Null` when unparsable).
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    pub latency: Duration,
}

#[derive(Debug, Clone)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The cost in US dollars at `price`.
    pub fn cost(&self, price: Option<ModelPrice>) -> f64 {
        price.map_or(0.0, |price| {
            (self.prompt_tokens as f64 * price.input_per_million
                + self.completion_tokens as f64 * price.output_per_million)
                / 1_000_000.0
        })
    }
}

/// What is asked of the model once.
pub struct ModelRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<Value>,
    /// OpenAI tool definitions; sent unless in JSON mode. None: a plain text answer.
    pub tools: &'a [Value],
    /// How to answer without tools (appended as a system message in JSON mode).
    pub json_instructions: Option<&'a str>,
    pub max_tokens: u32,
    /// The answer must come before this (the task's deadline).
    pub deadline: Instant,
}

impl ModelClient {
    pub fn new(settings: &LlmSettings) -> Result<Self, CodedError> {
        let base_url = settings.base_url.clone().ok_or_else(|| {
            CodedError::new(
                ErrorCode::LlmNotConfigured,
                "no language model is configured (llm.base_url)",
            )
        })?;
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|error| {
                CodedError::new(
                    ErrorCode::LlmNotConfigured,
                    format!("cannot build the model client: {error}"),
                )
            })?;
        let api_key = settings
            .api_key
            .as_ref()
            .map(|key| key.expose_secret().to_owned())
            .unwrap_or_default();
        let config = OpenAIConfig::new()
            .with_api_base(base_url.trim_end_matches('/'))
            .with_api_key(api_key);
        let retries = Arc::new(AtomicU32::new(0));
        let transport = Transport {
            http,
            max_retries: settings.max_retries,
            max_delay: settings.retry_max_delay,
            retries: Arc::clone(&retries),
        };
        Ok(Self {
            client: Client::with_config(config).with_http_service(transport),
            settings: settings.clone(),
            json_mode: AtomicBool::new(settings.protocol == LlmProtocol::Json),
            retries,
        })
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// Retries made so far by this client (429, 5xx, connection failures).
    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Asks for one answer, retrying as the transport does and switching to JSON mode
    /// when the server refuses tools (`llm.protocol = auto`).
    pub async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelAnswer, CodedError> {
        let json_mode = !request.tools.is_empty() && self.json_mode.load(Ordering::Relaxed);
        match self.complete_once(&request, json_mode).await {
            Err(Failure::ToolsRefused(message))
                if !json_mode && self.settings.protocol == LlmProtocol::Auto =>
            {
                info!(reason = %message, "the model server refused tools; using JSON mode");
                self.json_mode.store(true, Ordering::Relaxed);
                self.complete_once(&request, true)
                    .await
                    .map_err(Failure::into_coded)
            }
            other => other.map_err(Failure::into_coded),
        }
    }

    async fn complete_once(
        &self,
        request: &ModelRequest<'_>,
        json_mode: bool,
    ) -> Result<ModelAnswer, Failure> {
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "stream": false,
        });
        if json_mode {
            body["response_format"] = json!({"type": "json_object"});
            let mut messages = json_mode_history(&request.messages);
            if let Some(instructions) = request.json_instructions {
                messages.insert(1, json!({"role": "system", "content": instructions}));
            }
            body["messages"] = Value::Array(messages);
        } else if !request.tools.is_empty() {
            body["tools"] = json!(request.tools);
            body["tool_choice"] = json!("required");
            body["parallel_tool_calls"] = json!(false);
        }
        let started = Instant::now();
        let remaining = request.deadline.saturating_duration_since(started);
        if remaining.is_zero() {
            return Err(Failure::Coded(CodedError::new(
                ErrorCode::TaskTimeout,
                "the task ran past its timeout",
            )));
        }
        let chat = self.client.chat();
        let call = chat.create_byot::<Value, Value>(body);
        let answer = match tokio::time::timeout(remaining, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(classify(error, !json_mode)),
            Err(_) => {
                return Err(Failure::Coded(CodedError::new(
                    ErrorCode::TaskTimeout,
                    "the task ran past its timeout waiting for the model",
                )));
            }
        };
        parse_answer(&answer, started.elapsed())
    }
}

/// The conversation for a server without tools: each tool call becomes the JSON answer
/// the model gives in JSON mode, and each tool result a user message.
fn json_mode_history(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|message| match message["role"].as_str() {
            Some("assistant") if message.get("tool_calls").is_some() => {
                let call = &message["tool_calls"][0]["function"];
                let arguments = call["arguments"]
                    .as_str()
                    .and_then(|text| serde_json::from_str::<Value>(text).ok())
                    .unwrap_or_else(|| json!({}));
                json!({"role": "assistant", "content": json!({"action": call["name"], "args": arguments}).to_string()})
            }
            Some("tool") => json!({
                "role": "user",
                "content": format!("Result: {}", message["content"].as_str().unwrap_or_default()),
            }),
            _ => message.clone(),
        })
        .collect()
}

/// Why a request failed, before it becomes the task's error.
enum Failure {
    /// The server refused the request because of its tools: JSON mode may work.
    ToolsRefused(String),
    Coded(CodedError),
}

impl Failure {
    fn into_coded(self) -> CodedError {
        match self {
            Self::ToolsRefused(message) => CodedError::new(
                ErrorCode::LlmRejected,
                format!("the model server refused tool calling: {message}"),
            ),
            Self::Coded(error) => error,
        }
    }
}

fn classify(error: OpenAIError, sent_tools: bool) -> Failure {
    match error {
        OpenAIError::ApiError(response) => {
            let status = response.status_code.as_u16();
            let message = response.api_error.message.clone();
            match status {
                401 | 403 => Failure::Coded(CodedError::new(
                    ErrorCode::LlmAuthFailed,
                    format!("the model provider refused the credentials ({status}): {message}"),
                )),
                400 | 404 | 422 | 501
                    if sent_tools && message.to_ascii_lowercase().contains("tool") =>
                {
                    Failure::ToolsRefused(format!("{status}: {message}"))
                }
                408 | 429 | 500..=599 => Failure::Coded(CodedError::new(
                    ErrorCode::LlmUnavailable,
                    format!("the model provider answered {status} after the retries: {message}"),
                )),
                _ => Failure::Coded(CodedError::new(
                    ErrorCode::LlmRejected,
                    format!("the model provider refused the request ({status}): {message}"),
                )),
            }
        }
        OpenAIError::Reqwest(error) => Failure::Coded(CodedError::new(
            ErrorCode::LlmUnavailable,
            format!("cannot reach the model provider: {error}"),
        )),
        OpenAIError::JSONDeserialize(error, _) => Failure::Coded(CodedError::new(
            ErrorCode::LlmRejected,
            format!("the model provider's answer is not a chat completion: {error}"),
        )),
        other => Failure::Coded(CodedError::new(
            ErrorCode::LlmUnavailable,
            format!("the model request failed: {other}"),
        )),
    }
}

fn parse_answer(answer: &Value, latency: Duration) -> Result<ModelAnswer, Failure> {
    let message = answer.pointer("/choices/0/message").ok_or_else(|| {
        Failure::Coded(CodedError::new(
            ErrorCode::LlmRejected,
            "the model's answer has no choices[0].message",
        ))
    })?;
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|text| !text.trim().is_empty());
    let tool_calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .filter_map(|call| {
                    let function = call.get("function")?;
                    let name = function.get("name")?.as_str()?.to_owned();
                    let arguments = match function.get("arguments") {
                        Some(Value::String(text)) => {
                            serde_json::from_str(text).unwrap_or(Value::Null)
                        }
                        Some(object @ Value::Object(_)) => object.clone(),
                        _ => Value::Null,
                    };
                    Some(ToolCall {
                        id: call
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or("call")
                            .to_owned(),
                        name,
                        arguments,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let count = |field: &str| {
        answer
            .pointer(&format!("/usage/{field}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(ModelAnswer {
        content,
        tool_calls,
        usage: TokenUsage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        },
        latency,
    })
}

/// async-openai's transport: our reqwest client with the retry loop (see the module).
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
    max_retries: u32,
    max_delay: Duration,
    retries: Arc<AtomicU32>,
}

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let transport = self.clone();
        Box::pin(async move { transport.send(factory).await })
    }
}

impl Transport {
    async fn send(&self, factory: HttpRequestFactory) -> Result<reqwest::Response, OpenAIError> {
        let mut attempt = 0u32;
        loop {
            let request = factory.build().await?;
            let outcome = self.http.execute(request).await;
            let retry_after = match &outcome {
                Ok(response) if response.status().is_success() => {
                    return outcome.map_err(OpenAIError::Reqwest);
                }
                Ok(response) if retryable_status(response.status().as_u16()) => {
                    Some(retry_after(response.headers()))
                }
                Ok(_) => None,
                Err(error) if error.is_connect() || error.is_timeout() => Some(None),
                Err(_) => None,
            };
            match retry_after {
                Some(asked) if attempt < self.max_retries => {
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = match asked {
                        Some(asked) => asked.min(self.max_delay),
                        None => backoff(attempt, self.max_delay),
                    };
                    let status = outcome
                        .as_ref()
                        .map(|response| response.status().as_u16())
                        .unwrap_or(0);
                    warn!(
                        status,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "model request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(error_of(outcome).await),
            }
        }
    }
}

fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// The delay a `Retry-After` header asks for: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Full jitter over `BACKOFF_BASE · 2^(attempt-1)`, capped.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
}

/// The error of a final answer: its status kept, its body's message when it is
/// OpenAI's error shape, or the body itself.
async fn error_of(outcome: Result<reqwest::Response, reqwest::Error>) -> OpenAIError {
    let response = match outcome {
        Ok(response) => response,
        Err(error) => return OpenAIError::Reqwest(error),
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .or_else(|| value.get("message"))
                .or_else(|| value.get("error"))
        })
        .map(|message| match message {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| body.chars().take(500).collect());
    OpenAIError::ApiError(ApiErrorResponse {
        status_code: status,
        api_error: ApiError {
            message,
            r#type: None,
            param: None,
            code: None,
            misalignment: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(reqwest::header::RETRY_AFTER, later.parse().expect("value"));
        let wait = retry_after(&headers).expect("a date");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn json_mode_rewrites_tool_calls_as_json_answers() {
        let messages = vec![
            json!({"role": "system", "content": "drive"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "click", "arguments": "{\"index\":2,\"reason\":\"go\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "clicked"}),
            json!({"role": "user", "content": "the page"}),
        ];
        let rewritten = json_mode_history(&messages);
        assert_eq!(rewritten[0], messages[0]);
        let answer: Value =
            serde_json::from_str(rewritten[1]["content"].as_str().expect("text")).expect("JSON");
        assert_eq!(
            answer,
            json!({"action": "click", "args": {"index": 2, "reason": "go"}})
        );
        assert_eq!(
            rewritten[2],
            json!({"role": "user", "content": "Result: clicked"})
        );
        assert_eq!(rewritten[3], messages[3]);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..10 {
            let delay = backoff(attempt, Duration::from_secs(4));
            assert!(delay <= Duration::from_secs(4), "{delay:?}");
        }
        assert!(backoff(1, Duration::from_secs(30)) <= BACKOFF_BASE);
    }

    #[test]
    fn costs_follow_the_price_table() {
        let usage = TokenUsage {
            prompt_tokens: 2_000_000,
            completion_tokens: 500_000,
        };
        let price = ModelPrice {
            input_per_million: 0.5,
            output_per_million: 2.0,
        };
        assert!((usage.cost(Some(price)) - 2.0).abs() < 1e-9);
        assert_eq!(usage.cost(None), 0.0);
    }
}
