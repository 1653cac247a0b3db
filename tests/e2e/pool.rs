//! The browser pool heals itself: a browser killed mid-task is replaced, the task's
//! attempt fails with a retryable error and the retry succeeds; a browser is recycled
//! after its quota of tasks or above its memory limit. Each test looks only at its own
//! browsers (they carry its [`BrowserMarker`]), so Chromium run by other tests or other
//! users of the machine is never counted or touched.

use std::time::Duration;

use serde_json::json;

use crate::TASK_DEADLINE;
use crate::helpers::{BrowserMarker, PageServer, TestApp};

/// Submits a screenshot of the page server's `path` and waits for the task to end.
async fn screenshot(app: &TestApp, pages: &PageServer, path: &str) -> serde_json::Value {
    app.run(&json!({"kind": "screenshot", "input": {"url": pages.url(path)}}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_killed_mid_task_is_replaced_and_the_task_retried() {
    let marker = BrowserMarker::new();
    let app = TestApp::embedded_with(|settings| marker.mark(settings)).await;
    let pages = PageServer::start().await;
    let browsers = marker.browsers();
    assert_eq!(browsers.len(), 1, "one warm browser: {browsers:?}");
    let (status, task) = app
        .submit(&json!({"kind": "script", "max_attempts": 3, "input": {"url": pages.url("home"), "steps": [
            {"action": "wait_for", "delay_ms": 2500, "timeout_ms": 5000},
            {"action": "extract", "name": "title", "selector": "#title"}
        ]}}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id");
    // Kill the browser while the first attempt waits in its delay step.
    app.wait_for(id, &["running"], TASK_DEADLINE).await;
    loop {
        if pages.hits("home") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &browsers[0].to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    let done = app
        .wait_for(
            id,
            &["succeeded", "failed", "dead", "timed_out"],
            TASK_DEADLINE,
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["result"]["data"]["title"], "Page home");
    let (_, attempts) = app.get(&format!("/v1/tasks/{id}/attempts")).await;
    assert_eq!(attempts["items"][0]["outcome"], "retrying", "{attempts}");
    assert_eq!(
        attempts["items"][0]["error"]["code"], "browser_crashed",
        "{attempts}"
    );

    let replacement = marker.browsers();
    assert_eq!(replacement.len(), 1, "{replacement:?}");
    assert_ne!(replacement[0], browsers[0], "a new browser");
    // The pool is healthy: the next task runs at once on the new browser.
    let next = screenshot(&app, &pages, "after").await;
    assert_eq!(next["state"], "succeeded", "{next}");
    assert_eq!(next["attempts"], 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_is_recycled_after_its_quota_of_tasks() {
    let marker = BrowserMarker::new();
    let app = TestApp::embedded_with(|settings| {
        marker.mark(settings);
        settings.browser.recycle_after = 2;
    })
    .await;
    let pages = PageServer::start().await;
    let first = marker.browsers();
    assert_eq!(first.len(), 1);
    for index in 0..3 {
        let done = screenshot(&app, &pages, &format!("r{index}")).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    // The warm-up counts as the first browser's first use, so the second task already
    // gets a new one; each replaced browser's processes end with its last task.
    let now = marker.browsers();
    assert_eq!(
        now.len(),
        1,
        "the recycled browser's processes are gone: {now:?}"
    );
    assert_ne!(now[0], first[0], "recycled");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_above_its_memory_limit_is_recycled() {
    // Every browser holds more than 1 MiB, so each is measured over the limit once it has
    // served a task (the warm-up counts as one), and the next task gets a new browser.
    let marker = BrowserMarker::new();
    let app = TestApp::embedded_with(|settings| {
        marker.mark(settings);
        settings.browser.recycle_above_mb = 1;
    })
    .await;
    let pages = PageServer::start().await;
    let mut previous = marker.browsers();
    assert_eq!(previous.len(), 1);
    for index in 0..2 {
        let done = screenshot(&app, &pages, &format!("m{index}")).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "{done}");
        // The replaced browser goes with its last user (its spare-page refill may still
        // hold it for a moment).
        let mut now = marker.browsers();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while now.len() > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = marker.browsers();
        }
        assert_eq!(
            now.len(),
            1,
            "the replaced browser's processes are gone: {now:?}"
        );
        assert_ne!(now[0], previous[0], "task {index} ran on a new browser");
        previous = now;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spread_over_the_browsers_and_a_crash_takes_down_only_its_own() {
    let marker = BrowserMarker::new();
    let app = TestApp::embedded_with(|settings| {
        marker.mark(settings);
        settings.browser.browsers = 2;
        settings.worker.concurrency = 2;
    })
    .await;
    let pages = PageServer::start().await;
    let browsers = marker.browsers();
    assert_eq!(browsers.len(), 2, "two warm browsers: {browsers:?}");
    // Two tasks at once, each waiting in a delay step: one on each browser.
    let mut ids = Vec::new();
    for name in ["left", "right"] {
        let (status, task) = app
            .submit(&json!({"kind": "script", "max_attempts": 3, "input": {"url": pages.url(name), "steps": [
                {"action": "wait_for", "delay_ms": 3000, "timeout_ms": 6000}
            ]}}))
            .await;
        assert_eq!(status, 202, "{task}");
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let deadline = std::time::Instant::now() + TASK_DEADLINE;
    while pages.hits("left") == 0 || pages.hits("right") == 0 {
        assert!(std::time::Instant::now() < deadline, "both tasks started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &browsers[0].to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    let mut attempts = Vec::new();
    for id in &ids {
        let done = app
            .wait_for(
                id,
                &["succeeded", "failed", "dead", "timed_out"],
                TASK_DEADLINE,
            )
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
        attempts.push(done["attempts"].as_u64().expect("attempts"));
    }
    attempts.sort_unstable();
    assert_eq!(
        attempts,
        [1, 2],
        "the killed browser's task was retried, the other browser's task was not"
    );
    let now = marker.browsers();
    assert_eq!(now.len(), 2, "the killed browser was replaced: {now:?}");
    assert!(now.contains(&browsers[1]), "the other browser lives on");
    app.shutdown().await;
}
