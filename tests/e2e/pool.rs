//! The browser pool heals itself: a browser killed mid-task is replaced, the task's
//! attempt fails with a retryable error and the retry succeeds; a browser is recycled
//! after its quota of tasks or above its memory limit. Each test looks only at its own
//! browsers (they carry its [`BrowserMarker`]), so Chromium run by other tests or other
//! users of the machine is never counted or touched.

use std::time::Duration;

use serde_json::json;

use crate::TASK_DEADLINE;
use crate::helpers::{BrowserMarker, PageServer, Setup, TestApp};

/// Submits a screenshot of the page server's `path` and waits for the task to end.
async fn screenshot(app: &TestApp, pages: &PageServer, path: &str) -> serde_json::Value {
    app.run(&json!({"kind": "screenshot", "input": {"url": pages.url(path)}}))
        .await
}

/// Waits until the script task `id` has opened its page (its progress lists the `open`
/// step): it is in its delay step now.
async fn wait_until_opened(app: &TestApp, id: &str) {
    let deadline = std::time::Instant::now() + TASK_DEADLINE;
    loop {
        let (_, task) = app.get(&format!("/v1/tasks/{id}")).await;
        if task["progress"]["steps"][0]["action"] == "open" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the task never opened its page: {task}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one live browser of `marker`, once a replaced one's processes are gone (its
/// spare-page refill may hold it for a moment after its last task).
async fn the_live_browser(marker: &BrowserMarker) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = marker.browsers();
        if now.len() == 1 {
            return now[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "one live browser, not {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_browser_killed_mid_task_is_replaced_and_the_task_retried(setup: Setup) {
    let marker = BrowserMarker::new();
    let app = setup.start(|settings| marker.mark(settings)).await;
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
    wait_until_opened(&app, id).await;
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

async fn a_browser_is_recycled_after_its_quota_of_tasks(setup: Setup) {
    let marker = BrowserMarker::new();
    let app = setup
        .start(|settings| {
            marker.mark(settings);
            settings.browser.recycle_after = 2;
        })
        .await;
    let pages = PageServer::start().await;
    let mut served_by = vec![the_live_browser(&marker).await];
    for index in 0..4 {
        let done = screenshot(&app, &pages, &format!("r{index}")).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        served_by.push(the_live_browser(&marker).await);
    }
    // The warm-up counts as the first browser's first use, so the first task is its
    // second and the next task gets a new browser, which then serves two tasks: not
    // one browser per task, and not one for all.
    let [warm, first, second, third, fourth] = served_by[..] else {
        panic!("{served_by:?}");
    };
    assert_eq!(first, warm, "the warm browser's quota: {served_by:?}");
    assert_ne!(second, first, "recycled after two uses: {served_by:?}");
    assert_eq!(third, second, "the new browser serves twice: {served_by:?}");
    assert_ne!(fourth, third, "and is recycled in turn: {served_by:?}");
    app.shutdown().await;
}

async fn a_browser_above_its_memory_limit_is_recycled(setup: Setup) {
    // Every browser holds more than 1 MiB, so each is measured over the limit once it has
    // served a task (the warm-up counts as one), and the next task gets a new browser.
    let marker = BrowserMarker::new();
    let app = setup
        .start(|settings| {
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

async fn tasks_spread_over_the_browsers_and_a_crash_takes_down_only_its_own(setup: Setup) {
    let marker = BrowserMarker::new();
    let app = setup
        .start(|settings| {
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
    for id in &ids {
        wait_until_opened(&app, id).await;
    }
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

crate::helpers::on_both_setups!(
    a_browser_killed_mid_task_is_replaced_and_the_task_retried,
    a_browser_is_recycled_after_its_quota_of_tasks,
    a_browser_above_its_memory_limit_is_recycled,
    tasks_spread_over_the_browsers_and_a_crash_takes_down_only_its_own,
);
