//! The egress proxy: every connection the worker's Chromium opens goes through it, and
//! it connects only to addresses the network policy allows.
//!
//! The request guard ([`crate::guard`]) checks what CDP request interception shows it:
//! a page's document, its sub-resources, and the hops of their redirects. Interception
//! does not see WebSocket connections, WebRTC, service workers' own requests, or a window
//! a `click` step opens; and it checks the address the guard resolved, while Chromium
//! resolves the name again and may connect elsewhere (DNS rebinding). This proxy closes
//! those paths at the one place they all pass: Chromium is started with
//! `--proxy-server` pointing here (see [`EgressProxy::chromium_flags`]), so it resolves
//! nothing itself and opens no connection of its own.
//!
//! For each target the proxy resolves the host, checks every address it resolves to
//! ([`crate::resolve::resolve_checked`]; a host allow-listed by name may go anywhere),
//! and connects to a checked address, never to a fresh answer for the name. A refused
//! target gets `403` with `X-Operator-Refused: url_not_allowed`; an unresolvable or
//! unreachable one gets `502`. Refusals are logged, and remembered for a while in a
//! [`RefusalLog`], so that a task whose own document the proxy refused (the guard lets it
//! through, then the name resolves elsewhere) still fails with `url_not_allowed`.
//! Connection failures (no such name, refused, unreachable, no answer) are remembered
//! the same way as `navigation_failed`, so a task whose document could not be reached
//! fails and is retried, as with a direct connection, and the proxy's own `502` page is
//! never recorded as the page.
//!
//! Two kinds of requests arrive:
//! - `CONNECT host:port`: HTTPS, and WebSockets (`ws:` as well as `wss:`, which Chromium
//!   tunnels through a proxy). Once the target is connected, bytes are copied both ways
//!   until either side closes.
//! - absolute-form plain HTTP (`GET http://host/path`). The request is forwarded in
//!   origin form over an upstream connection that this client connection keeps for that
//!   host; one client connection may carry requests for several hosts.
//!
//! It sits on every request of every task, so the happy path is one loopback hop: no
//! per-request allocation beyond hyper's own, `TCP_NODELAY` on both sides, upstream
//! keep-alive.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Parts, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::{NetworkPolicy, ResolveError};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// The header a refusal carries, naming the error code.
pub const REFUSED_HEADER: &str = "x-operator-refused";
/// The header a `502` carries: `unresolvable` or `unreachable`.
pub const FAILURE_HEADER: &str = "x-operator-error";

/// A connection attempt to one address gives up after this long and the next address
/// is tried. Chromium waits for the proxy's answer; the task's own deadline bounds the
/// whole navigation anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An idle upstream connection older than this is not reused. Servers close idle
/// keep-alive connections (Node.js after 5 s): a request written just as the server
/// closes fails without an answer. A request without a body is then sent again on a new
/// connection; one with a body cannot be (it was streamed), so the reuse stays short.
const UPSTREAM_IDLE_REUSE: Duration = Duration::from_secs(4);

/// Upstream connections one client connection keeps (one per host). Chromium spreads
/// its requests over a few connections to the proxy; a page's hosts are few.
const UPSTREAMS_PER_CLIENT: usize = 4;

/// How many refusals the [`RefusalLog`] remembers.
const REMEMBERED_REFUSALS: usize = 64;

/// What the proxy answers: the upstream's body, or its own short one.
type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The worker's egress proxy: a listener on `127.0.0.1:<ephemeral port>`, serving until
/// dropped (or [`EgressProxy::stop`]).
pub struct EgressProxy {
    address: SocketAddr,
    refusals: Arc<RefusalLog>,
    stop: CancellationToken,
}

impl EgressProxy {
    /// Binds the listener and starts serving on the current tokio runtime.
    pub fn start(policy: NetworkPolicy) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let address = listener.local_addr()?;
        let refusals = Arc::new(RefusalLog::default());
        let stop = CancellationToken::new();
        let mut server = hyper::server::conn::http1::Builder::new();
        // Our own browsers are the only clients, and they close idle connections
        // themselves; a header timeout would also need a timer.
        server.header_read_timeout(None::<Duration>);
        let shared = Arc::new(Shared {
            policy,
            own_address: address,
            refusals: Arc::clone(&refusals),
            stop: stop.clone(),
            server,
        });
        tokio::spawn(accept_loop(listener, shared));
        info!(%address, "egress proxy listening");
        Ok(Self {
            address,
            refusals,
            stop,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Chromium's flags for using this proxy for everything.
    ///
    /// - `--proxy-server`: every HTTP, HTTPS and WebSocket connection goes through it
    ///   (QUIC is off already, see the pool's flags).
    /// - `--proxy-bypass-list=<-loopback>`: without it Chromium connects directly to
    ///   `localhost`, loopback and link-local addresses (its implicit bypass rules),
    ///   which are precisely the addresses the policy is about (169.254.169.254 is
    ///   link-local).
    /// - `--force-webrtc-ip-handling-policy=disable_non_proxied_udp`: WebRTC sends no
    ///   UDP around the proxy (it may only use TCP through it, where it is checked).
    pub fn chromium_flags(&self) -> [String; 3] {
        [
            format!("--proxy-server=http://{}", self.address),
            "--proxy-bypass-list=<-loopback>".to_owned(),
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp".to_owned(),
        ]
    }

    /// The refusals, for tasks that need to know whether their document was refused.
    pub fn refusals(&self) -> &Arc<RefusalLog> {
        &self.refusals
    }

    /// Stops accepting and closes every connection (the browsers are gone by then).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Recent refusals, by host and port, numbered in order. A task remembers the number
/// current when its guard let its document through; a refusal of the same host and port
/// with a later number means the proxy refused that document.
#[derive(Default)]
pub struct RefusalLog {
    /// The number of the latest refusal (0: none yet). Read without the lock, so that a
    /// task asking while nothing was refused takes no lock.
    latest: AtomicU64,
    /// A std mutex: held to push or scan a few entries, never across an await.
    recent: Mutex<VecDeque<RecordedRefusal>>,
}

struct RecordedRefusal {
    number: u64,
    host: String,
    port: u16,
    error: CodedError,
}

impl RefusalLog {
    /// The number of the latest refusal; later refusals have larger numbers.
    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    pub(crate) fn record(&self, host: &str, port: u16, error: &CodedError) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let number = self.latest.load(Ordering::Relaxed) + 1;
        if recent.len() == REMEMBERED_REFUSALS {
            recent.pop_front();
        }
        recent.push_back(RecordedRefusal {
            number,
            host: bare_host(host).to_ascii_lowercase(),
            port,
            error: error.clone(),
        });
        // Published after the entry, under the lock: a reader that sees the number
        // finds the entry.
        self.latest.store(number, Ordering::Release);
    }

    /// The refusal of `host:port` numbered after `since`, if the proxy refused it.
    pub fn refused_since(&self, host: &str, port: u16, since: u64) -> Option<CodedError> {
        if self.latest() <= since {
            return None;
        }
        let host = bare_host(host);
        let recent = self.recent.lock().ok()?;
        recent
            .iter()
            .rev()
            .take_while(|refusal| refusal.number > since)
            .find(|refusal| refusal.port == port && refusal.host.eq_ignore_ascii_case(host))
            .map(|refusal| refusal.error.clone())
    }
}

/// A host without IPv6 brackets or a trailing dot: the form both sides compare.
fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
}

/// What every connection of the proxy shares.
struct Shared {
    policy: NetworkPolicy,
    /// The proxy's own address: a target that is the proxy itself is refused, even when
    /// loopback is allowed (a request would loop through the proxy).
    own_address: SocketAddr,
    refusals: Arc<RefusalLog>,
    stop: CancellationToken,
    server: hyper::server::conn::http1::Builder,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, Arc::clone(&shared)));
            }
            Err(error) => {
                // Out of file descriptors, most likely: wait for some to close rather
                // than spin.
                debug!(error = %error, "egress proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Serves one browser connection until it closes (or the proxy stops).
async fn serve_client(stream: TcpStream, shared: Arc<Shared>) {
    // Small writes (a CONNECT answer, a TLS record) must not wait for Nagle.
    if let Err(error) = stream.set_nodelay(true) {
        debug!(error = %error, "cannot set TCP_NODELAY on a browser connection");
    }
    let stop = shared.stop.clone();
    let client = Arc::new(ClientConnection {
        shared: Arc::clone(&shared),
        upstreams: Mutex::new(Vec::new()),
    });
    let service = hyper::service::service_fn(move |request| {
        let client = Arc::clone(&client);
        async move { Ok::<_, Infallible>(client.handle(request).await) }
    });
    let serving = shared
        .server
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        served = serving => {
            if let Err(error) = served {
                debug!(error = %error, "egress proxy connection ended with an error");
            }
        }
        () = stop.cancelled() => {}
    }
}

/// One browser connection to the proxy and the upstream connections it opened.
struct ClientConnection {
    shared: Arc<Shared>,
    /// Upstream connections for plain-HTTP requests, reused by this connection's later
    /// requests to the same host (keep-alive on both sides). Not shared between client
    /// connections: each browser context has its own connections to the proxy, so two
    /// tasks never share an upstream connection. A std mutex: hyper serves one request
    /// at a time per connection, and the lock is held only to take or put back a sender.
    upstreams: Mutex<Vec<Upstream>>,
}

/// What the proxy sends upstream: the browser's request body, or none (a request sent
/// again, see [`bodiless_copy`]).
type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// Whether a request may be sent a second time: a method without side effects, and no
/// body (the body is streamed through, so it could not be sent twice).
fn is_replayable(request: &Request<Incoming>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) && request.body().is_end_stream()
}

/// The same request head, with an empty body.
fn bodiless_copy(request: &Request<Incoming>) -> Request<UpstreamBody> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

struct Upstream {
    host: String,
    port: u16,
    sender: hyper::client::conn::http1::SendRequest<UpstreamBody>,
    idle_since: Instant,
}

/// Why the proxy answers itself instead of connecting.
enum Failure {
    /// The policy refuses the target: `403`.
    Refused(CodedError),
    /// `502`.
    Unresolvable(String),
    /// `502`.
    Unreachable(String),
    /// Not something a browser sends a proxy: `400`.
    BadRequest(&'static str),
}

impl Failure {
    fn response(self) -> Response<ProxyBody> {
        let (status, header_value, message) = match self {
            Self::Refused(error) => (
                StatusCode::FORBIDDEN,
                (REFUSED_HEADER, error.code.as_str()),
                error.message,
            ),
            Self::Unresolvable(message) => (
                StatusCode::BAD_GATEWAY,
                (FAILURE_HEADER, "unresolvable"),
                message,
            ),
            Self::Unreachable(message) => (
                StatusCode::BAD_GATEWAY,
                (FAILURE_HEADER, "unreachable"),
                message,
            ),
            Self::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                (FAILURE_HEADER, "bad_request"),
                message.to_owned(),
            ),
        };
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(message))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            HeaderName::from_static(header_value.0),
            HeaderValue::from_static(header_value.1),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl ClientConnection {
    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let answer = if request.method() == Method::CONNECT {
            self.tunnel(request).await
        } else {
            self.forward(request).await
        };
        answer.unwrap_or_else(Failure::response)
    }

    /// `CONNECT host:port`: connects to a checked address, answers `200`, then copies
    /// bytes both ways on the upgraded connection.
    async fn tunnel(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, Failure> {
        let authority = request
            .uri()
            .authority()
            .ok_or(Failure::BadRequest("CONNECT needs host:port"))?;
        let port = authority
            .port_u16()
            .ok_or(Failure::BadRequest("CONNECT needs host:port"))?;
        let mut upstream = self.connect(authority.host(), port).await?;
        let stop = self.shared.stop.clone();
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    debug!(error = %error, "a CONNECT was not upgraded");
                    return;
                }
            };
            let mut browser = TokioIo::new(upgraded);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut browser, &mut upstream) => {
                    if let Err(error) = copied {
                        debug!(error = %error, "a tunnel ended with an error");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
        Ok(Response::new(Either::Right(Full::new(Bytes::new()))))
    }

    /// Absolute-form plain HTTP: forwarded in origin form over this connection's
    /// upstream connection to that host, opened (to a checked address) when needed.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Failure> {
        let uri = request.uri();
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(Failure::BadRequest(
                "a proxy request needs an absolute http:// URL",
            ));
        }
        // A cheap clone (shared bytes); the request's URI is rewritten below.
        let authority: Authority = uri
            .authority()
            .cloned()
            .ok_or(Failure::BadRequest("the URL has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let mut origin_form = Parts::default();
        origin_form.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        *request.uri_mut() = Uri::from_parts(origin_form)
            .map_err(|_| Failure::BadRequest("the URL has no valid path"))?;
        let headers = request.headers_mut();
        remove_hop_by_hop(headers);
        if !headers.contains_key(header::HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| Failure::BadRequest("the URL's host is not a valid header"))?;
            headers.insert(header::HOST, host);
        }
        let (upstream, reused) = self.upstream(authority.host(), port).await?;
        // A kept connection may be closed by the server just as this request is written
        // (idle keep-alive timeouts); the request then fails without an answer. As a
        // browser does, a request without a body and without side effects is sent again
        // once, on a new connection; any other request's failure is the page's to see.
        let replay = (reused && is_replayable(&request)).then(|| bodiless_copy(&request));
        let mut upstream = upstream;
        let sent = upstream
            .sender
            .send_request(request.map(Either::Left))
            .await;
        let mut response = match (sent, replay) {
            (Ok(response), _) => response,
            (Err(error), Some(copy)) => {
                debug!(%authority, error = %error, "a kept upstream connection failed; sending again on a new one");
                upstream = self.open_upstream(authority.host(), port).await?;
                upstream.sender.send_request(copy).await.map_err(|error| {
                    Failure::Unreachable(format!("{authority} did not answer: {error}"))
                })?
            }
            (Err(error), None) => {
                return Err(Failure::Unreachable(format!(
                    "{authority} did not answer: {error}"
                )));
            }
        };
        self.keep(upstream);
        remove_hop_by_hop(response.headers_mut());
        Ok(response.map(Either::Left))
    }

    /// A ready upstream connection to `host:port`: a kept one, or a new one (and
    /// whether it was kept). Taken out of the kept list while in use.
    async fn upstream(&self, host: &str, port: u16) -> Result<(Upstream, bool), Failure> {
        let kept = self.upstreams.lock().ok().and_then(|mut upstreams| {
            let index = upstreams.iter().position(|upstream| {
                upstream.port == port && upstream.host.eq_ignore_ascii_case(host)
            })?;
            Some(upstreams.remove(index))
        });
        if let Some(mut kept) = kept
            && kept.idle_since.elapsed() < UPSTREAM_IDLE_REUSE
            && !kept.sender.is_closed()
            && kept.sender.ready().await.is_ok()
        {
            return Ok((kept, true));
        }
        Ok((self.open_upstream(host, port).await?, false))
    }

    /// A new upstream connection to a checked address of `host:port`.
    async fn open_upstream(&self, host: &str, port: u16) -> Result<Upstream, Failure> {
        let stream = self.connect(host, port).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| {
                Failure::Unreachable(format!("cannot talk HTTP to {host}:{port}: {error}"))
            })?;
        // Ends when the sender is dropped (with this client connection) or the server
        // closes.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(error = %error, "an upstream connection ended with an error");
            }
        });
        Ok(Upstream {
            host: host.to_owned(),
            port,
            sender,
            idle_since: Instant::now(),
        })
    }

    /// Keeps an upstream connection for this connection's next requests to its host;
    /// the least recently used goes when the list is full.
    fn keep(&self, mut upstream: Upstream) {
        let Ok(mut upstreams) = self.upstreams.lock() else {
            return;
        };
        if upstreams.len() == UPSTREAMS_PER_CLIENT {
            upstreams.remove(0);
        }
        upstream.idle_since = Instant::now();
        upstreams.push(upstream);
    }

    /// Resolves `host`, checks every address, and connects to the first checked
    /// address that answers.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Failure> {
        let addresses = match crate::resolve::resolve_checked(&self.shared.policy, host, port).await
        {
            Ok(addresses) => addresses,
            Err(ResolveError::Refused(error)) => return Err(self.refuse(host, port, error)),
            Err(ResolveError::Unresolvable(message)) => {
                debug!(host, port, error = %message, "egress target does not resolve");
                self.record_failure(host, port, &message);
                return Err(Failure::Unresolvable(message));
            }
        };
        let mut last_error = String::new();
        for address in addresses {
            if self.is_own_address(address) {
                let error = CodedError::new(
                    ErrorCode::UrlNotAllowed,
                    format!("{host}:{port} is the worker's egress proxy itself"),
                );
                return Err(self.refuse(host, port, error));
            }
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(error = %error, "cannot set TCP_NODELAY upstream");
                    }
                    return Ok(stream);
                }
                Ok(Err(error)) => last_error = format!("{address}: {error}"),
                Err(_) => {
                    last_error = format!(
                        "{address}: no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    );
                }
            }
        }
        debug!(host, port, error = %last_error, "egress target unreachable");
        let message = format!("cannot connect to {host}:{port}: {last_error}");
        self.record_failure(host, port, &message);
        Err(Failure::Unreachable(message))
    }

    /// Remembers a target that could not be reached, as `navigation_failed` (retryable,
    /// what a direct connection's failure gives), so that a task whose own document it
    /// was fails instead of recording the proxy's `502` page as its page.
    fn record_failure(&self, host: &str, port: u16, message: &str) {
        let error = CodedError::new(ErrorCode::NavigationFailed, message);
        self.shared.refusals.record(host, port, &error);
    }

    fn is_own_address(&self, address: SocketAddr) -> bool {
        let own = self.shared.own_address;
        let ip = address.ip().to_canonical();
        address.port() == own.port() && (ip == own.ip() || ip.is_unspecified())
    }

    fn refuse(&self, host: &str, port: u16, error: CodedError) -> Failure {
        info!(host, port, reason = %error.message, "egress proxy refused a connection");
        self.shared.refusals.record(host, port, &error);
        Failure::Refused(error)
    }
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), and those named in `Connection`.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(listed) = connection.to_str()
    {
        for name in listed.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove(PROXY_CONNECTION);
    headers.remove(KEEP_ALIVE);
}

/// Hop-by-hop headers without a constant in `http`.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn policy(allow: &[&str]) -> NetworkPolicy {
        let entries: Vec<String> = allow.iter().map(|entry| entry.to_string()).collect();
        NetworkPolicy::parse(&entries, false).expect("policy")
    }

    /// A loopback server that counts its connections and hands each to `serve`, with its
    /// number (0 for the first). Returns its port and its connection count.
    async fn counting_server<F, Serving>(serve: F) -> (u16, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream, usize) -> Serving + Send + 'static,
        Serving: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, number));
            }
        });
        (port, accepted)
    }

    /// A loopback server that counts its connections and echoes what it reads.
    async fn echo_server() -> (u16, Arc<AtomicUsize>) {
        counting_server(|mut stream, _| async move {
            let (mut reader, mut writer) = stream.split();
            let _closed = tokio::io::copy(&mut reader, &mut writer).await;
        })
        .await
    }

    /// A loopback HTTP server answering `NAME METHOD PATH HOST`, counting connections.
    async fn http_server(name: &'static str) -> (u16, Arc<AtomicUsize>) {
        counting_server(move |stream, _| {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                let proxy_header = request.headers().contains_key("proxy-connection");
                let answer = format!(
                    "{name} {} {} {host} proxy-connection={proxy_header}",
                    request.method(),
                    request.uri()
                );
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer)))) }
            });
            async move {
                let _closed = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await
    }

    /// Sends `CONNECT target` on a new connection; returns the status, the head, and
    /// the connection (tunnelled when the status is 200).
    async fn connect(proxy: &EgressProxy, target: &str) -> (u16, String, TcpStream) {
        let mut stream = TcpStream::connect(proxy.address()).await.expect("proxy");
        stream
            .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut byte).await.expect("read");
            assert_eq!(read, 1, "the proxy closed before answering: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("utf-8").to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .expect("a status");
        (status, head, stream)
    }

    /// An HTTP/1 client connection to the proxy.
    async fn client(proxy: &EgressProxy) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(proxy.address()).await.expect("proxy");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    }

    /// Sends `GET url` in absolute form, as a browser does to its proxy.
    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        url: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let uri: Uri = url.parse().expect("uri");
        let host = uri.authority().expect("authority").to_string();
        let request = Request::get(uri)
            .header(header::HOST, host)
            .header("proxy-connection", "keep-alive")
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender.ready().await.expect("ready");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            headers,
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    }

    /// An HTTP server whose first connection answers one request, then closes when the
    /// second arrives, without answering (an idle timeout that fires just then); later
    /// connections answer normally. Returns its port and its connection count.
    async fn server_closing_its_kept_connection() -> (u16, Arc<AtomicUsize>) {
        async fn read_head(stream: &mut TcpStream) -> bool {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return false,
                }
            }
            true
        }
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        counting_server(|mut stream, number| async move {
            while read_head(&mut stream).await {
                if stream.write_all(ANSWER).await.is_err() {
                    return;
                }
                if number == 0 {
                    // Read the next request, then close without answering.
                    let _ = read_head(&mut stream).await;
                    return;
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_get_on_a_kept_connection_the_server_closed_is_sent_again() {
        let proxy = EgressProxy::start(policy(&["127.0.0.0/8"])).expect("proxy");
        let (port, accepted) = server_closing_its_kept_connection().await;
        let mut sender = client(&proxy).await;
        let url = format!("http://127.0.0.1:{port}/page");
        let (status, _, body) = get(&mut sender, &url).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let (status, _, body) = get(&mut sender, &url).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ok"),
            "sent again on a new connection"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connect_to_an_allowed_address_tunnels_both_ways() {
        let proxy = EgressProxy::start(policy(&["127.0.0.0/8"])).expect("proxy");
        let (port, accepted) = echo_server().await;
        let (status, _, mut tunnel) = connect(&proxy, &format!("127.0.0.1:{port}")).await;
        assert_eq!(status, 200);
        tunnel.write_all(b"ping").await.expect("write");
        let mut echoed = [0u8; 4];
        tunnel.read_exact(&mut echoed).await.expect("read");
        assert_eq!(&echoed, b"ping");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connect_to_a_refused_address_is_403_and_never_connects() {
        let proxy = EgressProxy::start(policy(&[])).expect("proxy");
        let (port, accepted) = echo_server().await;
        let before = proxy.refusals().latest();
        for target in [
            format!("127.0.0.1:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
            format!("localhost:{port}"),
            "169.254.169.254:80".to_owned(),
        ] {
            let (status, head, _) = connect(&proxy, &target).await;
            assert_eq!(status, 403, "{target}: {head}");
            assert!(
                head.contains("x-operator-refused: url_not_allowed"),
                "{target}: {head}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing reached it");
        let refusal = proxy
            .refusals()
            .refused_since("127.0.0.1", port, before)
            .expect("the refusal is remembered");
        assert_eq!(refusal.code, ErrorCode::UrlNotAllowed);
        assert!(refusal.message.contains("loopback"), "{}", refusal.message);
        assert!(
            proxy
                .refusals()
                .refused_since("127.0.0.1", port, proxy.refusals().latest())
                .is_none(),
            "only refusals after the given number count"
        );
    }

    #[tokio::test]
    async fn a_host_allowed_by_name_reaches_its_address_which_stays_refused() {
        let proxy = EgressProxy::start(policy(&["localhost"])).expect("proxy");
        let (port, accepted) = echo_server().await;
        let (status, head, _) = connect(&proxy, &format!("localhost:{port}")).await;
        assert_eq!(status, 200, "{head}");
        let (status, head, _) = connect(&proxy, &format!("127.0.0.1:{port}")).await;
        assert_eq!(status, 403, "{head}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn plain_http_is_forwarded_in_origin_form_and_kept_alive_across_hosts() {
        let proxy = EgressProxy::start(policy(&["127.0.0.0/8"])).expect("proxy");
        let (first_port, first_connections) = http_server("first").await;
        let (second_port, second_connections) = http_server("second").await;
        let mut sender = client(&proxy).await;
        let (status, _, body) = get(
            &mut sender,
            &format!("http://127.0.0.1:{first_port}/one?x=1"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!("first GET /one?x=1 127.0.0.1:{first_port} proxy-connection=false")
        );
        let (status, _, body) =
            get(&mut sender, &format!("http://127.0.0.1:{second_port}/two")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("second GET /two "), "{body}");
        let (status, _, body) =
            get(&mut sender, &format!("http://127.0.0.1:{first_port}/three")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("first GET /three "), "{body}");
        // A refused host on the same connection gets a 403; the connection goes on.
        let (status, headers, body) = get(&mut sender, "http://10.0.0.1/secret").await;
        assert_eq!(status, 403);
        assert_eq!(headers[REFUSED_HEADER], "url_not_allowed");
        assert!(body.contains("private"), "{body}");
        let (status, _, _) = get(&mut sender, &format!("http://127.0.0.1:{first_port}/four")).await;
        assert_eq!(status, 200);
        assert_eq!(
            first_connections.load(Ordering::SeqCst),
            1,
            "one upstream connection carried every request to the first host"
        );
        assert_eq!(second_connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unresolvable_and_unreachable_targets_are_502() {
        let proxy = EgressProxy::start(policy(&["127.0.0.0/8"])).expect("proxy");
        // RFC 6761: `.invalid` never resolves.
        let (status, head, _) = connect(&proxy, "no-such-host.invalid:443").await;
        assert_eq!(status, 502, "{head}");
        assert!(head.contains("x-operator-error: unresolvable"), "{head}");
        // A loopback port nobody listens on.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = unused.local_addr().expect("address").port();
        drop(unused);
        let (status, head, _) = connect(&proxy, &format!("127.0.0.1:{port}")).await;
        assert_eq!(status, 502, "{head}");
        assert!(head.contains("x-operator-error: unreachable"), "{head}");
        let mut sender = client(&proxy).await;
        let (status, headers, _) = get(&mut sender, &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(status, 502);
        assert_eq!(headers[FAILURE_HEADER], "unreachable");
    }

    #[tokio::test]
    async fn the_proxy_does_not_connect_to_itself() {
        let proxy = EgressProxy::start(policy(&["127.0.0.0/8"])).expect("proxy");
        let (status, head, _) = connect(&proxy, &proxy.address().to_string()).await;
        assert_eq!(status, 403, "{head}");
    }

    #[tokio::test]
    async fn a_stopped_proxy_closes_its_connections_and_accepts_no_more() {
        let proxy = EgressProxy::start(policy(&["127.0.0.0/8"])).expect("proxy");
        let (port, _) = echo_server().await;
        let (status, _, mut tunnel) = connect(&proxy, &format!("127.0.0.1:{port}")).await;
        assert_eq!(status, 200);
        proxy.stop();
        let mut buffer = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), tunnel.read(&mut buffer))
            .await
            .expect("the tunnel closes");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(proxy.address()).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "the listener is closed");
    }

    #[test]
    fn the_refusal_log_keeps_the_latest_refusals_in_order() {
        let log = RefusalLog::default();
        assert_eq!(log.latest(), 0);
        assert!(log.refused_since("a.test", 80, 0).is_none());
        let error = CodedError::new(ErrorCode::UrlNotAllowed, "refused");
        log.record("A.test.", 80, &error);
        assert_eq!(log.latest(), 1);
        assert_eq!(log.refused_since("a.test", 80, 0), Some(error.clone()));
        assert!(
            log.refused_since("a.test", 443, 0).is_none(),
            "another port"
        );
        assert!(log.refused_since("a.test", 80, 1).is_none(), "not after 1");
        log.record("[::1]", 8080, &error);
        assert!(log.refused_since("::1", 8080, 1).is_some());
        for index in 0..REMEMBERED_REFUSALS {
            log.record(&format!("host-{index}.test"), 80, &error);
        }
        assert!(
            log.refused_since("a.test", 80, 0).is_none(),
            "the oldest is forgotten"
        );
    }

    #[test]
    fn chromium_is_told_to_send_everything_through_the_proxy() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let _entered = runtime.enter();
        let proxy = EgressProxy::start(policy(&[])).expect("proxy");
        let flags = proxy.chromium_flags();
        assert_eq!(
            flags[0],
            format!("--proxy-server=http://127.0.0.1:{}", proxy.address().port())
        );
        assert!(flags.contains(&"--proxy-bypass-list=<-loopback>".to_owned()));
        assert!(
            flags.contains(&"--force-webrtc-ip-handling-policy=disable_non_proxied_udp".to_owned())
        );
    }
}
