//! The API over HTTP: validation with machine-readable codes, nothing half-written,
//! reading, listing, cancelling, health and the OpenAPI document.

mod access;
mod events;
mod helpers;
mod queue;
mod signin;
mod usage;
mod webhooks;

use helpers::{spawn_api, spawn_api_with};
use operator_testkit::read_json;
use serde_json::json;

#[tokio::test]
async fn every_bad_input_gets_a_clear_4xx_and_nothing_is_written() {
    let api = spawn_api_with(|settings| settings.network.allow.clear()).await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("truncated JSON", r#"{"kind":"screenshot","input":{"url":"https://a.test"}"#.into(), 400, "invalid_json"),
        ("empty body", String::new(), 400, "invalid_json"),
        ("not an object", "[1,2]".into(), 422, "invalid_request"),
        ("unknown kind", json!({"kind": "video", "input": {"url": "https://a.test"}}).to_string(), 422, "unknown_kind"),
        ("missing kind", json!({"input": {"url": "https://a.test"}}).to_string(), 422, "invalid_request"),
        ("unknown field", json!({"kind": "pdf", "input": {"url": "https://a.test"}, "colour": 1}).to_string(), 422, "invalid_request"),
        ("invalid url", json!({"kind": "screenshot", "input": {"url": "not a url"}}).to_string(), 422, "invalid_url"),
        ("ftp url", json!({"kind": "screenshot", "input": {"url": "ftp://a.test/x"}}).to_string(), 422, "url_scheme_not_allowed"),
        ("file url", json!({"kind": "pdf", "input": {"url": "file:///etc/passwd"}}).to_string(), 422, "url_scheme_not_allowed"),
        ("javascript url", json!({"kind": "pdf", "input": {"url": "javascript:alert(1)"}}).to_string(), 422, "url_scheme_not_allowed"),
        ("loopback", json!({"kind": "screenshot", "input": {"url": "http://127.0.0.1:8080/"}}).to_string(), 422, "url_not_allowed"),
        ("metadata", json!({"kind": "screenshot", "input": {"url": "http://169.254.169.254/latest/meta-data/"}}).to_string(), 422, "url_not_allowed"),
        ("bad viewport", json!({"kind": "screenshot", "input": {"url": "https://a.test", "viewport": {"width": 0, "height": 10}}}).to_string(), 422, "invalid_input"),
        ("bad input field", json!({"kind": "screenshot", "input": {"url": "https://a.test", "zoom": 2}}).to_string(), 422, "invalid_input"),
        ("input not an object", json!({"kind": "screenshot", "input": "https://a.test"}).to_string(), 422, "invalid_input"),
        ("timeout too long", json!({"kind": "pdf", "input": {"url": "https://a.test"}, "timeout_ms": 999_999_999}).to_string(), 422, "invalid_request"),
        ("bad priority", json!({"kind": "pdf", "input": {"url": "https://a.test"}, "priority": "urgent"}).to_string(), 422, "invalid_request"),
        ("bad webhook", json!({"kind": "pdf", "input": {"url": "https://a.test"}, "webhook_url": "gopher://x"}).to_string(), 422, "url_scheme_not_allowed"),
    ];
    for (name, body, status, code) in cases {
        let (got_status, got_body) = api.submit_raw(&body).await;
        assert_eq!(got_status, status, "{name}: {got_body}");
        assert_eq!(got_body["code"], code, "{name}: {got_body}");
        let message = got_body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{name}: a human message too");
    }
    let (_, body) = api.get("/v1/tasks").await;
    assert_eq!(
        body["items"],
        json!([]),
        "no bad submission left a task behind"
    );
    assert_eq!(
        api.stats("default").await,
        Default::default(),
        "nor a queue entry"
    );
}

#[tokio::test]
async fn errors_name_the_offending_field() {
    let api = spawn_api().await;
    let (_, body) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": "https://a.test", "viewport": {"width": 10, "height": 99999}}}))
        .await;
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .starts_with("input.viewport.height"),
        "{body}"
    );
    let (_, body) = api.submit(&json!({"kind": "pdf", "input": {"url": "https://a.test", "margin": {"top": "2 parsecs"}}})).await;
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("input.margin.top"),
        "{body}"
    );
}

#[tokio::test]
async fn a_form_body_is_refused_as_the_wrong_media_type() {
    let api = spawn_api().await;
    let response = api
        .http
        .post(format!("{}/v1/tasks", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("kind=screenshot")
        .send()
        .await
        .expect("request");
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_read_whole() {
    let api = spawn_api_with(|settings| settings.server.max_body_bytes = 1024).await;
    let body =
        json!({"kind": "pdf", "input": {"url": format!("https://a.test/{}", "x".repeat(4096))}})
            .to_string();
    let (status, body) = api.submit_raw(&body).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn a_valid_task_is_stored_queued_and_dispatched() {
    let api = spawn_api().await;
    let response = api
        .http
        .post(format!("{}/v1/tasks", api.base))
        .json(&json!({"kind": "screenshot", "input": {"url": "https://example.com", "type": "jpeg", "quality": 70}, "priority": "high"}))
        .send()
        .await
        .expect("request");
    let location = response
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .expect("ascii")
        .to_owned();
    let (status, task) = read_json(response).await;
    assert_eq!(status, 202);
    assert_eq!(task["state"], "queued");
    assert_eq!(task["priority"], "high");
    assert_eq!(
        task["input"]["viewport"],
        json!({"width": 1280, "height": 800, "device_scale_factor": 1.0})
    );
    assert_eq!(task["input"]["url"], "https://example.com/");
    let id = task["id"].as_str().expect("id");
    assert_eq!(location, format!("{}/v1/tasks/{id}", api.base));
    let (status, fetched) = api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["id"], task["id"]);
    assert_eq!(fetched["artifacts"], json!([]));
    let stats = api.stats("default").await;
    assert_eq!(stats.ready(), 1, "dispatched to the queue");
}

#[tokio::test]
async fn tasks_list_newest_first_with_filters_and_cursors() {
    let api = spawn_api().await;
    let mut ids = Vec::new();
    for kind in ["screenshot", "pdf", "screenshot"] {
        let (_, task) = api
            .submit(&json!({"kind": kind, "input": {"url": "https://a.test"}}))
            .await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let (_, first) = api.get("/v1/tasks?limit=2").await;
    let first_ids: Vec<&str> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|task| task["id"].as_str().expect("id"))
        .collect();
    assert_eq!(first_ids, vec![ids[2].as_str(), ids[1].as_str()]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = api.get(&format!("/v1/tasks?limit=2&cursor={cursor}")).await;
    assert_eq!(second["items"].as_array().expect("items").len(), 1);
    assert_eq!(second["items"][0]["id"], ids[0].as_str());
    assert!(second.get("next_cursor").is_none(), "last page");
    let (_, pdfs) = api.get("/v1/tasks?kind=pdf").await;
    assert_eq!(pdfs["items"].as_array().expect("items").len(), 1);
    let (_, running) = api.get("/v1/tasks?state=running").await;
    assert_eq!(running["items"], json!([]));
    for (query, code) in [
        ("state=bogus", "invalid_parameter"),
        ("limit=0", "invalid_parameter"),
        ("cursor=xyz", "invalid_parameter"),
    ] {
        let (status, body) = api.get(&format!("/v1/tasks?{query}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
}

#[tokio::test]
async fn cancelling_a_queued_task_takes_it_off_the_queue() {
    let api = spawn_api().await;
    let (_, task) = api
        .submit(&json!({"kind": "pdf", "input": {"url": "https://a.test"}}))
        .await;
    let id = task["id"].as_str().expect("id");
    let (status, cancelled) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["error"]["code"], "cancelled");
    assert_eq!(api.stats("default").await.ready(), 0);
    let (status, again) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(
        (status, again["code"].as_str()),
        (409, Some("invalid_state"))
    );
}

#[tokio::test]
async fn missing_and_malformed_ids_and_routes_have_codes() {
    let api = spawn_api().await;
    let missing = "01a21111-bfb7-751a-b5fb-d3e89c604459";
    for path in [
        format!("/v1/tasks/{missing}"),
        format!("/v1/tasks/{missing}/artifacts"),
        format!("/v1/tasks/{missing}/attempts"),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("task_not_found")),
            "{path}"
        );
    }
    let (status, body) = api.post(&format!("/v1/tasks/{missing}/cancel")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("task_not_found"))
    );
    let (status, body) = api.get(&format!("/v1/artifacts/{missing}")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("artifact_not_found"))
    );
    let (status, body) = api.get("/v1/tasks/not-a-uuid").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, body) = api.get("/v2/nothing").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let response = api
        .http
        .delete(format!("{}/v1/tasks", api.base))
        .send()
        .await
        .expect("request");
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[tokio::test]
async fn health_readiness_spec_and_docs_are_served() {
    let api = spawn_api().await;
    let (status, body) = api.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|check| check["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["database", "queue", "storage"]);
    assert!(
        body["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|check| check["ok"] == true)
    );
    let (status, spec) = api.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/cancel",
        "/v1/artifacts/{id}",
        "/readyz",
    ] {
        assert!(spec["paths"].get(path).is_some(), "spec documents {path}");
    }
    assert!(
        spec["components"]["schemas"].get("CreateTask").is_some(),
        "the submission schema is documented"
    );
    assert!(
        spec["paths"]["/v1/tasks"]["post"]["responses"]
            .get("422")
            .is_some()
    );
    let docs = api
        .http
        .get(format!("{}/docs/", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.expect("html").contains("swagger"));
}

#[tokio::test]
async fn readiness_fails_when_storage_is_unreachable() {
    let api = spawn_api_with(|settings| {
        settings.storage.url = Some("s3://operator-test/x".into());
        settings.storage.endpoint = Some("http://127.0.0.1:9".into());
        settings.storage.allow_http = true;
        settings.storage.access_key_id = Some("k".into());
        settings.storage.secret_access_key = Some("s".to_owned().into());
    })
    .await;
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    let storage = body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|check| check["name"] == "storage")
        .expect("storage check")
        .clone();
    assert_eq!(storage["ok"], false);
}

/// Every status an operation can answer is in the document, and none it cannot: the
/// document is built from each handler's declared codes, so this pins the contract
/// (adding a code to an operation changes this table on purpose).
#[tokio::test]
async fn each_operation_documents_exactly_the_statuses_it_answers() {
    let api = spawn_api().await;
    let (status, spec) = api.get("/openapi.json").await;
    assert_eq!(status, 200);
    let expected: &[(&str, &str, &[&str])] = &[
        ("get", "/healthz", &["200"]),
        ("get", "/readyz", &["200", "503"]),
        (
            "get",
            "/v1/artifacts/{id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/content",
            &["200", "202", "401", "403", "429", "4XX", "5XX"],
        ),
        (
            "post",
            "/v1/pdf",
            &["200", "202", "401", "403", "429", "4XX", "5XX"],
        ),
        (
            "post",
            "/v1/scrape",
            &["200", "202", "401", "403", "429", "4XX", "5XX"],
        ),
        (
            "post",
            "/v1/screenshot",
            &["200", "202", "401", "403", "429", "4XX", "5XX"],
        ),
        (
            "get",
            "/v1/queues",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "put",
            "/v1/queues/{name}",
            &[
                "200", "201", "400", "401", "403", "422", "429", "500", "503",
            ],
        ),
        (
            "get",
            "/v1/queues/{name}",
            &["200", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/queues/{name}/pause",
            &["200", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/queues/{name}/resume",
            &["200", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/tasks",
            &[
                "200", "202", "400", "401", "403", "409", "422", "429", "500", "503",
            ],
        ),
        (
            "get",
            "/v1/tasks",
            &["200", "400", "401", "403", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/tasks/{id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/tasks/{id}/artifacts",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/tasks/{id}/attempts",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/tasks/{id}/cancel",
            &[
                "200", "400", "401", "403", "404", "409", "429", "500", "503",
            ],
        ),
        (
            "post",
            "/v1/tasks/{id}/retry",
            &[
                "200", "400", "401", "403", "404", "409", "429", "500", "503",
            ],
        ),
        (
            "get",
            "/v1/model-settings",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "put",
            "/v1/model-settings",
            &["200", "400", "401", "403", "422", "429", "500", "503"],
        ),
        (
            "delete",
            "/v1/model-settings",
            &["204", "401", "403", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/tasks/{id}/replay",
            &[
                "200", "202", "400", "401", "403", "404", "409", "422", "429", "500", "503",
            ],
        ),
        (
            "get",
            "/v1/tasks/{id}/webhook-deliveries",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/webhook-signing-key",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/webhook-signing-key/rotate",
            &["200", "400", "401", "403", "422", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/webhooks",
            &["201", "400", "401", "403", "422", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/webhooks",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/webhooks/{id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "patch",
            "/v1/webhooks/{id}",
            &[
                "200", "400", "401", "403", "404", "422", "429", "500", "503",
            ],
        ),
        (
            "delete",
            "/v1/webhooks/{id}",
            &["204", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/webhooks/{id}/deliveries",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            &[
                "202", "400", "401", "403", "404", "409", "429", "500", "503",
            ],
        ),
        (
            "post",
            "/v1/webhooks/{id}/rotate-secret",
            &[
                "200", "400", "401", "403", "404", "422", "429", "500", "503",
            ],
        ),
        (
            "post",
            "/v1/api-keys",
            &["201", "400", "401", "403", "422", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/api-keys",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/api-keys/{id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "delete",
            "/v1/api-keys/{id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        ("get", "/v1/me", &["200", "401", "403", "429", "500", "503"]),
        (
            "get",
            "/v1/usage",
            &["200", "400", "401", "403", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/audit-events",
            &["200", "400", "401", "403", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/admin/tenants",
            &[
                "201", "400", "401", "403", "409", "422", "429", "500", "503",
            ],
        ),
        (
            "get",
            "/v1/admin/tenants",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "put",
            "/v1/admin/tenants/{id}/limits",
            &[
                "200", "400", "401", "403", "404", "422", "429", "500", "503",
            ],
        ),
        (
            "get",
            "/v1/tasks/{id}/event-ticket",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/members",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/members/{user_id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "put",
            "/v1/members/{user_id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "delete",
            "/v1/members/{user_id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "post",
            "/v1/invitations",
            &["201", "400", "401", "403", "422", "429", "500", "503"],
        ),
        (
            "get",
            "/v1/invitations",
            &["200", "401", "403", "429", "500", "503"],
        ),
        (
            "delete",
            "/v1/invitations/{id}",
            &["200", "400", "401", "403", "404", "429", "500", "503"],
        ),
        (
            "put",
            "/v1/admin/tenants/{id}/email-domains/{domain}",
            &[
                "200", "400", "401", "403", "404", "422", "429", "500", "503",
            ],
        ),
        (
            "delete",
            "/v1/admin/tenants/{id}/email-domains/{domain}",
            &["200", "401", "403", "404", "422", "429", "500", "503"],
        ),
    ];
    let mut documented = 0;
    for (method, path, statuses) in expected {
        let responses = spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is documented"));
        let mut got: Vec<&str> = responses.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(&got, statuses, "{method} {path}");
        for (status, response) in responses {
            if status.starts_with(['4', '5']) && !status.ends_with("XX") && *path != "/readyz" {
                assert_eq!(
                    response["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path} {status} answers with the error body"
                );
                let description = response["description"].as_str().unwrap_or_default();
                assert!(
                    description.starts_with('`'),
                    "{method} {path} {status} names its codes: {description:?}"
                );
            }
        }
        documented += 1;
    }
    let operations: usize = spec["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|path| path.as_object().expect("operations").len())
        .sum();
    assert_eq!(operations, documented, "every operation is in the table");
}

/// A code the document lists under a status is answered with that status.
#[tokio::test]
async fn a_documented_code_comes_with_its_documented_status() {
    let api = spawn_api().await;
    let (_, spec) = api.get("/openapi.json").await;
    let described = |method: &str, path: &str, status: &str| {
        spec["paths"][path][method]["responses"][status]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (status, body) = api.get("/v1/tasks/not-a-uuid").await;
    assert_eq!(status, 400, "{body}");
    assert!(described("get", "/v1/tasks/{id}", "400").contains("`invalid_parameter`"));
    let (status, body) = api
        .get("/v1/tasks/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("task_not_found"))
    );
    assert!(described("get", "/v1/tasks/{id}", "404").contains("`task_not_found`"));
    let (status, body) = api.get("/v1/queues/nobody-made-this").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("queue_not_found"))
    );
    assert!(described("get", "/v1/queues/{name}", "404").contains("`queue_not_found`"));
}
