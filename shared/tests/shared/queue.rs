//! The queue contract, run against every backend: Redis, and the database queue on
//! SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use chrono::Utc;
use operator_shared::domain::{Priority, TaskId, TenantId};
use operator_shared::queue::{Dispatch, SharedQueue};

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

fn dispatch(priority: Priority) -> Dispatch {
    Dispatch {
        task_id: TaskId::new(),
        tenant: TenantId::default_tenant(),
        priority,
        not_before: None,
    }
}

async fn claims_highest_priority_first_then_oldest(queue: SharedQueue) {
    let normal_first = dispatch(Priority::Normal);
    let low = dispatch(Priority::Low);
    let high = dispatch(Priority::High);
    let normal_second = dispatch(Priority::Normal);
    for job in [&normal_first, &low, &high, &normal_second] {
        assert!(queue.enqueue(job).await.expect("enqueue"));
        // Distinct enqueue times, so "oldest" is well defined on every backend.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut order = Vec::new();
    while let Some(claim) = queue.claim("w", LEASE, NO_WAIT).await.expect("claim") {
        order.push(claim.task_id);
    }
    assert_eq!(
        order,
        vec![
            high.task_id,
            normal_first.task_id,
            normal_second.task_id,
            low.task_id
        ]
    );
}

async fn enqueue_is_idempotent(queue: SharedQueue) {
    let job = dispatch(Priority::Normal);
    assert!(queue.enqueue(&job).await.expect("enqueue"));
    assert!(
        !queue.enqueue(&job).await.expect("enqueue again"),
        "already waiting"
    );
    let claim = queue
        .claim("w", LEASE, NO_WAIT)
        .await
        .expect("claim")
        .expect("a task");
    assert!(
        !queue.enqueue(&job).await.expect("enqueue while leased"),
        "already leased"
    );
    assert_eq!(queue.stats().await.expect("stats").leased, 1);
    assert!(
        queue
            .claim("w", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none(),
        "no duplicate"
    );
    assert!(queue.ack(&claim).await.expect("ack"));
    assert_eq!(queue.stats().await.expect("stats"), Default::default());
}

async fn an_expired_lease_moves_to_a_new_owner_and_the_old_token_is_refused(queue: SharedQueue) {
    let job = dispatch(Priority::Normal);
    queue.enqueue(&job).await.expect("enqueue");
    let first = queue
        .claim("first", Duration::from_millis(300), NO_WAIT)
        .await
        .expect("claim")
        .expect("a task");
    assert!(
        queue
            .claim("second", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none(),
        "lease is live"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = queue
        .claim("second", LEASE, NO_WAIT)
        .await
        .expect("claim")
        .expect("the expired task is claimable again");
    assert_eq!(second.task_id, job.task_id);
    assert_ne!(second.token, first.token);
    assert_eq!(
        queue.renew(&first, LEASE).await.expect("renew"),
        None,
        "old lease is gone"
    );
    assert!(
        !queue.ack(&first).await.expect("ack"),
        "old owner cannot ack"
    );
    assert!(
        !queue.requeue(&first, None).await.expect("requeue"),
        "old owner cannot requeue"
    );
    assert!(queue.renew(&second, LEASE).await.expect("renew").is_some());
    assert!(queue.ack(&second).await.expect("ack"));
    assert!(
        queue
            .claim("third", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none()
    );
}

async fn a_renewed_lease_is_kept(queue: SharedQueue) {
    queue
        .enqueue(&dispatch(Priority::Normal))
        .await
        .expect("enqueue");
    let lease = Duration::from_millis(600);
    let claim = queue
        .claim("w", lease, NO_WAIT)
        .await
        .expect("claim")
        .expect("a task");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let until = queue
            .renew(&claim, lease)
            .await
            .expect("renew")
            .expect("still ours");
        assert!(until > Utc::now());
    }
    assert!(
        queue
            .claim("thief", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none(),
        "a renewed lease is never taken over"
    );
}

async fn delayed_tasks_wait_until_due(queue: SharedQueue) {
    let mut job = dispatch(Priority::High);
    job.not_before = Some(Utc::now() + chrono::Duration::milliseconds(600));
    queue.enqueue(&job).await.expect("enqueue");
    assert!(
        queue
            .claim("w", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none(),
        "not due yet"
    );
    assert_eq!(queue.stats().await.expect("stats").delayed, 1);
    let claim = queue
        .claim("w", LEASE, Duration::from_secs(5))
        .await
        .expect("claim")
        .expect("due within the wait");
    assert_eq!(claim.task_id, job.task_id);
    assert!(
        Utc::now() >= job.not_before.expect("set"),
        "not before its time"
    );
}

async fn requeue_puts_a_task_back_after_its_delay(queue: SharedQueue) {
    let job = dispatch(Priority::Normal);
    queue.enqueue(&job).await.expect("enqueue");
    let claim = queue
        .claim("w", LEASE, NO_WAIT)
        .await
        .expect("claim")
        .expect("a task");
    let not_before = Utc::now() + chrono::Duration::milliseconds(400);
    assert!(
        queue
            .requeue(&claim, Some(not_before))
            .await
            .expect("requeue")
    );
    assert!(
        queue
            .claim("w", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none()
    );
    let again = queue
        .claim("w", LEASE, Duration::from_secs(5))
        .await
        .expect("claim")
        .expect("back after the delay");
    assert_eq!(again.task_id, job.task_id);
    assert!(Utc::now() >= not_before);
}

async fn remove_takes_off_waiting_tasks_but_not_leased_ones(queue: SharedQueue) {
    let leased = dispatch(Priority::High);
    let waiting = dispatch(Priority::Normal);
    queue.enqueue(&leased).await.expect("enqueue");
    queue.enqueue(&waiting).await.expect("enqueue");
    let claim = queue
        .claim("w", LEASE, NO_WAIT)
        .await
        .expect("claim")
        .expect("a task");
    assert_eq!(claim.task_id, leased.task_id);
    assert!(
        !queue.remove(leased.task_id).await.expect("remove"),
        "its worker decides"
    );
    assert!(queue.remove(waiting.task_id).await.expect("remove"));
    assert!(
        queue
            .claim("w", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none()
    );
    assert!(queue.ack(&claim).await.expect("ack"));
}

async fn an_idle_claim_wakes_when_work_arrives(queue: SharedQueue) {
    let waiter = {
        let queue = SharedQueue::clone(&queue);
        tokio::spawn(async move {
            let claim = queue.claim("w", LEASE, Duration::from_secs(10)).await;
            (claim, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = dispatch(Priority::Normal);
    let enqueued_at = Instant::now();
    queue.enqueue(&job).await.expect("enqueue");
    let (claim, claimed_at) = waiter.await.expect("join");
    assert_eq!(claim.expect("claim").expect("a task").task_id, job.task_id);
    // Woken by the enqueue, not by the end of its 10 s wait.
    assert!(claimed_at.duration_since(enqueued_at) < Duration::from_secs(2));
}

async fn enqueue_many_reports_what_was_new(queue: SharedQueue) {
    let jobs: Vec<Dispatch> = (0..20).map(|_| dispatch(Priority::Normal)).collect();
    queue.enqueue(&jobs[0]).await.expect("enqueue");
    assert_eq!(queue.enqueue_many(&jobs).await.expect("enqueue many"), 19);
    assert_eq!(queue.stats().await.expect("stats").ready, 20);
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let queue = crate::helpers::redis_queue().await;
                    super::$name(queue.queue()).await;
                }
            )*
        }
        mod database_backend_on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let queue = crate::helpers::database_queue_sqlite().await;
                    super::$name(queue.queue()).await;
                }
            )*
        }
        mod database_backend_on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let queue = crate::helpers::database_queue_postgres().await;
                    super::$name(queue.queue()).await;
                }
            )*
        }
    };
}

contract!(
    claims_highest_priority_first_then_oldest,
    enqueue_is_idempotent,
    an_expired_lease_moves_to_a_new_owner_and_the_old_token_is_refused,
    a_renewed_lease_is_kept,
    delayed_tasks_wait_until_due,
    requeue_puts_a_task_back_after_its_delay,
    remove_takes_off_waiting_tasks_but_not_leased_ones,
    an_idle_claim_wakes_when_work_arrives,
    enqueue_many_reports_what_was_new,
);
