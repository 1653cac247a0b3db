//! What a page did while a task ran, collected from CDP events: its main frame's
//! lifecycle (for `wait_for` navigation), requests in flight (for network idle), the
//! network log and the console log (artifacts of the task).
//!
//! The listener runs on headless_chrome's event thread for the tab, so it only takes a
//! short lock and copies a few fields.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::Tab;
use headless_chrome::protocol::cdp::types::Event;
use serde::Serialize;

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

    /// Subscribes to the tab's events. The Network and Runtime domains must be enabled
    /// by the caller for those events to flow.
    pub fn install(self: &Arc<Self>, tab: &Tab) -> anyhow::Result<()> {
        let events = Arc::clone(self);
        tab.add_event_listener(Arc::new(move |event: &Event| events.on_event(event)))?;
        Ok(())
    }

    fn since_open(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_event(&self, event: &Event) {
        let at_ms = self.since_open();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.sequence += 1;
        let sequence = inner.sequence;
        match event {
            Event::PageLifecycleEvent(lifecycle)
                if lifecycle.params.frame_id == self.main_frame =>
            {
                inner.lifecycle.push((
                    sequence,
                    lifecycle.params.loader_id.clone(),
                    lifecycle.params.name.clone(),
                ));
            }
            Event::NetworkRequestWillBeSent(sent) => {
                let params = &sent.params;
                inner.in_flight.insert(params.request_id.clone());
                inner.last_activity = Some(Instant::now());
                let existing = inner.by_request.get(&params.request_id).copied();
                match existing {
                    // A redirect: the same request id continues at a new URL.
                    Some(index) if params.redirect_response.is_some() => {
                        let entry = &mut inner.entries[index];
                        let previous =
                            std::mem::replace(&mut entry.url, params.request.url.clone());
                        entry.redirected_from.push(previous);
                    }
                    _ => {
                        if inner.entries.len() >= MAX_LOG_ENTRIES {
                            inner.dropped_entries += 1;
                            return;
                        }
                        let index = inner.entries.len();
                        inner.entries.push(NetworkEntry {
                            url: truncate(&params.request.url, 2_048),
                            method: params.request.method.clone(),
                            resource_type: params
                                .Type
                                .as_ref()
                                .map(|kind| format!("{kind:?}"))
                                .unwrap_or_default(),
                            started_ms: at_ms,
                            status: None,
                            mime_type: None,
                            remote_address: None,
                            duration_ms: None,
                            encoded_bytes: None,
                            error: None,
                            redirected_from: Vec::new(),
                        });
                        inner.by_request.insert(params.request_id.clone(), index);
                    }
                }
            }
            Event::NetworkResponseReceived(received) => {
                let params = &received.params;
                if let Some(index) = inner.by_request.get(&params.request_id).copied() {
                    let entry = &mut inner.entries[index];
                    entry.status = Some(params.response.status);
                    entry.mime_type = Some(params.response.mime_type.clone());
                    entry.remote_address = params.response.remote_ip_address.clone();
                }
            }
            Event::NetworkLoadingFinished(finished) => {
                let params = &finished.params;
                inner.in_flight.remove(&params.request_id);
                inner.last_activity = Some(Instant::now());
                if let Some(index) = inner.by_request.get(&params.request_id).copied() {
                    let entry = &mut inner.entries[index];
                    entry.duration_ms = Some(at_ms.saturating_sub(entry.started_ms));
                    entry.encoded_bytes = Some(params.encoded_data_length as u64);
                }
            }
            Event::NetworkLoadingFailed(failed) => {
                let params = &failed.params;
                inner.in_flight.remove(&params.request_id);
                inner.last_activity = Some(Instant::now());
                if let Some(index) = inner.by_request.get(&params.request_id).copied() {
                    let entry = &mut inner.entries[index];
                    entry.duration_ms = Some(at_ms.saturating_sub(entry.started_ms));
                    entry.error = Some(params.error_text.clone());
                }
            }
            Event::RuntimeConsoleAPICalled(called) => {
                let params = &called.params;
                let text = params
                    .args
                    .iter()
                    .map(|argument| match &argument.value {
                        Some(serde_json::Value::String(text)) => text.clone(),
                        Some(other) => other.to_string(),
                        None => argument.description.clone().unwrap_or_default(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let level = format!("{:?}", params.Type).to_ascii_lowercase();
                self.console(&mut inner, level, text, at_ms);
            }
            Event::RuntimeExceptionThrown(thrown) => {
                let details = &thrown.params.exception_details;
                let text = details
                    .exception
                    .as_ref()
                    .and_then(|exception| exception.description.clone())
                    .unwrap_or_else(|| details.text.clone());
                self.console(&mut inner, "exception".to_owned(), text, at_ms);
            }
            _ => {}
        }
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
