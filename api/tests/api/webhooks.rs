//! `/v1/webhooks` over HTTP: endpoints' life cycle, secrets and their rotation, the
//! tenant's signing key, and a clear 4xx code for every bad input.

use operator_testkit::read_json;
use serde_json::{Value, json};

use crate::helpers::{TestApi, spawn_api, spawn_api_with};

async fn send(api: &TestApi, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = api.http.request(method, format!("{}{path}", api.base));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    read_json(request.send().await.expect("request")).await
}

#[tokio::test]
async fn an_endpoint_lives_from_creation_to_deletion() {
    let api = spawn_api().await;
    let (status, created) = send(
        &api,
        "POST",
        "/v1/webhooks",
        Some(&json!({"url": "https://hooks.example/in", "description": "ops", "event_types": ["task.failed", "task.dead"]}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("the secret, once");
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["event_types"], json!(["task.failed", "task.dead"]));
    let id = created["id"].as_str().expect("id").to_owned();

    let (status, listed) = api.get("/v1/webhooks").await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert!(
        listed["items"][0].get("secret").is_none(),
        "secrets are not listed"
    );

    let (status, disabled) = send(
        &api,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        Some(r#"{"enabled": false, "description": null, "event_types": []}"#),
    )
    .await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["disabled_reason"], "disabled by its tenant");
    assert!(disabled.get("description").is_none());
    assert_eq!(disabled["event_types"], json!([]));
    let (_, enabled) = send(
        &api,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        Some(r#"{"enabled": true}"#),
    )
    .await;
    assert_eq!(enabled["enabled"], true);
    assert!(enabled.get("disabled_reason").is_none(), "{enabled}");

    let (status, rotated) = send(
        &api,
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        Some(r#"{"overlap_seconds": 3600}"#),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("the new secret");
    assert!(new_secret.starts_with("whsec_"));
    assert_ne!(new_secret, secret);
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "the overlap is shown"
    );

    let (status, deliveries) = api.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!((status, deliveries["items"].clone()), (200, json!([])));

    let (status, _) = send(&api, "DELETE", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, gone) = api.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(
        (status, gone["code"].as_str()),
        (404, Some("webhook_not_found"))
    );
}

#[tokio::test]
async fn the_tenant_signing_key_can_be_read_and_rotated() {
    let api = spawn_api().await;
    let (status, key) = api.get("/v1/webhook-signing-key").await;
    assert_eq!(status, 200, "{key}");
    let secret = key["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    let (_, again) = api.get("/v1/webhook-signing-key").await;
    assert_eq!(again["secret"], secret.as_str(), "created once");
    let (status, rotated) = send(&api, "POST", "/v1/webhook-signing-key/rotate", Some("{}")).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], secret.as_str());
    assert!(rotated["previous_secret_expires_at"].is_string());
}

#[tokio::test]
async fn every_bad_webhook_input_gets_a_clear_4xx() {
    let api = spawn_api_with(|settings| settings.network.allow.clear()).await;
    let missing = "00000000-0000-7000-8000-000000000000";
    /// Name, method, path, body, expected status and code.
    type Case<'a> = (&'a str, &'a str, String, Option<String>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "loopback",
            "POST",
            "/v1/webhooks".into(),
            Some(json!({"url": "http://127.0.0.1:9/"}).to_string()),
            422,
            "url_not_allowed",
        ),
        (
            "metadata",
            "POST",
            "/v1/webhooks".into(),
            Some(json!({"url": "http://169.254.169.254/latest/"}).to_string()),
            422,
            "url_not_allowed",
        ),
        (
            "scheme",
            "POST",
            "/v1/webhooks".into(),
            Some(json!({"url": "gopher://hooks.example/"}).to_string()),
            422,
            "url_scheme_not_allowed",
        ),
        (
            "not a url",
            "POST",
            "/v1/webhooks".into(),
            Some(json!({"url": "not a url"}).to_string()),
            422,
            "invalid_url",
        ),
        (
            "unknown event",
            "POST",
            "/v1/webhooks".into(),
            Some(
                json!({"url": "https://hooks.example/", "event_types": ["task.exploded"]})
                    .to_string(),
            ),
            422,
            "invalid_request",
        ),
        (
            "long description",
            "POST",
            "/v1/webhooks".into(),
            Some(
                json!({"url": "https://hooks.example/", "description": "x".repeat(2000)})
                    .to_string(),
            ),
            422,
            "invalid_request",
        ),
        (
            "truncated JSON",
            "POST",
            "/v1/webhooks".into(),
            Some(r#"{"url": "#.into()),
            400,
            "invalid_request",
        ),
        (
            "missing url",
            "POST",
            "/v1/webhooks".into(),
            Some("{}".into()),
            400,
            "invalid_request",
        ),
        (
            "unknown endpoint",
            "GET",
            format!("/v1/webhooks/{missing}"),
            None,
            404,
            "webhook_not_found",
        ),
        (
            "malformed id",
            "GET",
            "/v1/webhooks/nope".into(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "patch unknown",
            "PATCH",
            format!("/v1/webhooks/{missing}"),
            Some("{}".into()),
            404,
            "webhook_not_found",
        ),
        (
            "delete unknown",
            "DELETE",
            format!("/v1/webhooks/{missing}"),
            None,
            404,
            "webhook_not_found",
        ),
        (
            "rotate unknown",
            "POST",
            format!("/v1/webhooks/{missing}/rotate-secret"),
            Some("{}".into()),
            404,
            "webhook_not_found",
        ),
        (
            "huge overlap",
            "POST",
            "/v1/webhook-signing-key/rotate".into(),
            Some(r#"{"overlap_seconds": 99999999}"#.into()),
            422,
            "invalid_request",
        ),
        (
            "deliveries of unknown",
            "GET",
            format!("/v1/webhooks/{missing}/deliveries"),
            None,
            404,
            "webhook_not_found",
        ),
        (
            "redeliver unknown",
            "POST",
            format!("/v1/webhooks/{missing}/deliveries/{missing}/redeliver"),
            None,
            404,
            "delivery_not_found",
        ),
        (
            "deliveries of unknown task",
            "GET",
            format!("/v1/tasks/{missing}/webhook-deliveries"),
            None,
            404,
            "task_not_found",
        ),
    ];
    for (name, method, path, body, status, code) in cases {
        let (got_status, got_body) = send(&api, method, &path, body.as_deref()).await;
        assert_eq!(got_status, status, "{name}: {got_body}");
        assert_eq!(got_body["code"], code, "{name}: {got_body}");
    }
    let (_, listed) = api.get("/v1/webhooks").await;
    assert_eq!(
        listed["items"],
        json!([]),
        "no bad request left an endpoint behind"
    );
}

/// Cancelling a queued task ends it: its delivery is in the outbox at once (no worker
/// runs here, so it stays pending), listed by page; a pending one cannot be redelivered.
#[tokio::test]
async fn cancelled_tasks_leave_deliveries_listed_by_page() {
    let api = spawn_api().await;
    let (_, endpoint) = send(
        &api,
        "POST",
        "/v1/webhooks",
        Some(&json!({"url": "https://hooks.example/in"}).to_string()),
    )
    .await;
    let endpoint_id = endpoint["id"].as_str().expect("id").to_owned();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (_, task) = api
            .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}, "webhook_url": "https://own.example/hook"}))
            .await;
        let id = task["id"].as_str().expect("id").to_owned();
        let (status, _) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
        assert_eq!(status, 200);
        tasks.push(id);
    }
    let path = format!("/v1/webhooks/{endpoint_id}/deliveries");
    let (status, first) = api.get(&format!("{path}?limit=2")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["items"][0]["event_type"], "task.cancelled");
    assert_eq!(first["items"][0]["state"], "pending");
    assert_eq!(
        first["items"][0]["task_id"],
        tasks[2].as_str(),
        "newest first"
    );
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = api.get(&format!("{path}?limit=2&cursor={cursor}")).await;
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["items"][0]["task_id"], tasks[0].as_str());
    assert!(second.get("next_cursor").is_none(), "{second}");

    let (status, own) = api
        .get(&format!("/v1/tasks/{}/webhook-deliveries", tasks[0]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        own["items"].as_array().map(Vec::len),
        Some(2),
        "endpoint and own URL: {own}"
    );

    let delivery_id = second["items"][0]["id"].as_str().expect("id");
    let (status, body) = api.post(&format!("{path}/{delivery_id}/redeliver")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let (status, body) = api.get(&format!("{path}?cursor=garbage")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, body) = api.get(&format!("{path}?limit=0")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
}
