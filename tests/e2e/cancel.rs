//! Cancelling a running task: the worker hears of it at once (pushed on the event bus,
//! not at its next lease renewal), Chromium stops the page, the task ends `cancelled`
//! with its events, and its webhook is delivered.

use std::time::{Duration, Instant};

use operator_domain::webhooks::SigningSecret;
use operator_testkit::WebhookReceiver;
use serde_json::{Value, json};

use crate::TASK_DEADLINE;
use crate::helpers::{PageServer, TestApp};

/// The bound: a running task is `cancelled` at most this long after the
/// client's request was answered. The lease renewal alone would take a third of the
/// lease (10 s by default).
const CANCEL_LATENCY: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_within_a_second_embedded() {
    a_running_task_is_cancelled_within_a_second(TestApp::embedded().await).await;
}

/// The API and the worker are separate instances: the request crosses Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_within_a_second_distributed() {
    a_running_task_is_cancelled_within_a_second(TestApp::distributed().await).await;
}

async fn a_running_task_is_cancelled_within_a_second(app: TestApp) {
    let pages = PageServer::start().await;
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let (_, signing) = app.get("/v1/webhook-signing-key").await;
    let secret = SigningSecret::parse(signing["secret"].as_str().expect("secret")).expect("whsec");
    // The page asks for `/tick` every 50 ms while it is open; the script waits 20 s.
    let (status, task) = app
        .submit(&json!({
            "kind": "script",
            "input": {"url": pages.url("ticking"), "steps": [{"action": "wait_for", "delay_ms": 20000}]},
            "timeout_ms": 60000,
            "webhook_url": receiver.url,
        }))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + TASK_DEADLINE;
    while pages.hits("tick") < 3 {
        assert!(Instant::now() < deadline, "the page never ticked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, asked) = app.post(&format!("/v1/tasks/{id}/cancel")).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{asked}");
    assert_eq!(asked["state"], "running", "{asked}");
    assert_eq!(asked["cancel_requested"], true, "{asked}");
    let cancelled = loop {
        let (_, now) = app.get(&format!("/v1/tasks/{id}")).await;
        if now["state"] != "running" {
            break now;
        }
        assert!(
            answered.elapsed() < 2 * CANCEL_LATENCY,
            "still running {:?} after the cancel: {now}",
            answered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let latency = answered.elapsed();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"]["code"], "cancelled", "{cancelled}");
    assert!(latency <= CANCEL_LATENCY, "cancelled after {latency:?}");

    // Chromium closed the page within the same bound: from a second after the cancel,
    // 500 ms of a running page would be ten more ticks; one may have been on its way.
    tokio::time::sleep(CANCEL_LATENCY.saturating_sub(answered.elapsed())).await;
    let ticks = pages.hits("tick");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pages.hits("tick") <= ticks + 1,
        "the page kept running: {ticks} ticks, then {}",
        pages.hits("tick")
    );

    let history = app.events(&id).await;
    let kinds: Vec<String> = history
        .iter()
        .filter(|event| event.event.as_deref() != Some("log"))
        .map(|event| {
            let kind = event.event.clone().unwrap_or_default();
            match event.data["data"]["state"].as_str() {
                Some(state) => format!("{kind}:{state}"),
                None => kind,
            }
        })
        .collect();
    assert_eq!(
        kinds,
        // `step`: the page opened; the wait never finished.
        [
            "created:queued",
            "state:running",
            "step",
            "cancel_requested",
            "state:cancelled"
        ],
        "{history:?}"
    );

    let requests = receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    let request = &requests[0];
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .parse()
        .expect("timestamp");
    assert!(secret.verify(
        request.header("webhook-signature"),
        request.header("webhook-id"),
        timestamp,
        &request.body,
    ));
    let body: Value = serde_json::from_slice(&request.body).expect("JSON");
    assert_eq!(body["type"], "task.cancelled", "{body}");
    assert_eq!(body["data"]["task"]["id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["task"]["state"], "cancelled", "{body}");

    // The browser serves the next task.
    let next = app
        .run(&json!({"kind": "screenshot", "input": {"url": pages.url("next")}}))
        .await;
    assert_eq!(next["state"], "succeeded", "{next}");
    app.shutdown().await;
}
