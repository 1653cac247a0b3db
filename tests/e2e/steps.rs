//! The step language end to end: `script`, `scrape` and `content` tasks in real Chromium
//! against pages served on loopback.

use std::time::Duration;

use serde_json::{Value, json};

use operator_testkit::read_sse;

use crate::helpers::{PageServer, Setup, decode_png};

fn artifact<'a>(task: &'a Value, name: &str) -> &'a Value {
    task["artifacts"]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["name"] == name))
        .unwrap_or_else(|| panic!("no artifact {name}: {task}"))
}

async fn a_login_form_is_filled_and_submitted(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app
        .run(
            &json!({"kind": "script", "input": {"url": pages.url("login"), "steps": [
                {"action": "type", "selector": "#user", "text": "ada", "delay_ms": 5},
                {"action": "type", "selector": "#password", "text": "secret"},
                {"action": "select", "selector": "#plan", "values": ["pro"]},
                {"action": "click", "selector": "#submit"},
                {"action": "wait_for", "event": "navigation"},
                {"action": "extract", "name": "greeting", "selector": "#greeting"},
                {"action": "evaluate", "name": "title", "expression": "document.title"}
            ]}}),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["data"]["greeting"], "Welcome, ada (pro)");
    assert_eq!(done["result"]["data"]["title"], "welcome");
    assert_eq!(pages.hits("welcome"), 1);
    let steps = done["progress"]["steps"].as_array().expect("progress");
    assert_eq!(steps.len(), 8, "the opening plus seven steps: {done}");
    assert!(steps.iter().all(|step| step["ok"] == true), "{done}");
    assert_eq!(steps[4]["action"], "click");
    assert!(steps[4]["duration_ms"].is_u64());
    // Each step is also an event of the task's stream, in order.
    let id = done["id"].as_str().expect("id");
    let response = app
        .http
        .get(format!("{}/v1/tasks/{id}/events", app.base))
        .send()
        .await
        .expect("events");
    let streamed: Vec<Value> = read_sse(response)
        .await
        .into_iter()
        .filter(|event| event.event.as_deref() == Some("step"))
        .map(|event| event.data["data"].clone())
        .collect();
    assert_eq!(&streamed, steps, "one step event per step");
    // The logs of the page are artifacts of the task.
    let (_, network) = app
        .download(
            artifact(&done, "network.json")["url"]
                .as_str()
                .expect("url"),
        )
        .await;
    let network: Value = serde_json::from_slice(&network).expect("json");
    let posted = network["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|request| request["method"] == "POST")
        .expect("the form post is logged");
    assert_eq!(posted["status"], 200);
    artifact(&done, "console.json");
    app.shutdown().await;
}

/// The page's console lines reach the task's live stream as `log` events, in order.
async fn console_lines_are_streamed_as_log_events(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app.run(&json!({"kind": "script", "input": {"url": pages.url("logging"), "steps": [
            {"action": "evaluate", "name": "first", "expression": "console.log('first line'), 1"},
            {"action": "evaluate", "name": "second", "expression": "console.warn('second', 2), 2"}
        ]}})).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let id = done["id"].as_str().expect("id");
    let response = app
        .http
        .get(format!("{}/v1/tasks/{id}/events", app.base))
        .send()
        .await
        .expect("events");
    let lines: Vec<(String, String)> = read_sse(response)
        .await
        .into_iter()
        .filter(|event| event.event.as_deref() == Some("log"))
        .map(|event| {
            let data = &event.data["data"];
            (
                data["level"].as_str().unwrap_or_default().to_owned(),
                data["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("log".to_owned(), "first line".to_owned()),
            ("warning".to_owned(), "second 2".to_owned()),
        ]
    );
    app.shutdown().await;
}

async fn a_list_is_scraped_into_records(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app
        .run(
            &json!({"kind": "scrape", "input": {"url": pages.url("list"), "extract": [
                {"name": "products", "selector": "li.item", "fields": {
                    "name": ".name",
                    "price": ".price",
                    "link": {"selector": "a", "what": "attribute", "attribute": "href"}
                }},
                {"name": "names", "selector": ".name", "all": true},
                {"name": "missing", "selector": ".nothing", "optional": true}
            ]}}),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let data = &done["result"]["data"];
    assert_eq!(
        data["products"].as_array().expect("records").len(),
        4,
        "{data}"
    );
    assert_eq!(
        data["products"][0],
        json!({"name": "Apple", "price": "1.20", "link": "/p/1"})
    );
    assert_eq!(
        data["products"][3]["name"], "Date",
        "added by the page's script"
    );
    assert_eq!(data["names"], json!(["Apple", "Banana", "Cherry", "Date"]));
    assert_eq!(data["missing"], Value::Null);
    app.shutdown().await;
}

async fn content_is_the_html_after_scripts_ran(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app
        .run(&json!({"kind": "content", "input": {"url": pages.url("list")}}))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let html = artifact(&done, "page.html");
    let (content_type, bytes) = app.download(html["url"].as_str().expect("url")).await;
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let text = String::from_utf8(bytes).expect("utf-8");
    assert!(text.starts_with("<!DOCTYPE html>"), "{text}");
    assert!(
        text.contains(">Date</a>"),
        "the script's item is in: {text}"
    );
    app.shutdown().await;
}

async fn an_element_screenshot_has_the_element_size(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app
        .run(
            &json!({"kind": "script", "input": {"url": pages.url("card"), "steps": [
                {"action": "screenshot", "name": "card", "selector": "#card"}
            ]}}),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let card = artifact(&done, "card.png");
    let (content_type, bytes) = app.download(card["url"].as_str().expect("url")).await;
    assert_eq!(content_type, "image/png");
    let (width, height, pixel) = decode_png(&bytes, 120, 60);
    assert_eq!((width, height), (240, 120));
    assert_eq!(pixel, crate::helpers::PAGE_RGB, "the card itself");
    app.shutdown().await;
}

async fn a_page_that_never_finishes_loading_times_out(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app.run(&json!({"kind": "script", "timeout_ms": 3000, "input": {"url": pages.url("never-loads"), "steps": [
            {"action": "screenshot"}
        ]}})).await;
    assert_eq!(done["state"], "timed_out", "{done}");
    assert_eq!(done["error"]["code"], "task_timeout");
    assert_eq!(done["attempts"], 1);
    app.shutdown().await;
}

async fn a_step_may_wait_longer_than_a_browser_call(setup: Setup) {
    // A 2 s call timeout: the step's promise settles after 3 s, within its own timeout.
    // Waiting on purpose is not a hung browser.
    let app = setup
        .start(|settings| {
            settings.browser.call_timeout = Duration::from_secs(2);
        })
        .await;
    let pages = PageServer::start().await;
    let done = app
        .run(
            &json!({"kind": "script", "input": {"url": pages.url("slow-script"), "steps": [
                {"action": "evaluate", "name": "late", "timeout_ms": 8000,
                 "expression": "new Promise(resolve => setTimeout(() => resolve('settled'), 3000))"}
            ]}}),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["data"]["late"], "settled", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    app.shutdown().await;
}

async fn a_missing_selector_fails_the_task_naming_the_step(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let started = std::time::Instant::now();
    let done = app.run(&json!({"kind": "script", "max_attempts": 3, "input": {"url": pages.url("login"), "steps": [
            {"action": "type", "selector": "#user", "text": "ada"},
            {"action": "evaluate", "expression": "console.warn('about to fail', 42)"},
            {"action": "click", "selector": "#does-not-exist", "timeout_ms": 1000}
        ]}})).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "selector_not_found");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("steps[2] (click)"), "{message}");
    assert!(message.contains("#does-not-exist"), "{message}");
    assert_eq!(done["attempts"], 1, "final, not retried");
    assert!(started.elapsed() < Duration::from_secs(30));
    let steps = done["progress"]["steps"].as_array().expect("progress");
    assert_eq!(
        steps.last().expect("a step")["error"]["code"],
        "selector_not_found"
    );
    // The failed attempt's page logs are kept with the task.
    artifact(&done, "network-attempt-1.json");
    let console = artifact(&done, "console-attempt-1.json");
    let (_, bytes) = app.download(console["url"].as_str().expect("url")).await;
    let console: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(console["messages"][0]["level"], "warning", "{console}");
    assert_eq!(
        console["messages"][0]["text"], "about to fail 42",
        "{console}"
    );
    app.shutdown().await;
}

async fn a_cookie_set_by_one_task_is_absent_in_the_next(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let first = app.run(&json!({"kind": "script", "input": {"url": pages.url("cookies"), "storage_state": true, "steps": [
            {"action": "evaluate", "expression": "document.cookie = 'visitor=one; max-age=3600'"},
            {"action": "evaluate", "expression": "localStorage.setItem('seen', 'yes')"},
            {"action": "goto", "url": pages.url("cookies")},
            {"action": "extract", "name": "cookies", "selector": "#cookies"}
        ]}})).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    assert_eq!(first["result"]["data"]["cookies"], "visitor=one");
    let state = &first["result"]["storage_state"];
    assert_eq!(state["cookies"][0]["name"], "visitor", "{state}");
    assert_eq!(
        state["origins"][0]["local_storage"]["seen"], "yes",
        "{state}"
    );

    let second = app
        .run(
            &json!({"kind": "script", "input": {"url": pages.url("cookies"), "steps": [
                {"action": "extract", "name": "cookies", "selector": "#cookies"},
                {"action": "evaluate", "name": "seen", "expression": "localStorage.getItem('seen')"}
            ]}}),
        )
        .await;
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(second["result"]["data"]["cookies"], "", "{second}");
    assert_eq!(second["result"]["data"]["seen"], Value::Null);

    // Cookies in: set before the first request.
    let third = app
        .run(
            &json!({"kind": "scrape", "input": {"url": pages.url("cookies"),
            "cookies": [{"name": "given", "value": "42"}],
            "extra_headers": {"x-test": "1"},
            "extract": [{"name": "cookies", "selector": "#cookies"}]}}),
        )
        .await;
    assert_eq!(third["result"]["data"]["cookies"], "given=42", "{third}");
    app.shutdown().await;
}

async fn a_bad_step_list_is_refused_before_it_is_queued(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let (status, body) = app
        .submit(&json!({"kind": "script", "input": {"steps": [
            {"action": "goto", "url": "https://example.com"},
            {"action": "click", "selector": ""}
        ]}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_input");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .starts_with("input.steps[1].selector"),
        "{body}"
    );
    let (status, body) = app
        .submit(&json!({"kind": "script", "input": {"steps": [
            {"action": "goto", "url": "http://169.254.169.254/"}
        ]}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "url_not_allowed");
    let (_, listed) = app.get("/v1/tasks").await;
    assert_eq!(listed["items"], json!([]), "nothing was written");
    app.shutdown().await;
}

async fn page_options_apply_before_the_first_request(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let blocked_image = format!("{}?to={}", pages.url("embed"), pages.url("pixel"));
    let done = app.run(&json!({"kind": "script", "input": {
            "url": blocked_image,
            "viewport": {"width": 800, "height": 600},
            "user_agent": "OperatorBench/1.0",
            "locale": "de-DE",
            "timezone": "Asia/Tokyo",
            "block_resources": ["image"],
            "steps": [
                {"action": "evaluate", "name": "width", "expression": "window.innerWidth"},
                {"action": "evaluate", "name": "agent", "expression": "navigator.userAgent"},
                {"action": "evaluate", "name": "language", "expression": "navigator.language"},
                {"action": "evaluate", "name": "zone", "expression": "Intl.DateTimeFormat().resolvedOptions().timeZone"},
                {"action": "set_viewport", "viewport": {"width": 500, "height": 400}},
                {"action": "evaluate", "name": "narrower", "expression": "window.innerWidth"},
                {"action": "scroll", "y": 100},
                {"action": "hover", "selector": "#picture"},
                {"action": "press", "key": "Tab"}
            ]
        }})).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let data = &done["result"]["data"];
    assert_eq!(data["width"], 800);
    assert_eq!(data["agent"], "OperatorBench/1.0");
    assert_eq!(data["language"], "de-DE");
    assert_eq!(data["zone"], "Asia/Tokyo");
    assert_eq!(data["narrower"], 500);
    assert_eq!(pages.hits("pixel"), 0, "images were blocked");

    let blocked_url = format!("{}?to={}", pages.url("embed"), pages.url("ad"));
    let done = app
        .run(&json!({"kind": "content", "input": {"url": blocked_url, "block_urls": ["*/ad"]}}))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(pages.hits("ad"), 0, "the pattern blocked it");
    assert_eq!(pages.hits("embed"), 2, "the pages themselves loaded");
    app.shutdown().await;
}

/// Hover, press and scroll have their effects on the page, each checked before and
/// after.
async fn hover_press_and_scroll_act_on_the_page(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;
    let done = app
        .run(&json!({"kind": "script", "input": {"url": pages.url("interactive"), "steps": [
            {"action": "evaluate", "name": "hovered_before", "expression": "document.body.dataset.hovered ?? null"},
            {"action": "hover", "selector": "#target"},
            {"action": "evaluate", "name": "hovered", "expression": "document.body.dataset.hovered ?? null"},
            {"action": "evaluate", "name": "focus_before", "expression": "document.activeElement.tagName"},
            {"action": "press", "key": "Tab"},
            {"action": "evaluate", "name": "focus_after_one", "expression": "document.activeElement.id"},
            {"action": "press", "key": "Tab"},
            {"action": "evaluate", "name": "focus_after_two", "expression": "document.activeElement.id"},
            {"action": "press", "key": "Enter"},
            {"action": "evaluate", "name": "key", "expression": "document.body.dataset.lastKey ?? null"},
            {"action": "evaluate", "name": "scrolled_before", "expression": "window.scrollY"},
            {"action": "scroll", "y": 500},
            {"action": "evaluate", "name": "scrolled", "expression": "window.scrollY"}
        ]}}))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let data = &done["result"]["data"];
    assert_eq!(data["hovered_before"], Value::Null, "{data}");
    assert_eq!(data["hovered"], "yes", "{data}");
    assert_eq!(data["focus_before"], "BODY", "{data}");
    assert_eq!(data["focus_after_one"], "first", "{data}");
    assert_eq!(data["focus_after_two"], "field", "{data}");
    assert_eq!(data["key"], "Enter", "pressed in the focused field: {data}");
    assert_eq!(data["scrolled_before"], 0, "{data}");
    assert_eq!(data["scrolled"], 500, "{data}");
    app.shutdown().await;
}

crate::helpers::on_both_setups!(
    hover_press_and_scroll_act_on_the_page,
    a_login_form_is_filled_and_submitted,
    console_lines_are_streamed_as_log_events,
    a_list_is_scraped_into_records,
    content_is_the_html_after_scripts_ran,
    an_element_screenshot_has_the_element_size,
    a_page_that_never_finishes_loading_times_out,
    a_step_may_wait_longer_than_a_browser_call,
    a_missing_selector_fails_the_task_naming_the_step,
    a_cookie_set_by_one_task_is_absent_in_the_next,
    a_bad_step_list_is_refused_before_it_is_queued,
    page_options_apply_before_the_first_request,
);
