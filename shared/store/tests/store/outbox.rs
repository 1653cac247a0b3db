//! Invariant 3: every path that writes a terminal state writes its webhook deliveries in
//! the same transaction, and no other path writes any.

use chrono::{Duration as ChronoDuration, Utc};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{LeaseToken, NewTask, TaskId, TaskOutcome, TenantId};
use operator_store::db::{
    CancelOutcome, DeliveryFilter, DeliveryState, FinishOutcome, NewEndpoint, StartOutcome,
    TaskRepository, WebhookRepository,
};
use operator_testkit::screenshot_task;
use serde_json::json;

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

    // Failed, timed out, succeeded and cancelled while running, through the worker's
    // finish; a failure also reaches the endpoint that wants only failures.
    for (outcome, event, endpoints) in [
        (
            TaskOutcome::Failed {
                error: CodedError::new(ErrorCode::NavigationFailed, "refused"),
            },
            "task.failed",
            vec![all_id.clone(), failures_id.clone()],
        ),
        (
            TaskOutcome::TimedOut {
                error: CodedError::new(ErrorCode::TaskTimeout, "late"),
            },
            "task.timed_out",
            vec![all_id.clone()],
        ),
        (
            TaskOutcome::Succeeded {
                result: json!({}),
                artifacts: Vec::new(),
            },
            "task.succeeded",
            vec![all_id.clone()],
        ),
        (
            TaskOutcome::Cancelled,
            "task.cancelled",
            vec![all_id.clone()],
        ),
    ] {
        let task = repo.create(new_task(&tenant, None)).await.expect("create");
        let token = started(&repo, task.id).await;
        repo.finish(task.id, token, outcome).await.expect("finish");
        let mut written = deliveries(&webhooks, task.id).await;
        written.sort();
        let expected: Vec<(String, Option<String>)> = endpoints
            .into_iter()
            .map(|endpoint| (event.to_owned(), endpoint))
            .collect();
        assert_eq!(written, expected, "{event}");
    }
}

/// The outbox rule's corners, which decide between PostgreSQL's batch statement (no
/// delivery can be due) and its transactional path (the rule's filters decide): a
/// tenant without endpoints, a disabled endpoint, an event filter that does not match,
/// and a task's own `webhook_url`.
async fn only_due_deliveries_are_written(repo: TaskRepository) {
    let webhooks = WebhookRepository::new(repo.connection().clone());
    let endpoint = |tenant: &TenantId, event_types: Vec<String>, enabled: bool| NewEndpoint {
        tenant: tenant.clone(),
        url: format!("https://{tenant}.example/hook"),
        description: None,
        event_types,
        enabled,
    };
    let bare = TenantId::parse("bare").expect("tenant");
    let disabled = TenantId::parse("disabled").expect("tenant");
    webhooks
        .create_endpoint(endpoint(&disabled, Vec::new(), false))
        .await
        .expect("endpoint");
    let filtered = TenantId::parse("filtered").expect("tenant");
    let failures = webhooks
        .create_endpoint(endpoint(&filtered, vec!["task.failed".into()], true))
        .await
        .expect("endpoint");
    let succeeded = || TaskOutcome::Succeeded {
        result: json!({"ok": true}),
        artifacts: Vec::new(),
    };
    let failed = || TaskOutcome::Failed {
        error: CodedError::new(ErrorCode::NavigationFailed, "refused"),
    };
    let cases = [
        (&bare, None, succeeded(), Vec::<Option<String>>::new()),
        (
            &bare,
            Some("https://own.example/hook"),
            succeeded(),
            vec![None],
        ),
        (&disabled, None, failed(), Vec::new()),
        (&filtered, None, succeeded(), Vec::new()),
        (
            &filtered,
            None,
            failed(),
            vec![Some(failures.id.to_string())],
        ),
    ];
    for (index, (tenant, webhook_url, outcome, expected)) in cases.into_iter().enumerate() {
        let task = repo
            .create(new_task(tenant, webhook_url))
            .await
            .expect("create");
        let token = started(&repo, task.id).await;
        let next_state = outcome.next_state();
        let FinishOutcome::Recorded(record) =
            repo.finish(task.id, token, outcome).await.expect("finish")
        else {
            panic!("case {index}: the finish is recorded");
        };
        assert_eq!(record.state, next_state, "case {index}");
        let written: Vec<Option<String>> = webhooks
            .deliveries(
                tenant,
                &DeliveryFilter {
                    task_id: Some(task.id),
                    limit: 100,
                    ..DeliveryFilter::default()
                },
            )
            .await
            .expect("deliveries")
            .into_iter()
            .map(|delivery| delivery.endpoint_id.map(|id| id.to_string()))
            .collect();
        assert_eq!(written, expected, "case {index}");
        let kinds: Vec<String> = repo
            .events(task.id, None)
            .await
            .expect("events")
            .into_iter()
            .map(|event| event.kind)
            .collect();
        assert_eq!(kinds, ["created", "state", "state"], "case {index}");
    }
}

crate::helpers::on_both_databases!(
    every_terminal_path_writes_its_deliveries,
    only_due_deliveries_are_written,
);
