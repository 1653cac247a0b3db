//! The task repository on SQLite and PostgreSQL: guarded writes, one terminal state,
//! pagination, tenant scoping.

use chrono::{Duration as ChronoDuration, Utc};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{
    ArtifactId, LeaseToken, NewArtifact, NewTask, TaskFilter, TaskKind, TaskOutcome, TaskState,
    TenantId,
};
use operator_store::db::{
    AgentStepWrite, CancelOutcome, FinishOutcome, LeaseRenewal, ModelUsage, Period, StartOutcome,
    Submitted, TaskRepository, UsageRepository,
};
use operator_testkit::TestDatabase;
use operator_testkit::screenshot_task;
use serde_json::json;

use crate::helpers::repository;

fn new_task(tenant: &TenantId) -> NewTask {
    screenshot_task(tenant)
}

fn soon() -> chrono::DateTime<Utc> {
    Utc::now() + ChronoDuration::seconds(30)
}

async fn pages_go_newest_first_by_cursor(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(repo.create(new_task(&tenant)).await.expect("create").id);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = repo
            .list(
                &tenant,
                &TaskFilter {
                    before,
                    limit: 2,
                    ..TaskFilter::default()
                },
            )
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        before = page.last().map(|task| task.id);
        seen.extend(page.into_iter().map(|task| task.id));
    }
    assert_eq!(seen, ids);
    let queued = repo
        .list(
            &tenant,
            &TaskFilter {
                state: Some(TaskState::Queued),
                limit: 10,
                ..TaskFilter::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(queued.len(), 5);
    let pdfs = repo
        .list(
            &tenant,
            &TaskFilter {
                kind: Some(TaskKind::Pdf),
                limit: 10,
                ..TaskFilter::default()
            },
        )
        .await
        .expect("list");
    assert!(pdfs.is_empty());
}

async fn tenants_do_not_see_each_other(repo: TaskRepository) {
    let acme = TenantId::parse("acme").expect("tenant");
    let globex = TenantId::parse("globex").expect("tenant");
    let task = repo.create(new_task(&acme)).await.expect("create");
    assert!(repo.get(&acme, task.id).await.expect("get").is_some());
    assert!(repo.get(&globex, task.id).await.expect("get").is_none());
    assert!(matches!(
        repo.cancel(&globex, task.id).await.expect("cancel"),
        CancelOutcome::NotFound
    ));
    assert!(
        repo.list(
            &globex,
            &TaskFilter {
                limit: 10,
                ..TaskFilter::default()
            }
        )
        .await
        .expect("list")
        .is_empty()
    );
}

async fn a_cancelled_task_never_starts(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let CancelOutcome::Cancelled(cancelled) = repo.cancel(&tenant, task.id).await.expect("cancel")
    else {
        panic!("a queued task is cancelled at once");
    };
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.error.expect("error").code, ErrorCode::Cancelled);
    assert!(matches!(
        repo.cancel(&tenant, task.id).await.expect("cancel again"),
        CancelOutcome::AlreadyFinished(_)
    ));
    let start = repo
        .start_attempt(task.id, LeaseToken::new(), "worker", soon())
        .await
        .expect("start");
    assert!(matches!(
        start,
        StartOutcome::Finished(TaskState::Cancelled)
    ));
    assert!(
        repo.attempts(&tenant, task.id)
            .await
            .expect("attempts")
            .is_empty(),
        "it never ran"
    );
}

async fn a_lost_lease_cannot_write_and_the_terminal_state_is_written_once(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let first = LeaseToken::new();
    // A lease that is already over: its worker died.
    let expired = Utc::now() - ChronoDuration::seconds(1);
    assert!(matches!(
        repo.start_attempt(task.id, first, "first", expired)
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    let second = LeaseToken::new();
    let StartOutcome::Started(running) = repo
        .start_attempt(task.id, second, "second", soon())
        .await
        .expect("start")
    else {
        panic!("an expired lease lets another worker start the task");
    };
    assert_eq!(running.attempts, 2);
    // The first worker comes back: nothing it writes lands.
    assert_eq!(
        repo.renew_lease(task.id, first, soon())
            .await
            .expect("renew"),
        LeaseRenewal::Lost
    );
    let late = repo
        .finish(
            task.id,
            first,
            TaskOutcome::Failed {
                error: CodedError::new(ErrorCode::BrowserError, "late"),
            },
        )
        .await
        .expect("finish");
    assert!(matches!(late, FinishOutcome::LeaseLost));
    // A third worker cannot start it while the second holds a live lease.
    assert!(matches!(
        repo.start_attempt(task.id, LeaseToken::new(), "third", soon())
            .await
            .expect("start"),
        StartOutcome::Held(_)
    ));
    let done = repo
        .finish(
            task.id,
            second,
            TaskOutcome::Succeeded {
                result: json!({"ok": true}),
                artifacts: Vec::new(),
            },
        )
        .await
        .expect("finish");
    let FinishOutcome::Recorded(done) = done else {
        panic!("the owner records the outcome")
    };
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert!(done.lease_token.is_none());
    // Written once: the owner cannot write a second terminal state either.
    let again = repo
        .finish(task.id, second, TaskOutcome::Cancelled)
        .await
        .expect("finish");
    assert!(matches!(again, FinishOutcome::LeaseLost));
    let stored = repo
        .get(&tenant, task.id)
        .await
        .expect("get")
        .expect("task");
    assert_eq!(stored.state, TaskState::Succeeded);
    let attempts = repo.attempts(&tenant, task.id).await.expect("attempts");
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|attempt| attempt.outcome.clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Some("lease_expired".to_owned()),
            Some("succeeded".to_owned())
        ]
    );
    assert_eq!(attempts[1].worker_id, "second");
}

async fn a_running_task_learns_of_its_cancellation_at_heartbeat(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let token = LeaseToken::new();
    repo.start_attempt(task.id, token, "w", soon())
        .await
        .expect("start");
    assert_eq!(
        repo.renew_lease(task.id, token, soon())
            .await
            .expect("renew"),
        LeaseRenewal::Held {
            cancel_requested: false
        }
    );
    let CancelOutcome::Requested(requested) = repo.cancel(&tenant, task.id).await.expect("cancel")
    else {
        panic!("a running task is asked to stop");
    };
    assert!(requested.cancel_requested);
    assert_eq!(requested.state, TaskState::Running);
    assert_eq!(
        repo.renew_lease(task.id, token, soon())
            .await
            .expect("renew"),
        LeaseRenewal::Held {
            cancel_requested: true
        }
    );
    let FinishOutcome::Recorded(cancelled) = repo
        .finish(task.id, token, TaskOutcome::Cancelled)
        .await
        .expect("finish")
    else {
        panic!("recorded");
    };
    assert_eq!(cancelled.state, TaskState::Cancelled);
}

async fn a_retry_goes_back_to_queued_with_its_run_time(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let token = LeaseToken::new();
    repo.start_attempt(task.id, token, "w", soon())
        .await
        .expect("start");
    let run_at = Utc::now() + ChronoDuration::seconds(5);
    let outcome = TaskOutcome::Retry {
        error: CodedError::new(ErrorCode::NavigationFailed, "refused"),
        run_at,
    };
    let FinishOutcome::Recorded(retried) =
        repo.finish(task.id, token, outcome).await.expect("finish")
    else {
        panic!("recorded");
    };
    assert_eq!(retried.state, TaskState::Queued);
    assert!((retried.run_at - run_at).num_milliseconds().abs() <= 1);
    assert_eq!(
        retried.error.expect("last error").code,
        ErrorCode::NavigationFailed
    );
    let events = repo.events(task.id, None).await.expect("events");
    let states: Vec<_> = events
        .iter()
        .filter_map(|event| event.data.get("state").cloned())
        .collect();
    assert_eq!(
        states,
        vec![json!("queued"), json!("running"), json!("queued")]
    );
}

/// Progress (with its step events) and a failed attempt's artifacts are written only
/// under the lease.
async fn progress_and_attempt_artifacts_need_the_lease(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let token = LeaseToken::new();
    assert!(matches!(
        repo.start_attempt(task.id, token, "worker", soon())
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    let click = json!({"action": "click", "ok": true});
    let progress = json!({"steps": [click.clone()]});
    assert!(
        repo.record_progress(task.id, token, &progress, vec![click.clone()])
            .await
            .expect("progress")
    );
    let log = NewArtifact {
        id: ArtifactId::new(),
        name: "network-attempt-1.json".into(),
        content_type: "application/json".into(),
        size_bytes: 2,
        storage_key: "k".into(),
        sha256: "00".into(),
    };
    assert!(
        repo.record_attempt_artifacts(task.id, token, std::slice::from_ref(&log))
            .await
            .expect("artifacts")
    );
    let stranger = LeaseToken::new();
    assert!(
        !repo
            .record_progress(
                task.id,
                stranger,
                &json!({}),
                vec![json!({"action": "press"})]
            )
            .await
            .expect("progress")
    );
    let other = NewArtifact {
        id: ArtifactId::new(),
        ..log.clone()
    };
    assert!(
        !repo
            .record_attempt_artifacts(task.id, stranger, &[other])
            .await
            .expect("artifacts")
    );
    let stored = repo
        .get(&tenant, task.id)
        .await
        .expect("get")
        .expect("task");
    assert_eq!(stored.progress, Some(progress));
    let artifacts = repo.artifacts(&tenant, task.id).await.expect("artifacts");
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].name, "network-attempt-1.json");
    let steps: Vec<_> = repo
        .events(task.id, None)
        .await
        .expect("events")
        .into_iter()
        .filter(|event| event.kind == "step")
        .map(|event| event.data)
        .collect();
    assert_eq!(steps, vec![click], "one step event, none from the stranger");
}

/// Every row a task's life writes, on both databases: PostgreSQL writes each transition
/// in one statement and SQLite in a transaction, and both must write the same rows.
async fn a_task_life_writes_its_attempts_events_and_artifacts(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let vanished = LeaseToken::new();
    let already_expired = Utc::now() - ChronoDuration::seconds(1);
    assert!(matches!(
        repo.start_attempt(task.id, vanished, "vanished-worker", already_expired)
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    let token = LeaseToken::new();
    let StartOutcome::Started(started) = repo
        .start_attempt(task.id, token, "second-worker", soon())
        .await
        .expect("take over")
    else {
        panic!("the expired lease is taken over");
    };
    assert_eq!(started.attempts, 2);
    let artifacts: Vec<NewArtifact> = ["screenshot.png", "page.html"]
        .into_iter()
        .map(|name| NewArtifact {
            id: ArtifactId::new(),
            name: name.into(),
            content_type: "application/octet-stream".into(),
            size_bytes: 1234,
            storage_key: format!("default/{}/{name}", task.id),
            sha256: "ab".repeat(32),
        })
        .collect();
    let outcome = TaskOutcome::Succeeded {
        result: json!({"title": "done"}),
        artifacts: artifacts.clone(),
    };
    let FinishOutcome::Recorded(finished) =
        repo.finish(task.id, token, outcome).await.expect("finish")
    else {
        panic!("the lease is held");
    };
    assert_eq!(finished.state, TaskState::Succeeded);
    assert_eq!(finished.attempts, 2);
    assert_eq!(finished.result, Some(json!({"title": "done"})));
    assert!(finished.finished_at.is_some() && finished.lease_token.is_none());

    let attempts = repo.attempts(&tenant, task.id).await.expect("attempts");
    let summary: Vec<_> = attempts
        .iter()
        .map(|attempt| {
            (
                attempt.attempt,
                attempt.worker_id.as_str(),
                attempt.outcome.as_deref(),
                attempt.finished_at.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "vanished-worker", Some("lease_expired"), true),
            (2, "second-worker", Some("succeeded"), true),
        ]
    );
    let events: Vec<_> = repo
        .events(task.id, None)
        .await
        .expect("events")
        .into_iter()
        .map(|event| (event.kind, event.data))
        .collect();
    let artifact_event = |artifact: &NewArtifact| {
        (
            "artifact".to_owned(),
            json!({"id": artifact.id, "name": artifact.name, "content_type": artifact.content_type, "size_bytes": 1234}),
        )
    };
    assert_eq!(
        events,
        vec![
            ("created".to_owned(), json!({"state": "queued"})),
            (
                "state".to_owned(),
                json!({"state": "running", "attempt": 1, "worker": "vanished-worker"})
            ),
            (
                "state".to_owned(),
                json!({"state": "running", "attempt": 2, "worker": "second-worker"})
            ),
            artifact_event(&artifacts[0]),
            artifact_event(&artifacts[1]),
            (
                "state".to_owned(),
                json!({"state": "succeeded", "attempt": 2})
            ),
        ]
    );
    let stored: Vec<_> = repo
        .artifacts(&tenant, task.id)
        .await
        .expect("artifacts")
        .into_iter()
        .map(|artifact| {
            (
                artifact.id,
                artifact.name,
                artifact.size_bytes,
                artifact.storage_key,
                artifact.sha256,
            )
        })
        .collect();
    let mut expected: Vec<_> = artifacts
        .iter()
        .map(|artifact| {
            (
                artifact.id,
                artifact.name.clone(),
                1234,
                artifact.storage_key.clone(),
                "ab".repeat(32),
            )
        })
        .collect();
    expected.sort_by_key(|artifact| artifact.0.as_uuid());
    assert_eq!(stored, expected);

    // A failure stores its error on the task, the attempt and the state event.
    let failing = repo.create(new_task(&tenant)).await.expect("create");
    let token = LeaseToken::new();
    repo.start_attempt(failing.id, token, "worker", soon())
        .await
        .expect("start");
    let error = CodedError::new(ErrorCode::NavigationFailed, "net::ERR_NAME_NOT_RESOLVED");
    repo.finish(failing.id, token, TaskOutcome::Failed { error })
        .await
        .expect("finish");
    let attempts = repo.attempts(&tenant, failing.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("failed"));
    assert_eq!(
        attempts[0].error.as_ref().map(|error| error.code),
        Some(ErrorCode::NavigationFailed)
    );
    let last = repo
        .events(failing.id, None)
        .await
        .expect("events")
        .pop()
        .expect("an event");
    assert_eq!(last.kind, "state");
    assert_eq!(last.data["state"], "failed");
    assert_eq!(last.data["attempt"], 1);
    assert_eq!(last.data["error"]["code"], "navigation_failed");
}

/// Many tasks created, raced for and finished at once: on PostgreSQL concurrent calls
/// are written in batches, and each caller must still get its own answer. Two workers
/// race to start each task: exactly one wins, the other learns the task is held.
async fn concurrent_calls_each_get_their_own_answer(repo: TaskRepository) {
    const TASKS: usize = 40;
    let tenant = TenantId::default_tenant();
    let created =
        futures::future::join_all((0..TASKS).map(|_| repo.create(new_task(&tenant)))).await;
    let tasks: Vec<_> = created
        .into_iter()
        .map(|task| task.expect("create"))
        .collect();
    let mut ids: Vec<_> = tasks.iter().map(|task| task.id).collect();
    ids.sort_by_key(|id| id.as_uuid());
    ids.dedup();
    assert_eq!(ids.len(), TASKS, "every create returns its own task");

    let starts = tasks.iter().flat_map(|task| {
        ["left", "right"].map(|worker| {
            let repo = repo.clone();
            let id = task.id;
            async move {
                let token = LeaseToken::new();
                let outcome = repo
                    .start_attempt(id, token, worker, soon())
                    .await
                    .expect("start");
                (id, token, worker, outcome)
            }
        })
    });
    let started = futures::future::join_all(starts).await;
    let mut winners = Vec::new();
    for (id, token, worker, outcome) in started {
        match outcome {
            StartOutcome::Started(record) => {
                assert_eq!(record.id, id);
                assert_eq!(record.lease_token, Some(token));
                assert_eq!(record.worker_id.as_deref(), Some(worker));
                winners.push((id, token));
            }
            StartOutcome::Held(_) => {}
            other => panic!("a raced start is started or held, not {other:?}"),
        }
    }
    winners.sort_by_key(|(id, _)| id.as_uuid());
    let mut won: Vec<_> = winners.iter().map(|(id, _)| *id).collect();
    won.dedup();
    assert_eq!(won.len(), TASKS, "exactly one start wins each task");
    assert_eq!(winners.len(), TASKS);

    let finishes = winners.iter().enumerate().map(|(index, (id, token))| {
        let repo = repo.clone();
        let outcome = if index % 2 == 0 {
            TaskOutcome::Succeeded {
                result: json!({"index": index}),
                artifacts: Vec::new(),
            }
        } else {
            TaskOutcome::Failed {
                error: CodedError::new(ErrorCode::NavigationFailed, format!("task {index}")),
            }
        };
        async move { (*id, index, repo.finish(*id, *token, outcome).await) }
    });
    for (id, index, finished) in futures::future::join_all(finishes).await {
        let FinishOutcome::Recorded(record) = finished.expect("finish") else {
            panic!("the winner holds the lease");
        };
        assert_eq!(record.id, id);
        if index % 2 == 0 {
            assert_eq!(record.state, TaskState::Succeeded);
            assert_eq!(record.result, Some(json!({"index": index})));
        } else {
            assert_eq!(record.state, TaskState::Failed);
            let message = record.error.map(|error| error.message);
            assert_eq!(message, Some(format!("task {index}")));
        }
        let attempts = repo.attempts(&tenant, id).await.expect("attempts");
        assert_eq!(attempts.len(), 1, "one attempt per task");
        let kinds: Vec<_> = repo
            .events(id, None)
            .await
            .expect("events")
            .into_iter()
            .map(|event| event.kind)
            .collect();
        assert_eq!(kinds, ["created", "state", "state"]);
    }
}

/// Nine submissions with one idempotency key at once (eight of one request, one of
/// another), in the same burst as three with keys of their own. On PostgreSQL they
/// reach one batch insert, which the unique key fails, and each is written again alone:
/// the key's first writer creates the task, the others get it back (the same request)
/// or are refused (another request), and the other keys' tasks are created regardless.
async fn racing_submissions_with_one_key_make_one_task(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let keyed = |key: &str, request: &str| {
        let mut task = new_task(&tenant);
        task.idempotency_key = Some(key.to_owned());
        task.request_hash = Some(request.to_owned());
        task
    };
    let mut submissions: Vec<NewTask> = (0..8).map(|_| keyed("racing", "same")).collect();
    submissions.insert(4, keyed("racing", "other"));
    submissions.extend(["own-1", "own-2", "own-3"].map(|key| keyed(key, "same")));
    let answers =
        futures::future::join_all(submissions.into_iter().map(|task| repo.submit(task))).await;
    let answers: Vec<Submitted> = answers
        .into_iter()
        .map(|answer| answer.expect("every submission gets an answer"))
        .collect();
    let (racing, own) = answers.split_at(9);
    let created: Vec<&operator_domain::TaskRecord> = racing
        .iter()
        .filter_map(|answer| match answer {
            Submitted::Created(task) => Some(task),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "one writer wins: {racing:?}");
    let winner = created[0].id;
    let other_won = matches!(&racing[4], Submitted::Created(_));
    for (index, answer) in racing.iter().enumerate() {
        let same_request = index != 4;
        match answer {
            Submitted::Created(_) => {}
            Submitted::Replayed(task) => {
                assert!(
                    same_request != other_won,
                    "a replay of the winning request: {answer:?}"
                );
                assert_eq!(task.id, winner);
            }
            Submitted::KeyReused(task) => {
                assert!(
                    same_request == other_won,
                    "another request is refused: {answer:?}"
                );
                assert_eq!(task.id, winner);
            }
        }
    }
    for answer in own {
        assert!(matches!(answer, Submitted::Created(_)), "{answer:?}");
    }
    let listed = repo
        .list(
            &tenant,
            &TaskFilter {
                limit: 50,
                ..TaskFilter::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        listed.len(),
        4,
        "one task for the key, one for each other key"
    );
}

/// An owner whose lease ran out while nobody took the task over still owns it: its
/// renewal and its finish are accepted (the token is still the task's), and the task
/// ends once.
async fn an_expired_lease_nobody_took_over_still_finishes(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let token = LeaseToken::new();
    let expired = Utc::now() - ChronoDuration::seconds(1);
    let StartOutcome::Started(_) = repo
        .start_attempt(task.id, token, "slow", expired)
        .await
        .expect("start")
    else {
        panic!("started");
    };
    assert!(matches!(
        repo.renew_lease(task.id, token, soon())
            .await
            .expect("renew"),
        LeaseRenewal::Held { .. }
    ));
    // Expired again, and still nobody else: the finish lands.
    let again = Utc::now() - ChronoDuration::seconds(1);
    repo.renew_lease(task.id, token, again)
        .await
        .expect("renew");
    let FinishOutcome::Recorded(done) = repo
        .finish(
            task.id,
            token,
            TaskOutcome::Succeeded {
                result: json!({"late": true}),
                artifacts: Vec::new(),
            },
        )
        .await
        .expect("finish")
    else {
        panic!("the uncontested owner records its outcome");
    };
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.attempts, 1);
    assert!(matches!(
        repo.start_attempt(task.id, LeaseToken::new(), "next", soon())
            .await
            .expect("start"),
        StartOutcome::Finished(TaskState::Succeeded)
    ));
}

/// The owner of an expired lease finishing at the moment another worker takes the task
/// over, twenty times: exactly one of them wins, and the rows agree with the winner.
async fn a_finish_racing_a_takeover_has_one_winner(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    for _ in 0..20 {
        let task = repo.create(new_task(&tenant)).await.expect("create");
        let late = LeaseToken::new();
        let expired = Utc::now() - ChronoDuration::seconds(1);
        repo.start_attempt(task.id, late, "late", expired)
            .await
            .expect("start");
        let taker = LeaseToken::new();
        let (finished, taken) = tokio::join!(
            repo.finish(
                task.id,
                late,
                TaskOutcome::Succeeded {
                    result: json!({"by": "late"}),
                    artifacts: Vec::new(),
                },
            ),
            repo.start_attempt(task.id, taker, "taker", soon()),
        );
        let stored = repo
            .get(&tenant, task.id)
            .await
            .expect("get")
            .expect("task");
        match (finished.expect("finish"), taken.expect("start")) {
            (FinishOutcome::Recorded(_), StartOutcome::Finished(TaskState::Succeeded)) => {
                assert_eq!(stored.state, TaskState::Succeeded);
                assert_eq!(stored.attempts, 1);
            }
            (FinishOutcome::LeaseLost, StartOutcome::Started(_)) => {
                assert_eq!(stored.state, TaskState::Running);
                assert_eq!(stored.attempts, 2);
                assert_eq!(stored.lease_token, Some(taker));
                let attempts = repo.attempts(&tenant, task.id).await.expect("attempts");
                assert_eq!(attempts[0].outcome.as_deref(), Some("lease_expired"));
            }
            other => panic!("both or neither won: {other:?}"),
        }
    }
}

fn step_write<'a>(
    progress: &'a serde_json::Value,
    checkpoint: &'a serde_json::Value,
) -> AgentStepWrite<'a> {
    AgentStepWrite {
        progress,
        step: json!({"index": checkpoint["step"], "action": "click"}),
        checkpoint,
        artifacts: &[],
        model_usage: ModelUsage {
            calls: 1,
            prompt_tokens: 100,
            completion_tokens: 20,
            cost_micro_usd: 7,
        },
    }
}

/// An agent's step lands whole under the lease (progress, its event, its screenshot and
/// the checkpoint), the checkpoint outlives a lost lease for the next attempt, and the
/// terminal state removes it.
async fn an_agent_checkpoint_is_kept_for_the_next_attempt_until_the_end(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let first = LeaseToken::new();
    let expired = Utc::now() - ChronoDuration::seconds(1);
    assert!(matches!(
        repo.start_attempt(task.id, first, "first", expired)
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    let shot = NewArtifact {
        id: ArtifactId::new(),
        name: "steps/001.jpg".into(),
        content_type: "image/jpeg".into(),
        size_bytes: 3,
        storage_key: "k1".into(),
        sha256: "00".into(),
    };
    let progress = json!({"step": 1});
    let write = |checkpoint| step_write(&progress, checkpoint);
    let checkpoint = json!({"version": 1, "step": 1});
    let with_shot = AgentStepWrite {
        artifacts: std::slice::from_ref(&shot),
        ..write(&checkpoint)
    };
    assert!(
        repo.record_agent_step(task.id, first, 1, with_shot)
            .await
            .expect("step")
    );
    assert_eq!(
        repo.checkpoint(task.id).await.expect("read"),
        Some(checkpoint.clone())
    );
    // The first worker dies; the second takes the task over and finds the checkpoint.
    let second = LeaseToken::new();
    assert!(matches!(
        repo.start_attempt(task.id, second, "second", soon())
            .await
            .expect("start"),
        StartOutcome::Started(_)
    ));
    let stale = json!({"version": 1, "step": 9});
    assert!(
        !repo
            .record_agent_step(task.id, first, 1, write(&stale))
            .await
            .expect("step"),
        "the lost lease writes nothing"
    );
    assert_eq!(
        repo.checkpoint(task.id).await.expect("read"),
        Some(checkpoint.clone())
    );
    let later = json!({"version": 1, "step": 2});
    assert!(
        repo.record_agent_step(task.id, second, 2, write(&later))
            .await
            .expect("step")
    );
    assert_eq!(
        repo.checkpoint(task.id).await.expect("read"),
        Some(later.clone())
    );
    // The two recorded steps' model use is the tenant's month's, the lost lease's is not.
    let month = UsageRepository::new(repo.connection().clone())
        .usage(&tenant, Period::containing(Utc::now()))
        .await
        .expect("usage");
    assert_eq!(
        month.model,
        ModelUsage {
            calls: 2,
            prompt_tokens: 200,
            completion_tokens: 40,
            cost_micro_usd: 14,
        }
    );
    let steps = repo
        .events(task.id, None)
        .await
        .expect("events")
        .into_iter()
        .filter(|event| event.kind == "agent_step")
        .count();
    assert_eq!(
        steps, 2,
        "one event per recorded step, none from the lost lease"
    );
    let names: Vec<_> = repo
        .artifacts(&tenant, task.id)
        .await
        .expect("artifacts")
        .into_iter()
        .map(|artifact| artifact.name)
        .collect();
    assert_eq!(names, vec!["steps/001.jpg".to_owned()]);
    repo.finish(
        task.id,
        second,
        TaskOutcome::Succeeded {
            result: json!({}),
            artifacts: Vec::new(),
        },
    )
    .await
    .expect("finish");
    assert_eq!(repo.checkpoint(task.id).await.expect("read"), None);
}

/// The agent script cache keeps one script per tenant and key, the latest written; a
/// tenant never reads another's.
async fn the_script_cache_keeps_the_latest_script_per_tenant_and_key(repo: TaskRepository) {
    let tenant = TenantId::default_tenant();
    let other = TenantId::parse("other").expect("tenant");
    let task = repo.create(new_task(&tenant)).await.expect("create");
    let key = "a".repeat(64);
    assert_eq!(repo.cached_script(&tenant, &key).await.expect("read"), None);
    let first = json!([{"action": "click", "selector": "#a"}]);
    let healed = json!([{"action": "click", "selector": "#b"}]);
    repo.cache_script(&tenant, &key, &first, task.id)
        .await
        .expect("write");
    assert_eq!(
        repo.cached_script(&tenant, &key).await.expect("read"),
        Some(first)
    );
    repo.cache_script(&tenant, &key, &healed, task.id)
        .await
        .expect("replace");
    assert_eq!(
        repo.cached_script(&tenant, &key).await.expect("read"),
        Some(healed)
    );
    assert_eq!(repo.cached_script(&other, &key).await.expect("read"), None);
    assert_eq!(
        repo.cached_script(&tenant, &"b".repeat(64))
            .await
            .expect("read"),
        None
    );
}

crate::helpers::on_both_databases!(
    an_expired_lease_nobody_took_over_still_finishes,
    a_finish_racing_a_takeover_has_one_winner,
    racing_submissions_with_one_key_make_one_task,
    pages_go_newest_first_by_cursor,
    tenants_do_not_see_each_other,
    a_cancelled_task_never_starts,
    a_lost_lease_cannot_write_and_the_terminal_state_is_written_once,
    a_running_task_learns_of_its_cancellation_at_heartbeat,
    a_retry_goes_back_to_queued_with_its_run_time,
    progress_and_attempt_artifacts_need_the_lease,
    an_agent_checkpoint_is_kept_for_the_next_attempt_until_the_end,
    the_script_cache_keeps_the_latest_script_per_tenant_and_key,
    a_task_life_writes_its_attempts_events_and_artifacts,
    concurrent_calls_each_get_their_own_answer,
);

#[tokio::test]
async fn test_databases_are_isolated() {
    let first = TestDatabase::postgres().await;
    let second = TestDatabase::postgres().await;
    assert_ne!(first.url(), second.url());
    let repo = repository(&first).await;
    repo.create(new_task(&TenantId::default_tenant()))
        .await
        .expect("create");
    let other = repository(&second).await;
    let listed = other
        .list(
            &TenantId::default_tenant(),
            &TaskFilter {
                limit: 10,
                ..TaskFilter::default()
            },
        )
        .await
        .expect("list");
    assert!(listed.is_empty());
}

/// A batch statement stuck on a row lock is cancelled at the batch statement timeout,
/// so it holds up only the task whose row is locked, not the tasks written after it
/// (each transition has one flush loop per process).
#[tokio::test]
async fn a_stuck_batch_statement_holds_up_only_its_own_task() {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let database = TestDatabase::postgres().await;
    let repo = repository(&database)
        .await
        .with_batch(operator_config::BatchSettings {
            statement_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        });
    let tenant = TenantId::default_tenant();
    let locked = repo.create(new_task(&tenant)).await.expect("create");
    let free = repo.create(new_task(&tenant)).await.expect("create");

    // Another session holds the first task's row, as a slow transaction would.
    let other =
        operator_store::db::connect_url(database.url(), 1, std::time::Duration::from_secs(10))
            .await
            .expect("connect");
    let holder = other.begin().await.expect("begin");
    holder
        .execute_unprepared(&format!(
            "SELECT 1 FROM tasks WHERE id = '{}' FOR UPDATE",
            locked.id.as_uuid()
        ))
        .await
        .expect("lock the row");

    let both = async {
        let stuck = repo.start_attempt(locked.id, LeaseToken::new(), "w1", soon());
        let after = async {
            // Queued behind the stuck statement.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            repo.start_attempt(free.id, LeaseToken::new(), "w2", soon())
                .await
        };
        tokio::join!(stuck, after)
    };
    let (stuck, after) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
        .await
        .expect("the stuck statement was cancelled; nothing waits for the lock");
    assert!(stuck.is_err(), "the locked task's start fails: {stuck:?}");
    assert!(
        matches!(after.expect("start"), StartOutcome::Started(_)),
        "the task behind it started"
    );

    holder.rollback().await.expect("release the row");
    assert!(
        matches!(
            repo.start_attempt(locked.id, LeaseToken::new(), "w1", soon())
                .await
                .expect("start"),
            StartOutcome::Started(_)
        ),
        "the task starts once its row is free"
    );
}
