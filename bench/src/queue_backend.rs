//! Our Redis queue, driven only through the `Queue` trait (and `RedisQueue::connect`).
//!
//! - Throughput: N no-op tasks enqueued with `enqueue_many` (timed on its own), then W
//!   workers, each its own claim → ack loop, drain them.
//! - Pick-up latency: W workers wait blocked in `claim`; one producer enqueues one task
//!   at a time at a steady rate; latency = `claim` returned − `enqueue` called, on this
//!   process' monotonic clock.
//!
//! Workers either each connect their own `RedisQueue` (as W worker processes would:
//! separate connections, separate blocking waiters) or all share one (as the tasks of one
//! worker process do). Each run uses a fresh key prefix and deletes its keys afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use operator_config::RedisSettings;
use operator_domain::{Priority, QueueName, TaskId, TenantId};
use operator_store::queue::redis::RedisQueue;
use operator_store::queue::{Dispatch, Queue, SharedQueue};
use secrecy::SecretString;

use crate::profile::{Profile, Profiler};
use crate::stats::Latencies;

/// Longer than any run: a lease must not expire mid-bench and hand a task out twice.
const LEASE: Duration = Duration::from_secs(300);
/// How long a draining worker waits in `claim` before it looks whether the run is over.
const DRAIN_WAIT: Duration = Duration::from_millis(50);
/// How long an idle worker waits in `claim` before it calls again (the real worker's).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// `enqueue_many` batch, as the reconciler or a bulk submission would send.
const ENQUEUE_BATCH: usize = 1_000;
/// Tasks picked up before the measured ones (scripts loaded, connections warm).
const WARM_UP_TASKS: usize = 20;
/// A run that has not finished by then is stuck, not slow.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How the workers of a run reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Each worker connects its own `RedisQueue`, like separate worker processes.
    OwnConnection,
    /// All workers share one `RedisQueue`, like the concurrent tasks of one process.
    Shared,
}

impl Sharing {
    pub fn label(self) -> &'static str {
        match self {
            Self::OwnConnection => "own queue each",
            Self::Shared => "one shared queue",
        }
    }
}

/// Throughput run figures.
#[derive(Debug)]
pub struct DrainOutcome {
    pub tasks: usize,
    pub enqueue_elapsed: Duration,
    pub drain_elapsed: Duration,
    pub enqueue_profile: Profile,
    pub drain_profile: Profile,
}

/// Pick-up latency run figures.
#[derive(Debug)]
pub struct PickupOutcome {
    pub latencies: Latencies,
    pub profile: Profile,
}

/// Redis settings with a key prefix of this run's own.
pub fn run_settings(redis_url: &str) -> RedisSettings {
    RedisSettings {
        url: Some(SecretString::from(redis_url.to_owned())),
        key_prefix: format!("bench_{}", uuid::Uuid::new_v4().simple()),
        command_timeout: Duration::from_secs(10),
    }
}

fn no_op_task() -> Dispatch {
    Dispatch {
        queue: Default::default(),
        task_id: TaskId::new(),
        tenant: TenantId::default_tenant(),
        priority: Priority::Normal,
        not_before: None,
    }
}

/// `default`, where the tasks are, and `served - 1` empty queues after it.
fn served_queues(served: usize) -> Vec<QueueName> {
    std::iter::once(QueueName::default())
        .chain((1..served).filter_map(|index| QueueName::parse(&format!("idle-{index}")).ok()))
        .collect()
}

async fn connect_workers(
    settings: &RedisSettings,
    workers: usize,
    sharing: Sharing,
    served: usize,
) -> anyhow::Result<Vec<SharedQueue>> {
    let mut queues: Vec<SharedQueue> = Vec::with_capacity(workers);
    let serving = served_queues(served);
    match sharing {
        Sharing::OwnConnection => {
            for _ in 0..workers {
                let queue = RedisQueue::connect(settings)
                    .await?
                    .serving(serving.clone());
                queues.push(Arc::new(queue));
            }
        }
        Sharing::Shared => {
            let shared: SharedQueue =
                Arc::new(RedisQueue::connect(settings).await?.serving(serving));
            queues.extend((0..workers).map(|_| SharedQueue::clone(&shared)));
        }
    }
    Ok(queues)
}

/// Enqueues `tasks` with `enqueue_many`, then drains them with `workers` claim → ack loops
/// whose claims look at `served` queues (the tasks are all in the first).
pub async fn drain(
    redis_url: &str,
    profiler: &Profiler,
    workers: usize,
    sharing: Sharing,
    served: usize,
    tasks: usize,
) -> anyhow::Result<DrainOutcome> {
    let settings = run_settings(redis_url);
    let producer = RedisQueue::connect(&settings).await?;
    let queues = connect_workers(&settings, workers, sharing, served).await?;
    let batches: Vec<Vec<Dispatch>> = (0..tasks)
        .map(|_| no_op_task())
        .collect::<Vec<_>>()
        .chunks(ENQUEUE_BATCH)
        .map(<[Dispatch]>::to_vec)
        .collect();

    let before_enqueue = profiler.snapshot().await?;
    let enqueue_started = Instant::now();
    let mut enqueued = 0;
    for batch in &batches {
        enqueued += producer.enqueue_many(batch).await?;
    }
    let enqueue_elapsed = enqueue_started.elapsed();
    let after_enqueue = profiler.snapshot().await?;
    if enqueued != tasks {
        bail!("enqueue_many added {enqueued} of {tasks} tasks");
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let last_ack = Arc::new(Mutex::new(None::<Instant>));
    let drain_started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for (index, queue) in queues.into_iter().enumerate() {
        let acked = Arc::clone(&acked);
        let last_ack = Arc::clone(&last_ack);
        let name = format!("bench-worker-{index}");
        loops.spawn(async move {
            while acked.load(Ordering::Acquire) < tasks {
                let Some(claim) = queue.claim(&name, LEASE, DRAIN_WAIT).await? else {
                    continue;
                };
                if !queue.ack(&claim).await? {
                    bail!("the lease of {} was lost mid-run", claim.task_id);
                }
                if acked.fetch_add(1, Ordering::AcqRel) + 1 == tasks {
                    *last_ack.lock().expect("not poisoned") = Some(Instant::now());
                }
            }
            anyhow::Ok(())
        });
    }
    let joined = tokio::time::timeout(RUN_TIMEOUT, async {
        while let Some(result) = loops.join_next().await {
            result.context("a worker loop panicked")??;
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Ok(result) => result?,
        Err(_) => bail!(
            "drain stuck: {} of {tasks} acknowledged after {RUN_TIMEOUT:?}",
            acked.load(Ordering::Acquire)
        ),
    }
    let finished = last_ack
        .lock()
        .expect("not poisoned")
        .unwrap_or_else(Instant::now);
    let drain_elapsed = finished.saturating_duration_since(drain_started);
    let after_drain = profiler.snapshot().await?;
    producer.purge().await?;
    Ok(DrainOutcome {
        tasks,
        enqueue_elapsed,
        drain_elapsed,
        enqueue_profile: before_enqueue.until(&after_enqueue),
        drain_profile: after_enqueue.until(&after_drain),
    })
}

/// Shared between the producer and the workers of a pick-up run.
struct PickupBook {
    /// Enqueue instant of each measured task; warm-up tasks are not in it.
    sent: Mutex<HashMap<TaskId, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    picked_up: AtomicUsize,
}

/// Workers idle in `claim`; one task enqueued at a time at `rate` per second.
pub async fn pickup(
    redis_url: &str,
    profiler: &Profiler,
    workers: usize,
    sharing: Sharing,
    tasks: usize,
    rate: u32,
) -> anyhow::Result<PickupOutcome> {
    let settings = run_settings(redis_url);
    let producer = RedisQueue::connect(&settings).await?;
    let queues = connect_workers(&settings, workers, sharing, 1).await?;
    let book = Arc::new(PickupBook {
        sent: Mutex::new(HashMap::with_capacity(tasks)),
        latencies: Mutex::new(Vec::with_capacity(tasks)),
        picked_up: AtomicUsize::new(0),
    });
    let mut loops = tokio::task::JoinSet::new();
    for (index, queue) in queues.into_iter().enumerate() {
        let book = Arc::clone(&book);
        let name = format!("bench-worker-{index}");
        loops.spawn(pickup_loop(queue, name, book));
    }

    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    // Warm-up: scripts loaded, every worker blocked in its wait.
    for _ in 0..WARM_UP_TASKS {
        producer.enqueue(&no_op_task()).await?;
        tokio::time::sleep(interval).await;
    }
    wait_until(&book.picked_up, WARM_UP_TASKS, &mut loops).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let before = profiler.snapshot().await?;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..tasks {
        ticker.tick().await;
        let dispatch = no_op_task();
        book.sent
            .lock()
            .expect("not poisoned")
            .insert(dispatch.task_id, Instant::now());
        producer.enqueue(&dispatch).await?;
    }
    wait_until(&book.picked_up, WARM_UP_TASKS + tasks, &mut loops).await?;
    let after = profiler.snapshot().await?;
    loops.abort_all();
    producer.purge().await?;
    let samples = std::mem::take(&mut *book.latencies.lock().expect("not poisoned"));
    Ok(PickupOutcome {
        latencies: Latencies::from_samples(samples),
        profile: before.until(&after),
    })
}

/// One idle worker: claims, notes the latency of measured tasks, acks; until aborted.
async fn pickup_loop(
    queue: SharedQueue,
    name: String,
    book: Arc<PickupBook>,
) -> anyhow::Result<()> {
    loop {
        let Some(claim) = queue.claim(&name, LEASE, IDLE_WAIT).await? else {
            continue;
        };
        let picked_up_at = Instant::now();
        let sent_at = book
            .sent
            .lock()
            .expect("not poisoned")
            .remove(&claim.task_id);
        if let Some(sent_at) = sent_at {
            book.latencies
                .lock()
                .expect("not poisoned")
                .push(picked_up_at.saturating_duration_since(sent_at));
        }
        queue.ack(&claim).await?;
        book.picked_up.fetch_add(1, Ordering::AcqRel);
    }
}

/// Waits until `counter` reaches `target`, failing early when a worker loop failed.
async fn wait_until(
    counter: &AtomicUsize,
    target: usize,
    loops: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while counter.load(Ordering::Acquire) < target {
        if let Ok(Some(joined)) =
            tokio::time::timeout(Duration::from_millis(5), loops.join_next()).await
        {
            joined.context("a worker loop panicked")??;
            bail!("a worker loop stopped early");
        }
        if Instant::now() > deadline {
            bail!(
                "stuck: {} of {target} picked up after {RUN_TIMEOUT:?}",
                counter.load(Ordering::Acquire)
            );
        }
    }
    Ok(())
}
