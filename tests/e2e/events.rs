//! Live events across processes: two API instances and a worker on PostgreSQL, Redis
//! and S3. A client streaming from API #2 sees every event of a task submitted through
//! API #1, in order, ending with the terminal one; reconnecting with `Last-Event-ID`
//! resumes without gaps or duplicates.

use std::time::Duration;

use operator::{Application, Roles};
use operator_domain::auth::Role;
use operator_testkit::{
    ApiClient, RedisPrefix, TestDatabase, distributed_settings, issue_key, read_sse,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::TASK_DEADLINE;
use crate::helpers::PageServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_api_replica_sees_every_event_in_order() {
    operator_store::install_crypto_provider();
    let database = TestDatabase::postgres().await;
    let redis = RedisPrefix::new();
    let mut settings = distributed_settings(&database, redis.prefix());
    // Re-reading the table would hide a broken bus: only Redis pub/sub may carry the
    // worker's events to API #2 within the test.
    settings.events.resync_interval = Duration::from_secs(600);
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    let mut apis = Vec::new();
    for roles in [Roles::API, Roles::API, Roles::WORKER] {
        let application = Application::build(settings.clone(), roles)
            .await
            .expect("build");
        if let Some(url) = application.public_url() {
            let key = issue_key(
                application.services().repo.connection(),
                "default",
                Role::Owner,
            )
            .await;
            apis.push(ApiClient::with_key(url, &key));
        }
        running.push(tokio::spawn(
            application.run_until_stopped(stop.clone().cancelled_owned()),
        ));
    }
    let (first, second) = (&apis[0], &apis[1]);
    let pages = PageServer::start().await;

    // It starts a moment later, so the stream is open before the worker's events.
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (status, task) = first
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("live"), "viewport": {"width": 320, "height": 240}}, "run_at": run_at}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    let response = second
        .http
        .get(format!("{}/v1/tasks/{id}/events", second.base))
        .send()
        .await
        .expect("connect to API #2");
    assert_eq!(response.status().as_u16(), 200);
    let live = tokio::time::timeout(TASK_DEADLINE, read_sse(response))
        .await
        .expect("the stream ends with the task");

    let kinds: Vec<String> = live
        .iter()
        .map(|event| {
            let kind = event.event.clone().unwrap_or_default();
            match event.data["data"]["state"].as_str() {
                Some(state) => format!("{kind}:{state}"),
                None => kind,
            }
        })
        .collect();
    // One `artifact` event per file the task produced (the screenshot and its logs).
    let (_, finished) = second.get(&format!("/v1/tasks/{id}")).await;
    let artifacts = finished["artifacts"].as_array().map_or(0, Vec::len);
    assert!(artifacts >= 1, "{finished}");
    let mut expected = vec!["created:queued".to_owned(), "state:running".to_owned()];
    expected.extend(std::iter::repeat_n("artifact".to_owned(), artifacts));
    expected.push("state:succeeded".to_owned());
    assert_eq!(kinds, expected, "{live:?}");
    let ids: Vec<i64> = live
        .iter()
        .map(|event| {
            event
                .id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .expect("an id")
        })
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "in order: {ids:?}"
    );

    // After the end, either replica gives the full history; resuming gives the rest.
    for api in [first, second] {
        let history = api.events(&id).await;
        assert_eq!(history, live);
    }
    let resumed = read_sse(
        first
            .http
            .get(format!("{}/v1/tasks/{id}/events", first.base))
            .header("Last-Event-ID", ids[1].to_string())
            .send()
            .await
            .expect("connect"),
    )
    .await;
    assert_eq!(resumed, live[2..], "no gap, no duplicate");

    stop.cancel();
    for role in running {
        role.await
            .expect("join")
            .expect("a role ended with an error");
    }
}
