//! Invariant 3: every path that writes a terminal state writes its webhook deliveries in
//! the same transaction, and no other path writes any.

use chrono::{Duration as ChronoDuration, Utc};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{LeaseToken, NewTask, TaskId, TaskOutcome, TenantId};
use operator_store::db::{
    CancelOutcome, DeliveryFilter, DeliveryState, FinishOutcome, NewEndpoint, StartOutcome,
    TaskRepository, WebhookRepository,
};
use operator_testkit::TestDatabase;
use operator_testkit::screenshot_task;
use serde_json::json;

use crate::helpers::repository;

fn new_task(tenant: &TenantId, webhook_url: Option<&str>) -> NewTask {
    NewTask {
        webhook_url: webhook_url.map(str::to_owned),
        ..screenshot_task(tenant)
    }
}

async fn deliveries(webhooks: &WebhookRepository, task: TaskId) -> Vec<(String, Option<String>)> {
    webhooks
        .deliveries(
            &TenantId::default_tenant(),
            &DeliveryFilter {
                task_id: Some(task),
                limit: 100,
                ..DeliveryFilter::default()
            },
        )
        .await
        .expect("deliveries")
        .into_iter()
        .map(|delivery| {
            assert_eq!(delivery.state, DeliveryState::Pending);
            (
                delivery.event_type,
                delivery.endpoint_id.map(|id| id.to_string()),
            )
        })
        .collect()
}

async fn started(repo: &TaskRepository, task: TaskId) -> LeaseToken {
    let token = LeaseToken::new();
    let until = Utc::now() + ChronoDuration::seconds(30);
    let StartOutcome::Started(_) = repo
        .start_attempt(task, token, "worker-a", until)
        .await
        .expect("start")
    else {
        panic!("the task starts");
    };
    token
}

async fn every_terminal_path_writes_its_deliveries(repo: TaskRepository) {
    let webhooks = WebhookRepository::new(repo.connection().clone());
    let tenant = TenantId::default_tenant();
    let all = webhooks
        .create_endpoint(NewEndpoint {
            tenant: tenant.clone(),
            url: "https://all.example/hook".into(),
            description: None,
            event_types: Vec::new(),
            enabled: true,
        })
        .await
        .expect("endpoint");
    let failures_only = webhooks
        .create_endpoint(NewEndpoint {
            tenant: tenant.clone(),
            url: "https://failures.example/hook".into(),
            description: None,
            event_types: vec!["task.failed".into(), "task.dead".into()],
            enabled: true,
        })
        .await
        .expect("endpoint");
    let all_id = Some(all.id.to_string());
    let failures_id = Some(failures_only.id.to_string());
    let error = CodedError::new(ErrorCode::BrowserCrashed, "crashed");

    // Cancelled before it started: the cancel path.
    let cancelled = repo
        .create(new_task(&tenant, Some("https://own.example/hook")))
        .await
        .expect("create");
    assert!(
        deliveries(&webhooks, cancelled.id).await.is_empty(),
        "not before the end"
    );
    let CancelOutcome::Cancelled(_) = repo.cancel(&tenant, cancelled.id).await.expect("cancel")
    else {
        panic!("cancelled");
    };
    let mut written = deliveries(&webhooks, cancelled.id).await;
    written.sort();
    assert_eq!(
        written,
        vec![
            ("task.cancelled".to_owned(), None),
            ("task.cancelled".to_owned(), all_id.clone())
        ]
    );

    // A retry is not an end; the dead end after it is.
    let dying = repo.create(new_task(&tenant, None)).await.expect("create");
    let token = started(&repo, dying.id).await;
    repo.finish(
        dying.id,
        token,
        TaskOutcome::Retry {
            error: error.clone(),
            run_at: Utc::now(),
        },
    )
    .await
    .expect("retry");
    assert!(
        deliveries(&webhooks, dying.id).await.is_empty(),
        "a retry sends nothing"
    );
    let token = started(&repo, dying.id).await;
    repo.finish(
        dying.id,
        token,
        TaskOutcome::Dead {
            error: error.clone(),
        },
    )
    .await
    .expect("dead");
    let mut written = deliveries(&webhooks, dying.id).await;
    written.sort();
    assert_eq!(
        written,
        vec![
            ("task.dead".to_owned(), all_id.clone()),
            ("task.dead".to_owned(), failures_id.clone())
        ]
    );

    // A worker that lost its lease writes neither the state nor a delivery.
    let contested = repo.create(new_task(&tenant, None)).await.expect("create");
    let _token = started(&repo, contested.id).await;
    let outcome = repo
        .finish(
            contested.id,
            LeaseToken::new(),
            TaskOutcome::Failed { error },
        )
        .await
        .expect("finish");
    assert!(matches!(outcome, FinishOutcome::LeaseLost));
    assert!(deliveries(&webhooks, contested.id).await.is_empty());

    // Timed out and succeeded, through the worker's finish.
    for (outcome, event) in [
        (
            TaskOutcome::TimedOut {
                error: CodedError::new(ErrorCode::TaskTimeout, "late"),
            },
            "task.timed_out",
        ),
        (
            TaskOutcome::Succeeded {
                result: json!({}),
                artifacts: Vec::new(),
            },
            "task.succeeded",
        ),
        (TaskOutcome::Cancelled, "task.cancelled"),
    ] {
        let task = repo.create(new_task(&tenant, None)).await.expect("create");
        let token = started(&repo, task.id).await;
        repo.finish(task.id, token, outcome).await.expect("finish");
        assert_eq!(
            deliveries(&webhooks, task.id).await,
            vec![(event.to_owned(), all_id.clone())]
        );
    }
}

#[tokio::test]
async fn every_terminal_path_writes_its_deliveries_sqlite() {
    let database = TestDatabase::sqlite().await;
    every_terminal_path_writes_its_deliveries(repository(&database).await).await;
}

#[tokio::test]
async fn every_terminal_path_writes_its_deliveries_postgres() {
    let database = TestDatabase::postgres().await;
    every_terminal_path_writes_its_deliveries(repository(&database).await).await;
}
