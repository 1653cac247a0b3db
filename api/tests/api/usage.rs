//! Monthly quotas through the API: a tenant past its quota of tasks or browser time gets
//! `429 quota_exceeded` with `Retry-After` until the next month, nothing is created, and
//! `GET /v1/usage` shows the counts against the quotas.

use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use operator_domain::auth::Role;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{LeaseToken, TaskId, TaskOutcome};
use operator_store::db::{FinishOutcome, StartOutcome};
use operator_testkit::{ApiClient, read_json};
use serde_json::{Value, json};

use crate::helpers::{TestApi, spawn_api};

/// Seconds from now to the first instant of next month (UTC).
fn seconds_to_next_month() -> i64 {
    let now = Utc::now();
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let next = Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .expect("a date");
    (next - now).num_seconds()
}

async fn submit(client: &ApiClient, path: &str) -> (u16, Option<i64>, Value) {
    let body = if path == "/v1/tasks" {
        json!({"kind": "pdf", "input": {"url": "https://example.com"}})
    } else {
        json!({"url": "https://example.com"})
    };
    let response = client
        .http
        .post(format!("{}{path}", client.base))
        .json(&body)
        .send()
        .await
        .expect("submit");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let (status, body) = read_json(response).await;
    (status, retry_after, body)
}

async fn set_limits(admin: &ApiClient, tenant: &str, limits: Value) {
    let (status, body) = admin
        .put(&format!("/v1/admin/tenants/{tenant}/limits"), &limits)
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Runs a stored task for about `ms` under a worker's lease and fails it, as a worker
/// would.
async fn run_and_fail(api: &TestApi, id: &str, ms: u64) {
    let id = TaskId::from(uuid::Uuid::parse_str(id).expect("id"));
    let token = LeaseToken::new();
    let lease = Utc::now() + chrono::Duration::seconds(30);
    assert!(matches!(
        api.repo
            .start_attempt(id, token, "worker", lease)
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let failed = TaskOutcome::Failed {
        error: CodedError::new(ErrorCode::NavigationFailed, "refused"),
    };
    assert!(matches!(
        api.repo.finish(id, token, failed).await.expect("finish"),
        FinishOutcome::Recorded(_)
    ));
}

fn assert_quota_refusal(answer: &(u16, Option<i64>, Value), what: &str) {
    let (status, retry_after, body) = answer;
    assert_eq!(
        (*status, body["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap_or_default().contains(what),
        "{body}"
    );
    let expected = seconds_to_next_month();
    let retry_after = retry_after.expect("Retry-After");
    assert!(
        (expected - 5..=expected + 1).contains(&retry_after),
        "Retry-After is the time to next month, {expected} s: {retry_after}"
    );
}

#[tokio::test]
async fn past_a_monthly_quota_a_tenant_gets_429_until_next_month_and_sees_its_usage() {
    let api = spawn_api().await;
    let admin = api.platform_admin().await;
    let (status, created) = admin
        .post_json("/v1/admin/tenants", &json!({"id": "metered"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let owner = ApiClient::with_key(
        api.url.clone(),
        created["owner_key"]["key"].as_str().expect("key"),
    );
    set_limits(&admin, "metered", json!({"monthly_tasks": 2})).await;

    let (status, _, first) = submit(&owner, "/v1/tasks").await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(submit(&owner, "/v1/tasks").await.0, 202);
    assert_quota_refusal(&submit(&owner, "/v1/tasks").await, "2 tasks");
    assert_quota_refusal(&submit(&owner, "/v1/screenshot").await, "2 tasks");
    let (_, listed) = owner.get("/v1/tasks").await;
    assert_eq!(
        listed["items"].as_array().expect("items").len(),
        2,
        "a refused submission created nothing"
    );
    // Another tenant counts alone.
    assert_eq!(submit(&api, "/v1/tasks").await.0, 202);

    let viewer = api.client_for("metered", Role::Viewer).await;
    let (status, usage) = viewer.get("/v1/usage").await;
    assert_eq!(status, 200, "a viewer reads the usage: {usage}");
    let period = format!("{:04}-{:02}", Utc::now().year(), Utc::now().month());
    assert_eq!(usage["tenant"], "metered");
    assert_eq!(usage["period"], period.as_str());
    assert_eq!(
        usage["tasks"],
        json!({"used": 2, "limit": 2, "remaining": 0})
    );
    assert_eq!(usage["browser_seconds"]["used"], 0.0);
    assert_eq!(usage["browser_seconds"]["limit"], Value::Null);
    let no_model = json!({"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0.0});
    assert_eq!(usage["model"], no_model);
    assert_eq!(
        usage["history"],
        json!([{"period": period, "tasks": 2, "browser_seconds": 0.0, "model": no_model}])
    );
    let (status, earlier) = viewer.get("/v1/usage?period=2020-01").await;
    assert_eq!(status, 200);
    assert_eq!(earlier["tasks"]["used"], 0);
    assert_eq!(earlier["period_start"], "2020-01-01T00:00:00+00:00");
    assert_eq!(earlier["period_end"], "2020-02-01T00:00:00+00:00");
    let (status, body) = viewer.get("/v1/usage?period=2020-13").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (_, default_usage) = api.get("/v1/usage").await;
    assert_eq!(default_usage["tasks"]["used"], 1, "{default_usage}");

    // Browser time: an attempt of ~1.2 s uses up a quota of 1 s.
    let id = first["id"].as_str().expect("id").to_owned();
    run_and_fail(&api, &id, 1_200).await;
    set_limits(
        &admin,
        "metered",
        json!({"monthly_tasks": null, "monthly_browser_seconds": 1}),
    )
    .await;
    let (_, usage) = owner.get("/v1/usage").await;
    let used = usage["browser_seconds"]["used"].as_f64().expect("seconds");
    assert!((1.2..5.0).contains(&used), "{usage}");
    assert_eq!(usage["browser_seconds"]["remaining"], 0.0);
    assert_eq!(usage["tasks"]["limit"], Value::Null);
    assert_quota_refusal(&submit(&owner, "/v1/tasks").await, "browser seconds");
    let response = owner
        .http
        .post(format!("{}/v1/tasks/{id}/retry", owner.base))
        .send()
        .await
        .expect("retry");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let (status, body) = read_json(response).await;
    assert_quota_refusal(&(status, retry_after, body), "browser seconds");

    // A raised quota admits again.
    set_limits(&admin, "metered", json!({"monthly_browser_seconds": 3600})).await;
    assert_eq!(submit(&owner, "/v1/tasks").await.0, 202);
    let (status, body) = owner.post(&format!("/v1/tasks/{id}/retry")).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("queued")));
    let (_, usage) = owner.get("/v1/usage").await;
    assert_eq!(usage["tasks"]["used"], 3, "a retry is not a new task");
}

#[tokio::test]
async fn the_settings_give_every_tenant_a_quota_its_own_limits_override() {
    let api = crate::helpers::spawn_api_with(|settings| {
        settings.limits.monthly_tasks = Some(1);
    })
    .await;
    assert_eq!(submit(&api, "/v1/tasks").await.0, 202);
    assert_quota_refusal(&submit(&api, "/v1/tasks").await, "1 tasks");
    let other = api.client_for("tenant-b", Role::Member).await;
    assert_eq!(submit(&other, "/v1/tasks").await.0, 202, "its own month");
    let admin = api.platform_admin().await;
    set_limits(&admin, "default", json!({"monthly_tasks": 3})).await;
    assert_eq!(submit(&api, "/v1/tasks").await.0, 202);
    let (_, usage) = api.get("/v1/usage").await;
    assert_eq!(
        usage["tasks"],
        json!({"used": 2, "limit": 3, "remaining": 1})
    );
}
