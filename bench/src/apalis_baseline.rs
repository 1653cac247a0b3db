//! The same workload through apalis-redis 1.0, on the same Redis, as the baseline.
//!
//! Each worker is an apalis worker with its own `RedisStorageFactory` (its own
//! connection and pub/sub subscription, like a separate process): the set-up apalis-redis
//! offers for waking idle workers on a push. Everything else is apalis-redis' default:
//! fetches of up to 10 tasks per round trip, task locks, results kept.
//!
//! Two behaviours of apalis-redis 1.0.0 shape what can be measured (read in its
//! `queries/push_tasks.rs`, `lua/batch_push.lua` and `lua/fetch_next.lua`):
//! - every push is stored as *scheduled* (its run time is raised to "now" in whole
//!   seconds, and any run time > 0 goes to the scheduled set), so the "available" event
//!   that wakes idle workers is never published: an idle worker finds new work only at
//!   its next heartbeat (30 s by default), which the pick-up latency shows;
//! - a fetch promotes every due scheduled task with one `RPUSH … unpack(ids)`, which
//!   fails past Lua's ~8000 unpack limit: with more than that pushed before workers
//!   start, the workers die on their first fetch. The drain therefore pushes at most
//!   [`MAX_DRAIN_TASKS`].
//!
//! A job is a `u64`: for the latency run, microseconds since the run's start when it was
//! pushed, so the handler can tell how long it waited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apalis::prelude::{BackendFactory, BoxDynError, Data, TaskSink, WorkerBuilder};
use apalis_redis::factory::RedisStorageFactory;
use apalis_redis::{Client, Config, RedisStorage};
use tokio_util::sync::CancellationToken;

use crate::profile::{Profile, Profiler};
use crate::stats::Latencies;

const ENQUEUE_BATCH: usize = 1_000;
/// Below the Lua unpack limit that the first fetch's promotion of due tasks hits.
pub const MAX_DRAIN_TASKS: usize = 5_000;
const WARM_UP_TASKS: usize = 20;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct DrainOutcome {
    pub tasks: usize,
    pub enqueue_elapsed: Duration,
    pub drain_elapsed: Duration,
    pub drain_profile: Profile,
}

#[derive(Debug)]
pub struct PickupOutcome {
    pub latencies: Latencies,
    pub profile: Profile,
}

/// What the handlers of a run share.
struct Book {
    /// The run's clock origin; jobs carry their push time relative to it.
    origin: Instant,
    /// Whether jobs carry push times to measure (the latency run) or not (throughput).
    measure: bool,
    handled: AtomicUsize,
    last_handled: Mutex<Option<Instant>>,
    latencies: Mutex<Vec<Duration>>,
}

async fn no_op(pushed_at_micros: u64, book: Data<Arc<Book>>) -> Result<(), BoxDynError> {
    let now = Instant::now();
    if book.measure && pushed_at_micros > 0 {
        let pushed_at = book.origin + Duration::from_micros(pushed_at_micros);
        book.latencies
            .lock()
            .map_err(|_| "latency book poisoned")?
            .push(now.saturating_duration_since(pushed_at));
    }
    book.handled.fetch_add(1, Ordering::AcqRel);
    *book.last_handled.lock().map_err(|_| "book poisoned")? = Some(now);
    Ok(())
}

/// A queue name of this run's own (no `:`: apalis-redis routes pub/sub by it).
fn run_config() -> Config {
    Config::default().queue(format!("bench_apalis_{}", uuid::Uuid::new_v4().simple()))
}

/// `redis_url` asking for the RESP3 protocol.
fn resp3_url(redis_url: &str) -> String {
    let separator = if redis_url.contains('?') { '&' } else { '?' };
    format!("{redis_url}{separator}protocol=resp3")
}

/// Starts `workers` apalis workers on `config`'s queue; they stop when `stop` fires.
async fn start_workers(
    redis_url: &str,
    config: &Config,
    workers: usize,
    book: &Arc<Book>,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<()>>> {
    let mut running = tokio::task::JoinSet::new();
    for index in 0..workers {
        // The factory's wake-ups are RESP3 push messages.
        let client = Client::open(resp3_url(redis_url))?;
        let mut factory = RedisStorageFactory::new(client).await?;
        let backend = BackendFactory::<u64>::create_with_config(&mut factory, config.clone())?;
        let worker = WorkerBuilder::new(format!("bench-apalis-{index}"))
            .backend(backend)
            .data(Arc::clone(book))
            .build(no_op);
        let stopped = stop.clone();
        running.spawn(async move {
            worker
                .run_until(async move {
                    stopped.cancelled().await;
                    Ok::<(), std::io::Error>(())
                })
                .await
                .context("apalis worker failed")
        });
    }
    Ok(running)
}

async fn stop_workers(
    stop: CancellationToken,
    mut running: tokio::task::JoinSet<anyhow::Result<()>>,
) {
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        running.abort_all();
    }
}

async fn wait_for(book: &Book, target: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while book.handled.load(Ordering::Acquire) < target {
        if Instant::now() > deadline {
            bail!(
                "apalis-redis stuck: {} of {target} handled after {RUN_TIMEOUT:?}",
                book.handled.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn new_book(measure: bool) -> Arc<Book> {
    Arc::new(Book {
        origin: Instant::now(),
        measure,
        handled: AtomicUsize::new(0),
        last_handled: Mutex::new(None),
        latencies: Mutex::new(Vec::new()),
    })
}

/// Pushes `tasks` in bulk, then `workers` apalis workers drain them.
pub async fn drain(
    redis_url: &str,
    profiler: &Profiler,
    workers: usize,
    tasks: usize,
) -> anyhow::Result<DrainOutcome> {
    let tasks = tasks.min(MAX_DRAIN_TASKS);
    let config = run_config();
    let connection = apalis_redis::connect(redis_url).await?;
    let mut producer = RedisStorage::<u64>::new(connection).with_config(config.clone());
    let enqueue_started = Instant::now();
    let mut remaining = tasks;
    while remaining > 0 {
        let batch = remaining.min(ENQUEUE_BATCH);
        producer
            .push_bulk(vec![0; batch])
            .await
            .map_err(|error| anyhow::anyhow!("apalis-redis push_bulk: {error}"))?;
        remaining -= batch;
    }
    let enqueue_elapsed = enqueue_started.elapsed();

    let book = new_book(false);
    let stop = CancellationToken::new();
    let before = profiler.snapshot().await?;
    let drain_started = Instant::now();
    let running = start_workers(redis_url, &config, workers, &book, &stop).await?;
    let waited = wait_for(&book, tasks).await;
    let finished = book
        .last_handled
        .lock()
        .expect("not poisoned")
        .unwrap_or_else(Instant::now);
    let after = profiler.snapshot().await?;
    stop_workers(stop, running).await;
    waited?;
    Ok(DrainOutcome {
        tasks,
        enqueue_elapsed,
        drain_elapsed: finished.saturating_duration_since(drain_started),
        drain_profile: before.until(&after),
    })
}

async fn push_one(producer: &mut RedisStorage<u64>, job: u64) -> anyhow::Result<()> {
    producer
        .push(job)
        .await
        .map_err(|error| anyhow::anyhow!("apalis-redis push: {error}"))
}

/// Idle apalis workers; one job pushed at a time at `rate` per second.
pub async fn pickup(
    redis_url: &str,
    profiler: &Profiler,
    workers: usize,
    tasks: usize,
    rate: u32,
) -> anyhow::Result<PickupOutcome> {
    let config = run_config();
    let connection = apalis_redis::connect(redis_url).await?;
    let mut producer = RedisStorage::<u64>::new(connection).with_config(config.clone());
    let book = new_book(true);
    let stop = CancellationToken::new();
    let running = start_workers(redis_url, &config, workers, &book, &stop).await?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    for _ in 0..WARM_UP_TASKS {
        push_one(&mut producer, 0).await?;
        tokio::time::sleep(interval).await;
    }
    wait_for(&book, WARM_UP_TASKS).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let before = profiler.snapshot().await?;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..tasks {
        ticker.tick().await;
        // At least 1 µs: 0 marks a job that is not measured.
        let pushed_at = u64::try_from(book.origin.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        push_one(&mut producer, pushed_at).await?;
    }
    let waited = wait_for(&book, WARM_UP_TASKS + tasks).await;
    let after = profiler.snapshot().await?;
    stop_workers(stop, running).await;
    waited?;
    let samples = std::mem::take(&mut *book.latencies.lock().expect("not poisoned"));
    Ok(PickupOutcome {
        latencies: Latencies::from_samples(samples),
        profile: before.until(&after),
    })
}
