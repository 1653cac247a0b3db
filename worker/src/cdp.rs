//! Our Chrome DevTools Protocol client: one WebSocket connection per browser, shared by
//! every page of that browser through flattened sessions.
//!
//! Why our own: headless_chrome's transport sends and receives through one lock, and its
//! reader holds that lock while it waits up to 100 ms for the next message
//! (rust-headless-chrome issue #446), so each call could wait 100 ms before it was even
//! sent. Here a writer task owns the socket's sending half and a reader task its
//! receiving half; neither ever waits for the other.
//!
//! - A call gets a connection-wide id; the reader hands the answer with that id to the
//!   caller waiting for it (a oneshot channel). A call unanswered within the call timeout
//!   means the browser hangs; a closed connection, that it is gone.
//! - Pages are attached with `flatten: true`: their messages travel on the browser's
//!   connection, tagged with their `sessionId`. The reader hands each event to the
//!   listeners of its session, in order, on the reader task: a listener must be quick and
//!   must never wait for an answer (it sends what it must send detached).
//! - Every call is async: the page code runs on the task's own future, so nothing
//!   waits on a thread for Chromium. Calls started one after another
//!   ([`Page::start`]) travel together and are answered in order: one round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, warn};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CdpError {
    /// Chromium refused the call (bad parameters, an unknown id, a page range that does
    /// not exist, ...). The browser is fine.
    #[error("{method}: {message}")]
    Protocol { method: String, message: String },
    /// No answer within the call timeout: the browser (or the page's renderer) hangs.
    #[error("{method}: no answer within {} s", timeout.as_secs())]
    Timeout { method: String, timeout: Duration },
    /// The connection closed: the browser is gone.
    #[error("{method}: the connection to the browser is closed")]
    Closed { method: String },
    /// The page's session ended (its context was disposed or it closed itself) before
    /// the call was answered.
    #[error("{method}: the page went away")]
    Detached { method: String },
    /// The answer is not what the protocol says it is.
    #[error("{method}: unexpected answer: {message}")]
    Decode { method: String, message: String },
    /// The WebSocket handshake failed.
    #[error("cannot connect to the browser: {0}")]
    Connect(String),
}

impl CdpError {
    /// Whether the error means the browser itself is gone or hangs, rather than that a
    /// call or a page failed.
    pub fn browser_gone(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Closed { .. } | Self::Connect(_)
        )
    }
}

/// An event Chromium sent for a session.
#[derive(Debug)]
pub struct Event {
    pub method: String,
    pub params: Value,
}

impl Event {
    /// The event's parameters as `T`; `None` (logged) when they do not fit.
    pub fn parse<T: DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(&self.params)
            .inspect_err(|error| debug!(method = %self.method, error = %error, "unexpected event parameters"))
            .ok()
    }
}

type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where the answer to a call goes.
enum Reply {
    Caller(oneshot::Sender<Result<Value, CdpError>>),
    /// Nobody waits: a failure is only logged, at this level.
    Detached(FailureLog),
}

/// How loudly a detached call's failure is logged.
#[derive(Debug, Clone, Copy)]
pub enum FailureLog {
    /// An expected failure, e.g. answering a paused request of a page that just went.
    Debug,
    Warn,
}

struct Waiter {
    method: String,
    session: Option<String>,
    reply: Reply,
}

/// Calls waiting for their answer and event listeners, by session. A std mutex: it is
/// held only to insert or take an entry, never across an await or a listener call.
#[derive(Default)]
struct Routes {
    /// Set once the connection is gone; nothing is answered any more.
    closed: bool,
    waiting: HashMap<u64, Waiter>,
    listeners: HashMap<String, Vec<(u64, Listener)>>,
}

impl Routes {
    /// Marks the connection gone and takes everything out: every waiting call (to be
    /// failed) and every listener (which may hold pages, and through them this
    /// connection: dropping them breaks the cycle). The caller finishes outside the lock.
    fn close(&mut self) -> Removed {
        self.closed = true;
        Removed {
            waiters: self.waiting.drain().map(|(_, waiter)| waiter).collect(),
            listeners: self
                .listeners
                .drain()
                .flat_map(|(_, listeners)| listeners)
                .collect(),
        }
    }

    /// A session ended: its listeners go, and its calls will never be answered.
    fn detach(&mut self, session: &str) -> Removed {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, waiter)| waiter.session.as_deref() == Some(session))
            .map(|(id, _)| *id)
            .collect();
        Removed {
            waiters: ids
                .iter()
                .filter_map(|id| self.waiting.remove(id))
                .collect(),
            listeners: self.listeners.remove(session).unwrap_or_default(),
        }
    }
}

/// What a closed connection or an ended session leaves behind.
struct Removed {
    waiters: Vec<Waiter>,
    listeners: Vec<(u64, Listener)>,
}

impl Removed {
    /// Fails the waiting calls with `error` (given the call's method) and drops the
    /// listeners. Called without the routes' lock held.
    fn finish(self, error: impl Fn(String) -> CdpError) {
        for waiter in self.waiters {
            let failure = error(waiter.method.clone());
            answer(waiter, Err(failure));
        }
        drop(self.listeners);
    }
}

fn answer(waiter: Waiter, result: Result<Value, CdpError>) {
    match waiter.reply {
        Reply::Caller(sender) => {
            let _caller_gave_up = sender.send(result);
        }
        Reply::Detached(log) => {
            if let Err(error) = result {
                match log {
                    FailureLog::Debug => debug!(error = %error, "a detached CDP call failed"),
                    FailureLog::Warn => warn!(error = %error, "a detached CDP call failed"),
                }
            }
        }
    }
}

/// One WebSocket connection to a browser.
pub struct Connection {
    /// Messages for the writer task. Unbounded: a caller never waits to send, and what
    /// is queued is bounded by the calls in flight.
    outgoing: mpsc::UnboundedSender<Message>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
    next_listener: AtomicU64,
    /// A call unanswered for this long means a hung browser.
    call_timeout: Duration,
}

impl Connection {
    /// Connects to the browser's DevTools WebSocket (`ws://127.0.0.1:…/devtools/browser/…`)
    /// and starts the reader and writer tasks on the current runtime.
    pub async fn connect(url: &str, call_timeout: Duration) -> Result<Arc<Self>, CdpError> {
        // No size limits: a full-page screenshot comes back as one large message.
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        // Nagle off: every message is a whole request that should leave at once.
        let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let (socket, _response) = tokio::time::timeout(call_timeout, connecting)
            .await
            .map_err(|_| CdpError::Connect(format!("no handshake within {call_timeout:?}")))?
            .map_err(|error| CdpError::Connect(error.to_string()))?;
        let (sink, stream) = socket.split();
        let (outgoing, queued) = mpsc::unbounded_channel();
        let routes = Arc::new(Mutex::new(Routes::default()));
        tokio::spawn(write(sink, queued, Arc::clone(&routes)));
        tokio::spawn(read(stream, Arc::clone(&routes)));
        Ok(Arc::new(Self {
            outgoing,
            routes,
            next_id: AtomicU64::new(1),
            next_listener: AtomicU64::new(1),
            call_timeout,
        }))
    }

    /// Sends a call (to the browser when `session` is `None`) without waiting for its
    /// answer; the answer is waited for through the returned [`PendingCall`].
    pub fn start(&self, session: Option<&str>, method: &str, params: Value) -> PendingCall {
        let (sender, receiver) = oneshot::channel();
        let sent = self.send(session, method, params, Reply::Caller(sender));
        PendingCall {
            method: method.to_owned(),
            id: sent.as_ref().copied().unwrap_or_default(),
            receiver: sent.map(|_| receiver),
            routes: Arc::downgrade(&self.routes),
            timeout: self.call_timeout,
        }
    }

    /// Sends a call nobody waits for; a failure is logged at `log`'s level.
    pub fn send_detached(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        log: FailureLog,
    ) {
        if let Err(error) = self.send(session, method, params, Reply::Detached(log)) {
            debug!(error = %error, "a detached CDP call could not be sent");
        }
    }

    /// A call to the browser itself.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, CdpError> {
        self.start(None, method, params).answer().await
    }

    fn send(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        reply: Reply,
    ) -> Result<u64, CdpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_owned());
        }
        let closed = || CdpError::Closed {
            method: method.to_owned(),
        };
        {
            let mut routes = self.routes.lock().map_err(|_| closed())?;
            if routes.closed {
                return Err(closed());
            }
            routes.waiting.insert(
                id,
                Waiter {
                    method: method.to_owned(),
                    session: session.map(str::to_owned),
                    reply,
                },
            );
        }
        if self
            .outgoing
            .send(Message::text(message.to_string()))
            .is_err()
        {
            if let Ok(mut routes) = self.routes.lock() {
                routes.waiting.remove(&id);
            }
            return Err(closed());
        }
        Ok(id)
    }

    /// Hands every event of `session` to `listener` until the subscription drops or the
    /// session ends.
    pub fn subscribe(
        &self,
        session: &str,
        listener: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Subscription {
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut routes) = self.routes.lock()
            && !routes.closed
        {
            routes
                .listeners
                .entry(session.to_owned())
                .or_default()
                .push((id, Arc::new(listener)));
        }
        Subscription {
            routes: Arc::downgrade(&self.routes),
            session: session.to_owned(),
            id,
        }
    }
}

/// A call on its way: its answer is waited for at most for the connection's call
/// timeout.
#[must_use = "a call's answer must be waited for, or the call sent detached"]
pub struct PendingCall {
    method: String,
    id: u64,
    receiver: Result<oneshot::Receiver<Result<Value, CdpError>>, CdpError>,
    routes: Weak<Mutex<Routes>>,
    timeout: Duration,
}

impl PendingCall {
    /// Lets the call take `work` longer before it counts as unanswered: for a call
    /// whose answer waits on purpose (an awaited promise), only the time beyond that
    /// wait says the browser hangs.
    pub fn allowing(mut self, work: Duration) -> Self {
        self.timeout = self.timeout.saturating_add(work);
        self
    }

    /// Waits for the answer.
    pub async fn answer<T: DeserializeOwned>(self) -> Result<T, CdpError> {
        let receiver = self.receiver?;
        let value = match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(result)) => result?,
            // The reader dropped the sender without answering: the connection is gone.
            Ok(Err(_)) => {
                return Err(CdpError::Closed {
                    method: self.method,
                });
            }
            Err(_) => {
                if let Some(routes) = self.routes.upgrade()
                    && let Ok(mut routes) = routes.lock()
                {
                    routes.waiting.remove(&self.id);
                }
                return Err(CdpError::Timeout {
                    method: self.method,
                    timeout: self.timeout,
                });
            }
        };
        T::deserialize(value).map_err(|error| CdpError::Decode {
            method: self.method,
            message: error.to_string(),
        })
    }
}

/// A listener's registration; dropping it removes the listener.
#[must_use = "the listener is removed when its subscription drops"]
pub struct Subscription {
    routes: Weak<Mutex<Routes>>,
    session: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(routes) = self.routes.upgrade() else {
            return;
        };
        // Taken out of the lock, then dropped: a listener may own things whose drop
        // takes time (or this lock).
        let removed = routes.lock().ok().and_then(|mut routes| {
            let listeners = routes.listeners.get_mut(&self.session)?;
            let position = listeners.iter().position(|(id, _)| *id == self.id)?;
            Some(listeners.remove(position))
        });
        drop(removed);
    }
}

/// One page of the browser: a target attached through a flattened session.
#[derive(Clone)]
pub struct Page {
    connection: Arc<Connection>,
    target_id: String,
    session_id: String,
}

impl Page {
    /// Attaches to a page target (`Target.attachToTarget` with `flatten: true`).
    pub async fn attach(connection: &Arc<Connection>, target_id: &str) -> Result<Self, CdpError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Attached {
            session_id: String,
        }
        let attached: Attached = connection
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        Ok(Self {
            connection: Arc::clone(connection),
            target_id: target_id.to_owned(),
            session_id: attached.session_id,
        })
    }

    /// The page's target id, which is also its main frame's id.
    pub fn target_id(&self) -> &str {
        &self.target_id
    }

    /// A call on the page.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, CdpError> {
        self.start(method, params).answer().await
    }

    /// Sends a call on the page without waiting for its answer yet: calls started one
    /// after another travel together and are answered in order.
    pub fn start(&self, method: &str, params: Value) -> PendingCall {
        self.connection
            .start(Some(&self.session_id), method, params)
    }

    /// Sends a call on the page that nobody waits for (what a listener answers).
    pub fn send_detached(&self, method: &str, params: Value, log: FailureLog) {
        self.connection
            .send_detached(Some(&self.session_id), method, params, log);
    }

    /// Hands the page's events to `listener` (on the connection's reader task: it must
    /// be quick and never wait for an answer).
    pub fn subscribe(&self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Subscription {
        self.connection.subscribe(&self.session_id, listener)
    }
}

/// A message from the browser: an answer (`id`) or an event (`method`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Incoming {
    id: Option<u64>,
    method: Option<String>,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    result: Value,
    error: Option<ProtocolError>,
    session_id: Option<String>,
}

#[derive(Deserialize)]
struct ProtocolError {
    message: String,
    #[serde(default)]
    data: Option<String>,
}

type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Stream = futures::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Sends queued messages until the connection is dropped or the socket fails.
async fn write(
    mut sink: Sink,
    mut queued: mpsc::UnboundedReceiver<Message>,
    routes: Arc<Mutex<Routes>>,
) {
    while let Some(message) = queued.recv().await {
        if let Err(error) = sink.send(message).await {
            debug!(error = %error, "the browser connection failed while sending");
            break;
        }
    }
    close(&routes);
    let _already_closed = sink.close().await;
}

/// Routes answers and events until the socket closes, then fails whatever still waits.
async fn read(mut stream: Stream, routes: Arc<Mutex<Routes>>) {
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Text(text)) => route(&routes, text.as_str()),
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(error) => {
                debug!(error = %error, "the browser connection failed while reading");
                break;
            }
        }
    }
    close(&routes);
}

fn close(routes: &Mutex<Routes>) {
    let removed = routes.lock().map(|mut routes| routes.close());
    if let Ok(removed) = removed {
        removed.finish(|method| CdpError::Closed { method });
    }
}

fn route(routes: &Mutex<Routes>, text: &str) {
    let incoming: Incoming = match serde_json::from_str(text) {
        Ok(incoming) => incoming,
        Err(error) => {
            warn!(error = %error, "the browser sent a message that is not CDP");
            return;
        }
    };
    if let Some(id) = incoming.id {
        let Some(waiter) = routes
            .lock()
            .ok()
            .and_then(|mut routes| routes.waiting.remove(&id))
        else {
            // The caller timed out and gave up.
            return;
        };
        let result = match incoming.error {
            Some(error) => Err(CdpError::Protocol {
                method: waiter.method.clone(),
                message: match error.data {
                    Some(data) => format!("{} ({data})", error.message),
                    None => error.message,
                },
            }),
            None => Ok(incoming.result),
        };
        answer(waiter, result);
        return;
    }
    let Some(method) = incoming.method else {
        return;
    };
    let event = Event {
        method,
        params: incoming.params,
    };
    let Some(session) = incoming.session_id else {
        // Browser-level events: only the end of a page's session matters here.
        if event.method == "Target.detachedFromTarget"
            && let Some(session) = event.params["sessionId"].as_str()
        {
            let removed = routes.lock().map(|mut routes| routes.detach(session));
            if let Ok(removed) = removed {
                removed.finish(|method| CdpError::Detached { method });
            }
        }
        return;
    };
    // Cloned out of the lock: a listener may subscribe, or send.
    let listeners: Vec<Listener> = routes
        .lock()
        .ok()
        .and_then(|routes| {
            routes.listeners.get(&session).map(|listeners| {
                listeners
                    .iter()
                    .map(|(_, listener)| Arc::clone(listener))
                    .collect()
            })
        })
        .unwrap_or_default();
    for listener in listeners {
        listener(&event);
    }
}
