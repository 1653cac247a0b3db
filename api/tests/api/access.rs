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
    member: String,
    invitation: String,
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
    let task = task_with_a_file(api, b"png").await;
    let webhook_id = webhook["id"].as_str().expect("webhook id").to_owned();
    let (status, deliveries) = api
        .get(&format!("/v1/webhooks/{webhook_id}/deliveries"))
        .await;
    assert_eq!(status, 200, "{deliveries}");
    let (status, key) = create_key(api, "viewer", None).await;
    assert_eq!(status, 201, "{key}");
    let response = api
        .http
        .post(format!("{}/v1/invitations", api.base))
        .json(&json!({"email": "member@example.test", "role": "member"}))
        .send()
        .await
        .expect("request");
    let (status, invitation) = read_json(response).await;
    assert_eq!(status, 201, "{invitation}");
    // Signing in with the invited, verified email makes the member.
    let member = operator_store::db::UserRepository::new(api.repo.connection().clone())
        .sign_in(
            &operator_store::db::SignInIdentity {
                provider: "test".into(),
                subject: "member".into(),
                email: "member@example.test".into(),
                email_verified: true,
                name: None,
            },
            None,
        )
        .await
        .expect("sign in")
        .expect("a member");
    Resources {
        task: task["id"].as_str().expect("id").to_owned(),
        artifact: task["artifacts"][0]["id"]
            .as_str()
            .expect("artifact id")
            .to_owned(),
        webhook: webhook_id,
        delivery: deliveries["items"][0]["id"]
            .as_str()
            .expect("the finished task made a delivery")
            .to_owned(),
        key: key["id"].as_str().expect("key id").to_owned(),
        member: member.user.to_string(),
        invitation: invitation["id"].as_str().expect("invitation id").to_owned(),
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
    } else if template.starts_with("/v1/invitations/") {
        &ids.invitation
    } else {
        "default"
    };
    template
        .replace("{id}", id)
        .replace("{delivery_id}", &ids.delivery)
        .replace("{user_id}", &ids.member)
        .replace("{domain}", "example.test")
        .replace("{name}", "default")
}

async fn call(client: &ApiClient, method: &str, path: &str) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = client
        .http
        .request(method.clone(), format!("{}{path}", client.base));
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        // A body that parses, so the checks after parsing (the tenant's ids) are reached.
        let body = if path.starts_with("/v1/members/") {
            json!({"role": "viewer"})
        } else {
            json!({})
        };
        request = request.json(&body);
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
    let tenant_owner = api.client_for("default", Role::Owner).await;
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
        if method != "get"
            || matches!(
                permission,
                Permission::TenantsManage | Permission::QueuesManage
            )
            || !Role::Viewer.grants(permission)
        {
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

        if matches!(
            permission,
            Permission::TenantsManage | Permission::QueuesManage
        ) {
            // The platform's, not a tenant's: a tenant's owner is refused.
            let (status, _) = read_json(call(&tenant_owner, method, &path).await).await;
            assert_eq!(status, 403, "{method} {template} as a tenant owner");
        } else if template.contains('{') && !template.starts_with("/v1/queues/") {
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

    // Last, the owner (the platform admin on the platform's operations) on every
    // operation: never 401 or 403 (mutations run now, after the checks that needed
    // the resources).
    let platform_admin = api.platform_admin().await;
    for (method, template, permission) in &operations {
        let Some(permission) = permission else {
            continue;
        };
        let path = fill(template, &ids);
        let right = if permission_named(permission) == Permission::TenantsManage {
            &platform_admin
        } else {
            &api
        };
        let (status, body) = read_json(call(right, method, &path).await).await;
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
        json!([
            "tasks:read",
            "tasks:write",
            "queues:read",
            "webhooks:read",
            "usage:read",
            "model:read"
        ]),
        "no keys:read, audit:read or model:manage"
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

/// A succeeded task of the `default` tenant with one stored file; the task as read back.
async fn task_with_a_file(api: &TestApi, bytes: &'static [u8]) -> Value {
    let (_, task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": "https://example.com"}}))
        .await;
    let id = TaskId::parse(task["id"].as_str().expect("id")).expect("task id");
    let key = format!("default/{id}/screenshot.png");
    let receipt = api
        .storage
        .put(&key, bytes::Bytes::from_static(bytes), "image/png")
        .await
        .expect("put");
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
    let outcome = TaskOutcome::Succeeded {
        result: json!({}),
        artifacts: vec![NewArtifact {
            id: ArtifactId::new(),
            name: "screenshot.png".into(),
            content_type: "image/png".into(),
            size_bytes: bytes.len() as u64,
            storage_key: key,
            sha256: receipt.sha256,
        }],
    };
    api.repo.finish(id, token, outcome).await.expect("finish");
    api.get(&format!("/v1/tasks/{id}")).await.1
}

#[tokio::test]
async fn a_signed_link_downloads_one_artifact_without_credentials_until_it_expires() {
    let api = spawn_api_with(|settings| settings.auth.link_ttl = Duration::from_secs(2)).await;
    let task = task_with_a_file(&api, b"the picture").await;
    let artifact = &task["artifacts"][0];
    let signed = artifact["signed_url"]
        .as_str()
        .expect("signed_url")
        .to_owned();
    assert!(
        signed.starts_with(artifact["url"].as_str().expect("url")),
        "{signed}"
    );
    let anonymous = reqwest::Client::new();
    let response = anonymous.get(&signed).send().await.expect("download");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(&response.bytes().await.expect("bytes")[..], b"the picture");
    // Without the signature, the link needs a key.
    let plain = anonymous
        .get(artifact["url"].as_str().expect("url"))
        .send()
        .await
        .expect("request");
    assert_eq!(plain.status().as_u16(), 401);

    let other = task_with_a_file(&api, b"another").await;
    let other_id = other["artifacts"][0]["id"].as_str().expect("id");
    let query = signed.split_once('?').expect("query").1;
    let exp: i64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("exp="))
        .and_then(|exp| exp.parse().ok())
        .expect("exp");
    for (what, url) in [
        (
            "another artifact",
            format!("{}/v1/artifacts/{other_id}?{query}", api.base),
        ),
        (
            "a later expiry",
            signed.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600)),
        ),
        (
            "another tenant",
            signed.replace("tenant=default", "tenant=tenant-b"),
        ),
        (
            "a changed signature",
            format!("{}x", &signed[..signed.len() - 1]),
        ),
    ] {
        let response = anonymous.get(&url).send().await.expect("request");
        assert_eq!(response.status().as_u16(), 401, "{what}: {url}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = anonymous.get(&signed).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 401, "an expired link");
}

#[tokio::test]
async fn a_ticket_opens_its_task_stream_without_credentials_and_no_other() {
    let api = spawn_api().await;
    let (_, first) = api
        .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
        .await;
    let (_, second) = api
        .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
        .await;
    let first_id = first["id"].as_str().expect("id");
    let viewer = api.client_for("default", Role::Viewer).await;
    let (status, ticket) = viewer
        .get(&format!("/v1/tasks/{first_id}/event-ticket"))
        .await;
    assert_eq!(status, 200, "{ticket}");
    let events_url = ticket["events_url"].as_str().expect("events_url");
    assert!(
        ticket["websocket_url"]
            .as_str()
            .is_some_and(|url| url.starts_with("ws://"))
    );
    let anonymous = reqwest::Client::new();
    // The task is queued: cancel it so the stream ends.
    let (status, _) = api.post(&format!("/v1/tasks/{first_id}/cancel")).await;
    assert_eq!(status, 200);
    let response = anonymous.get(events_url).send().await.expect("stream");
    assert_eq!(response.status().as_u16(), 200);
    let events = operator_testkit::read_sse(response).await;
    assert!(!events.is_empty(), "the stream carries the task's events");

    let ticket = ticket["ticket"].as_str().expect("ticket");
    let second_id = second["id"].as_str().expect("id");
    let response = anonymous
        .get(format!(
            "{}/v1/tasks/{second_id}/events?ticket={ticket}",
            api.base
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status().as_u16(),
        401,
        "the ticket is for another task"
    );
    let response = anonymous
        .get(format!("{}/v1/tasks/{first_id}?ticket={ticket}", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status().as_u16(),
        401,
        "a ticket opens streams only"
    );
    let (status, _) = api
        .client_for("tenant-b", Role::Owner)
        .await
        .get(&format!("/v1/tasks/{first_id}/event-ticket"))
        .await;
    assert_eq!(status, 404, "no ticket for another tenant's task");
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_from_where_per_tenant() {
    let api = spawn_api().await;
    let (_, me) = api.get("/v1/me").await;
    let actor = format!("key:{}", me["key"]["id"].as_str().expect("key id"));
    let (_, key) = create_key(&api, "viewer", None).await;
    let key_id = key["id"].as_str().expect("id");
    let response = api
        .http
        .delete(format!("{}/v1/api-keys/{key_id}", api.base))
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status().as_u16(), 200);
    let (_, task) = api
        .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
        .await;
    let task_id = task["id"].as_str().expect("id");
    assert_eq!(
        api.post(&format!("/v1/tasks/{task_id}/cancel")).await.0,
        200
    );
    assert_eq!(api.post("/v1/queues/default/pause").await.0, 200);
    // Reading changes nothing in the log.
    assert_eq!(api.get("/v1/tasks").await.0, 200);

    let (status, log) = api.get("/v1/audit-events").await;
    assert_eq!(status, 200, "{log}");
    let actions: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|event| event["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "queue.paused",
            "task.cancelled",
            "api_key.revoked",
            "api_key.created"
        ]
    );
    let revoked = &log["items"][2];
    assert_eq!(revoked["actor"], actor.as_str());
    assert_eq!(revoked["resource_type"], "api_key");
    assert_eq!(revoked["resource_id"], key_id);
    assert_eq!(revoked["address"], "127.0.0.1");
    assert_eq!(log["items"][1]["resource_id"], task_id);

    let (_, page) = api.get("/v1/audit-events?limit=3").await;
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, rest) = api
        .get(&format!("/v1/audit-events?limit=3&cursor={cursor}"))
        .await;
    assert_eq!(rest["items"].as_array().expect("items").len(), 1);
    assert_eq!(rest["items"][0]["action"], "api_key.created");
    let (_, only) = api.get("/v1/audit-events?action=task.cancelled").await;
    assert_eq!(only["items"].as_array().expect("items").len(), 1);

    let other = api.client_for("tenant-b", Role::Owner).await;
    let (_, theirs) = other.get("/v1/audit-events").await;
    assert_eq!(
        theirs["items"],
        json!([]),
        "another tenant's log is its own"
    );
    let member = api.client_for("default", Role::Member).await;
    assert_eq!(member.get("/v1/audit-events").await.0, 403);
}

async fn create_tenant(admin: &ApiClient, body: Value) -> (u16, Value) {
    let response = admin
        .http
        .post(format!("{}/v1/admin/tenants", admin.base))
        .json(&body)
        .send()
        .await
        .expect("create a tenant");
    read_json(response).await
}

#[tokio::test]
async fn a_platform_admin_creates_tenants_whose_owner_key_works_at_once() {
    let api = spawn_api().await;
    let admin = api.platform_admin().await;
    let (status, created) = create_tenant(&admin, json!({"id": "acme", "name": "Acme Corp"})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tenant"]["id"], "acme");
    assert_eq!(created["owner_key"]["role"], "owner");
    let owner = ApiClient::with_key(
        api.base.clone(),
        created["owner_key"]["key"].as_str().expect("key"),
    );
    let (_, me) = owner.get("/v1/me").await;
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("acme"), Some("owner"))
    );
    assert!(
        !me["permissions"]
            .as_array()
            .expect("permissions")
            .contains(&json!("tenants:manage"))
    );
    let (status, _) = owner.get("/v1/admin/tenants").await;
    assert_eq!(status, 403, "a tenant's owner is not the platform's admin");

    let (status, body) = create_tenant(&admin, json!({"id": "acme"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("tenant_exists")),
        "{body}"
    );
    let (status, body) = create_tenant(&admin, json!({"id": "Not A Slug"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    let (status, listed) = admin.get("/v1/admin/tenants").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["acme", "default"]);
}

#[tokio::test]
async fn browsers_at_the_configured_origin_may_call_the_api() {
    let api = spawn_api_with(|settings| {
        settings.auth.cors_origins = vec!["https://console.example.com".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/v1/tasks", api.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://console.example.com")
        .await
        .expect("preflight");
    assert_eq!(allowed.status().as_u16(), 200);
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|value| value.to_str().ok()),
        Some("https://console.example.com")
    );
    let allowed_headers = allowed
        .headers()
        .get("access-control-allow-headers")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let refused = preflight("https://evil.example").await.expect("preflight");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "another origin is not allowed"
    );
    // A real request from the console still needs its key.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/tasks", api.base))
        .header("origin", "https://console.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);
}

async fn submit_with_headers(client: &ApiClient, path: &str) -> (u16, reqwest::header::HeaderMap) {
    let body = if path == "/v1/tasks" {
        json!({"kind": "pdf", "input": {"url": "https://example.com"}})
    } else {
        json!({"url": "https://example.com"})
    };
    let response = client
        .http
        .post(format!("{}{path}", client.base))
        .query(
            &[("timeout_ms", "1000")]
                .into_iter()
                .filter(|_| path != "/v1/tasks")
                .collect::<Vec<_>>(),
        )
        .json(&body)
        .send()
        .await
        .expect("submit");
    (response.status().as_u16(), response.headers().clone())
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn a_tenant_over_its_submission_rate_gets_429_and_others_do_not() {
    let api = spawn_api_with(|settings| {
        settings.limits.submissions_per_second = 0.2;
        settings.limits.submission_burst = 2;
        settings.server.sync_wait = Duration::from_millis(100);
    })
    .await;
    let (status, headers) = submit_with_headers(&api, "/v1/tasks").await;
    assert_eq!(status, 202);
    assert_eq!(header(&headers, "ratelimit-limit"), Some(2));
    assert_eq!(header(&headers, "ratelimit-remaining"), Some(1));
    let (status, _) = submit_with_headers(&api, "/v1/screenshot").await;
    assert_eq!(
        status, 202,
        "a one-call submission counts too, and is within the burst"
    );
    let (status, headers) = submit_with_headers(&api, "/v1/tasks").await;
    assert_eq!(status, 429, "the third in a burst of two");
    let retry_after = header(&headers, "retry-after").expect("Retry-After");
    assert!(
        (4..=5).contains(&retry_after),
        "one more after 1/rate = 5 s: {retry_after}"
    );
    assert_eq!(header(&headers, "ratelimit-remaining"), Some(0));
    let (status, _) = submit_with_headers(&api, "/v1/pdf").await;
    assert_eq!(status, 429);
    // Reading, cancelling and other tenants are not counted.
    assert_eq!(api.get("/v1/tasks").await.0, 200);
    let other = api.client_for("tenant-b", Role::Member).await;
    assert_eq!(submit_with_headers(&other, "/v1/tasks").await.0, 202);

    // The platform raises the default tenant's own limit; it applies at once here.
    let admin = api.platform_admin().await;
    let response = admin
        .http
        .put(format!("{}/v1/admin/tenants/default/limits", api.base))
        .json(&json!({"submissions_per_second": 1000.0, "submission_burst": 50, "running_tasks_per_queue": 2}))
        .send()
        .await
        .expect("set limits");
    let (status, tenant) = read_json(response).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["limits"]["submission_burst"], 50);
    assert_eq!(tenant["limits"]["running_tasks_per_queue"], 2);
    let (status, headers) = submit_with_headers(&api, "/v1/tasks").await;
    assert_eq!(status, 202);
    assert_eq!(header(&headers, "ratelimit-limit"), Some(50));
    let response = admin
        .http
        .put(format!("{}/v1/admin/tenants/nobody/limits", api.base))
        .json(&json!({"submission_burst": 0}))
        .send()
        .await
        .expect("bad limits");
    assert_eq!(
        read_json(response).await.0,
        422,
        "a burst of 0 is refused before the look-up"
    );
    let response = admin
        .http
        .put(format!("{}/v1/admin/tenants/default/limits", api.base))
        .json(&json!({"running_tasks_per_queue": 0}))
        .send()
        .await
        .expect("bad cap");
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    let response = admin
        .http
        .put(format!("{}/v1/admin/tenants/nobody/limits", api.base))
        .json(&json!({}))
        .send()
        .await
        .expect("unknown tenant");
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("tenant_not_found"))
    );
}
