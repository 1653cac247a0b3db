//! Sign-in through OpenID Connect, and the sessions it opens.
//!
//! - `GET /v1/auth/providers`: the configured providers.
//! - `GET /v1/auth/oidc/{provider}/login?return_to=/path&tenant=acme`: redirects to the
//!   provider with a fresh `state`, `nonce` and PKCE challenge (S256), remembered in
//!   the database (one use, ten minutes) so any replica can take the callback.
//! - `GET /v1/auth/oidc/{provider}/callback?code&state`: takes the state (a replay finds
//!   nothing), trades the code and the PKCE verifier for the ID token, verifies it
//!   (signature against the provider's JWKS, `alg` from an allow-list, issuer, audience,
//!   expiry, nonce), records the sign-in (a membership, an invitation or a mapped email
//!   domain gives the tenant), opens a session, sets its refresh cookie (HttpOnly,
//!   Secure, SameSite=Strict, path `/v1/auth`) and sends the browser to `return_to`.
//! - `POST /v1/auth/refresh`: the cookie's token for the next one (rotated at each use)
//!   and a session token, `{access_token, expires_in, …}`: an EdDSA JWT the browser sends
//!   as `Authorization: Bearer` (see [`operator_store::sessions`]).
//! - `POST /v1/auth/logout`: ends the session at once (every replica reads it on each
//!   request) and clears the cookie.
//! - `GET /.well-known/jwks.json`: the public keys of session tokens.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::{
    ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike, JWTClaims,
    RS256PublicKey, RSAPublicKeyLike, Token, VerificationOptions,
};
use operator_config::{AuthSettings, OidcProviderSettings};
use operator_domain::TenantId;
use operator_domain::error::ErrorCode;
use operator_store::db::{
    PendingLogin, Refreshed, SessionState, SignInIdentity, SignInRefusal, UserRepository,
};
use operator_store::sessions::{SessionClaims, SessionSigner};
use poem::http::{StatusCode, header};
use poem::web::{Data, Json, Path, Query};
use poem::{IntoResponse, Request, Response, handler};
use rand::RngCore as _;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::state::SharedState;

/// The refresh cookie's name.
pub const REFRESH_COOKIE: &str = "operator_refresh";
/// How long a sign-in may take between the redirect and the callback.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Clock drift tolerated on ID tokens.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// A provider's keys are fetched again for an unknown `kid` at most this often.
const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(10);
/// The signature algorithms an ID token may use; `none` and the HMACs never.
const ALLOWED_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// The sign-in service: the providers, sessions and their keys.
pub struct SignIn {
    providers: Vec<Provider>,
    users: UserRepository,
    signer: SessionSigner,
    http: reqwest::Client,
    settings: AuthSettings,
    public_url: String,
}

struct Provider {
    settings: OidcProviderSettings,
    discovery: Mutex<Option<Discovery>>,
    keys: Mutex<Option<(Vec<serde_json::Value>, Instant)>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The claims of an ID token beyond the registered ones.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
struct IdentityClaims {
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
}

fn sign_in_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::SignInFailed, message)
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()))
}

fn sha256_hex(text: &str) -> String {
    operator_store::storage::sha256_hex(text.as_bytes())
}

/// A return address on this server only (a path), so a sign-in link cannot send the
/// browser elsewhere with its fresh session.
fn safe_return(return_to: Option<&str>) -> Option<String> {
    return_to
        .filter(|path| path.starts_with('/') && !path.starts_with("//") && !path.contains('\\'))
        .map(str::to_owned)
}

impl SignIn {
    pub fn new(
        settings: &AuthSettings,
        users: UserRepository,
        signer: SessionSigner,
        public_url: String,
    ) -> Self {
        Self {
            providers: settings
                .oidc
                .iter()
                .cloned()
                .map(|settings| Provider {
                    settings,
                    discovery: Mutex::new(None),
                    keys: Mutex::new(None),
                })
                .collect(),
            users,
            signer,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            settings: settings.clone(),
            public_url,
        }
    }

    pub fn signer(&self) -> &SessionSigner {
        &self.signer
    }

    pub fn users(&self) -> &UserRepository {
        &self.users
    }

    fn provider(&self, name: &str) -> Result<&Provider, ApiError> {
        self.providers
            .iter()
            .find(|provider| provider.settings.name == name)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ProviderNotFound,
                    format!("no sign-in provider named {name:?} is configured"),
                )
            })
    }

    fn redirect_uri(&self, provider: &Provider) -> String {
        format!(
            "{}/v1/auth/oidc/{}/callback",
            self.public_url, provider.settings.name
        )
    }

    async fn discovery(&self, provider: &Provider) -> Result<Discovery, ApiError> {
        let mut cached = provider.discovery.lock().await;
        if let Some(discovery) = cached.as_ref() {
            return Ok(discovery.clone());
        }
        let issuer = provider.settings.issuer().unwrap_or_default();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self
            .fetch_json(&url)
            .await
            .map_err(|error| unavailable(format!("provider discovery at {url}: {error}")))?;
        if discovery.issuer != issuer {
            return Err(unavailable(format!(
                "provider discovery at {url} names the issuer {}, not {issuer}",
                discovery.issuer
            )));
        }
        *cached = Some(discovery.clone());
        Ok(discovery)
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        response.json().await.map_err(|error| error.to_string())
    }

    /// The provider's key `kid`, fetching its JWKS again when the key is new to us.
    async fn jwk(
        &self,
        provider: &Provider,
        discovery: &Discovery,
        kid: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let find = |keys: &[serde_json::Value]| {
            keys.iter()
                .find(|key| match kid {
                    Some(kid) => key["kid"] == kid,
                    None => keys.len() == 1,
                })
                .cloned()
        };
        let mut cached = provider.keys.lock().await;
        if let Some((keys, fetched_at)) = cached.as_ref() {
            if let Some(key) = find(keys) {
                return Ok(key);
            }
            if fetched_at.elapsed() < JWKS_REFETCH_EVERY {
                return Err(sign_in_failed(
                    "the ID token names a key the provider does not publish",
                ));
            }
        }
        let set: serde_json::Value =
            self.fetch_json(&discovery.jwks_uri)
                .await
                .map_err(|error| {
                    unavailable(format!("provider keys at {}: {error}", discovery.jwks_uri))
                })?;
        let keys = set["keys"].as_array().cloned().unwrap_or_default();
        let found = find(&keys);
        *cached = Some((keys, Instant::now()));
        found
            .ok_or_else(|| sign_in_failed("the ID token names a key the provider does not publish"))
    }

    /// Verifies an ID token: its signature with the provider's published key, an
    /// allowed algorithm, the issuer, this client as audience, its times and the nonce
    /// of this sign-in.
    async fn verify_id_token(
        &self,
        provider: &Provider,
        discovery: &Discovery,
        token: &str,
        nonce: &str,
    ) -> Result<JWTClaims<IdentityClaims>, ApiError> {
        let metadata = Token::decode_metadata(token)
            .map_err(|_| sign_in_failed("the ID token is malformed"))?;
        let algorithm = metadata.algorithm().to_owned();
        if !ALLOWED_ALGORITHMS.contains(&algorithm.as_str()) {
            return Err(sign_in_failed(format!(
                "the ID token's algorithm {algorithm:?} is not allowed"
            )));
        }
        let key = self.jwk(provider, discovery, metadata.key_id()).await?;
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([discovery.issuer.clone()])),
            allowed_audiences: Some(HashSet::from([provider.settings.client_id.clone()])),
            required_nonce: Some(nonce.to_owned()),
            time_tolerance: Some(CLOCK_SKEW.into()),
            ..VerificationOptions::default()
        };
        let part = |name: &str| {
            key[name]
                .as_str()
                .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
                .ok_or_else(|| sign_in_failed(format!("the provider's key lacks {name}")))
        };
        let refused = |error: jwt_simple::Error| {
            sign_in_failed(format!("the ID token does not verify: {error}"))
        };
        match algorithm.as_str() {
            "RS256" => RS256PublicKey::from_components(&part("n")?, &part("e")?)
                .map_err(refused)?
                .verify_token::<IdentityClaims>(token, Some(options))
                .map_err(refused),
            "ES256" => {
                let mut point = vec![4_u8];
                point.extend(part("x")?);
                point.extend(part("y")?);
                ES256PublicKey::from_bytes(&point)
                    .map_err(refused)?
                    .verify_token::<IdentityClaims>(token, Some(options))
                    .map_err(refused)
            }
            _ => Ed25519PublicKey::from_bytes(&part("x")?)
                .map_err(refused)?
                .verify_token::<IdentityClaims>(token, Some(options))
                .map_err(refused),
        }
    }
}

fn unavailable(message: String) -> ApiError {
    tracing::warn!(%message, "sign-in provider unreachable");
    ApiError::new(ErrorCode::Unavailable, message)
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    tenant: Option<String>,
}

/// `GET /v1/auth/providers`
#[handler]
pub async fn providers(Data(state): Data<&SharedState>) -> Json<serde_json::Value> {
    let names: Vec<serde_json::Value> = state
        .sign_in
        .providers
        .iter()
        .map(|provider| {
            serde_json::json!({
                "name": provider.settings.name,
                "login_url": format!("/v1/auth/oidc/{}/login", provider.settings.name),
            })
        })
        .collect();
    Json(serde_json::json!({ "items": names }))
}

/// `GET /v1/auth/oidc/{provider}/login`
#[handler]
pub async fn login(
    Data(state): Data<&SharedState>,
    Path(name): Path<String>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let sign_in = &state.sign_in;
    let provider = sign_in.provider(&name)?;
    let discovery = sign_in.discovery(provider).await?;
    let (state_token, nonce, verifier) = (random_token(), random_token(), random_token());
    let pending = PendingLogin {
        state: state_token.clone(),
        provider: name.clone(),
        nonce: nonce.clone(),
        verifier: verifier.clone(),
        return_to: safe_return(query.return_to.as_deref()),
        tenant: query
            .tenant
            .filter(|tenant| TenantId::parse(tenant).is_ok()),
    };
    sign_in
        .users
        .begin_login(
            &pending,
            operator_domain::time::later(chrono::Utc::now(), LOGIN_TTL),
        )
        .await?;
    let mut url = url::Url::parse(&discovery.authorization_endpoint)
        .map_err(|error| unavailable(format!("the provider's authorization endpoint: {error}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.settings.client_id)
        .append_pair("redirect_uri", &sign_in.redirect_uri(provider))
        .append_pair("scope", &provider.settings.scopes.join(" "))
        .append_pair("state", &state_token)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &sha256_b64(&verifier))
        .append_pair("code_challenge_method", "S256");
    Ok(Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, url.as_str())
        .header(header::CACHE_CONTROL, "no-store")
        .finish())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// `GET /v1/auth/oidc/{provider}/callback`
#[handler]
pub async fn callback(
    Data(state): Data<&SharedState>,
    Path(name): Path<String>,
    Query(query): Query<CallbackQuery>,
    request: &Request,
) -> Result<Response, ApiError> {
    let sign_in = &state.sign_in;
    let provider = sign_in.provider(&name)?;
    if let Some(error) = query.error {
        return Err(sign_in_failed(format!(
            "the provider refused the sign-in: {error}"
        )));
    }
    let (Some(code), Some(state_token)) = (query.code, query.state) else {
        return Err(sign_in_failed("the callback lacks its code or state"));
    };
    let Some(pending) = sign_in.users.take_login(&state_token).await? else {
        return Err(sign_in_failed(
            "unknown, expired or already used sign-in state",
        ));
    };
    if pending.provider != name {
        return Err(sign_in_failed(
            "the sign-in was started with another provider",
        ));
    }
    let discovery = sign_in.discovery(provider).await?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("redirect_uri", &sign_in.redirect_uri(provider))
        .append_pair("code_verifier", &pending.verifier)
        .append_pair("client_id", &provider.settings.client_id)
        .append_pair(
            "client_secret",
            provider.settings.client_secret.expose_secret(),
        )
        .finish();
    let answer = sign_in
        .http
        .post(&discovery.token_endpoint)
        .header(
            header::CONTENT_TYPE.as_str(),
            "application/x-www-form-urlencoded",
        )
        .header(header::ACCEPT.as_str(), "application/json")
        .body(body)
        .send()
        .await
        .map_err(|error| unavailable(format!("the provider's token endpoint: {error}")))?;
    if !answer.status().is_success() {
        return Err(sign_in_failed(format!(
            "the provider refused the code: {}",
            answer.status()
        )));
    }
    let answer: TokenAnswer = answer
        .json()
        .await
        .map_err(|error| sign_in_failed(format!("the provider's token answer: {error}")))?;
    let id_token = answer
        .id_token
        .ok_or_else(|| sign_in_failed("the provider's token answer has no ID token"))?;
    let claims = sign_in
        .verify_id_token(provider, &discovery, &id_token, &pending.nonce)
        .await?;
    let subject = claims
        .subject
        .clone()
        .ok_or_else(|| sign_in_failed("the ID token has no subject"))?;
    let email = claims
        .custom
        .email
        .clone()
        .ok_or_else(|| sign_in_failed("the ID token has no email (ask for the email scope)"))?;
    let identity = SignInIdentity {
        provider: name.clone(),
        subject,
        email,
        email_verified: claims.custom.email_verified.unwrap_or(false),
        name: claims.custom.name.clone(),
    };
    let return_to = pending.return_to.clone().unwrap_or_else(|| "/".to_owned());
    let preferred = pending
        .tenant
        .as_deref()
        .and_then(|tenant| TenantId::parse(tenant).ok());
    let member = match sign_in.users.sign_in(&identity, preferred.as_ref()).await? {
        Ok(member) => member,
        Err(SignInRefusal::NoMembership) => {
            return Err(ApiError::new(
                ErrorCode::NoMembership,
                format!(
                    "{} signed in, but is a member of no tenant: ask an owner for an invitation",
                    identity.email
                ),
            ));
        }
    };
    let refresh_token = random_token();
    let expires_at =
        operator_domain::time::later(chrono::Utc::now(), sign_in.settings.session_refresh_ttl);
    let session = sign_in
        .users
        .open_session(&member, &sha256_hex(&refresh_token), expires_at)
        .await?;
    let caller = crate::access::Caller::for_user(
        member.tenant.clone(),
        member.role,
        member.user,
        session,
        client_address(request),
    );
    state
        .audit(
            &caller,
            "user.signed_in",
            "user",
            member.user,
            serde_json::json!({"provider": name, "email": member.email}),
        )
        .await;
    Ok(Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, return_to)
        .header(header::CACHE_CONTROL, "no-store")
        .header(
            header::SET_COOKIE,
            refresh_cookie(&sign_in.settings, &refresh_token),
        )
        .finish())
}

/// Records `action` on `session` in its tenant's audit log, as the session's member (a
/// member removed meanwhile is not recorded: there is no role to act as).
async fn audit_session(
    state: &SharedState,
    session: &SessionState,
    request: &Request,
    action: &str,
) {
    let Some(role) = session.role else {
        return;
    };
    let caller = crate::access::Caller::for_user(
        session.tenant.clone(),
        role,
        session.user,
        session.id,
        client_address(request),
    );
    state
        .audit(
            &caller,
            action,
            "session",
            session.id,
            serde_json::json!({}),
        )
        .await;
}

fn client_address(request: &Request) -> Option<String> {
    crate::access::client_ip(request).map(|address| address.to_string())
}

/// The refresh cookie: never readable by scripts, sent only to `/v1/auth` of this site.
fn refresh_cookie(settings: &AuthSettings, value: &str) -> String {
    let max_age = if value.is_empty() {
        0
    } else {
        settings.session_refresh_ttl.as_secs()
    };
    let secure = if settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{REFRESH_COOKIE}={value}; Path=/v1/auth; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    )
}

fn presented_refresh(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// `POST /v1/auth/refresh`
#[handler]
pub async fn refresh(
    Data(state): Data<&SharedState>,
    request: &Request,
) -> Result<Response, ApiError> {
    let sign_in = &state.sign_in;
    let refused = || ApiError::new(ErrorCode::Unauthenticated, "no live session: sign in again");
    let presented = presented_refresh(request).ok_or_else(refused)?;
    let next = random_token();
    let (session, email) = match sign_in
        .users
        .refresh_session(
            &sha256_hex(&presented),
            &sha256_hex(&next),
            sign_in.settings.refresh_reuse_grace,
        )
        .await?
    {
        Refreshed::Rotated(session, email) => (session, email),
        Refreshed::Refused => return Err(refused()),
        Refreshed::Reused(session) => {
            tracing::warn!(session = %session.id, user = %session.user, client = ?client_address(request), "a spent refresh token was presented again; the session is ended");
            audit_session(state, &session, request, "session.refresh_reused").await;
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this refresh token was used before, so a copy of it exists: the session is ended; sign in again",
            ));
        }
    };
    let Some(role) = session.role.filter(|_| session.live) else {
        return Err(refused());
    };
    let claims = SessionClaims {
        sid: session.id,
        tenant: session.tenant.clone(),
        role,
    };
    let token = sign_in
        .signer
        .sign(session.user, claims, sign_in.settings.session_ttl)
        .await?;
    let body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": sign_in.settings.session_ttl.as_secs(),
        "tenant": session.tenant,
        "role": role,
        "user": {"id": session.user, "email": email},
    });
    let mut response = Json(body).into_response();
    if let Ok(cookie) = refresh_cookie(&sign_in.settings, &next).parse() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `POST /v1/auth/logout`: ends the session of the refresh cookie or of the session
/// token presented; either way the cookie is cleared.
#[handler]
pub async fn logout(
    Data(state): Data<&SharedState>,
    request: &Request,
) -> Result<Response, ApiError> {
    let sign_in = &state.sign_in;
    let mut ended = match presented_refresh(request) {
        Some(presented) => sign_in
            .users
            .session_by_refresh(&sha256_hex(&presented))
            .await?
            .filter(|session| session.live),
        None => None,
    };
    if ended.is_none()
        && let Some(token) = crate::access::bearer_token(request)
        && let Ok(verified) = sign_in.signer.verify(token).await
    {
        ended = sign_in.users.session(verified.claims.sid).await?;
    }
    if let Some(session) = &ended {
        sign_in.users.revoke_session(session.id).await?;
        audit_session(state, session, request, "user.signed_out").await;
    }
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::SET_COOKIE, refresh_cookie(&sign_in.settings, ""))
        .finish())
}

/// `GET /.well-known/jwks.json`
#[handler]
pub async fn jwks(Data(state): Data<&SharedState>) -> Result<Response, ApiError> {
    let keys = state.sign_in.signer.jwks().await?;
    let mut response = Json(keys).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=60"),
    );
    Ok(response)
}

/// The sign-in service for `state`'s settings, shared by the handlers.
pub fn service(
    settings: &AuthSettings,
    db: sea_orm::DatabaseConnection,
    public_url: String,
) -> Arc<SignIn> {
    Arc::new(SignIn::new(
        settings,
        UserRepository::new(db.clone()),
        SessionSigner::new(
            db,
            settings.session_key_lifetime,
            settings.session_key_overlap,
        ),
        public_url,
    ))
}
