//! Monthly usage on both databases: every creation counts (batched or not), every
//! attempt's end adds its time, and a quota of tasks holds exactly under concurrency.

use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use futures::future::join_all;
use operator_domain::{LeaseToken, NewTask, TaskOutcome, TenantId};
use operator_store::db::{FinishOutcome, RepoError, StartOutcome, TaskRepository, UsageRepository};
use operator_testkit::screenshot_task;
use serde_json::json;

/// The tenant's tasks and browser milliseconds, summed over its months (a test that
/// runs across midnight at a month's end counts in two).
async fn used(repo: &TaskRepository, tenant: &TenantId) -> (u64, u64) {
    UsageRepository::new(repo.connection().clone())
        .history(tenant, 24)
        .await
        .expect("usage")
        .iter()
        .fold((0, 0), |(tasks, ms), month| {
            (tasks + month.tasks, ms + month.browser_ms)
        })
}

fn lease() -> chrono::DateTime<Utc> {
    Utc::now() + ChronoDuration::seconds(30)
}

/// Runs `task` for about `ms` under a fresh lease and finishes it with `outcome`.
async fn run_for(repo: &TaskRepository, task: &NewTask, ms: u64, outcome: TaskOutcome) {
    let created = repo.create(task.clone()).await.expect("create");
    run_created(repo, created.id, ms, outcome).await;
}

async fn run_created(
    repo: &TaskRepository,
    id: operator_domain::TaskId,
    ms: u64,
    outcome: TaskOutcome,
) {
    let token = LeaseToken::new();
    assert!(matches!(
        repo.start_attempt(id, token, "worker", lease())
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    assert!(matches!(
        repo.finish(id, token, outcome).await.expect("finish"),
        FinishOutcome::Recorded(_)
    ));
}

fn succeeded() -> TaskOutcome {
    TaskOutcome::Succeeded {
        result: json!({}),
        artifacts: Vec::new(),
    }
}

async fn creations_and_attempts_are_counted_per_tenant(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let other = TenantId::parse("usage-other").expect("tenant");
    for _ in 0..3 {
        repo.create(screenshot_task(&tenant)).await.expect("create");
    }
    // Concurrent creations of two tenants: on PostgreSQL one batch statement.
    let concurrent = join_all((0..6).map(|index| {
        let tenant = if index % 3 == 0 { &other } else { &tenant };
        repo.create(screenshot_task(tenant))
    }))
    .await;
    assert!(concurrent.iter().all(Result::is_ok), "{concurrent:?}");
    assert_eq!(used(&repo, &tenant).await.0, 7);
    assert_eq!(used(&repo, &other).await.0, 2);

    // A retried attempt and the successful one both count their time.
    let before = used(&repo, &tenant).await.1;
    let created = repo.create(screenshot_task(&tenant)).await.expect("create");
    run_created(
        &repo,
        created.id,
        300,
        TaskOutcome::Retry {
            error: operator_domain::error::CodedError::new(
                operator_domain::error::ErrorCode::NavigationFailed,
                "refused",
            ),
            run_at: Utc::now(),
        },
    )
    .await;
    let after_retry = used(&repo, &tenant).await.1 - before;
    assert!(
        (300..3_000).contains(&after_retry),
        "the retried attempt's ~300 ms: {after_retry}"
    );
    run_created(&repo, created.id, 200, succeeded()).await;
    let after_success = used(&repo, &tenant).await.1 - before;
    assert!(
        after_success >= after_retry + 200 && after_success < after_retry + 3_000,
        "plus the successful attempt's ~200 ms: {after_success}"
    );

    // A finish the batch leaves out (a webhook destination: the transactional path on
    // PostgreSQL too) counts the same way.
    let before = used(&repo, &tenant).await.1;
    let with_webhook = NewTask {
        webhook_url: Some("https://hooks.example.com/done".to_owned()),
        ..screenshot_task(&tenant)
    };
    run_for(&repo, &with_webhook, 150, succeeded()).await;
    let webhook_ms = used(&repo, &tenant).await.1 - before;
    assert!(
        (150..3_000).contains(&webhook_ms),
        "the attempt's ~150 ms: {webhook_ms}"
    );

    // An attempt lost to a worker that vanished is not the tenant's use.
    let before = used(&repo, &tenant).await.1;
    let created = repo.create(screenshot_task(&tenant)).await.expect("create");
    let vanished = LeaseToken::new();
    let expired = Utc::now() - ChronoDuration::seconds(1);
    repo.start_attempt(created.id, vanished, "vanished", expired)
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(400)).await;
    run_created(&repo, created.id, 0, succeeded()).await;
    let taken_over = used(&repo, &tenant).await.1 - before;
    assert!(
        taken_over < 300,
        "only the attempt that finished counts, not the vanished one's ~400 ms: {taken_over}"
    );
    assert_eq!(
        used(&repo, &other).await.1,
        0,
        "the other tenant ran nothing"
    );
}

async fn a_monthly_quota_of_tasks_holds_exactly_under_concurrency(repo: TaskRepository) {
    let tenant = TenantId::parse("usage-quota").expect("tenant");
    let keyed = NewTask {
        idempotency_key: Some("first".to_owned()),
        request_hash: Some("hash-of-first".to_owned()),
        ..screenshot_task(&tenant)
    };
    let first = repo
        .submit_within(keyed.clone(), Some(4))
        .await
        .expect("the first");
    let answers =
        join_all((0..10).map(|_| repo.create_within(screenshot_task(&tenant), Some(4)))).await;
    let created = answers.iter().filter(|answer| answer.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|answer| matches!(answer, Err(RepoError::QuotaExceeded { limit: 4 })))
        .count();
    assert_eq!((created, refused), (3, 7), "{answers:?}");
    assert_eq!(used(&repo, &tenant).await.0, 4);
    let listed = repo
        .list(
            &tenant,
            &operator_domain::TaskFilter {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(listed.len(), 4, "a refused creation wrote no task");

    // A replay of an earlier submission is answered at the quota.
    let replayed = repo
        .submit_within(keyed, Some(4))
        .await
        .expect("the replay");
    match (&first, &replayed) {
        (
            operator_store::db::Submitted::Created(first),
            operator_store::db::Submitted::Replayed(again),
        ) => assert_eq!(first.id, again.id),
        other => panic!("a replay: {other:?}"),
    }
    // A raised quota admits more; a quota of 0 admits none; other tenants count alone.
    repo.create_within(screenshot_task(&tenant), Some(5))
        .await
        .expect("within the raised quota");
    assert!(matches!(
        repo.create_within(screenshot_task(&tenant), Some(0)).await,
        Err(RepoError::QuotaExceeded { limit: 0 })
    ));
    repo.create_within(screenshot_task(&TenantId::default_tenant()), Some(1))
        .await
        .expect("another tenant's first");
    assert_eq!(used(&repo, &tenant).await.0, 5);
}

crate::helpers::on_both_databases!(
    creations_and_attempts_are_counted_per_tenant,
    a_monthly_quota_of_tasks_holds_exactly_under_concurrency,
);
