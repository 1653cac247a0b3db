//! Sign-in end to end against a real OpenID provider on loopback (npm `oidc-provider`,
//! started by `scripts/services.sh oidc`): authorization code with PKCE, state and
//! nonce; the session's refresh cookie and its EdDSA session token; logout; a spent
//! refresh token presented again ends the session; failed callbacks and refreshes count
//! against the address; and every spoiled ID token refused (tampered, another audience,
//! expired, another issuer, a wrong nonce, a key the provider does not publish,
//! unsigned).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use operator_config::{OidcProviderKind, OidcProviderSettings};
use operator_domain::TenantId;
use operator_domain::auth::Role;
use operator_store::db::UserRepository;
use operator_testkit::{ApiClient, TestServices, read_json};
use reqwest::header;
use serde_json::{Value, json};

use crate::helpers::{TestApi, spawn_api_with};

/// The API with the loopback provider configured as `local` (the client registered
/// there as `operator`), and `acme.test` mapped to `default` as members.
async fn api_with_sign_in(adjust: impl FnOnce(&mut operator_config::Settings)) -> TestApi {
    let issuer = TestServices::from_env().oidc_issuer;
    let api = spawn_api_with(|settings| {
        settings.auth.oidc = vec![OidcProviderSettings {
            name: "local".into(),
            kind: OidcProviderKind::Oidc,
            issuer: Some(issuer),
            client_id: "operator".into(),
            client_secret: "operator-secret".to_owned().into(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
        }];
        adjust(settings);
    })
    .await;
    UserRepository::new(api.repo.connection().clone())
        .map_email_domain("acme.test", &TenantId::default_tenant(), Role::Member)
        .await
        .expect("map the domain");
    api
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// What the browser ends with: the callback's answer, as the API gave it.
struct Landed {
    status: u16,
    location: Option<String>,
    refresh_cookie: Option<String>,
    body: Value,
    callback: String,
}

/// A browser signing in as `email`: the API's login redirect, the provider's own
/// redirects (with its cookies), then the API's callback.
async fn sign_in(api: &TestApi, email: &str) -> Landed {
    let http = client();
    let response = http
        .get(format!(
            "{}/v1/auth/oidc/local/login?return_to=/console",
            api.base
        ))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status().as_u16(), 302);
    let mut next = format!(
        "{}&login_hint={email}",
        response.headers()[header::LOCATION]
            .to_str()
            .expect("location")
    );
    assert!(next.contains("code_challenge_method=S256"), "{next}");
    assert!(next.contains("nonce="), "{next}");
    let issuer = TestServices::from_env().oidc_issuer;
    let mut cookies: HashMap<String, String> = HashMap::new();
    let callback = loop {
        assert!(
            next.starts_with(&issuer),
            "the provider's own redirect: {next}"
        );
        let jar = cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response = http
            .get(&next)
            .header(header::COOKIE, jar)
            .send()
            .await
            .expect("provider");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let pair = set
                .to_str()
                .expect("cookie")
                .split(';')
                .next()
                .unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(header::LOCATION)
            .unwrap_or_else(|| panic!("the provider redirects, not {status}"))
            .to_str()
            .expect("location")
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{issuer}{location}")
        } else {
            location
        };
        if location.starts_with(&api.base) {
            break location;
        }
        next = location;
    };
    assert!(callback.contains("state="), "{callback}");
    let response = http.get(&callback).send().await.expect("callback");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let refresh_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    Landed {
        status,
        location,
        refresh_cookie,
        body,
        callback,
    }
}

/// The `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}

/// `POST /v1/auth/refresh` with the cookie; the answer and the next cookie.
async fn refresh(api: &TestApi, cookie: &str) -> (u16, Value, Option<String>) {
    let response = client()
        .post(format!("{}/v1/auth/refresh", api.base))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .expect("refresh");
    let next = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .map(cookie_pair);
    let (status, body) = read_json(response).await;
    (status, body, next)
}

async fn spoil_next_id_token(spoil: Value) {
    let issuer = TestServices::from_env().oidc_issuer;
    let response = client()
        .post(format!("{issuer}/test/next-id-token"))
        .json(&spoil)
        .send()
        .await
        .expect("the provider's control endpoint");
    assert_eq!(response.status().as_u16(), 204, "{spoil}");
}

#[tokio::test]
async fn a_person_signs_in_with_code_and_pkce_and_gets_a_session() {
    let api = api_with_sign_in(|_| {}).await;
    let (status, providers) = api.anonymous().get("/v1/auth/providers").await;
    assert_eq!(status, 200);
    assert_eq!(providers["items"][0]["name"], "local");

    let landed = sign_in(&api, "alice@acme.test").await;
    assert_eq!(landed.status, 303, "{}", landed.body);
    assert_eq!(landed.location.as_deref(), Some("/console"));
    let set_cookie = landed.refresh_cookie.expect("a refresh cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/v1/auth"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    // The callback is used up: the same state again is refused.
    let again = client().get(&landed.callback).send().await.expect("replay");
    let (status, body) = read_json(again).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("sign_in_failed")),
        "{body}"
    );

    let (status, session, next_cookie) = refresh(&api, &cookie_pair(&set_cookie)).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["tenant"], "default");
    assert_eq!(session["role"], "member");
    assert_eq!(session["user"]["email"], "alice@acme.test");
    let token = session["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let header: Value =
        serde_json::from_slice(&base64_url(token.split('.').next().expect("a header")))
            .expect("a JSON header");
    assert_eq!(header["alg"], "EdDSA");
    let (status, keys) = api.anonymous().get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert!(
        keys["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|key| key["kid"] == header["kid"] && key["crv"] == "Ed25519"),
        "the token's key is published: {keys}"
    );

    // The session token is the member's credential, with the member's role.
    let member = ApiClient::with_key(api.url.clone(), &token);
    let (status, me) = member.get("/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("default"), Some("member"))
    );
    assert!(me["user"]["id"].is_string(), "{me}");
    assert_eq!(member.get("/v1/tasks").await.0, 200);
    let (status, refused) = member.get("/v1/api-keys").await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")));
    let (_, audit) = api.get("/v1/audit-events").await;
    assert!(
        audit["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|event| event["action"] == "user.signed_in"),
        "{audit}"
    );

    // The refresh token turns once: the old one is refused, the new one works.
    let old_cookie = cookie_pair(&set_cookie);
    let next_cookie = next_cookie.expect("a rotated cookie");
    assert_ne!(next_cookie, old_cookie);
    assert_eq!(refresh(&api, &old_cookie).await.0, 401);
    let (status, _, last_cookie) = refresh(&api, &next_cookie).await;
    assert_eq!(status, 200);
    let last_cookie = last_cookie.expect("a rotated cookie");

    // Logout ends the session at once: its token and its cookie are refused.
    let response = client()
        .post(format!("{}/v1/auth/logout", api.base))
        .header(header::COOKIE, &last_cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status().as_u16(), 204);
    let cleared = response.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let (status, body) = member.get("/v1/me").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert_eq!(refresh(&api, &last_cookie).await.0, 401);
}

/// Someone copied the first refresh token; the client refreshed with it meanwhile. When
/// the copy is presented after the grace, the session ends for both: the client's
/// current cookie and its session token are refused, and the audit log says why.
#[tokio::test]
async fn a_spent_refresh_token_presented_again_ends_the_session() {
    let api = api_with_sign_in(|settings| {
        settings.auth.refresh_reuse_grace = Duration::from_millis(500);
    })
    .await;
    let landed = sign_in(&api, "victim@acme.test").await;
    let copied = cookie_pair(&landed.refresh_cookie.expect("a cookie"));
    let (status, session, second) = refresh(&api, &copied).await;
    assert_eq!(status, 200, "{session}");
    let member = ApiClient::with_key(
        api.url.clone(),
        session["access_token"].as_str().expect("token"),
    );
    // Within the grace (another tab refreshing at the same moment): refused, no more.
    assert_eq!(refresh(&api, &copied).await.0, 401);
    let (status, _, third) = refresh(&api, &second.expect("a cookie")).await;
    assert_eq!(status, 200, "the session lives on");
    let third = third.expect("a cookie");
    assert_eq!(member.get("/v1/me").await.0, 200);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body, _) = refresh(&api, &copied).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("used before"),
        "{body}"
    );
    assert_eq!(
        refresh(&api, &third).await.0,
        401,
        "the client's current cookie is refused too"
    );
    assert_eq!(
        member.get("/v1/me").await.0,
        401,
        "and its session token, at once"
    );
    let (_, audit) = api
        .get("/v1/audit-events?action=session.refresh_reused")
        .await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");
}

/// A failed callback or refresh counts against the client's address like a bad key:
/// past `auth.failures_per_minute`, the address gets `429` before anything is checked.
#[tokio::test]
async fn failed_callbacks_and_refreshes_count_against_the_address() {
    let api = api_with_sign_in(|settings| settings.auth.failures_per_minute = 3).await;
    let callback = format!(
        "{}/v1/auth/oidc/local/callback?code=guess&state=guess",
        api.base
    );
    for _ in 0..2 {
        let response = client().get(&callback).send().await.expect("callback");
        let (status, body) = read_json(response).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("sign_in_failed")),
            "{body}"
        );
    }
    assert_eq!(
        refresh(&api, "operator_refresh=guess").await.0,
        401,
        "the third failure"
    );
    let response = client().get(&callback).send().await.expect("callback");
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert_eq!(refresh(&api, "operator_refresh=guess").await.0, 429);
    assert_eq!(
        api.get("/v1/me").await.0,
        429,
        "the address is blocked for keys as well"
    );
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}

#[tokio::test]
async fn spoiled_id_tokens_are_refused() {
    let api = api_with_sign_in(|_| {}).await;
    // Each spoiled the way the provider's control endpoint says, each refused for it.
    for (spoil, reason) in [
        (json!({"tamper": true}), "Signature tag didn't verify"),
        (json!({"aud": "other"}), "audience mismatch"),
        (json!({"exp_offset_seconds": -600}), "expired"),
        (json!({"iss": "http://evil.test"}), "issuer mismatch"),
        (json!({"nonce": "wrong"}), "nonce mismatch"),
        (
            json!({"sign_with": "retired"}),
            "a key the provider does not publish",
        ),
        (json!({"alg": "none"}), "\"none\" is not allowed"),
    ] {
        spoil_next_id_token(spoil.clone()).await;
        let landed = sign_in(&api, "mallory@acme.test").await;
        assert_eq!(landed.status, 401, "{spoil}: {}", landed.body);
        assert_eq!(
            landed.body["code"], "sign_in_failed",
            "{spoil}: {}",
            landed.body
        );
        let message = landed.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{spoil}: {message}");
        assert!(landed.refresh_cookie.is_none(), "{spoil}: no session");
    }
    // The control: the same person, unspoiled, signs in.
    let landed = sign_in(&api, "mallory@acme.test").await;
    assert_eq!(landed.status, 303, "{}", landed.body);
}

#[tokio::test]
async fn membership_comes_from_an_invitation_or_a_verified_mapped_domain() {
    let api = api_with_sign_in(|_| {}).await;
    // An unverified email of the mapped domain is no member.
    let landed = sign_in(&api, "unverified-eve@acme.test").await;
    assert_eq!(
        (landed.status, landed.body["code"].as_str()),
        (403, Some("no_membership"))
    );
    // Nor is someone of another domain, until invited.
    let landed = sign_in(&api, "bob@elsewhere.test").await;
    assert_eq!(
        (landed.status, landed.body["code"].as_str()),
        (403, Some("no_membership"))
    );
    let users = UserRepository::new(api.repo.connection().clone());
    users
        .invite(
            &TenantId::default_tenant(),
            "Bob@Elsewhere.test",
            Role::Viewer,
            "test",
            chrono::Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .expect("invite");
    let landed = sign_in(&api, "bob@elsewhere.test").await;
    assert_eq!(landed.status, 303, "{}", landed.body);
    let cookie = cookie_pair(&landed.refresh_cookie.expect("a cookie"));
    let (status, session, _) = refresh(&api, &cookie).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["role"], "viewer", "the invitation's role");
}

/// A session token whose signing key has been retired (its overlap over) is refused,
/// though it has not expired; the next token, signed by the new key, works.
#[tokio::test]
async fn a_token_of_a_retired_session_key_is_refused() {
    let api = api_with_sign_in(|_| {}).await;
    let landed = sign_in(&api, "carol@acme.test").await;
    assert_eq!(landed.status, 303, "{}", landed.body);
    let cookie = cookie_pair(&landed.refresh_cookie.expect("a cookie"));
    let (status, first, next) = refresh(&api, &cookie).await;
    assert_eq!(status, 200, "{first}");
    let first_token = first["access_token"].as_str().expect("token").to_owned();
    let first_kid: Value =
        serde_json::from_slice(&base64_url(first_token.split('.').next().expect("header")))
            .expect("header");
    let member = ApiClient::with_key(api.url.clone(), &first_token);
    assert_eq!(member.get("/v1/me").await.0, 200);

    // The key's time is over: it neither signs nor is accepted any more.
    let connection = api.repo.connection();
    let retired = chrono::Utc::now() - chrono::Duration::seconds(1);
    use sea_orm::ConnectionTrait as _;
    connection
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            connection.get_database_backend(),
            "UPDATE session_keys SET signs_until = ?, accepted_until = ? WHERE kid = ?",
            [
                retired.into(),
                retired.into(),
                first_kid["kid"].as_str().expect("kid").into(),
            ],
        ))
        .await
        .expect("retire the key");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = member.get("/v1/me").await;
        if status == 401 {
            assert_eq!(body["code"], "unauthenticated");
            break;
        }
        assert!(Instant::now() < deadline, "still accepted: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, keys) = api.anonymous().get("/.well-known/jwks.json").await;
    assert!(
        keys["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .all(|key| key["kid"] != first_kid["kid"]),
        "the retired key is no longer published: {keys}"
    );
    let (status, second, _) = refresh(&api, &next.expect("cookie")).await;
    assert_eq!(status, 200, "{second}");
    let second_token = second["access_token"].as_str().expect("token");
    let second_kid: Value =
        serde_json::from_slice(&base64_url(second_token.split('.').next().expect("header")))
            .expect("header");
    assert_ne!(second_kid["kid"], first_kid["kid"], "a new key signs");
    assert_eq!(
        ApiClient::with_key(api.url.clone(), second_token)
            .get("/v1/me")
            .await
            .0,
        200
    );
}

/// An owner invites someone over the API; after they sign in, a role change applies to
/// their very next request, and removing them ends their session at once.
#[tokio::test]
async fn members_are_invited_changed_and_removed_over_the_api() {
    let api = api_with_sign_in(|_| {}).await;
    let admin = api.client_for("default", Role::Admin).await;
    let (status, refused) = admin
        .post_json(
            "/v1/invitations",
            &json!({"email": "dana@partner.test", "role": "owner"}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("forbidden")),
        "{refused}"
    );
    let (status, invitation) = admin
        .post_json(
            "/v1/invitations",
            &json!({"email": "Dana@Partner.test", "role": "member", "expires_in_days": 2}),
        )
        .await;
    assert_eq!(status, 201, "{invitation}");
    assert_eq!(invitation["email"], "dana@partner.test");
    assert!(invitation["accepted_at"].is_null());

    let landed = sign_in(&api, "dana@partner.test").await;
    assert_eq!(landed.status, 303, "{}", landed.body);
    let cookie = cookie_pair(&landed.refresh_cookie.expect("a cookie"));
    let (_, session, _) = refresh(&api, &cookie).await;
    let dana = ApiClient::with_key(
        api.url.clone(),
        session["access_token"].as_str().expect("token"),
    );
    let (_, invitations) = admin.get("/v1/invitations").await;
    assert!(
        invitations["items"][0]["accepted_at"].is_string(),
        "{invitations}"
    );
    let (status, members) = admin.get("/v1/members").await;
    assert_eq!(status, 200, "{members}");
    let member = members["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|member| member["email"] == "dana@partner.test")
        .expect("dana is a member")
        .clone();
    assert_eq!(member["role"], "member");
    let user = member["user_id"].as_str().expect("user id").to_owned();
    let task = json!({"kind": "screenshot", "input": {"url": "https://example.com"}});
    assert_eq!(dana.submit(&task).await.0, 202, "a member submits");

    let (status, changed) = admin
        .put(&format!("/v1/members/{user}"), &json!({"role": "viewer"}))
        .await;
    assert_eq!(
        (status, changed["role"].as_str()),
        (200, Some("viewer")),
        "{changed}"
    );
    let (status, body) = dana.submit(&task).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "a viewer now"
    );

    let response = admin
        .http
        .delete(format!("{}/v1/members/{user}", admin.base))
        .send()
        .await
        .expect("remove");
    assert_eq!(response.status().as_u16(), 200);
    let (status, _) = dana.get("/v1/me").await;
    assert_eq!(status, 401, "the removed member's session ended");
    let (_, audit) = api.get("/v1/audit-events").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|event| event["action"].as_str())
        .collect();
    for action in [
        "invitation.created",
        "user.signed_in",
        "member.role_changed",
        "member.removed",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}
