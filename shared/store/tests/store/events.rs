//! The live-event bus across processes (two buses on one Redis) and the task event
//! stream: history, then live events, closing after the terminal one; resuming.

use operator_testkit::screenshot_task;
use std::time::Duration;

use futures::StreamExt;
use operator_domain::{TaskId, TenantId};
use operator_store::db::CancelOutcome;
use operator_store::events::{EventBus, EventNotice};
use operator_store::task_stream::task_events;
use operator_testkit::{RedisPrefix, TestDatabase};

use crate::helpers::repository;

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_notice_published_in_one_process_reaches_another() {
    let prefix = RedisPrefix::new();
    let publisher = EventBus::connect(prefix.settings()).await.expect("bus one");
    let listener = EventBus::connect(prefix.settings()).await.expect("bus two");
    let other_deployment = EventBus::connect(RedisPrefix::new().settings())
        .await
        .expect("bus three");
    let mut notices = listener.subscribe();
    let mut foreign = other_deployment.subscribe();
    let notice = EventNotice {
        tenant: TenantId::parse("acme").expect("tenant"),
        task_id: TaskId::new(),
    };
    publisher.publish(notice.clone());
    let received = tokio::time::timeout(DEADLINE, notices.recv())
        .await
        .expect("the notice arrives")
        .expect("open");
    assert_eq!(received, notice);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), foreign.recv())
            .await
            .is_err(),
        "another key prefix is another deployment"
    );
}

#[tokio::test]
async fn a_stream_sends_history_then_live_events_and_closes_at_the_end() {
    let database = TestDatabase::sqlite().await;
    let repo = repository(&database)
        .await
        .with_event_bus(EventBus::in_process());
    let tenant = TenantId::default_tenant();
    let task = repo.create(screenshot_task(&tenant)).await.expect("create");
    // A long resync: only the bus can bring the live event in time.
    let mut stream = Box::pin(task_events(
        repo.clone(),
        task.id,
        None,
        Duration::from_secs(600),
    ));
    let created = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("history")
        .expect("an event")
        .expect("readable");
    assert_eq!(created.kind, "created");
    let canceller = repo.clone();
    let cancelling = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        canceller.cancel(&tenant, task.id).await
    });
    let cancelled = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("the live event")
        .expect("an event")
        .expect("readable");
    assert_eq!(cancelled.kind, "state");
    assert_eq!(cancelled.data["state"], "cancelled");
    assert!(cancelled.id > created.id);
    assert!(
        tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("closes")
            .is_none(),
        "the stream ends after the terminal event"
    );
    assert!(matches!(
        cancelling.await.expect("join").expect("cancel"),
        CancelOutcome::Cancelled(_)
    ));

    // After the end: the full history, or what follows a given id.
    let history: Vec<_> = task_events(repo.clone(), task.id, None, Duration::from_secs(600))
        .map(|event| event.expect("readable").id)
        .collect()
        .await;
    assert_eq!(history, vec![created.id, cancelled.id]);
    let resumed: Vec<_> = task_events(repo, task.id, Some(created.id), Duration::from_secs(600))
        .map(|event| event.expect("readable").id)
        .collect()
        .await;
    assert_eq!(resumed, vec![cancelled.id]);
}
