//! Queue features over HTTP: idempotent submission, delays, re-driving, queue stats and
//! pausing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{LeaseToken, QueueName, TaskId, TaskOutcome};
use operator_store::queue::Claim;
use operator_testkit::read_json;
use serde_json::{Value, json};

use crate::helpers::spawn_api;

async fn submit_with_key(
    api: &crate::helpers::TestApi,
    key: &str,
    body: &str,
) -> (u16, Value, Option<String>) {
    let response = api
        .http
        .post(format!("{}/v1/tasks", api.base))
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (status, body) = read_json(response).await;
    (status, body, location)
}

#[tokio::test]
async fn the_same_key_and_body_return_the_first_task_and_a_different_body_is_refused() {
    let api = spawn_api().await;
    let first = r#"{"kind": "screenshot", "input": {"url": "https://example.com", "full_page": true}, "priority": "high"}"#;
    // The same request, other key order and spacing.
    let again = r#"{"priority":"high","input":{"full_page":true,"url":"https://example.com"},"kind":"screenshot"}"#;
    let different = r#"{"kind": "screenshot", "input": {"url": "https://example.com/other"}}"#;

    let (status, created, location) = submit_with_key(&api, "order-42", first).await;
    assert_eq!(status, 202);
    let (status, replayed, replay_location) = submit_with_key(&api, "order-42", again).await;
    assert_eq!(status, 200, "a replay: {replayed}");
    assert_eq!(replayed["id"], created["id"]);
    assert_eq!(replay_location, location);

    let (status, refused, _) = submit_with_key(&api, "order-42", different).await;
    assert_eq!(status, 409);
    assert_eq!(refused["code"], "idempotency_conflict");

    // Another key is another task.
    let (status, other, _) = submit_with_key(&api, "order-43", first).await;
    assert_eq!(status, 202);
    assert_ne!(other["id"], created["id"]);

    let (_, page) = api.get("/v1/tasks").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(api.stats("default").await.ready(), 2);
}

#[tokio::test]
async fn concurrent_submissions_with_one_key_create_one_task() {
    let api = spawn_api().await;
    let body = r#"{"kind": "pdf", "input": {"url": "https://example.com"}}"#;
    let attempts = (0..8).map(|_| submit_with_key(&api, "racing", body));
    let results = futures::future::join_all(attempts).await;
    let created = results.iter().filter(|(status, ..)| *status == 202).count();
    let replayed = results.iter().filter(|(status, ..)| *status == 200).count();
    assert_eq!((created, replayed), (1, 7), "{results:?}");
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, body, _)| body["id"].clone())
        .collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn a_delay_schedules_the_task_and_is_checked() {
    let api = spawn_api().await;
    let before = Utc::now();
    let (status, task) = api
        .submit(
            &json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "delay": "90s"}),
        )
        .await;
    assert_eq!(status, 202, "{task}");
    let run_at: DateTime<Utc> = task["run_at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .expect("run_at");
    let ahead = (run_at - before).num_seconds();
    assert!((89..=91).contains(&ahead), "run_at {ahead}s ahead");
    let stats = api.stats("default").await;
    assert_eq!((stats.ready(), stats.delayed), (0, 1));

    for (body, needle) in [
        (
            json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "delay": "soon"}),
            "delay",
        ),
        (
            json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "delay": "1s", "run_at": "2030-01-01T00:00:00Z"}),
            "run_at and delay",
        ),
        (
            json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "delay": "400 days"}),
            "365 days",
        ),
    ] {
        let (status, error) = api.submit(&body).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(error["code"], "invalid_request");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{message:?} names {needle:?}");
    }
}

/// Claims what the queue hands out now, as a worker would.
async fn claim_now(api: &crate::helpers::TestApi) -> Option<Claim> {
    api.queue
        .claim("test-worker", Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("claim")
}

/// Runs the task through one attempt that ends the way `outcome` says.
async fn run_once(api: &crate::helpers::TestApi, id: TaskId, outcome: TaskOutcome) {
    let token = LeaseToken::new();
    let lease_until = Utc::now() + chrono::Duration::seconds(30);
    api.repo
        .start_attempt(id, token, "test-worker", lease_until)
        .await
        .expect("start");
    api.repo.finish(id, token, outcome).await.expect("finish");
}

#[tokio::test]
async fn a_dead_task_is_redriven_with_more_attempts_and_keeps_its_history() {
    let api = spawn_api().await;
    let (_, task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "max_attempts": 1}))
        .await;
    let id_text = task["id"].as_str().expect("id").to_owned();
    let id = TaskId::parse(&id_text).expect("task id");

    let (status, refused) = api.post(&format!("/v1/tasks/{id_text}/retry")).await;
    assert_eq!(status, 409, "a queued task cannot be re-driven");
    assert_eq!(refused["code"], "invalid_state");

    // The queue's copy is taken by the "worker" below; clear it as a worker would.
    let claim = claim_now(&api).await.expect("dispatched");
    api.queue.ack(&claim).await.expect("ack");
    run_once(
        &api,
        id,
        TaskOutcome::Dead {
            error: CodedError::new(ErrorCode::NavigationFailed, "net::ERR_CONNECTION_REFUSED"),
        },
    )
    .await;
    let (_, dead) = api.get(&format!("/v1/tasks/{id_text}")).await;
    assert_eq!(dead["state"], "dead");

    let (status, bad) = api
        .post(&format!("/v1/tasks/{id_text}/retry?attempts=0"))
        .await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("invalid_parameter"))
    );

    let (status, redriven) = api
        .post(&format!("/v1/tasks/{id_text}/retry?attempts=2"))
        .await;
    assert_eq!(status, 200, "{redriven}");
    assert_eq!(redriven["state"], "queued");
    assert_eq!(redriven["attempts"], 1);
    assert_eq!(redriven["max_attempts"], 3);
    assert!(redriven["error"].is_null(), "the old error is cleared");
    assert_eq!(api.stats("default").await.ready(), 1, "dispatched");

    run_once(
        &api,
        id,
        TaskOutcome::Succeeded {
            result: json!({}),
            artifacts: Vec::new(),
        },
    )
    .await;
    let (_, attempts) = api.get(&format!("/v1/tasks/{id_text}/attempts")).await;
    let numbers: Vec<_> = attempts["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|attempt| (attempt["attempt"].clone(), attempt["outcome"].clone()))
        .collect();
    assert_eq!(
        numbers,
        vec![(json!(1), json!("dead")), (json!(2), json!("succeeded"))]
    );
    let (status, _) = api.post(&format!("/v1/tasks/{id_text}/retry")).await;
    assert_eq!(status, 409, "a succeeded task cannot be re-driven");
    let (status, missing) = api
        .post(&format!("/v1/tasks/{}/retry", TaskId::new()))
        .await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("task_not_found"))
    );
}

#[tokio::test]
async fn queue_stats_pause_and_resume() {
    let api = spawn_api().await;
    for priority in ["high", "normal", "normal", "low"] {
        let (status, _) = api
            .submit(&json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "priority": priority}))
            .await;
        assert_eq!(status, 202);
    }
    let (status, queue) = api.get("/v1/queues/default").await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(
        queue["ready"],
        json!({"high": 1, "normal": 2, "low": 1, "total": 4})
    );
    assert_eq!(queue["paused"], false);
    assert_eq!(queue["tasks"]["queued"], 4);
    assert_eq!(queue["tasks"]["dead"], 0);
    assert!(
        queue["oldest_waiting_seconds"]
            .as_f64()
            .is_some_and(|age| age >= 0.0)
    );

    // Another tenant's owner sees the queue and its own tasks, not everyone's depth.
    let other = api
        .client_for("tenant-b", operator_domain::auth::Role::Owner)
        .await;
    assert_eq!(
        other
            .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
            .await
            .0,
        202
    );
    let (status, seen) = other.get("/v1/queues/default").await;
    assert_eq!(status, 200, "{seen}");
    for field in ["ready", "delayed", "running", "oldest_waiting_seconds"] {
        assert_eq!(seen[field], Value::Null, "{field}: {seen}");
    }
    assert_eq!(seen["tasks"]["queued"], 1, "its own task only: {seen}");
    let (_, listed) = other.get("/v1/queues").await;
    assert_eq!(listed["items"][0]["ready"], Value::Null, "{listed}");
    assert_eq!(
        other.post("/v1/queues/default/pause").await.0,
        403,
        "nor may it pause everyone's queue"
    );

    let (status, paused) = api.post("/v1/queues/default/pause").await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)));
    assert!(
        claim_now(&api).await.is_none(),
        "a paused queue hands out nothing"
    );
    assert!(
        api.repo
            .queue(&QueueName::default())
            .await
            .expect("read")
            .is_some_and(|queue| queue.controls.paused),
        "recorded in the database"
    );
    let (status, resumed) = api.post("/v1/queues/default/resume").await;
    assert_eq!((status, &resumed["paused"]), (200, &json!(false)));
    assert!(claim_now(&api).await.is_some());
    let (status, missing) = api.get("/v1/queues/nope").await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("queue_not_found"))
    );
    let (status, _) = api.post("/v1/queues/nope/pause").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn named_queues_are_created_listed_and_take_their_tasks() {
    let api = spawn_api().await;
    let screenshot = |queue: &str| json!({"kind": "screenshot", "input": {"url": "https://example.com"}, "queue": queue});

    // A task for a queue nobody created is refused, and nothing is written.
    let (status, refused) = api.submit(&screenshot("reports")).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("unknown_queue"))
    );
    let (_, listed) = api.get("/v1/tasks").await;
    assert_eq!(listed["items"], json!([]));
    let (status, malformed) = api.submit(&screenshot("Reports!")).await;
    assert_eq!(
        (status, malformed["code"].as_str()),
        (422, Some("invalid_request"))
    );

    let (status, created) = api.put("/v1/queues/reports", &json!({})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (
            &created["name"],
            &created["paused"],
            &created["concurrency_limit"]
        ),
        (&json!("reports"), &json!(false), &Value::Null)
    );
    let (status, changed) = api
        .put("/v1/queues/reports", &json!({"concurrency_limit": 3}))
        .await;
    assert_eq!((status, &changed["concurrency_limit"]), (200, &json!(3)));
    let (status, bad_name) = api.put("/v1/queues/Not%20a%20name", &json!({})).await;
    assert_eq!(
        (status, bad_name["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, bad_limit) = api
        .put("/v1/queues/reports", &json!({"concurrency_limit": 0}))
        .await;
    assert_eq!(
        (status, bad_limit["code"].as_str()),
        (422, Some("invalid_request"))
    );

    let (status, task) = api.submit(&screenshot("reports")).await;
    assert_eq!((status, &task["queue"]), (202, &json!("reports")), "{task}");
    let (status, default_task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": "https://example.com"}}))
        .await;
    assert_eq!((status, &default_task["queue"]), (202, &json!("default")));

    // Each task went to its own queue.
    assert_eq!(api.stats("reports").await.ready(), 1);
    assert_eq!(api.stats("default").await.ready(), 1);
    let (status, listed) = api.get("/v1/queues").await;
    assert_eq!(status, 200);
    let summary: Vec<(Value, Value, Value)> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|queue| {
            (
                queue["name"].clone(),
                queue["ready"]["total"].clone(),
                queue["tasks"]["queued"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!("default"), json!(1), json!(1)),
            (json!("reports"), json!(1), json!(1))
        ]
    );
    let (_, only_reports) = api.get("/v1/tasks?queue=reports").await;
    assert_eq!(only_reports["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(only_reports["items"][0]["id"], task["id"]);
    let (status, _) = api.get("/v1/tasks?queue=Not-A-Queue").await;
    assert_eq!(status, 400);

    // Pausing one queue leaves the other alone.
    let (status, paused) = api.post("/v1/queues/reports/pause").await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)));
    assert!(api.stats("reports").await.paused);
    let (_, default_queue) = api.get("/v1/queues/default").await;
    assert_eq!(default_queue["paused"], json!(false));
    let (status, missing) = api.post("/v1/queues/archive/pause").await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("queue_not_found"))
    );

    // Cancelling takes the task off its own queue.
    let id = task["id"].as_str().expect("id");
    let (status, _) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 200);
    assert_eq!(api.stats("reports").await.ready(), 0);
}
