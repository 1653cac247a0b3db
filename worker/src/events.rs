//! What a page did while a task ran, collected from CDP events: its main frame's
//! lifecycle (for `wait_for` navigation), requests in flight (for network idle), the
//! network log and the console log (artifacts of the task).
//!
//! The listener runs on the browser connection's reader task (see [`crate::cdp`]), so it
//! only takes a short lock and copies a few fields.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cdp::{Event, Page, Subscription};

/// Log entries kept per task; a page that loops must not grow a log without bound.
const MAX_LOG_ENTRIES: usize = 2_000;
/// The longest console message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 2_000;

/// One request of the network log.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkEntry {
    pub url: String,
    pub method: String,
    pub resource_type: String,
    /// Milliseconds since the task's page opened.
    pub started_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoded_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The URLs this request was redirected from, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirected_from: Vec<String>,
}

/// One console message or uncaught exception.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleEntry {
    pub level: String,
    pub text: String,
    pub at_ms: u64,
}

#[derive(Default)]
struct Inner {
    sequence: u64,
    /// Main-frame lifecycle events: (sequence, loader id, name).
    lifecycle: Vec<(u64, String, String)>,
    in_flight: HashSet<String>,
    last_activity: Option<Instant>,
    entries: Vec<NetworkEntry>,
    /// Request id → index into `entries`.
    by_request: HashMap<String, usize>,
    console: Vec<ConsoleEntry>,
    dropped_entries: u64,
}

pub struct PageEvents {
    main_frame: String,
    opened: Instant,
    inner: Mutex<Inner>,
    /// Receives each console line as it happens, for the task's live event stream.
    log_sink: Option<tokio::sync::mpsc::UnboundedSender<ConsoleEntry>>,
}

impl PageEvents {
    pub fn new(main_frame: impl Into<String>) -> Self {
        Self {
            main_frame: main_frame.into(),
            opened: Instant::now(),
            inner: Mutex::default(),
            log_sink: None,
        }
    }

    /// Also sends every console line kept to `sink` as it happens.
    pub fn with_log_sink(mut self, sink: tokio::sync::mpsc::UnboundedSender<ConsoleEntry>) -> Self {
        self.log_sink = Some(sink);
        self
    }

    fn console(&self, inner: &mut Inner, level: String, text: String, at_ms: u64) {
        if let Some(entry) = push_console(inner, level, text, at_ms)
            && let Some(sink) = &self.log_sink
        {
            let _receiver_gone = sink.send(entry);
        }
    }

    /// Subscribes to the page's events until the subscription drops. The Page, Network
    /// and Runtime domains must be enabled for those events to flow (the pool does it
    /// when it opens the page).
    pub fn install(self: &Arc<Self>, page: &Page) -> Subscription {
        let events = Arc::clone(self);
        page.subscribe(move |event: &Event| events.on_event(event))
    }

    fn since_open(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_event(&self, event: &Event) {
        let at_ms = self.since_open();
        match event.method.as_str() {
            "Page.lifecycleEvent" => {
                if let Some(lifecycle) = event.parse::<LifecycleEvent>()
                    && lifecycle.frame_id == self.main_frame
                {
                    self.record(|inner, sequence| {
                        inner
                            .lifecycle
                            .push((sequence, lifecycle.loader_id, lifecycle.name));
                    });
                }
            }
            "Network.requestWillBeSent" => {
                if let Some(sent) = event.parse::<RequestWillBeSent>() {
                    self.record(|inner, _| request_will_be_sent(inner, sent, at_ms));
                }
            }
            "Network.responseReceived" => {
                if let Some(received) = event.parse::<ResponseReceived>() {
                    self.record(|inner, _| {
                        if let Some(index) = inner.by_request.get(&received.request_id).copied() {
                            let entry = &mut inner.entries[index];
                            entry.status = Some(received.response.status);
                            entry.mime_type = Some(received.response.mime_type);
                            entry.remote_address = received.response.remote_ip_address;
                        }
                    });
                }
            }
            "Network.loadingFinished" => {
                if let Some(finished) = event.parse::<LoadingFinished>() {
                    self.record(|inner, _| {
                        let entry = request_ended(inner, &finished.request_id, at_ms);
                        if let Some(entry) = entry {
                            entry.encoded_bytes = Some(finished.encoded_data_length as u64);
                        }
                    });
                }
            }
            "Network.loadingFailed" => {
                if let Some(failed) = event.parse::<LoadingFailed>() {
                    self.record(|inner, _| {
                        let entry = request_ended(inner, &failed.request_id, at_ms);
                        if let Some(entry) = entry {
                            entry.error = Some(failed.error_text);
                        }
                    });
                }
            }
            "Runtime.consoleAPICalled" => {
                if let Some(called) = event.parse::<ConsoleApiCalled>() {
                    let text = called
                        .args
                        .into_iter()
                        .map(|argument| match argument.value {
                            Some(Value::String(text)) => text,
                            Some(other) => other.to_string(),
                            None => argument.description.unwrap_or_default(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    let level = called.kind.to_ascii_lowercase();
                    self.record(|inner, _| self.console(inner, level, text, at_ms));
                }
            }
            "Runtime.exceptionThrown" => {
                if let Some(thrown) = event.parse::<ExceptionThrown>() {
                    let details = thrown.exception_details;
                    let text = details
                        .exception
                        .and_then(|exception| exception.description)
                        .unwrap_or(details.text);
                    self.record(|inner, _| {
                        self.console(inner, "exception".to_owned(), text, at_ms)
                    });
                }
            }
            _ => {}
        }
    }

    /// Applies an event to the log under the lock, with the event's sequence number.
    fn record(&self, apply: impl FnOnce(&mut Inner, u64)) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.sequence += 1;
        let sequence = inner.sequence;
        apply(&mut inner, sequence);
    }

    /// The current event sequence number: later events have larger ones.
    pub fn sequence(&self) -> u64 {
        self.inner.lock().map(|inner| inner.sequence).unwrap_or(0)
    }

    /// Whether the main frame finished loading (`load`) a document whose navigation
    /// started after `since`.
    pub fn loaded_since(&self, since: u64) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        let started: HashSet<&str> = inner
            .lifecycle
            .iter()
            .filter(|(sequence, _, name)| *sequence > since && name == "init")
            .map(|(_, loader, _)| loader.as_str())
            .collect();
        inner.lifecycle.iter().any(|(sequence, loader, name)| {
            *sequence > since && name == "load" && started.contains(loader.as_str())
        })
    }

    /// Whether a main-frame navigation started after `since`.
    pub fn navigated_since(&self, since: u64) -> bool {
        self.inner.lock().is_ok_and(|inner| {
            inner
                .lifecycle
                .iter()
                .any(|(sequence, _, name)| *sequence > since && name == "init")
        })
    }

    /// Whether a main-frame navigation that started after `since` has not loaded yet
    /// (an agent's click that follows a link: its next look waits for the new page).
    pub fn navigation_pending_since(&self, since: u64) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner
            .lifecycle
            .iter()
            .filter(|(sequence, _, name)| *sequence > since && name == "init")
            .any(|(_, loader, _)| {
                !inner
                    .lifecycle
                    .iter()
                    .any(|(_, other, name)| other == loader && name == "load")
            })
    }

    /// Whether no request has been in flight for `quiet`.
    pub fn network_idle_for(&self, quiet: Duration) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner.in_flight.is_empty()
            && inner
                .last_activity
                .is_none_or(|last| last.elapsed() >= quiet)
    }

    /// The network log as JSON.
    pub fn network_log(&self) -> serde_json::Value {
        let Ok(inner) = self.inner.lock() else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "requests": inner.entries,
            "dropped": inner.dropped_entries,
        })
    }

    /// The console log as JSON.
    pub fn console_log(&self) -> serde_json::Value {
        let Ok(inner) = self.inner.lock() else {
            return serde_json::Value::Null;
        };
        serde_json::json!({ "messages": inner.console })
    }
}

fn request_will_be_sent(inner: &mut Inner, sent: RequestWillBeSent, at_ms: u64) {
    inner.in_flight.insert(sent.request_id.clone());
    inner.last_activity = Some(Instant::now());
    let existing = inner.by_request.get(&sent.request_id).copied();
    match existing {
        // A redirect: the same request id continues at a new URL.
        Some(index) if sent.redirect_response.is_some() => {
            let entry = &mut inner.entries[index];
            let previous = std::mem::replace(&mut entry.url, sent.request.url);
            entry.redirected_from.push(previous);
        }
        _ => {
            if inner.entries.len() >= MAX_LOG_ENTRIES {
                inner.dropped_entries += 1;
                return;
            }
            let index = inner.entries.len();
            inner.entries.push(NetworkEntry {
                url: truncate(&sent.request.url, 2_048),
                method: sent.request.method,
                resource_type: sent.resource_type.unwrap_or_default(),
                started_ms: at_ms,
                status: None,
                mime_type: None,
                remote_address: None,
                duration_ms: None,
                encoded_bytes: None,
                error: None,
                redirected_from: Vec::new(),
            });
            inner.by_request.insert(sent.request_id, index);
        }
    }
}

/// A request finished or failed: it is no longer in flight; returns its log entry.
fn request_ended<'a>(
    inner: &'a mut Inner,
    request_id: &str,
    at_ms: u64,
) -> Option<&'a mut NetworkEntry> {
    inner.in_flight.remove(request_id);
    inner.last_activity = Some(Instant::now());
    let index = inner.by_request.get(request_id).copied()?;
    let entry = &mut inner.entries[index];
    entry.duration_ms = Some(at_ms.saturating_sub(entry.started_ms));
    Some(entry)
}

// The events' parameters this log reads (CDP names; everything else is ignored).

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleEvent {
    frame_id: String,
    loader_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestWillBeSent {
    request_id: String,
    request: SentRequest,
    #[serde(rename = "type")]
    resource_type: Option<String>,
    redirect_response: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct SentRequest {
    url: String,
    method: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseReceived {
    request_id: String,
    response: ReceivedResponse,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceivedResponse {
    status: u32,
    mime_type: String,
    #[serde(rename = "remoteIPAddress")]
    remote_ip_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoadingFinished {
    request_id: String,
    encoded_data_length: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoadingFailed {
    request_id: String,
    error_text: String,
}

#[derive(Deserialize)]
struct ConsoleApiCalled {
    #[serde(rename = "type")]
    kind: String,
    args: Vec<RemoteObject>,
}

#[derive(Deserialize)]
struct RemoteObject {
    value: Option<Value>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExceptionThrown {
    exception_details: ExceptionDetails,
}

#[derive(Deserialize)]
struct ExceptionDetails {
    text: String,
    exception: Option<RemoteObject>,
}

/// Keeps a console line (up to the cap); returns what was kept.
fn push_console(
    inner: &mut Inner,
    level: String,
    text: String,
    at_ms: u64,
) -> Option<ConsoleEntry> {
    if inner.console.len() >= MAX_LOG_ENTRIES {
        return None;
    }
    let entry = ConsoleEntry {
        level,
        text: truncate(&text, MAX_MESSAGE_CHARS),
        at_ms,
    };
    inner.console.push(entry.clone());
    Some(entry)
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(max_chars).collect();
        short.push('…');
        short
    }
}
