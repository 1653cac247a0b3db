//! Who may call what, for every operation the API document lists (so a new route
//! cannot skip the check): no credentials → 401, a viewer on a mutating operation →
//! 403, tenant B's key on tenant A's ids → 404, the right key → neither 401 nor 403.
//! Then the keys themselves: shown once, listed without secrets, revoked at once, no
//! role raising its own, expiry, `last_used_at`, and failed attempts rate-limited.

use std::time::Duration;

use chrono::Utc;
use operator_domain::auth::{Permission, Role};
use operator_domain::{ArtifactId, LeaseToken, NewArtifact, TaskId, TaskOutcome};
use operator_testkit::{ApiClient, read_json};
use serde_json::{Value, json};

use crate::helpers::{TestApi, spawn_api, spawn_api_with};

/// Ids of one tenant's resources, one per kind of path variable.
struct Resources {
    task: String,
    artifact: String,
    webhook: String,
    delivery: String,
    key: String,
}

/// A finished task with an artifact and a webhook delivery, an endpoint and a key, all
/// of the `default` tenant.
async fn resources_of_default(api: &TestApi) -> Resources {
    let response = api
        .http
        .post(format!("{}/v1/webhooks", api.base))
        .json(&json!({"url": "https://hooks.example.com/a"}))
        .send()
        .await
        .expect("request");
    let (status, webhook) = read_json(response).await;
    assert_eq!(status, 201, "{webhook}");
    let (status, task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": "https://example.com"}}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = TaskId::parse(task["id"].as_str().expect("id")).expect("task id");
    let token = LeaseToken::new();
    api.repo
        .start_attempt(
            id,
            token,
            "test-worker",
            Utc::now() + chrono::Duration::seconds(30),
        )
        .await
        .expect("start");
    let artifact = ArtifactId::new();
    let outcome = TaskOutcome::Succeeded {
        result: json!({}),
        artifacts: vec![NewArtifact {
            id: artifact,
            name: "screenshot.png".into(),
            content_type: "image/png".into(),
            size_bytes: 1,
            storage_key: "nowhere/screenshot.png".into(),
            sha256: "0".repeat(64),
        }],
    };
    api.repo.finish(id, token, outcome).await.expect("finish");
    let webhook_id = webhook["id"].as_str().expect("webhook id").to_owned();
    let (status, deliveries) = api
        .get(&format!("/v1/webhooks/{webhook_id}/deliveries"))
        .await;
    assert_eq!(status, 200, "{deliveries}");
    let (status, key) = create_key(api, "viewer", None).await;
    assert_eq!(status, 201, "{key}");
    Resources {
        task: id.to_string(),
        artifact: artifact.to_string(),
        webhook: webhook_id,
        delivery: deliveries["items"][0]["id"]
            .as_str()
            .expect("the finished task made a delivery")
            .to_owned(),
        key: key["id"].as_str().expect("key id").to_owned(),
    }
}

async fn create_key(api: &ApiClient, role: &str, expires_at: Option<String>) -> (u16, Value) {
    let response = api
        .http
        .post(format!("{}/v1/api-keys", api.base))
        .json(&json!({"name": format!("a {role} key"), "role": role, "expires_at": expires_at}))
        .send()
        .await
        .expect("request");
    read_json(response).await
}

/// `{id}` etc. filled with this tenant's ids, by the path's resource.
fn fill(template: &str, ids: &Resources) -> String {
    let id = if template.starts_with("/v1/tasks/") {
        &ids.task
    } else if template.starts_with("/v1/artifacts/") {
        &ids.artifact
    } else if template.starts_with("/v1/webhooks/") {
        &ids.webhook
    } else if template.starts_with("/v1/api-keys/") {
        &ids.key
    } else {
        "default"
    };
    template
        .replace("{id}", id)
        .replace("{delivery_id}", &ids.delivery)
        .replace("{name}", "default")
}

async fn call(client: &ApiClient, method: &str, path: &str) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = client
        .http
        .request(method.clone(), format!("{}{path}", client.base));
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        request = request.json(&json!({}));
    }
    request.send().await.expect("request")
}

/// Every operation of the document, with its permission (`None`: public).
fn operations(spec: &Value) -> Vec<(String, String, Option<String>)> {
    let mut listed = Vec::new();
    for (path, methods) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in methods.as_object().expect("methods") {
            let permission = operation["x-permission"].as_str().map(str::to_owned);
            listed.push((method.clone(), path.clone(), permission));
        }
    }
    listed
}

fn permission_named(name: &str) -> Permission {
    Permission::ALL
        .into_iter()
        .find(|permission| permission.as_str() == name)
        .unwrap_or_else(|| panic!("unknown permission {name}"))
}

#[tokio::test]
async fn every_operation_checks_credentials_role_and_tenant() {
    let api = spawn_api().await;
    let (status, spec) = api.anonymous().get("/openapi.json").await;
    assert_eq!(status, 200, "the document is public");
    let ids = resources_of_default(&api).await;
    let anonymous = api.anonymous();
    let viewer = api.client_for("default", Role::Viewer).await;
    let other_tenant = api.client_for("tenant-b", Role::Owner).await;
    let operations = operations(&spec);
    assert!(operations.len() > 30, "{} operations", operations.len());

    for (method, template, permission) in &operations {
        let path = fill(template, &ids);
        let Some(permission) = permission else {
            assert!(
                ["/healthz", "/readyz"].contains(&template.as_str()),
                "{method} {template} names no permission, so the table misses it"
            );
            assert_eq!(spec["paths"][template][method]["security"], json!([]));
            continue;
        };
        let permission = permission_named(permission);
        assert_eq!(
            spec["paths"][template][method]["security"],
            json!([{"apiKey": []}]),
            "{method} {template}"
        );

        let response = call(&anonymous, method, &path).await;
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap_or_default().to_owned());
        let (status, body) = read_json(response).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{method} {template} without credentials"
        );
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"operator\""));

        let (status, body) = read_json(call(&viewer, method, &path).await).await;
        if method != "get" || !Role::Viewer.grants(permission) {
            assert_eq!(
                (status, body["code"].as_str()),
                (403, Some("forbidden")),
                "{method} {template} as a viewer"
            );
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(permission.as_str()),
                "the refusal names {permission}: {body}"
            );
        } else {
            assert!(
                ![401, 403].contains(&status),
                "{method} {template} as a viewer: {status} {body}"
            );
        }

        if template.contains('{') && !template.starts_with("/v1/queues/") {
            let (status, body) = read_json(call(&other_tenant, method, &path).await).await;
            assert_eq!(
                status, 404,
                "{method} {template} with another tenant's ids: {body}"
            );
            assert!(
                body["code"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("not_found"),
                "{method} {template}: {body}"
            );
        }
    }

    // The streams are outside the document, and checked the same way.
    let events = format!("/v1/tasks/{}/events", ids.task);
    assert_eq!(
        read_json(call(&anonymous, "get", &events).await).await.0,
        401
    );
    assert_eq!(
        read_json(call(&other_tenant, "get", &events).await).await.0,
        404
    );
    let response = call(&viewer, "get", &events).await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "a viewer may read the stream"
    );

    // Last, the owner on every operation: never 401 or 403 (mutations run now, after
    // the checks that needed the resources).
    for (method, template, permission) in &operations {
        if permission.is_none() {
            continue;
        }
        let path = fill(template, &ids);
        let (status, body) = read_json(call(&api, method, &path).await).await;
        assert!(
            ![401, 403].contains(&status),
            "{method} {template} as the owner: {status} {body}"
        );
    }
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_lists() {
    let api = spawn_api().await;
    let other = api.client_for("tenant-b", Role::Member).await;
    let (_, task) = api
        .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
        .await;
    let (_, theirs) = other
        .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
        .await;
    let (_, mine) = api.get("/v1/tasks").await;
    let listed: Vec<&Value> = mine["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|task| &task["id"])
        .collect();
    assert_eq!(listed, vec![&task["id"]]);
    let (_, listed) = other.get("/v1/tasks").await;
    assert_eq!(listed["items"].as_array().expect("items").len(), 1);
    assert_eq!(listed["items"][0]["id"], theirs["id"]);
    let (status, _) = other.get("/v1/api-keys").await;
    assert_eq!(status, 403, "a member lists no keys");
    let (_, me) = other.get("/v1/me").await;
    assert_eq!(me["tenant"], "tenant-b");
    assert_eq!(me["role"], "member");
    assert_eq!(
        me["permissions"],
        json!(["tasks:read", "tasks:write", "queues:read", "webhooks:read"])
    );
}

#[tokio::test]
async fn a_key_is_shown_once_listed_without_its_secret_and_revoked_at_once() {
    let api = spawn_api().await;
    let (status, created) = create_key(&api, "member", None).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().expect("the key, once").to_owned();
    assert!(secret.starts_with("opk_") && secret.len() == 54, "{secret}");
    assert_eq!(created["prefix"].as_str(), Some(&secret[..16]));
    let member = ApiClient::with_key(api.base.clone(), &secret);
    let (status, _) = member.get("/v1/tasks").await;
    assert_eq!(status, 200);

    let (_, listed) = api.get("/v1/api-keys").await;
    let text = listed.to_string();
    assert!(
        !text.contains(&secret[16..]),
        "no secret in the list: {text}"
    );
    let item = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|key| key["id"] == created["id"])
        .expect("listed")
        .clone();
    assert_eq!(item["role"], "member");
    assert!(item.get("key").is_none());

    // last_used_at is written in the background, coalesced.
    let id = created["id"].as_str().expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, key) = api.get(&format!("/v1/api-keys/{id}")).await;
        if key["last_used_at"].is_string() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used_at never written: {key}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let response = api
        .http
        .delete(format!("{}/v1/api-keys/{id}", api.base))
        .send()
        .await
        .expect("revoke");
    let (status, revoked) = read_json(response).await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let response = member
        .http
        .get(format!("{}/v1/tasks", api.base))
        .send()
        .await
        .expect("request");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
}

#[tokio::test]
async fn no_role_makes_or_revokes_a_key_above_its_own() {
    let api = spawn_api().await;
    let admin = api.client_for("default", Role::Admin).await;
    let (status, body) = create_key(&admin, "owner", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, member_key) = create_key(&admin, "member", None).await;
    assert_eq!(status, 201, "{member_key}");
    assert_eq!(
        member_key["created_by"]
            .as_str()
            .map(|by| by.starts_with("key:")),
        Some(true)
    );
    let (_, owner_key) = create_key(&api, "owner", None).await;
    let response = admin
        .http
        .delete(format!(
            "{}/v1/api-keys/{}",
            api.base,
            owner_key["id"].as_str().expect("id")
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status().as_u16(),
        403,
        "an admin cannot revoke an owner key"
    );
    let member = ApiClient::with_key(api.base.clone(), member_key["key"].as_str().expect("key"));
    let (status, body) = create_key(&member, "viewer", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("keys:manage")
    );
}

#[tokio::test]
async fn bad_expiry_names_and_malformed_keys_are_refused() {
    let api = spawn_api().await;
    let past = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let (status, body) = create_key(&api, "viewer", Some(past)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("expires_at")
    );
    let soon = (Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (status, expiring) = create_key(&api, "viewer", Some(soon)).await;
    assert_eq!(status, 201, "{expiring}");
    let viewer = ApiClient::with_key(api.base.clone(), expiring["key"].as_str().expect("key"));
    assert_eq!(viewer.get("/v1/tasks").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = viewer.get("/v1/tasks").await;
    assert_eq!(status, 401, "an expired key: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );

    let real = expiring["key"].as_str().expect("key");
    let mut typo = real.to_owned().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    for presented in [
        "opk_short".to_owned(),
        String::from_utf8(typo).expect("ascii"),
        "Basic dXNlcjpwYXNz".to_owned(),
    ] {
        let client = ApiClient::with_key(api.base.clone(), &presented);
        let (status, body) = client.get("/v1/tasks").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{presented}: {body}"
        );
    }
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_rate_limited() {
    let api = spawn_api_with(|settings| settings.auth.failures_per_minute = 3).await;
    let wrong = ApiClient::with_key(api.base.clone(), "opk_this-is-not-a-key");
    for _ in 0..3 {
        assert_eq!(wrong.get("/v1/tasks").await.0, 401);
    }
    let response = wrong
        .http
        .get(format!("{}/v1/tasks", api.base))
        .send()
        .await
        .expect("request");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After");
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, 200, "health checks stay open");
}

#[tokio::test]
async fn with_authentication_off_every_request_is_the_default_owner() {
    let api = spawn_api_with(|settings| settings.auth.enabled = false).await;
    let (status, me) = api.anonymous().get("/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant"], "default");
    assert_eq!(me["role"], "owner");
    assert!(me.get("key").is_none() || me["key"].is_null());
}
