//! Tenants through the API, with a real worker: a tenant at its own running cap waits
//! while another tenant's tasks run; a tenant's browser time is counted and its
//! monthly quota refuses more.

use std::time::Duration;

use chrono::{DateTime, Utc};
use operator_testkit::ApiClient;
use serde_json::{Value, json};

use crate::TASK_DEADLINE;
use crate::fault_pages::FaultPages;
use crate::helpers::{ENDED, TestApp};

/// A new tenant, made by the platform admin; a client with its first owner key.
async fn tenant(app: &TestApp, admin: &ApiClient, id: &str) -> ApiClient {
    let (status, created) = admin
        .post_json("/v1/admin/tenants", &json!({"id": id, "name": id}))
        .await;
    assert_eq!(status, 201, "{created}");
    ApiClient::with_key(
        app.base.clone(),
        created["owner_key"]["key"].as_str().expect("key"),
    )
}

/// When each attempt of a task ran.
async fn ran(client: &ApiClient, id: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    let (_, attempts) = client.get(&format!("/v1/tasks/{id}/attempts")).await;
    let attempt = &attempts["items"][0];
    let at = |name: &str| -> DateTime<Utc> {
        attempt[name]
            .as_str()
            .and_then(|at| at.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {attempts}"))
    };
    (at("started_at"), at("finished_at"))
}

/// The most attempts of `spans` that ran at the same moment.
fn most_at_once(spans: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(other_start, other_end)| other_start <= start && start < other_end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// `capped` may run one task at a time (its own cap, set by the platform admin);
/// `roomy` has the setting's none. Three slow tasks of each, on a worker with room for
/// four: `capped`'s run one after another, `roomy`'s side by side, and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_running_cap_waits_while_another_tenant_runs() {
    let app = TestApp::distributed_with(|settings| settings.worker.concurrency = 4).await;
    let admin = app.platform_admin().await;
    let capped = tenant(&app, &admin, "capped").await;
    let roomy = tenant(&app, &admin, "roomy").await;
    let (status, limits) = admin
        .put(
            "/v1/admin/tenants/capped/limits",
            &json!({"running_tasks_per_queue": 1}),
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    let pages = FaultPages::start(Duration::from_millis(1500), 0).await;
    let mut submitted: Vec<(&ApiClient, String)> = Vec::new();
    for index in 0..3 {
        for (name, client) in [("capped", &capped), ("roomy", &roomy)] {
            let (status, task) = client
                .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", &format!("{name}-{index}")), "viewport": {"width": 320, "height": 200}}}))
                .await;
            assert_eq!(status, 202, "{task}");
            submitted.push((client, task["id"].as_str().expect("id").to_owned()));
        }
    }
    for (client, id) in &submitted {
        let done: Value = client.wait_for(id, &ENDED, TASK_DEADLINE).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let mut capped_spans = Vec::new();
    let mut roomy_spans = Vec::new();
    for (client, id) in &submitted {
        let span = ran(client, id).await;
        if std::ptr::eq(*client, &capped) {
            capped_spans.push(span);
        } else {
            roomy_spans.push(span);
        }
    }
    assert_eq!(
        most_at_once(&capped_spans),
        1,
        "capped ran one at a time: {capped_spans:?}"
    );
    assert!(
        most_at_once(&roomy_spans) >= 2,
        "roomy ran side by side meanwhile: {roomy_spans:?}"
    );
    // Each tenant sees only its own tasks.
    let (_, listed) = capped.get("/v1/tasks").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    app.shutdown().await;
}

/// A tenant's browser time is what its attempts ran, to the millisecond, and its
/// monthly quota of it refuses more work once used up: two slow tasks with a quota of
/// 2 s run (the first leaves room), and the third submission is `429 quota_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_browser_time_is_counted_and_its_quota_refuses_more() {
    let app = TestApp::distributed().await;
    let admin = app.platform_admin().await;
    let timed = tenant(&app, &admin, "timed").await;
    let (status, limits) = admin
        .put(
            "/v1/admin/tenants/timed/limits",
            &json!({"monthly_browser_seconds": 2}),
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    let pages = FaultPages::start(Duration::from_millis(1200), 0).await;
    let mut spans = Vec::new();
    for index in 0..2 {
        let (status, task) = timed
            .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", &format!("timed-{index}")), "viewport": {"width": 320, "height": 200}}}))
            .await;
        assert_eq!(status, 202, "task {index} is admitted: {task}");
        let id = task["id"].as_str().expect("id").to_owned();
        let done: Value = timed.wait_for(&id, &ENDED, TASK_DEADLINE).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        spans.push(ran(&timed, &id).await);
    }
    let ran_ms: i64 = spans
        .iter()
        .map(|(start, end)| (*end - *start).num_milliseconds())
        .sum();
    let (_, usage) = timed.get("/v1/usage").await;
    let used = usage["browser_seconds"]["used"].as_f64().expect("used");
    assert!(
        ((used * 1000.0).round() as i64 - ran_ms).abs() <= 2,
        "the usage is the attempts' time, {ran_ms} ms: {usage}"
    );
    assert!(used > 2.4, "two slow pages: {usage}");
    assert_eq!(usage["tasks"]["used"], 2);
    let (status, refused) = timed
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", "timed-2")}}))
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{refused}"
    );
    let (_, listed) = timed.get("/v1/tasks").await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    app.shutdown().await;
}
