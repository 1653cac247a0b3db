//! The one fake of the suite: a scripted OpenAI-compatible chat-completions server on
//! loopback. It records every request and answers what its script decides from the
//! request itself (the page the observation shows), as a real model would have to.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{EndpointExt, IntoResponse, Response, Route, handler, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::serve_on_loopback;

/// What the script answers to one request.
pub enum Reply {
    /// A tool call.
    Tool(&'static str, Value),
    /// Plain text (a JSON-mode action, or nonsense).
    Text(String),
    /// An error status, with a `Retry-After` when given.
    Status(u16, Option<u64>),
    /// An error status with this message (e.g. a server refusing tools).
    Refuse(u16, &'static str),
    /// No answer for a minute, then a 504: the model is slow while the test does
    /// something to the worker that waits for it.
    Hang,
}

/// The request being answered and those of the same goal before it.
pub struct Call<'a> {
    pub request: &'a Value,
    /// How many earlier requests had the same goal.
    pub earlier: usize,
}

impl Call<'_> {
    /// The goal (the first user message).
    pub fn goal(&self) -> String {
        goal_of(self.request)
    }

    /// The current page, as the last user message shows it.
    pub fn page(&self) -> String {
        last_user_text(self.request)
    }

    /// The index of the first element whose line contains `needle`.
    pub fn index_of(&self, needle: &str) -> Option<u64> {
        index_in(&self.page(), needle)
    }
}

pub fn goal_of(request: &Value) -> String {
    request["messages"]
        .as_array()
        .and_then(|messages| messages.iter().find(|message| message["role"] == "user"))
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

pub fn last_user_text(request: &Value) -> String {
    let Some(message) = request["messages"].as_array().and_then(|messages| {
        messages
            .iter()
            .rev()
            .find(|message| message["role"] == "user")
    }) else {
        return String::new();
    };
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `[12]` of the first line of `page` containing `needle`.
pub fn index_in(page: &str, needle: &str) -> Option<u64> {
    let line = page.lines().find(|line| line.contains(needle))?;
    let start = line.find('[')? + 1;
    let end = start + line[start..].find(']')?;
    line[start..end].parse().ok()
}

type Script = dyn Fn(&Call<'_>) -> Reply + Send + Sync;

struct State {
    requests: Mutex<Vec<(Instant, Value)>>,
    /// Each request's `Authorization` header, in the order of `requests`.
    authorizations: Mutex<Vec<Option<String>>>,
    script: Box<Script>,
}

pub struct ModelServer {
    /// The base URL to configure as `llm.base_url`.
    pub base_url: String,
    state: Arc<State>,
    stop: CancellationToken,
}

impl ModelServer {
    pub async fn start(script: impl Fn(&Call<'_>) -> Reply + Send + Sync + 'static) -> Self {
        let state = Arc::new(State {
            requests: Mutex::default(),
            authorizations: Mutex::default(),
            script: Box::new(script),
        });
        let app = Route::new()
            .at("/v1/chat/completions", post(complete))
            .data(Arc::clone(&state));
        let (base, stop) = serve_on_loopback(app).await;
        Self {
            base_url: format!("{base}/v1"),
            state,
            stop,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.timed_requests()
            .into_iter()
            .map(|(_, request)| request)
            .collect()
    }

    /// Every request with the instant it arrived.
    pub fn timed_requests(&self) -> Vec<(Instant, Value)> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Each request's `Authorization` header and model, in arrival order.
    pub fn callers(&self) -> Vec<(Option<String>, String)> {
        let authorizations = self.state.authorizations.lock().expect("lock").clone();
        self.requests()
            .iter()
            .zip(authorizations)
            .map(|(request, authorization)| {
                (
                    authorization,
                    request["model"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Stops answering: the port is closed, as when the provider is down.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The requests whose goal contains `needle`.
    pub fn requests_for(&self, needle: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|request| goal_of(request).contains(needle))
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[handler]
async fn complete(
    Json(request): Json<Value>,
    state: Data<&Arc<State>>,
    headers: &poem::http::HeaderMap,
) -> Response {
    let earlier = {
        let mut requests = state.requests.lock().expect("lock");
        state.authorizations.lock().expect("lock").push(
            headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        );
        let goal = goal_of(&request);
        let earlier = requests
            .iter()
            .filter(|(_, previous)| goal_of(previous) == goal)
            .count();
        requests.push((Instant::now(), request.clone()));
        earlier
    };
    let call = Call {
        request: &request,
        earlier,
    };
    let prompt_tokens = serde_json::to_string(&request).map_or(0, |text| text.len() / 4);
    let reply = (state.script)(&call);
    let message = match reply {
        Reply::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Reply::Status(status, retry_after) => {
            let mut response = Json(
                json!({"error": {"message": format!("scripted {status}"), "type": "scripted"}}),
            )
            .with_status(StatusCode::from_u16(status).expect("status"))
            .into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().expect("header"));
            }
            return response;
        }
        Reply::Refuse(status, message) => {
            return Json(json!({"error": {"message": message, "type": "invalid_request_error"}}))
                .with_status(StatusCode::from_u16(status).expect("status"))
                .into_response();
        }
        Reply::Tool(name, arguments) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": format!("call_{earlier}"), "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}}],
        }),
        Reply::Text(text) => json!({"role": "assistant", "content": text}),
    };
    Json(json!({
        "id": format!("chatcmpl-{earlier}"),
        "object": "chat.completion",
        "created": 0,
        "model": request["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 20, "total_tokens": prompt_tokens + 20},
    }))
    .into_response()
}
