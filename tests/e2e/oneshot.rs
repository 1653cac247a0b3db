//! One-call endpoints: a normal task is created and waited for, and the answer is what
//! it produced (bytes with their content type, or JSON) or its error.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PageServer, Setup, TestApp, decode_png, pdf_page_count};

struct Answer {
    status: u16,
    content_type: String,
    task_id: Option<String>,
    location: Option<String>,
    bytes: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

async fn call(app: &TestApp, path: &str, body: &str) -> Answer {
    let response = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("post");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let content_type = header("content-type").unwrap_or_default();
    let task_id = header("operator-task-id");
    let location = header("location");
    let bytes = response.bytes().await.expect("body").to_vec();
    Answer {
        status,
        content_type,
        task_id,
        location,
        bytes,
    }
}

async fn each_endpoint_answers_with_what_its_task_produced(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;

    let answer = call(
        &app,
        "/v1/screenshot",
        &json!({"url": pages.url("home"), "viewport": {"width": 320, "height": 200}}).to_string(),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.bytes)
    );
    assert_eq!(answer.content_type, "image/png");
    let (width, height, _) = decode_png(&answer.bytes, 0, 0);
    assert_eq!((width, height), (320, 200));
    let id = answer.task_id.expect("the task's id");
    let (_, task) = app.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "succeeded", "an ordinary task: {task}");
    assert_eq!(task["kind"], "screenshot");

    let answer = call(
        &app,
        "/v1/pdf",
        &json!({"url": pages.url("tall")}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/pdf");
    assert!(pdf_page_count(&answer.bytes) >= 2);

    let answer = call(
        &app,
        "/v1/content",
        &json!({"url": pages.url("list")}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.content_type.starts_with("text/html"),
        "{}",
        answer.content_type
    );
    assert!(String::from_utf8_lossy(&answer.bytes).contains(">Date</a>"));

    let answer = call(
        &app,
        "/v1/scrape",
        &json!({"url": pages.url("list"), "extract": [{"name": "names", "selector": ".name", "all": true}]})
            .to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.content_type.starts_with("application/json"));
    assert_eq!(
        answer.json()["data"]["names"],
        json!(["Apple", "Banana", "Cherry", "Date"])
    );
    app.shutdown().await;
}

async fn errors_come_back_with_their_codes(setup: Setup) {
    let app = setup.start(|_| {}).await;
    let pages = PageServer::start().await;

    let answer = call(&app, "/v1/screenshot", "{not json").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["code"], "invalid_json");

    let answer = call(
        &app,
        "/v1/screenshot",
        &json!({"url": "file:///etc/passwd"}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json()["code"], "url_scheme_not_allowed");
    assert!(answer.task_id.is_none(), "no task was created");

    let answer = call(
        &app,
        "/v1/scrape",
        &json!({"url": pages.url("list"), "extract": [{"name": "x", "selector": "#nothing", "timeout_ms": 300}]})
            .to_string(),
    )
    .await;
    assert_eq!(
        answer.status,
        422,
        "{}",
        String::from_utf8_lossy(&answer.bytes)
    );
    assert_eq!(answer.json()["code"], "selector_not_found");
    let id = answer.task_id.expect("a task ran");
    let (_, task) = app.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "failed");

    let answer = call(
        &app,
        "/v1/screenshot?timeout_ms=2000",
        &json!({"url": pages.url("never-loads")}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["code"], "task_timeout");

    let answer = call(
        &app,
        "/v1/screenshot?queue=nowhere",
        &json!({"url": pages.url("list")}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json()["code"], "unknown_queue");
    assert!(answer.task_id.is_none(), "no task was created");
    app.shutdown().await;
}

async fn a_task_that_outlasts_the_wait_is_answered_with_202(setup: Setup) {
    let app = setup
        .start(|settings| {
            settings.server.sync_wait = Duration::from_millis(1500);
            // Only `default`: the queue created below is served by nobody.
            settings.worker.queues = vec!["default".to_owned()];
        })
        .await;
    let pages = PageServer::start().await;
    let answer = call(
        &app,
        "/v1/screenshot?timeout_ms=4000",
        &json!({"url": pages.url("never-loads")}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 202);
    let task = answer.json();
    assert_eq!(task["state"], "running", "{task}");
    let location = answer.location.expect("Location");
    assert!(location.ends_with(task["id"].as_str().expect("id")));
    let done = app
        .wait_for(
            task["id"].as_str().expect("id"),
            &["timed_out"],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(done["error"]["code"], "task_timeout");

    // A queue no worker here serves: the task waits in it.
    let (status, _) = app.put("/v1/queues/elsewhere", &json!({})).await;
    assert_eq!(status, 201);
    let answer = call(
        &app,
        "/v1/screenshot?queue=elsewhere",
        &json!({"url": pages.url("list")}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 202);
    let task = answer.json();
    assert_eq!(
        (&task["queue"], &task["state"]),
        (&json!("elsewhere"), &json!("queued"))
    );
    app.shutdown().await;
}

crate::helpers::on_both_setups!(
    each_endpoint_answers_with_what_its_task_produced,
    errors_come_back_with_their_codes,
    a_task_that_outlasts_the_wait_is_answered_with_202,
);
