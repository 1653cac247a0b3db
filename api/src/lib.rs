//! The API role: a thin REST layer over the repository and the queue.
//!
//! - [`tasks`]: `/v1/tasks` — submit, get, list, cancel; a task's artifacts and attempts.
//! - [`artifacts`]: `/v1/artifacts/{id}` — download.
//! - [`queues`]: `/v1/queues/{name}` — statistics, pause and resume.
//! - [`events`]: `/v1/tasks/{id}/events` and `/v1/tasks/{id}/ws` — live events (SSE, WebSocket).
//! - [`oneshot`]: `/v1/screenshot`, `/v1/pdf`, `/v1/content`, `/v1/scrape` — create a task
//!   and answer with what it produced.
//! - [`health`]: `/healthz`, `/readyz`.
//! - [`webhooks`]: `/v1/webhooks` — endpoints, deliveries, redelivery, signing keys.
//! - [`keys`]: `/v1/api-keys` — a tenant's API keys; `/v1/me` — who is calling.
//! - [`audit`]: `/v1/audit-events` — the tenant's audit log.
//! - [`usage`]: `/v1/usage` — the tenant's monthly use and quotas.
//! - [`admin`]: `/v1/admin/tenants` — the platform's tenants (platform-admin keys).
//! - [`members`]: `/v1/members`, `/v1/invitations` — people who sign in, and invitations;
//!   the platform's email-domain mapping.
//! - [`signin`]: `/v1/auth/…` — sign-in through OpenID Connect, session refresh and
//!   logout; `/.well-known/jwks.json`.
//! - [`access`]: authentication, the permission table every route is checked against,
//!   and the [`access::Caller`] handlers act for.
//! - [`submission`]: parsing and validating a task submission.
//! - [`dto`]: wire types (their doc comments are the OpenAPI descriptions).
//! - [`error`]: error bodies, and the only mapping from error codes to HTTP statuses.
//! - [`state`]: what handlers share.
//!
//! [`ApiServer::bind`] binds the listener first (port 0 in tests) and
//! [`ApiServer::run_until_stopped`] serves until the shutdown future resolves.

use std::net::SocketAddr;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::middleware::Tracing;
use poem::{EndpointExt, Route, Server};
use poem_openapi::OpenApiService;

pub mod access;
pub mod admin;
pub mod artifacts;
pub mod audit;
pub mod dto;
pub mod error;
pub mod events;
pub mod health;
pub mod keys;
pub mod members;
pub mod model_settings;
pub mod oneshot;
pub mod queues;
pub mod signin;
pub mod state;
pub mod submission;
pub mod tasks;
pub mod usage;
pub mod webhooks;

pub use state::{AppState, SharedState};

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The assembled routes: the API, `/openapi.json` and the docs at `/docs`.
pub fn routes(state: SharedState) -> impl poem::Endpoint {
    let api = OpenApiService::new(
        (
            tasks::TasksApi {
                state: SharedState::clone(&state),
            },
            artifacts::ArtifactsApi {
                state: SharedState::clone(&state),
            },
            oneshot::OneShotApi {
                state: SharedState::clone(&state),
            },
            health::HealthApi {
                state: SharedState::clone(&state),
            },
            queues::QueuesApi {
                state: SharedState::clone(&state),
            },
            webhooks::WebhooksApi {
                state: SharedState::clone(&state),
            },
            keys::KeysApi {
                state: SharedState::clone(&state),
            },
            audit::AuditApi {
                state: SharedState::clone(&state),
            },
            admin::AdminApi {
                state: SharedState::clone(&state),
            },
            members::MembersApi {
                state: SharedState::clone(&state),
            },
            usage::UsageApi {
                state: SharedState::clone(&state),
            },
            model_settings::ModelSettingsApi {
                state: SharedState::clone(&state),
            },
        ),
        "OperatorNext",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Run browser tasks (screenshots, PDFs) on a queue of headless Chromium workers. \
         Every error body is `{code, message}` with a stable machine-readable `code`. \
         Live task events are served outside this document: `GET /v1/tasks/{id}/events` \
         (Server-Sent Events, resumable with `Last-Event-ID`) and `GET /v1/tasks/{id}/ws` \
         (WebSocket, resumable with `?last_event_id=`). Every operation but the health \
         checks needs an API key: `Authorization: Bearer opk_…`; each names the \
         permission it needs.",
    )
    .server(state.public_url.clone());
    let raw_spec = api.spec();
    let spec = access::document(&raw_spec);
    let docs = api.swagger_ui_html().replacen(&raw_spec, &spec, 1);
    let spec_endpoint = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(spec.clone())
    });
    let docs_endpoint = poem::endpoint::make_sync(move |_| poem::web::Html(docs.clone()));
    let max_body_bytes = state.settings.server.max_body_bytes;
    Route::new()
        .at(
            "/v1/tasks/:id/events",
            poem::get(events::sse).data(SharedState::clone(&state)),
        )
        .at(
            "/v1/tasks/:id/ws",
            poem::get(events::websocket).data(SharedState::clone(&state)),
        )
        .at(
            "/v1/auth/providers",
            poem::get(signin::providers).data(SharedState::clone(&state)),
        )
        .at(
            "/v1/auth/oidc/:provider/login",
            poem::get(signin::login).data(SharedState::clone(&state)),
        )
        .at(
            "/v1/auth/oidc/:provider/callback",
            access::CountedFailures {
                inner: poem::get(signin::callback).data(SharedState::clone(&state)),
                authenticator: std::sync::Arc::clone(&state.authenticator),
            },
        )
        .at(
            "/v1/auth/refresh",
            access::CountedFailures {
                inner: poem::post(signin::refresh).data(SharedState::clone(&state)),
                authenticator: std::sync::Arc::clone(&state.authenticator),
            },
        )
        .at(
            "/v1/auth/logout",
            poem::post(signin::logout).data(SharedState::clone(&state)),
        )
        .at(
            "/.well-known/jwks.json",
            poem::get(signin::jwks).data(SharedState::clone(&state)),
        )
        .nest("/", api)
        .at("/openapi.json", spec_endpoint)
        .nest("/docs", Route::new().at("/", docs_endpoint))
        .data(submission::BodyLimit(max_body_bytes))
        .with(access::Access {
            authenticator: std::sync::Arc::clone(&state.authenticator),
            limiter: std::sync::Arc::clone(&state.limiter),
        })
        .with_if(!state.settings.auth.cors_origins.is_empty(), cors(&state))
        .with(Tracing)
        .catch_all_error(error::error_response)
}

/// Browsers at `auth.cors_origins` may call the API (with the `Authorization` header).
fn cors(state: &SharedState) -> poem::middleware::Cors {
    state
        .settings
        .auth
        .cors_origins
        .iter()
        .fold(poem::middleware::Cors::new(), |cors, origin| {
            cors.allow_origin(origin.as_str())
        })
        .allow_headers([
            "authorization",
            "content-type",
            "idempotency-key",
            "traceparent",
        ])
        .expose_headers(["location", "operator-task-id", "retry-after"])
}

/// A bound API server.
pub struct ApiServer {
    acceptor: poem::listener::TcpAcceptor,
    local_addr: SocketAddr,
}

impl ApiServer {
    /// Binds `host:port` (port 0 picks a free one). Binding comes first so the state
    /// can carry the real address (for links) when the port was picked.
    pub async fn bind(host: &str, port: u16) -> std::io::Result<Self> {
        let address = format!("{host}:{port}");
        let acceptor = TcpListener::bind(address).into_acceptor().await?;
        let local_addr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|address| address.as_socket_addr().copied())
            .ok_or_else(|| std::io::Error::other("listener has no socket address"))?;
        Ok(Self {
            acceptor,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped<F>(self, state: SharedState, shutdown: F) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let app = routes(state);
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(SHUTDOWN_GRACE))
            .await
    }
}
