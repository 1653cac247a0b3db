//! Who may call what: the one table of the permission each operation needs, the
//! middleware that authenticates every request and checks that table, and the
//! [`Caller`] handlers act for.
//!
//! - Public: `/healthz`, `/readyz`, `/openapi.json`, `/docs`, the sign-in endpoints
//!   (`/v1/auth/…`, which check their own state, cookie or token) and
//!   `/.well-known/jwks.json`. Every other request must present `Authorization: Bearer`
//!   with an API key (`opk_…`) or a session token (the JWT a sign-in gives); missing or
//!   bad credentials are `401 unauthenticated` with `WWW-Authenticate: Bearer`.
//! - [`RULES`] names the permission of every operation; the caller's role must grant
//!   it ([`Role::grants`], the grant table) or the answer is `403 forbidden` naming the
//!   permission. A route missing from the table is refused too (default deny): its
//!   handler cannot get a [`Caller`].
//! - Handlers scope every read and write by [`Caller::tenant`], so another tenant's
//!   resource is a `404`, exactly as if it did not exist.
//! - Failed authentications are counted per client address; past
//!   `auth.failures_per_minute`, the address gets `429 rate_limited` until its minute is
//!   over.
//!
//! With `auth.enabled = false` every request acts as the owner of the `default` tenant
//! (loopback only; see `operator`'s start-up check).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use operator_domain::TenantId;
use operator_domain::auth::{Permission, Role};
use operator_domain::error::ErrorCode;
use operator_domain::links::{GrantScope, grant_holds, verify_stream_ticket};
use operator_store::credentials::{KeyVerifier, Refusal};
use operator_store::rate::{Decision, SubmissionLimiter};
use operator_store::sessions::SessionTokenError;
use operator_store::signing::LinkSigner;
use poem::http::{Method, header};
use poem::{Endpoint, FromRequest, IntoResponse, Middleware, Request, RequestBody, Response};
use serde_json::{Value, json};
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::ApiError;
use crate::signin::SignIn;

use Permission::*;

/// The permission each operation needs: method, path template (as in the API
/// document), permission. Every operation of `/openapi.json` and the two event
/// streams are here; a test checks both ways.
pub const RULES: &[(&str, &str, Permission)] = &[
    ("POST", "/v1/tasks", TasksWrite),
    ("GET", "/v1/tasks", TasksRead),
    ("GET", "/v1/tasks/{id}", TasksRead),
    ("POST", "/v1/tasks/{id}/cancel", TasksWrite),
    ("POST", "/v1/tasks/{id}/retry", TasksWrite),
    ("POST", "/v1/tasks/{id}/replay", TasksWrite),
    ("GET", "/v1/model-settings", ModelRead),
    ("PUT", "/v1/model-settings", ModelManage),
    ("DELETE", "/v1/model-settings", ModelManage),
    ("GET", "/v1/tasks/{id}/attempts", TasksRead),
    ("GET", "/v1/tasks/{id}/artifacts", TasksRead),
    ("GET", "/v1/tasks/{id}/events", TasksRead),
    ("GET", "/v1/tasks/{id}/ws", TasksRead),
    ("GET", "/v1/tasks/{id}/event-ticket", TasksRead),
    ("GET", "/v1/tasks/{id}/webhook-deliveries", WebhooksRead),
    ("GET", "/v1/artifacts/{id}", TasksRead),
    ("POST", "/v1/screenshot", TasksWrite),
    ("POST", "/v1/pdf", TasksWrite),
    ("POST", "/v1/content", TasksWrite),
    ("POST", "/v1/scrape", TasksWrite),
    ("GET", "/v1/queues", QueuesRead),
    ("GET", "/v1/queues/{name}", QueuesRead),
    ("PUT", "/v1/queues/{name}", QueuesManage),
    ("POST", "/v1/queues/{name}/pause", QueuesManage),
    ("POST", "/v1/queues/{name}/resume", QueuesManage),
    ("POST", "/v1/webhooks", WebhooksManage),
    ("GET", "/v1/webhooks", WebhooksRead),
    ("GET", "/v1/webhooks/{id}", WebhooksRead),
    ("PATCH", "/v1/webhooks/{id}", WebhooksManage),
    ("DELETE", "/v1/webhooks/{id}", WebhooksManage),
    ("POST", "/v1/webhooks/{id}/rotate-secret", WebhooksManage),
    ("GET", "/v1/webhooks/{id}/deliveries", WebhooksRead),
    (
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        WebhooksManage,
    ),
    // The answer carries the signing secret.
    ("GET", "/v1/webhook-signing-key", WebhooksManage),
    ("POST", "/v1/webhook-signing-key/rotate", WebhooksManage),
    ("POST", "/v1/api-keys", KeysManage),
    ("GET", "/v1/api-keys", KeysRead),
    ("GET", "/v1/api-keys/{id}", KeysRead),
    ("DELETE", "/v1/api-keys/{id}", KeysManage),
    ("GET", "/v1/me", TasksRead),
    ("GET", "/v1/audit-events", AuditRead),
    ("GET", "/v1/usage", UsageRead),
    ("POST", "/v1/admin/tenants", TenantsManage),
    ("GET", "/v1/admin/tenants", TenantsManage),
    ("PUT", "/v1/admin/tenants/{id}/limits", TenantsManage),
    ("GET", "/v1/members", MembersRead),
    ("GET", "/v1/members/{user_id}", MembersRead),
    ("PUT", "/v1/members/{user_id}", MembersManage),
    ("DELETE", "/v1/members/{user_id}", MembersManage),
    ("POST", "/v1/invitations", MembersManage),
    ("GET", "/v1/invitations", MembersRead),
    ("DELETE", "/v1/invitations/{id}", MembersManage),
    (
        "PUT",
        "/v1/admin/tenants/{id}/email-domains/{domain}",
        TenantsManage,
    ),
    (
        "DELETE",
        "/v1/admin/tenants/{id}/email-domains/{domain}",
        TenantsManage,
    ),
];

/// Paths anyone may call.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/openapi.json" | "/.well-known/jwks.json"
    ) || path == "/docs"
        || path.starts_with("/docs/")
        // Sign-in itself: the callback, refresh and logout check their own state,
        // cookie or token.
        || path.starts_with("/v1/auth/")
}

/// The permission of the operation at `method path`, if the table has it (`HEAD` is
/// `GET`'s).
pub fn permission_for(method: &Method, path: &str) -> Option<Permission> {
    let method = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    RULES
        .iter()
        .find(|(rule_method, template, _)| {
            *rule_method == method.as_str() && template_matches(template, path)
        })
        .map(|(_, _, permission)| *permission)
}

/// `/v1/tasks/{id}` matches `/v1/tasks/0193…` (one non-empty segment per `{…}`).
fn template_matches(template: &str, path: &str) -> bool {
    let mut templates = template.split('/');
    let mut segments = path.split('/');
    loop {
        match (templates.next(), segments.next()) {
            (None, None) => return true,
            (Some(expected), Some(segment)) => {
                let is_variable = expected.starts_with('{') && expected.ends_with('}');
                if (is_variable && segment.is_empty()) || (!is_variable && expected != segment) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Who made a request, resolved from its credentials: the tenant every read and write
/// is scoped to, and the role the permission table was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub role: Role,
    /// A platform-admin key: it also holds `tenants:manage` and `queues:manage`.
    pub platform_admin: bool,
    pub actor: Actor,
    /// The client's address, for the audit log (set once the caller is resolved).
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key: its id and public prefix.
    Key { id: Uuid, prefix: String },
    /// Authentication is off (`auth.enabled = false`).
    Anonymous,
    /// A signed artifact link (this one artifact only).
    Link,
    /// A stream ticket (this one task's events only).
    Ticket,
    /// A person signed in through OpenID Connect, by a session token.
    User { id: Uuid, session: Uuid },
}

impl Caller {
    /// Whether the caller holds `permission`: its role grants it, or it is the
    /// platform's (`tenants:manage`, `queues:manage`: platform-admin keys only).
    pub fn holds(&self, permission: Permission) -> bool {
        match permission {
            Permission::TenantsManage | Permission::QueuesManage => self.platform_admin,
            _ => self.role.grants(permission),
        }
    }

    /// How records name who did something: `key:<id>` or `anonymous`.
    pub fn actor_label(&self) -> String {
        match &self.actor {
            Actor::Key { id, .. } => format!("key:{id}"),
            Actor::Anonymous => "anonymous".to_owned(),
            Actor::Link => "signed-link".to_owned(),
            Actor::Ticket => "ticket".to_owned(),
            Actor::User { id, .. } => format!("user:{id}"),
        }
    }

    /// A signed-in member, as sign-in records what it did.
    pub fn for_user(
        tenant: TenantId,
        role: Role,
        user: Uuid,
        session: Uuid,
        address: Option<String>,
    ) -> Self {
        Self {
            tenant,
            role,
            platform_admin: false,
            actor: Actor::User { id: user, session },
            address,
        }
    }

    /// Authentication off (loopback only): the one person there runs the platform too.
    fn unauthenticated_owner() -> Self {
        Self {
            tenant: TenantId::default_tenant(),
            role: Role::Owner,
            platform_admin: true,
            actor: Actor::Anonymous,
            address: None,
        }
    }
}

impl<'a> FromRequest<'a> for Caller {
    async fn from_request(request: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        request.extensions().get::<Caller>().cloned().ok_or_else(|| {
            // Only a route missing from RULES gets here: refuse it.
            warn!(path = %request.uri().path(), "an operation has no entry in the permission table");
            poem::Error::from(ApiError::new(
                ErrorCode::Forbidden,
                "forbidden: this operation declares no permission",
            ))
        })
    }
}

/// How requests are authenticated: by key, by a signed link or a stream ticket, or
/// not at all.
pub struct Authenticator {
    verifier: Option<Arc<KeyVerifier>>,
    signer: Arc<LinkSigner>,
    sign_in: Arc<SignIn>,
    failures: FailureLimiter,
}

impl Authenticator {
    /// `verifier`: `None` when authentication is off.
    pub fn new(
        verifier: Option<Arc<KeyVerifier>>,
        signer: Arc<LinkSigner>,
        sign_in: Arc<SignIn>,
        failures_per_minute: u32,
    ) -> Self {
        Self {
            verifier,
            signer,
            sign_in,
            failures: FailureLimiter::new(failures_per_minute),
        }
    }

    pub fn verifier(&self) -> Option<&Arc<KeyVerifier>> {
        self.verifier.as_ref()
    }

    /// A grant in the query that stands in for credentials: `sig` on an artifact's
    /// download, `ticket` on a task's event stream. `None` when there is none; a grant
    /// that does not hold is refused (`Err(None)`), whatever else the request carries;
    /// `Err(Some(response))` when the keys cannot be read.
    async fn grant(&self, request: &Request) -> Option<Result<Caller, Option<Response>>> {
        let raw_query = request.uri().query()?;
        if !(raw_query.contains("sig=") || raw_query.contains("ticket=")) {
            return None;
        }
        let path = request.uri().path();
        let segments: Vec<&str> = path.split('/').collect();
        let query: HashMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect();
        let now = chrono::Utc::now().timestamp();
        let (id, scope) = match segments.as_slice() {
            ["", "v1", "artifacts", id] if query.contains_key("sig") => (*id, GrantScope::Artifact),
            ["", "v1", "tasks", id, "events" | "ws"] if query.contains_key("ticket") => {
                (*id, GrantScope::TaskEvents)
            }
            _ => return None,
        };
        let keys = match self.signer.keys().await {
            Ok(keys) => keys,
            Err(error) => {
                return Some(Err(Some(poem::error::ResponseError::as_response(
                    &ApiError::from(error),
                ))));
            }
        };
        let granted = match scope {
            GrantScope::Artifact => {
                let tenant = query.get("tenant").map(String::as_str).unwrap_or_default();
                let expires = query
                    .get("exp")
                    .and_then(|exp| exp.parse().ok())
                    .unwrap_or(0);
                let signature = query.get("sig").map(String::as_str).unwrap_or_default();
                grant_holds(keys, signature, scope, tenant, id, expires, now)
                    .then(|| TenantId::parse(tenant).ok())
                    .flatten()
                    .map(|tenant| (tenant, Actor::Link))
            }
            GrantScope::TaskEvents => {
                let ticket = query.get("ticket").map(String::as_str).unwrap_or_default();
                verify_stream_ticket(keys, ticket, now)
                    .filter(|(_, task)| task.to_string() == id)
                    .map(|(tenant, _)| (tenant, Actor::Ticket))
            }
        };
        Some(match granted {
            Some((tenant, actor)) => Ok(Caller {
                tenant,
                role: Role::Viewer,
                platform_admin: false,
                actor,
                address: None,
            }),
            None => Err(None),
        })
    }

    /// The caller, with the client's address, or the response refusing the request.
    async fn authenticate(&self, request: &Request) -> Result<Caller, Response> {
        let address = client_ip(request);
        let mut caller = self.resolve(request, address).await?;
        caller.address = address.map(|address| address.to_string());
        Ok(caller)
    }

    /// Who the request's credentials name (a grant, a key, or the owner of `default`
    /// with authentication off).
    async fn resolve(
        &self,
        request: &Request,
        address: Option<IpAddr>,
    ) -> Result<Caller, Response> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::unauthenticated_owner());
        };
        if let Some(retry_after) = address.and_then(|address| self.failures.blocked(address)) {
            return Err(rate_limited(retry_after));
        }
        match self.grant(request).await {
            Some(Ok(caller)) => return Ok(caller),
            Some(Err(Some(unavailable))) => return Err(unavailable),
            Some(Err(None)) => {
                if let Some(address) = address {
                    self.failures.record(address);
                }
                let reason =
                    "the signed link or ticket is invalid, expired or for another resource";
                info!(client = ?address, reason, "authentication refused");
                return Err(unauthenticated(Some("invalid_token"), reason));
            }
            None => {}
        }
        let Some(presented) = bearer_token(request) else {
            return Err(unauthenticated(
                None,
                "missing credentials: send Authorization: Bearer <API key or session token>",
            ));
        };
        if !presented.starts_with(operator_domain::auth::KEY_PREFIX) && presented.contains('.') {
            return self.session(presented, address).await;
        }
        match verifier.verify(presented).await {
            Ok(key) => Ok(Caller {
                tenant: key.tenant,
                role: key.role,
                platform_admin: key.platform_admin,
                actor: Actor::Key {
                    id: key.id,
                    prefix: key.prefix,
                },
                address: None,
            }),
            Err(Refusal::Unavailable(error)) => Err(poem::error::ResponseError::as_response(
                &ApiError::from(error),
            )),
            Err(refusal) => {
                if let Some(address) = address {
                    self.failures.record(address);
                }
                info!(client = ?address, reason = %refusal, "authentication refused");
                Err(unauthenticated(Some("invalid_token"), &refusal.to_string()))
            }
        }
    }
}

impl Authenticator {
    /// The member a session token names: its signature, key and expiry, then the
    /// session itself (live, not logged out) and the member's current role, read on
    /// each request so a logout or a role change applies at once on every replica.
    async fn session(&self, token: &str, address: Option<IpAddr>) -> Result<Caller, Response> {
        let refuse = |reason: &str| {
            if let Some(address) = address {
                self.failures.record(address);
            }
            info!(client = ?address, reason, "authentication refused");
            unauthenticated(Some("invalid_token"), reason)
        };
        let verified = match self.sign_in.signer().verify(token).await {
            Ok(verified) => verified,
            Err(SessionTokenError::Invalid) => {
                return Err(refuse(
                    "the session token is malformed, forged, expired or signed by a retired key",
                ));
            }
            Err(error) => {
                return Err(poem::error::ResponseError::as_response(&ApiError::from(
                    error,
                )));
            }
        };
        let session = self
            .sign_in
            .users()
            .session(verified.claims.sid)
            .await
            .map_err(|error| poem::error::ResponseError::as_response(&ApiError::from(error)))?;
        match session {
            Some(session)
                if session.live
                    && session.user == verified.user
                    && session.tenant == verified.claims.tenant =>
            {
                let Some(role) = session.role else {
                    return Err(refuse("the member has left the tenant"));
                };
                Ok(Caller::for_user(
                    session.tenant,
                    role,
                    session.user,
                    session.id,
                    None,
                ))
            }
            _ => Err(refuse("the session has ended: sign in again")),
        }
    }
}

/// The address the request came from.
pub(crate) fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .remote_addr()
        .as_socket_addr()
        .map(|address| address.ip())
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
pub(crate) fn bearer_token(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

fn unauthenticated(error: Option<&str>, message: &str) -> Response {
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"operator\", error=\"{error}\""),
        None => "Bearer realm=\"operator\"".to_owned(),
    };
    let mut response = error_body(ErrorCode::Unauthenticated, message);
    if let Ok(value) = challenge.parse() {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn forbidden(permission: Permission, caller: &Caller) -> Response {
    let lacking = match permission {
        Permission::TenantsManage | Permission::QueuesManage => {
            "only platform-admin keys hold".to_owned()
        }
        _ => format!("the role {} lacks", caller.role),
    };
    error_body(
        ErrorCode::Forbidden,
        &format!("forbidden: this operation needs the permission {permission}, which {lacking}"),
    )
}

fn rate_limited(retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs().max(1);
    let mut response = error_body(
        ErrorCode::RateLimited,
        &format!("too many failed authentications from this address; retry in {seconds}s"),
    );
    if let Ok(value) = seconds.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The `{code, message}` answer, its status from the one code-to-status mapping.
fn error_body(code: ErrorCode, message: &str) -> Response {
    poem::error::ResponseError::as_response(&ApiError::new(code, message))
}

/// Sign-in's callback and refresh check their own state or cookie, outside the
/// middleware: their refusals (`401`) count against the client's address like a bad
/// key's, and an address past its failures is refused before they run.
pub struct CountedFailures<E> {
    pub inner: E,
    pub authenticator: Arc<Authenticator>,
}

impl<E: Endpoint> Endpoint for CountedFailures<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> poem::Result<Response> {
        let address = client_ip(&request);
        let failures = &self.authenticator.failures;
        if let Some(retry_after) = address.and_then(|address| failures.blocked(address)) {
            return Ok(rate_limited(retry_after));
        }
        let response = match self.inner.call(request).await {
            Ok(output) => output.into_response(),
            Err(error) => error.into_response(),
        };
        if response.status() == poem::http::StatusCode::UNAUTHORIZED
            && let Some(address) = address
        {
            failures.record(address);
        }
        Ok(response)
    }
}

/// Failed authentications per client address in fixed one-minute windows.
struct FailureLimiter {
    limit: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; past it, finished windows are dropped.
const FAILURE_ADDRESSES: usize = 100_000;

impl FailureLimiter {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `address` must wait, when it used up its failures.
    fn blocked(&self, address: IpAddr) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let (started, failures) = windows.get(&address)?;
        let elapsed = started.elapsed();
        (elapsed < FAILURE_WINDOW && *failures >= self.limit).then(|| FAILURE_WINDOW - elapsed)
    }

    fn record(&self, address: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= FAILURE_ADDRESSES {
            windows.retain(|_, (started, _)| started.elapsed() < FAILURE_WINDOW);
        }
        let window = windows.entry(address).or_insert((Instant::now(), 0));
        if window.0.elapsed() >= FAILURE_WINDOW {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
    }
}

/// The middleware: authenticate, check the table, count a submission against the
/// tenant's rate, hand the [`Caller`] on.
pub struct Access {
    pub authenticator: Arc<Authenticator>,
    pub limiter: Arc<SubmissionLimiter>,
}

impl<E: Endpoint> Middleware<E> for Access {
    type Output = AccessEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AccessEndpoint {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

pub struct AccessEndpoint<E> {
    inner: E,
    authenticator: Arc<Authenticator>,
    limiter: Arc<SubmissionLimiter>,
}

/// The operations that create tasks, which the submission rate counts.
fn is_submission(method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            path,
            "/v1/tasks" | "/v1/screenshot" | "/v1/pdf" | "/v1/content" | "/v1/scrape"
        )
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds, rounded up), and on a
/// refusal `Retry-After`.
fn rate_headers(response: &mut Response, decision: &Decision) {
    let seconds = |duration: Duration| duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    let mut set = |name: &'static str, value: u64| {
        if let Ok(value) = value.to_string().parse() {
            response.headers_mut().insert(name, value);
        }
    };
    set("ratelimit-limit", u64::from(decision.limit));
    set("ratelimit-remaining", u64::from(decision.remaining));
    set("ratelimit-reset", seconds(decision.reset));
    if !decision.allowed {
        set("retry-after", seconds(decision.retry_after).max(1));
    }
}

impl<E: Endpoint> Endpoint for AccessEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> poem::Result<Response> {
        let path = request.uri().path().to_owned();
        if is_public(&path) {
            return self
                .inner
                .call(request)
                .await
                .map(IntoResponse::into_response);
        }
        let caller = match self.authenticator.authenticate(&request).await {
            Ok(caller) => caller,
            Err(refusal) => return Ok(refusal),
        };
        let mut rate = None;
        if let Some(permission) = permission_for(request.method(), &path) {
            if !caller.holds(permission) {
                return Ok(forbidden(permission, &caller));
            }
            if is_submission(request.method(), &path) {
                match self.limiter.check(&caller.tenant).await {
                    Ok(Some(decision)) if !decision.allowed => {
                        let mut response = error_body(
                            ErrorCode::RateLimited,
                            &format!(
                                "tenant {} submits faster than its limit ({} at once); retry after the Retry-After seconds",
                                caller.tenant, decision.limit
                            ),
                        );
                        rate_headers(&mut response, &decision);
                        return Ok(response);
                    }
                    Ok(decision) => rate = decision,
                    Err(error) => {
                        // Refusing every submission because the limiter's store is
                        // down would turn a limit into an outage: let it through.
                        warn!(error = %error, tenant = %caller.tenant, "the submission rate could not be checked; allowed");
                    }
                }
            }
            request.extensions_mut().insert(caller);
        }
        let mut response = self
            .inner
            .call(request)
            .await
            .map(IntoResponse::into_response)?;
        if let Some(decision) = rate {
            rate_headers(&mut response, &decision);
        }
        Ok(response)
    }
}

/// The API document with what the table says: each operation's permission (in its
/// description and as `x-permission`), the bearer scheme, and the `401`, `403` and
/// `429` answers every protected operation can give; public operations get
/// `security: []`.
pub fn document(spec: &str) -> String {
    let Ok(mut document) = serde_json::from_str::<Value>(spec) else {
        return spec.to_owned();
    };
    let error_body = json!({"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let answer = |code: ErrorCode| {
        json!({
            "description": format!("`{code}`: {}", code.meaning()),
            "content": error_body,
        })
    };
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, operations) in paths.iter_mut() {
            let Some(operations) = operations.as_object_mut() else {
                continue;
            };
            for (method, operation) in operations.iter_mut() {
                let Ok(method) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                if is_public(path) {
                    operation.insert("security".into(), json!([]));
                    continue;
                }
                let permission = RULES
                    .iter()
                    .find(|(rule_method, template, _)| {
                        *rule_method == method.as_str() && template == path
                    })
                    .map(|(_, _, permission)| *permission);
                let Some(permission) = permission else {
                    continue;
                };
                operation.insert("security".into(), json!([{"apiKey": []}]));
                operation.insert("x-permission".into(), json!(permission.as_str()));
                let needs = format!("Needs the permission `{permission}`.");
                let description = match operation.get("description").and_then(Value::as_str) {
                    Some(text) => format!("{text}\n\n{needs}"),
                    None => needs,
                };
                operation.insert("description".into(), json!(description));
                if let Some(responses) = operation
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                {
                    let mut unauthenticated = answer(ErrorCode::Unauthenticated);
                    unauthenticated["headers"] = json!({"WWW-Authenticate": {
                        "description": "`Bearer realm=\"operator\"`, with `error=\"invalid_token\"` when a key was presented",
                        "schema": {"type": "string"}}});
                    responses.entry("401").or_insert(unauthenticated);
                    responses
                        .entry("403")
                        .or_insert(answer(ErrorCode::Forbidden));
                    let retry_after = json!({"Retry-After": {
                        "description": "Seconds until the caller may try again",
                        "schema": {"type": "integer"}}});
                    // Every protected operation may be `rate_limited`, after an
                    // operation's own 429 (`quota_exceeded`). The one-call endpoints
                    // declare their errors as a 4XX range, so their quota answer is
                    // added here.
                    let mut also = vec![ErrorCode::RateLimited];
                    if !responses.contains_key("429") && is_submission(&method, path) {
                        also.push(ErrorCode::QuotaExceeded);
                    }
                    let limited = responses
                        .entry("429")
                        .or_insert_with(|| json!({"description": "", "content": error_body}));
                    let mut lines: Vec<String> = limited["description"]
                        .as_str()
                        .filter(|text| !text.is_empty())
                        .map(str::to_owned)
                        .into_iter()
                        .collect();
                    lines.extend(also.into_iter().map(|code| {
                        answer(code)["description"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    }));
                    limited["description"] = json!(lines.join("\n\n"));
                    limited["headers"] = retry_after;
                }
            }
        }
    }
    let schemes = json!({"apiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "opk_…",
        "description": "An API key (`opk_…`, 54 characters), made with `POST /v1/api-keys`, `operator keys create` or on the first start of `operator serve`."
    }});
    if let Some(components) = document
        .as_object_mut()
        .map(|root| root.entry("components").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        components.insert("securitySchemes".into(), schemes);
    }
    serde_json::to_string(&document).unwrap_or_else(|_| spec.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_one_segment_per_variable() {
        assert!(template_matches("/v1/tasks/{id}", "/v1/tasks/abc"));
        assert!(!template_matches("/v1/tasks/{id}", "/v1/tasks/"));
        assert!(!template_matches("/v1/tasks/{id}", "/v1/tasks/abc/cancel"));
        assert!(template_matches("/v1/tasks", "/v1/tasks"));
        assert!(!template_matches("/v1/tasks", "/v1/tasks/x"));
        assert_eq!(
            permission_for(&Method::POST, "/v1/tasks/abc/cancel"),
            Some(TasksWrite)
        );
        assert_eq!(permission_for(&Method::DELETE, "/v1/tasks/abc"), None);
    }

    #[test]
    fn a_failing_address_is_blocked_after_its_limit() {
        let limiter = FailureLimiter::new(2);
        let address: IpAddr = "192.0.2.1".parse().expect("address");
        limiter.record(address);
        assert!(limiter.blocked(address).is_none());
        limiter.record(address);
        let wait = limiter.blocked(address).expect("blocked");
        assert!(wait <= FAILURE_WINDOW && wait > Duration::from_secs(50));
        assert!(
            limiter
                .blocked("192.0.2.2".parse().expect("address"))
                .is_none()
        );
    }
}
