//! The queue contract, run against every backend: Redis, and the database queue on
//! SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use chrono::Utc;
use operator_domain::{Priority, QueueControls, QueueName, TaskId, TenantId};
use operator_store::queue::{Dispatch, SharedQueue};

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

fn dispatch(priority: Priority) -> Dispatch {
    dispatch_for(TenantId::default_tenant(), priority)
}

fn dispatch_for(tenant: TenantId, priority: Priority) -> Dispatch {
    Dispatch {
        queue: QueueName::default(),
        task_id: TaskId::new(),
        tenant,
        priority,
        not_before: None,
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

/// A claim that waits up to 10 s for work; yields the claim and when it returned.
fn spawn_idle_claim(
    queue: &SharedQueue,
) -> tokio::task::JoinHandle<(
    Result<Option<operator_store::queue::Claim>, operator_store::queue::QueueError>,
    Instant,
)> {
    let queue = SharedQueue::clone(queue);
    tokio::spawn(async move {
        let claim = queue.claim("w", LEASE, Duration::from_secs(10)).await;
        (claim, Instant::now())
    })
}

/// Waits until a claim of `queue` is parked waiting for work (registered for its
/// wake-up), so that what the test does next must wake it.
async fn parked(queue: &SharedQueue) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue.parked_claims() == 0 {
        assert!(Instant::now() < deadline, "no claim parked within 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn pause(queue: &SharedQueue, name: &QueueName, paused: bool) {
    let controls = QueueControls {
        paused,
        concurrency_limit: None,
    };
    queue.configure(name, controls).await.expect("configure");
}

async fn claim_now(queue: &SharedQueue) -> Option<operator_store::queue::Claim> {
    queue.claim("w", LEASE, NO_WAIT).await.expect("claim")
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
    assert_eq!(
        queue
            .stats(&QueueName::default())
            .await
            .expect("stats")
            .leased,
        1
    );
    assert!(
        queue
            .claim("w", LEASE, NO_WAIT)
            .await
            .expect("claim")
            .is_none(),
        "no duplicate"
    );
    assert!(queue.ack(&claim).await.expect("ack"));
    assert_eq!(
        queue.stats(&QueueName::default()).await.expect("stats"),
        Default::default()
    );
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
    assert_eq!(
        queue
            .stats(&QueueName::default())
            .await
            .expect("stats")
            .delayed,
        1
    );
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
        !queue
            .remove(&QueueName::default(), leased.task_id)
            .await
            .expect("remove"),
        "its worker decides"
    );
    assert!(
        queue
            .remove(&QueueName::default(), waiting.task_id)
            .await
            .expect("remove")
    );
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
    let waiter = spawn_idle_claim(&queue);
    parked(&queue).await;
    let job = dispatch(Priority::Normal);
    let enqueued_at = Instant::now();
    queue.enqueue(&job).await.expect("enqueue");
    let (claim, claimed_at) = waiter.await.expect("join");
    assert_eq!(claim.expect("claim").expect("a task").task_id, job.task_id);
    // Woken by the enqueue, not by the end of its 10 s wait.
    assert!(claimed_at.duration_since(enqueued_at) < Duration::from_millis(500));
}

async fn enqueue_many_reports_what_was_new(queue: SharedQueue) {
    let jobs: Vec<Dispatch> = (0..20).map(|_| dispatch(Priority::Normal)).collect();
    queue.enqueue(&jobs[0]).await.expect("enqueue");
    assert_eq!(queue.enqueue_many(&jobs).await.expect("enqueue many"), 19);
    assert_eq!(
        queue
            .stats(&QueueName::default())
            .await
            .expect("stats")
            .ready(),
        20
    );
}

async fn a_high_task_behind_ten_thousand_normal_ones_starts_next(queue: SharedQueue) {
    let backlog: Vec<Dispatch> = (0..10_000).map(|_| dispatch(Priority::Normal)).collect();
    assert_eq!(
        queue.enqueue_many(&backlog).await.expect("enqueue many"),
        10_000
    );
    let urgent = dispatch(Priority::High);
    queue.enqueue(&urgent).await.expect("enqueue");
    let claim = claim_now(&queue).await.expect("a task");
    assert_eq!(claim.task_id, urgent.task_id);
    assert_eq!(claim.priority, Priority::High);
    let next = claim_now(&queue).await.expect("a task");
    assert_eq!(
        next.task_id, backlog[0].task_id,
        "then the oldest normal one"
    );
}

async fn tenants_take_turns(queue: SharedQueue) {
    let flood: Vec<Dispatch> = (0..10_000)
        .map(|_| dispatch_for(tenant("flooder"), Priority::Normal))
        .collect();
    queue.enqueue_many(&flood).await.expect("enqueue many");
    tokio::time::sleep(Duration::from_millis(3)).await;
    let single = dispatch_for(tenant("quiet"), Priority::Normal);
    queue.enqueue(&single).await.expect("enqueue");
    let mut claimed = Vec::new();
    for _ in 0..2 {
        claimed.push(claim_now(&queue).await.expect("a task"));
    }
    assert!(
        claimed.iter().any(|claim| claim.task_id == single.task_id),
        "the quiet tenant's one task runs within the first two claims, not after 10,000"
    );
    // Two tenants with backlogs alternate.
    let more: Vec<Dispatch> = (0..10)
        .map(|_| dispatch_for(tenant("quiet"), Priority::Normal))
        .collect();
    queue.enqueue_many(&more).await.expect("enqueue many");
    let mut tenants = Vec::new();
    for _ in 0..6 {
        tenants.push(claim_now(&queue).await.expect("a task").tenant);
    }
    let flooder_turns = tenants
        .iter()
        .filter(|tenant| tenant.as_str() == "flooder")
        .count();
    assert_eq!(flooder_turns, 3, "turns alternate: {tenants:?}");
}

async fn a_higher_priority_goes_first_across_tenants(queue: SharedQueue) {
    let normal: Vec<Dispatch> = (0..50)
        .map(|_| dispatch_for(tenant("busy"), Priority::Normal))
        .collect();
    queue.enqueue_many(&normal).await.expect("enqueue many");
    let low = dispatch_for(tenant("other"), Priority::Low);
    let high = dispatch_for(tenant("other"), Priority::High);
    queue.enqueue(&low).await.expect("enqueue");
    queue.enqueue(&high).await.expect("enqueue");
    assert_eq!(
        claim_now(&queue).await.expect("a task").task_id,
        high.task_id
    );
}

async fn a_paused_queue_hands_out_nothing_until_resumed(queue: SharedQueue) {
    let job = dispatch(Priority::Normal);
    queue.enqueue(&job).await.expect("enqueue");
    pause(&queue, &QueueName::default(), true).await;
    assert!(claim_now(&queue).await.is_none(), "paused");
    let stats = queue.stats(&QueueName::default()).await.expect("stats");
    assert!(stats.paused);
    assert_eq!(stats.ready(), 1, "the task stays queued");
    let waiter = spawn_idle_claim(&queue);
    parked(&queue).await;
    let resumed_at = Instant::now();
    pause(&queue, &QueueName::default(), false).await;
    let (claim, claimed_at) = waiter.await.expect("join");
    assert_eq!(claim.expect("claim").expect("a task").task_id, job.task_id);
    assert!(
        claimed_at.duration_since(resumed_at) < Duration::from_millis(500),
        "an idle worker wakes on resume"
    );
    assert!(
        !queue
            .stats(&QueueName::default())
            .await
            .expect("stats")
            .paused
    );
}

async fn stats_count_by_priority_and_age(queue: SharedQueue) {
    let started = Utc::now();
    for priority in [
        Priority::High,
        Priority::Normal,
        Priority::Normal,
        Priority::Low,
    ] {
        queue.enqueue(&dispatch(priority)).await.expect("enqueue");
    }
    let mut later = dispatch(Priority::High);
    later.not_before = Some(Utc::now() + chrono::Duration::seconds(60));
    queue.enqueue(&later).await.expect("enqueue");
    let claim = claim_now(&queue).await.expect("a task");
    assert_eq!(claim.priority, Priority::High);
    let stats = queue.stats(&QueueName::default()).await.expect("stats");
    assert_eq!(
        (
            stats.ready_by_priority.high,
            stats.ready_by_priority.normal,
            stats.ready_by_priority.low
        ),
        (0, 2, 1)
    );
    assert_eq!((stats.delayed, stats.leased), (1, 1));
    let oldest = stats.oldest_ready_at.expect("something waits");
    assert!(
        oldest >= started - chrono::Duration::seconds(1) && oldest <= Utc::now(),
        "oldest ready at {oldest}, test started at {started}"
    );
}

macro_rules! contract {
    ($limits:expr; $($name:ident),* $(,)?) => {
        contract!($limits, vec![operator_domain::QueueName::default()]; $($name),*);
    };
    ($limits:expr, $serves:expr; $($name:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let queue = crate::helpers::redis_queue($limits, $serves).await;
                    super::$name(queue.queue()).await;
                }
            )*
        }
        mod database_backend_on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let queue = crate::helpers::database_queue_sqlite($limits, $serves).await;
                    super::$name(queue.queue()).await;
                }
            )*
        }
        mod database_backend_on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let queue = crate::helpers::database_queue_postgres($limits, $serves).await;
                    super::$name(queue.queue()).await;
                }
            )*
        }
    };
}

contract!(
    operator_store::queue::QueueLimits::default();
    claims_highest_priority_first_then_oldest,
    enqueue_is_idempotent,
    an_expired_lease_moves_to_a_new_owner_and_the_old_token_is_refused,
    a_renewed_lease_is_kept,
    delayed_tasks_wait_until_due,
    requeue_puts_a_task_back_after_its_delay,
    remove_takes_off_waiting_tasks_but_not_leased_ones,
    an_idle_claim_wakes_when_work_arrives,
    enqueue_many_reports_what_was_new,
    a_high_task_behind_ten_thousand_normal_ones_starts_next,
    tenants_take_turns,
    a_higher_priority_goes_first_across_tenants,
    a_paused_queue_hands_out_nothing_until_resumed,
    stats_count_by_priority_and_age,
);

/// Contract tests that need limits build their queue with them.
mod limited {
    use super::*;

    async fn a_tenant_never_runs_more_than_its_limit(queue: SharedQueue) {
        let busy: Vec<Dispatch> = (0..5)
            .map(|_| dispatch_for(tenant("busy"), Priority::Normal))
            .collect();
        queue.enqueue_many(&busy).await.expect("enqueue many");
        tokio::time::sleep(Duration::from_millis(3)).await;
        let other = dispatch_for(tenant("other"), Priority::Normal);
        queue.enqueue(&other).await.expect("enqueue");
        let mut held = Vec::new();
        while let Some(claim) = claim_now(&queue).await {
            held.push(claim);
        }
        let busy_held: Vec<_> = held
            .iter()
            .filter(|claim| claim.tenant.as_str() == "busy")
            .collect();
        assert_eq!(busy_held.len(), 2, "limit 2 per tenant");
        assert!(held.iter().any(|claim| claim.task_id == other.task_id));
        assert!(queue.ack(busy_held[0]).await.expect("ack"));
        let next = claim_now(&queue).await.expect("a slot opened");
        assert_eq!(next.tenant.as_str(), "busy");
        assert!(claim_now(&queue).await.is_none(), "back at the limit");
    }

    async fn the_global_cap_holds_claims_back(queue: SharedQueue) {
        for index in 0..4 {
            let name = format!("tenant-{index}");
            queue
                .enqueue(&dispatch_for(tenant(&name), Priority::Normal))
                .await
                .expect("enqueue");
        }
        let first = claim_now(&queue).await.expect("a task");
        let second = claim_now(&queue).await.expect("a task");
        assert_ne!(first.task_id, second.task_id);
        // Four tenants with one task each: only the global cap can stop the third.
        assert!(claim_now(&queue).await.is_none(), "global cap of 2 reached");
        assert!(queue.requeue(&first, None).await.expect("requeue"));
        let third = claim_now(&queue).await.expect("a slot opened");
        // An idle claimer held back by the cap wakes when a task ends.
        let waiter = spawn_idle_claim(&queue);
        parked(&queue).await;
        let acked_at = Instant::now();
        assert!(queue.ack(&third).await.expect("ack"));
        let (claim, claimed_at) = waiter.await.expect("join");
        assert!(claim.expect("claim").is_some());
        assert!(
            claimed_at.duration_since(acked_at) < Duration::from_millis(500),
            "woken by the ack"
        );
    }

    /// Eight claimers at once for a tenant's two slots, twenty rounds: never more than
    /// two held.
    async fn racing_claimers_never_pass_the_limit(queue: SharedQueue) {
        let busy: Vec<Dispatch> = (0..40)
            .map(|_| dispatch_for(tenant("busy"), Priority::Normal))
            .collect();
        queue.enqueue_many(&busy).await.expect("enqueue many");
        let mut most = 0;
        for _ in 0..20 {
            let claims = futures::future::join_all((0..8).map(|_| claim_now(&queue))).await;
            let held: Vec<_> = claims.into_iter().flatten().collect();
            most = most.max(held.len());
            for claim in &held {
                assert!(queue.ack(claim).await.expect("ack"));
            }
        }
        assert_eq!(most, 2, "at most the limit of 2, and the limit reached");
    }

    /// `capped` has a cap of its own, 1, below the setting's 3: the claims stop at one
    /// of its tasks while `free` gets three; an ack opens its slot again.
    async fn a_tenants_own_cap_overrides_the_setting(queue: SharedQueue) {
        let capped: Vec<Dispatch> = (0..4)
            .map(|_| dispatch_for(tenant("capped"), Priority::Normal))
            .collect();
        let free: Vec<Dispatch> = (0..4)
            .map(|_| dispatch_for(tenant("free"), Priority::Normal))
            .collect();
        queue.enqueue_many(&capped).await.expect("enqueue");
        queue.enqueue_many(&free).await.expect("enqueue");
        let mut held = Vec::new();
        while let Some(claim) = claim_now(&queue).await {
            held.push(claim);
        }
        let of = |name: &str, held: &[operator_store::queue::Claim]| {
            held.iter()
                .filter(|claim| claim.tenant.as_str() == name)
                .count()
        };
        assert_eq!(
            (of("capped", &held), of("free", &held)),
            (1, 3),
            "its own cap for capped, the setting for free"
        );
        let capped_claim = held
            .iter()
            .find(|claim| claim.tenant.as_str() == "capped")
            .expect("a capped claim");
        assert!(queue.ack(capped_claim).await.expect("ack"));
        let next = claim_now(&queue).await.expect("its slot opened");
        assert_eq!(next.tenant.as_str(), "capped");
        assert!(claim_now(&queue).await.is_none(), "both at their caps");
    }

    mod own_caps {
        use super::*;

        const LIMITS: operator_store::queue::QueueLimits = operator_store::queue::QueueLimits {
            tenant_concurrency: 3,
            global_concurrency: 0,
        };

        #[tokio::test]
        async fn redis_backend() {
            let queue = crate::helpers::redis_queue(LIMITS, vec![QueueName::default()]).await;
            queue
                .queue()
                .limit_tenant(&tenant("capped"), Some(1))
                .await
                .expect("cap");
            a_tenants_own_cap_overrides_the_setting(queue.queue()).await;
        }

        #[tokio::test]
        async fn database_backend_on_sqlite() {
            let database = operator_testkit::TestDatabase::sqlite().await;
            let queue =
                crate::helpers::database_queue_with_a_capped_tenant(database, LIMITS, 1).await;
            a_tenants_own_cap_overrides_the_setting(queue.queue()).await;
        }

        #[tokio::test]
        async fn database_backend_on_postgres() {
            let database = operator_testkit::TestDatabase::postgres().await;
            let queue =
                crate::helpers::database_queue_with_a_capped_tenant(database, LIMITS, 1).await;
            a_tenants_own_cap_overrides_the_setting(queue.queue()).await;
        }
    }

    mod per_tenant {
        use super::*;
        contract!(
            operator_store::queue::QueueLimits { tenant_concurrency: 2, global_concurrency: 0 };
            a_tenant_never_runs_more_than_its_limit,
            racing_claimers_never_pass_the_limit,
        );
    }

    mod global {
        use super::*;
        contract!(
            operator_store::queue::QueueLimits { tenant_concurrency: 0, global_concurrency: 2 };
            the_global_cap_holds_claims_back,
        );
    }
}

/// Named queues: the queues under test serve `alpha` and `beta`, not `default`.
mod named {
    use super::*;

    pub fn name(text: &str) -> QueueName {
        QueueName::parse(text).expect("queue name")
    }

    fn dispatch_to(queue: &str, priority: Priority) -> Dispatch {
        Dispatch {
            queue: name(queue),
            ..dispatch(priority)
        }
    }

    async fn a_worker_takes_only_from_its_queues(queue: SharedQueue) {
        let elsewhere = dispatch(Priority::High);
        let alpha = dispatch_to("alpha", Priority::Normal);
        let beta = dispatch_to("beta", Priority::Low);
        for job in [&elsewhere, &alpha, &beta] {
            assert!(queue.enqueue(job).await.expect("enqueue"));
        }
        let mut claimed = Vec::new();
        while let Some(claim) = claim_now(&queue).await {
            claimed.push((claim.queue.as_str().to_owned(), claim.task_id));
            // Lease operations go to the claim's own queue.
            assert!(queue.renew(&claim, LEASE).await.expect("renew").is_some());
            assert!(queue.ack(&claim).await.expect("ack"));
        }
        claimed.sort();
        assert_eq!(
            claimed,
            vec![
                ("alpha".to_owned(), alpha.task_id),
                ("beta".to_owned(), beta.task_id)
            ],
            "the default queue's task is not this worker's, however high its priority"
        );
        let default_stats = queue.stats(&QueueName::default()).await.expect("stats");
        assert_eq!(default_stats.ready(), 1, "it waits in its own queue");
        for (queue_name, expected_ready) in [("alpha", 0), ("beta", 0)] {
            let stats = queue.stats(&name(queue_name)).await.expect("stats");
            assert_eq!((stats.ready(), stats.leased), (expected_ready, 0));
        }
    }

    async fn equal_priority_queues_take_turns(queue: SharedQueue) {
        let alpha: Vec<Dispatch> = (0..20)
            .map(|_| dispatch_to("alpha", Priority::Normal))
            .collect();
        queue.enqueue_many(&alpha).await.expect("enqueue many");
        tokio::time::sleep(Duration::from_millis(3)).await;
        let beta: Vec<Dispatch> = (0..2)
            .map(|_| dispatch_to("beta", Priority::Normal))
            .collect();
        queue.enqueue_many(&beta).await.expect("enqueue many");
        let mut first_four = Vec::new();
        for _ in 0..4 {
            let claim = claim_now(&queue).await.expect("a task");
            first_four.push(claim.queue.as_str().to_owned());
        }
        let from_beta = first_four.iter().filter(|queue| *queue == "beta").count();
        assert_eq!(
            from_beta, 2,
            "beta's two tasks are not stuck behind alpha's twenty: {first_four:?}"
        );
    }

    async fn a_higher_priority_goes_first_across_queues(queue: SharedQueue) {
        let normal: Vec<Dispatch> = (0..20)
            .map(|_| dispatch_to("alpha", Priority::Normal))
            .collect();
        queue.enqueue_many(&normal).await.expect("enqueue many");
        let high = dispatch_to("beta", Priority::High);
        queue.enqueue(&high).await.expect("enqueue");
        // alpha is first in the claimer's order, but beta's high task goes first.
        let first = claim_now(&queue).await.expect("a task");
        assert_eq!(first.task_id, high.task_id);
    }

    async fn pausing_one_queue_leaves_the_others_running(queue: SharedQueue) {
        let alpha = dispatch_to("alpha", Priority::High);
        let beta = dispatch_to("beta", Priority::Normal);
        queue.enqueue(&alpha).await.expect("enqueue");
        queue.enqueue(&beta).await.expect("enqueue");
        pause(&queue, &name("alpha"), true).await;
        assert!(queue.stats(&name("alpha")).await.expect("stats").paused);
        assert!(!queue.stats(&name("beta")).await.expect("stats").paused);
        let claim = claim_now(&queue).await.expect("beta runs");
        assert_eq!(claim.task_id, beta.task_id);
        assert!(claim_now(&queue).await.is_none(), "alpha is paused");
        let waiter = spawn_idle_claim(&queue);
        parked(&queue).await;
        let resumed_at = Instant::now();
        pause(&queue, &name("alpha"), false).await;
        let (claim, claimed_at) = waiter.await.expect("join");
        assert_eq!(
            claim.expect("claim").expect("a task").task_id,
            alpha.task_id
        );
        assert!(
            claimed_at.duration_since(resumed_at) < Duration::from_millis(500),
            "an idle worker wakes on resume"
        );
    }

    async fn a_queues_own_limit_caps_only_that_queue(queue: SharedQueue) {
        let limited = QueueControls {
            paused: false,
            concurrency_limit: Some(1),
        };
        queue
            .configure(&name("alpha"), limited)
            .await
            .expect("configure");
        for queue_name in ["alpha", "alpha", "alpha", "beta", "beta", "beta"] {
            queue
                .enqueue(&dispatch_to(queue_name, Priority::Normal))
                .await
                .expect("enqueue");
        }
        let mut held = Vec::new();
        while let Some(claim) = claim_now(&queue).await {
            held.push(claim);
        }
        let count = |held: &[operator_store::queue::Claim], queue_name: &str| {
            held.iter()
                .filter(|claim| claim.queue.as_str() == queue_name)
                .count()
        };
        assert_eq!((count(&held, "alpha"), count(&held, "beta")), (1, 3));
        let alpha_claim = held
            .iter()
            .find(|claim| claim.queue.as_str() == "alpha")
            .expect("alpha's one");
        assert!(queue.ack(alpha_claim).await.expect("ack"));
        let next = claim_now(&queue).await.expect("a slot opened");
        assert_eq!(next.queue.as_str(), "alpha");
        assert!(claim_now(&queue).await.is_none(), "back at alpha's limit");
        // Lifting the limit lets the rest go.
        let waiter = spawn_idle_claim(&queue);
        parked(&queue).await;
        queue
            .configure(&name("alpha"), QueueControls::default())
            .await
            .expect("configure");
        let (claim, _) = waiter.await.expect("join");
        assert_eq!(
            claim.expect("claim").expect("a task").queue.as_str(),
            "alpha"
        );
    }

    async fn an_idle_claim_wakes_for_any_of_its_queues(queue: SharedQueue) {
        let waiter = spawn_idle_claim(&queue);
        parked(&queue).await;
        let job = dispatch_to("beta", Priority::Normal);
        let sent_at = Instant::now();
        queue.enqueue(&job).await.expect("enqueue");
        let (claim, claimed_at) = waiter.await.expect("join");
        assert_eq!(claim.expect("claim").expect("a task").task_id, job.task_id);
        assert!(
            claimed_at.duration_since(sent_at) < Duration::from_millis(500),
            "woken by the enqueue, not found by a poll"
        );
    }

    async fn a_queue_found_empty_is_served_again_when_work_returns(queue: SharedQueue) {
        let first = dispatch_to("alpha", Priority::Normal);
        queue.enqueue(&first).await.expect("enqueue");
        let claim = claim_now(&queue).await.expect("a task");
        assert!(queue.ack(&claim).await.expect("ack"));
        assert!(
            claim_now(&queue).await.is_none(),
            "both queues are empty now"
        );
        // A delayed task in the queue that was found empty.
        let mut later = dispatch_to("alpha", Priority::Normal);
        later.not_before = Some(Utc::now() + chrono::Duration::milliseconds(300));
        queue.enqueue(&later).await.expect("enqueue");
        let claim = queue
            .claim("w", LEASE, Duration::from_secs(5))
            .await
            .expect("claim")
            .expect("the delayed task, once due");
        assert_eq!(claim.task_id, later.task_id);
        // A retry handed back with a delay.
        let retry_at = Utc::now() + chrono::Duration::milliseconds(300);
        assert!(
            queue
                .requeue(&claim, Some(retry_at))
                .await
                .expect("requeue")
        );
        assert!(claim_now(&queue).await.is_none(), "not due yet");
        let again = queue
            .claim("w", LEASE, Duration::from_secs(5))
            .await
            .expect("claim")
            .expect("the retry, once due");
        assert_eq!(again.task_id, later.task_id);
    }

    contract!(
        operator_store::queue::QueueLimits::default(),
        vec![crate::queue::named::name("alpha"), crate::queue::named::name("beta")];
        a_queue_found_empty_is_served_again_when_work_returns,
        a_worker_takes_only_from_its_queues,
        equal_priority_queues_take_turns,
        a_higher_priority_goes_first_across_queues,
        pausing_one_queue_leaves_the_others_running,
        a_queues_own_limit_caps_only_that_queue,
        an_idle_claim_wakes_for_any_of_its_queues,
    );
}
