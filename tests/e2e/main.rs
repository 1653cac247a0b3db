//! End to end: the real application over HTTP, real Chromium, pages served on loopback.
//! Each scenario runs on the embedded defaults and on the distributed setup (separate
//! API and worker instances on PostgreSQL, Redis and S3); `processes` runs the binary
//! itself as separate OS processes.

mod agent;
mod cancel;
mod events;
mod fault_pages;
mod helpers;
mod keys;
mod model_server;
mod network_guard;
mod oneshot;
mod pool;
mod processes;
mod redis_faults;
mod steps;
mod tenants;
mod webhooks;

use std::time::Duration;

use fault_pages::FaultPages;
use helpers::{PAGE_RGB, PageServer, TestApp, decode_png, pdf_page_count};
use serde_json::{Value, json};

const TASK_DEADLINE: Duration = Duration::from_secs(90);

async fn first_artifact(app: &TestApp, task: &Value) -> (Value, String, Vec<u8>) {
    let artifact = task["artifacts"][0].clone();
    assert!(artifact.is_object(), "the task lists its artifact: {task}");
    let (content_type, bytes) = app.download(artifact["url"].as_str().expect("url")).await;
    assert_eq!(
        artifact["size_bytes"],
        bytes.len(),
        "recorded size matches the download"
    );
    (artifact, content_type, bytes)
}

/// Screenshot, full-page screenshot and PDF, submitted together.
async fn renders_screenshots_and_pdfs(app: TestApp) {
    let pages = PageServer::start().await;
    let (status, screenshot) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("home"), "viewport": {"width": 640, "height": 480}}}))
        .await;
    assert_eq!(status, 202, "{screenshot}");
    assert_eq!(screenshot["state"], "queued");
    let (_, full_page) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("tall"), "viewport": {"width": 400, "height": 300}, "full_page": true}}))
        .await;
    let (_, pdf) = app
        .submit(&json!({"kind": "pdf", "input": {"url": pages.url("tall-doc"), "format": "Letter", "margin": {"top": "1cm", "bottom": "1cm"}}}))
        .await;

    let done = app
        .wait_for(
            screenshot["id"].as_str().expect("id"),
            &["succeeded", "failed", "dead", "timed_out"],
            TASK_DEADLINE,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["page"]["title"], "page home");
    let (artifact, content_type, bytes) = first_artifact(&app, &done).await;
    assert_eq!(content_type, "image/png");
    assert_eq!(artifact["name"], "screenshot.png");
    let (width, height, pixel) = decode_png(&bytes, 320, 400);
    assert_eq!((width, height), (640, 480), "the requested viewport");
    assert_eq!(pixel, PAGE_RGB, "the page itself was captured");

    let done = app
        .wait_for(
            full_page["id"].as_str().expect("id"),
            &["succeeded", "failed", "dead", "timed_out"],
            TASK_DEADLINE,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, _, bytes) = first_artifact(&app, &done).await;
    let (width, height, _) = decode_png(&bytes, 0, 0);
    assert_eq!(width, 400);
    assert!(height > 4000, "the whole page, not the viewport: {height}");

    let done = app
        .wait_for(
            pdf["id"].as_str().expect("id"),
            &["succeeded", "failed", "dead", "timed_out"],
            TASK_DEADLINE,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (artifact, content_type, bytes) = first_artifact(&app, &done).await;
    assert_eq!(content_type, "application/pdf");
    assert_eq!(artifact["name"], "document.pdf");
    assert!(bytes.starts_with(b"%PDF-"), "a PDF");
    assert!(
        pdf_page_count(&bytes) >= 2,
        "a 4000 px page spans several Letter pages"
    );

    let (status, listed) = app
        .get(&format!(
            "/v1/tasks/{}/artifacts",
            done["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["name"].as_str())
        .collect();
    assert_eq!(names, ["document.pdf", "network.json", "console.json"]);
    app.shutdown().await;
}

/// A cancelled task never runs: scheduled a few seconds out, cancelled, then watched
/// past its start time.
async fn a_cancelled_queued_task_never_runs(app: TestApp) {
    let pages = PageServer::start().await;
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (status, task) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("never")}, "run_at": run_at.to_rfc3339()}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id");
    let (status, cancelled) = app.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    // A task submitted after it runs, which proves the worker was up and claiming.
    let (_, later) = app.submit(&json!({"kind": "screenshot", "input": {"url": pages.url("after")}, "run_at": (run_at + chrono::Duration::seconds(1)).to_rfc3339()})).await;
    let done = app
        .wait_for(
            later["id"].as_str().expect("id"),
            &["succeeded"],
            TASK_DEADLINE,
        )
        .await;
    assert_eq!(done["state"], "succeeded");
    let (_, task) = app.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "cancelled");
    assert!(task.get("started_at").is_none(), "never started: {task}");
    let (_, attempts) = app.get(&format!("/v1/tasks/{id}/attempts")).await;
    assert_eq!(attempts["items"], json!([]));
    assert_eq!(pages.hits("never"), 0, "the browser never opened it");
    assert_eq!(pages.hits("after"), 1);
    app.shutdown().await;
}

fn timestamp(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("a timestamp: {value}"))
}

/// A page that fails twice: retried with backoff until it loads. With too few attempts
/// the task ends `dead`, and a re-drive runs it to success. A delayed task starts
/// within a second of its time when a worker is free.
async fn retries_back_off_dead_tasks_redrive_and_delays_are_kept(app: TestApp) {
    let pages = FaultPages::start(Duration::ZERO, 2).await;
    let (_, patient) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("flaky", "patient")}, "max_attempts": 3}))
        .await;
    let (_, hasty) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("flaky", "hasty")}, "max_attempts": 2}))
        .await;
    let patient_id = patient["id"].as_str().expect("id");
    let done = app
        .wait_for(patient_id, &["succeeded", "dead", "failed"], TASK_DEADLINE)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, attempts) = app.get(&format!("/v1/tasks/{patient_id}/attempts")).await;
    let items = attempts["items"].as_array().expect("items");
    let outcomes: Vec<_> = items
        .iter()
        .map(|attempt| attempt["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![json!("retrying"), json!("retrying"), json!("succeeded")]
    );
    assert_eq!(items[0]["error"]["code"], "navigation_failed");
    // Backoff: base 200 ms doubling, capped at 1 s (test settings), full jitter. Each
    // retry's `state` event says when it is due: within the backoff's ceiling of the
    // failure, and the next attempt starts neither before it nor long after.
    let history = app.events(patient_id).await;
    let due: Vec<chrono::DateTime<chrono::Utc>> = history
        .iter()
        .filter(|event| {
            event.data["data"]["state"] == "queued" && event.event.as_deref() == Some("state")
        })
        .map(|event| timestamp(&event.data["data"]["run_at"]))
        .collect();
    assert_eq!(due.len(), 2, "one due time per retry: {history:?}");
    for (retry, (pair, due)) in items.windows(2).zip(&due).enumerate() {
        let failed_at = timestamp(&pair[0]["finished_at"]);
        let started_at = timestamp(&pair[1]["started_at"]);
        let ceiling = chrono::Duration::milliseconds(200 << retry);
        // The worker picks the due time just before the finish is stamped, and full
        // jitter may pick a delay of almost nothing: a few milliseconds early is the
        // same moment.
        let stamped_after = chrono::Duration::milliseconds(50);
        assert!(
            *due >= failed_at - stamped_after && *due - failed_at <= ceiling,
            "retry {retry} due {} after the failure, ceiling {ceiling}",
            *due - failed_at
        );
        let late_by = started_at - *due;
        assert!(
            late_by >= chrono::Duration::zero() && late_by < chrono::Duration::seconds(2),
            "retry {retry} started {late_by} after it was due"
        );
    }
    assert_eq!(pages.hits("flaky", "patient"), 3, "one load per attempt");

    let hasty_id = hasty["id"].as_str().expect("id");
    let dead = app
        .wait_for(hasty_id, &["succeeded", "dead", "failed"], TASK_DEADLINE)
        .await;
    assert_eq!(dead["state"], "dead", "{dead}");
    assert_eq!(dead["error"]["code"], "navigation_failed");
    let (status, redriven) = app
        .post(&format!("/v1/tasks/{hasty_id}/retry?attempts=1"))
        .await;
    assert_eq!(status, 200, "{redriven}");
    let done = app
        .wait_for(hasty_id, &["succeeded", "dead", "failed"], TASK_DEADLINE)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 3);
    assert_eq!(pages.hits("flaky", "hasty"), 3);

    // With the workers idle, a delayed task starts within a second of its time.
    let (_, delayed) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("flaky", "delayed-but-fine")}, "delay": "2s"}))
        .await;
    let delayed_id = delayed["id"].as_str().expect("id");
    let done = app
        .wait_for(delayed_id, &["succeeded", "dead", "failed"], TASK_DEADLINE)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, attempts) = app.get(&format!("/v1/tasks/{delayed_id}/attempts")).await;
    let late_by = timestamp(&attempts["items"][0]["started_at"]) - timestamp(&delayed["run_at"]);
    assert!(
        late_by >= chrono::Duration::zero() && late_by < chrono::Duration::seconds(1),
        "a delayed task starts within 1 s of its time, not {late_by} after"
    );
    app.shutdown().await;
}

/// A worker on the default settings (`worker.queues = *`) serves a queue created while
/// it runs, within the queue list's refresh and one claim wait.
async fn a_queue_created_while_the_worker_runs_is_served(app: TestApp) {
    let pages = PageServer::start().await;
    // The worker runs on the queue list it started with: it has served a task.
    let first = app
        .run(&json!({"kind": "screenshot", "input": {"url": pages.url("first"), "viewport": {"width": 320, "height": 200}}}))
        .await;
    assert_eq!(first["state"], "succeeded", "{first}");
    let (status, created) = app.put("/v1/queues/latecomer", &json!({})).await;
    assert_eq!(status, 201, "{created}");
    let done = app
        .run(&json!({"kind": "screenshot", "queue": "latecomer", "input": {"url": pages.url("latecomer"), "viewport": {"width": 320, "height": 200}}}))
        .await;
    assert_eq!(
        (&done["state"], &done["queue"]),
        (&json!("succeeded"), &json!("latecomer")),
        "{done}"
    );
    let created_at: chrono::DateTime<chrono::Utc> = done["created_at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .expect("created_at");
    let started_at: chrono::DateTime<chrono::Utc> = done["started_at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .expect("started_at");
    assert!(
        started_at - created_at < chrono::Duration::seconds(10),
        "started {} after it was submitted",
        started_at - created_at
    );
    app.shutdown().await;
}

mod embedded {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_created_while_the_worker_runs_is_served() {
        super::a_queue_created_while_the_worker_runs_is_served(TestApp::embedded().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_back_off_dead_tasks_redrive_and_delays_are_kept() {
        super::retries_back_off_dead_tasks_redrive_and_delays_are_kept(TestApp::embedded().await)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renders_screenshots_and_pdfs() {
        super::renders_screenshots_and_pdfs(TestApp::embedded().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_queued_task_never_runs() {
        super::a_cancelled_queued_task_never_runs(TestApp::embedded().await).await;
    }
}

mod distributed {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_created_while_the_worker_runs_is_served() {
        super::a_queue_created_while_the_worker_runs_is_served(TestApp::distributed().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_back_off_dead_tasks_redrive_and_delays_are_kept() {
        super::retries_back_off_dead_tasks_redrive_and_delays_are_kept(
            TestApp::distributed().await,
        )
        .await;
    }

    /// Redis is only the dispatch path: when it loses the queue, the scheduler puts
    /// back every task the database says is queued, and they all run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_survive_the_queue_losing_its_data() {
        let app = TestApp::distributed().await;
        let pages = PageServer::start().await;
        let run_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        let mut ids = Vec::new();
        for index in 0..10 {
            let (status, task) = app
                .submit(&json!({"kind": "screenshot", "input": {"url": pages.url(&format!("lost-{index}")), "viewport": {"width": 320, "height": 240}}, "run_at": run_at}))
                .await;
            assert_eq!(status, 202, "{task}");
            ids.push(task["id"].as_str().expect("id").to_owned());
        }
        app.lose_queue_data().await;
        for id in &ids {
            let done = app
                .wait_for(id, &["succeeded", "failed", "dead"], TASK_DEADLINE)
                .await;
            assert_eq!(done["state"], "succeeded", "{done}");
            assert_eq!(done["attempts"], 1, "run once, not twice: {done}");
        }
        for index in 0..10 {
            assert_eq!(
                pages.hits(&format!("lost-{index}")),
                1,
                "each page opened exactly once"
            );
        }
        app.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renders_screenshots_and_pdfs() {
        super::renders_screenshots_and_pdfs(TestApp::distributed().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_queued_task_never_runs() {
        super::a_cancelled_queued_task_never_runs(TestApp::distributed().await).await;
    }
}
