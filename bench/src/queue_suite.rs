//! `just bench queue`: every queue workload in one run, printed as one table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::profile::Profiler;
use crate::queue_backend::Sharing;
use crate::redis_server::BenchRedis;
use crate::report::{self, Row};
use crate::stats::per_second;
use crate::{apalis_baseline, ceiling, end_to_end, queue_backend};

/// Queues served per claim in the many-queues rows (the tasks are all in one of them).
const SERVED_QUEUE_COUNTS: [usize; 2] = [10, 50];

/// The goals, checked at the end of the report.
const GOAL_BACKEND_TASKS_PER_SECOND: f64 = 20_000.0;
const GOAL_END_TO_END_TASKS_PER_SECOND: f64 = 2_000.0;
const GOAL_PICKUP_P50: Duration = Duration::from_millis(10);

/// What to run and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tasks per throughput run.
    pub tasks: usize,
    /// Measured tasks per pick-up latency run.
    pub pickup_tasks: usize,
    /// Tasks per second the latency producer enqueues.
    pub pickup_rate: u32,
    pub worker_counts: Vec<usize>,
    /// redis-benchmark requests per figure.
    pub ceiling_requests: u64,
    pub end_to_end_tasks: usize,
    pub end_to_end_clients: usize,
    pub end_to_end_consumers: usize,
    pub apalis: bool,
    pub ceiling: bool,
    pub end_to_end: bool,
    /// End-to-end runs with authentication on and off, in pairs (alternating which
    /// goes first); the table shows the first pair, the notes every pair's ratio.
    pub end_to_end_pairs: usize,
}

impl Options {
    /// The real measurement.
    pub fn full() -> Self {
        Self {
            tasks: 50_000,
            pickup_tasks: 2_000,
            pickup_rate: 500,
            worker_counts: vec![1, 4, 16],
            ceiling_requests: 200_000,
            end_to_end_tasks: 20_000,
            end_to_end_clients: 16,
            end_to_end_consumers: 16,
            apalis: true,
            ceiling: true,
            end_to_end: true,
            end_to_end_pairs: 3,
        }
    }

    /// Seconds instead of minutes: shows the bench works, the figures mean little.
    pub fn quick() -> Self {
        Self {
            tasks: 500,
            pickup_tasks: 50,
            pickup_rate: 200,
            worker_counts: vec![1, 4],
            ceiling_requests: 10_000,
            end_to_end_tasks: 100,
            end_to_end_clients: 4,
            end_to_end_consumers: 4,
            end_to_end_pairs: 1,
            ..Self::full()
        }
    }
}

/// The middle of sorted values (the mean of the two middle ones for an even count).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        count if count % 2 == 1 => sorted[count / 2],
        count => (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0,
    }
}

/// Throughput figures by (system, workers), to compute the ratios.
#[derive(Default)]
struct Throughputs {
    ours: HashMap<usize, f64>,
    apalis: HashMap<usize, f64>,
}

pub async fn run(options: &Options, fallback_redis_url: &str) -> anyhow::Result<()> {
    let redis = BenchRedis::start_or_shared(fallback_redis_url).await?;
    let redis_url = redis.url().to_owned();
    let profiler = Profiler::new(redis.client().await?).await?;
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut throughputs = Throughputs::default();
    let mut ceiling_script_rate = None;

    let machine = machine_line(&redis).await;
    eprintln!("bench: {machine}");

    if options.ceiling {
        progress("redis-benchmark ceiling");
        match ceiling::measure(&redis, options.ceiling_requests).await {
            Ok(figures) => {
                for figure in figures {
                    if figure.command == "EVALSHA" && figure.pipeline > 1 {
                        ceiling_script_rate = Some(figure.requests_per_second);
                    }
                    rows.push(
                        Row::new(
                            format!("redis-benchmark {} -P {}", figure.command, figure.pipeline),
                            format!("{} conn", figure.connections),
                        )
                        .rate(figure.requests_per_second),
                    );
                }
            }
            Err(error) => notes.push(format!("redis-benchmark ceiling skipped: {error:#}")),
        }
    }

    let mut runs: Vec<(usize, Sharing)> = options
        .worker_counts
        .iter()
        .map(|workers| (*workers, Sharing::OwnConnection))
        .collect();
    if let Some(most) = options.worker_counts.iter().max() {
        runs.push((*most, Sharing::Shared));
    }

    for (workers, sharing) in &runs {
        progress(&format!(
            "RedisQueue drain, {workers} workers, {}",
            sharing.label()
        ));
        let outcome =
            queue_backend::drain(&redis_url, &profiler, *workers, *sharing, 1, options.tasks)
                .await?;
        if *workers == options.worker_counts[0] && *sharing == Sharing::OwnConnection {
            rows.push(
                Row::new("RedisQueue enqueue_many (batches of 1000)", "1 producer")
                    .rate(per_second(outcome.tasks, outcome.enqueue_elapsed)),
            );
            notes.push(format!(
                "RedisQueue enqueue_many: {}",
                outcome.enqueue_profile.per_task(outcome.tasks)
            ));
        }
        let rate = per_second(outcome.tasks, outcome.drain_elapsed);
        if *sharing == Sharing::OwnConnection {
            throughputs.ours.insert(*workers, rate);
        }
        rows.push(
            Row::new(
                format!("RedisQueue claim+ack ({})", sharing.label()),
                workers.to_string(),
            )
            .rate(rate),
        );
        notes.push(format!(
            "RedisQueue claim+ack, {workers} workers, {}: {}",
            sharing.label(),
            outcome.drain_profile.per_task(outcome.tasks)
        ));
    }
    // What serving many queues costs a claim: the same drain with every claim also
    // looking at empty queues (a worker on `worker.queues = *` in a deployment with many).
    if let Some(most) = options.worker_counts.iter().max() {
        for served in SERVED_QUEUE_COUNTS {
            progress(&format!(
                "RedisQueue drain, {most} workers, one shared queue, serving {served} queues"
            ));
            let outcome = queue_backend::drain(
                &redis_url,
                &profiler,
                *most,
                Sharing::Shared,
                served,
                options.tasks,
            )
            .await?;
            rows.push(
                Row::new(
                    format!("RedisQueue claim+ack (one shared queue, serving {served} queues)"),
                    most.to_string(),
                )
                .rate(per_second(outcome.tasks, outcome.drain_elapsed)),
            );
            notes.push(format!(
                "RedisQueue claim+ack, {most} workers, serving {served} queues: {}",
                outcome.drain_profile.per_task(outcome.tasks)
            ));
        }
    }
    for (workers, sharing) in &runs {
        progress(&format!(
            "RedisQueue pick-up, {workers} workers, {}",
            sharing.label()
        ));
        let outcome = queue_backend::pickup(
            &redis_url,
            &profiler,
            *workers,
            *sharing,
            options.pickup_tasks,
            options.pickup_rate,
        )
        .await?;
        rows.push(
            Row::new(
                format!(
                    "RedisQueue pick-up at {}/s ({})",
                    options.pickup_rate,
                    sharing.label()
                ),
                workers.to_string(),
            )
            .latency(outcome.latencies.p50(), outcome.latencies.p99()),
        );
        notes.push(format!(
            "RedisQueue pick-up, {workers} workers, {}: {}",
            sharing.label(),
            outcome.profile.per_task(outcome.latencies.len())
        ));
    }

    if options.apalis {
        for workers in &options.worker_counts {
            progress(&format!("apalis-redis drain, {workers} workers"));
            match apalis_baseline::drain(&redis_url, &profiler, *workers, options.tasks).await {
                Ok(outcome) => {
                    if *workers == options.worker_counts[0] {
                        rows.push(
                            Row::new(
                                format!(
                                    "apalis-redis push_bulk (batches of 1000, {} tasks)",
                                    outcome.tasks
                                ),
                                "1 producer",
                            )
                            .rate(per_second(outcome.tasks, outcome.enqueue_elapsed)),
                        );
                    }
                    let rate = per_second(outcome.tasks, outcome.drain_elapsed);
                    throughputs.apalis.insert(*workers, rate);
                    rows.push(
                        Row::new(
                            format!(
                                "apalis-redis fetch+ack (own conn each, {} tasks)",
                                outcome.tasks
                            ),
                            workers.to_string(),
                        )
                        .rate(rate),
                    );
                    notes.push(format!(
                        "apalis-redis drain, {workers} workers: {}",
                        outcome.drain_profile.per_task(outcome.tasks)
                    ));
                }
                Err(error) => notes.push(format!(
                    "apalis-redis drain, {workers} workers failed: {error:#}"
                )),
            }
        }
        for workers in &options.worker_counts {
            progress(&format!("apalis-redis pick-up, {workers} workers"));
            match apalis_baseline::pickup(
                &redis_url,
                &profiler,
                *workers,
                options.pickup_tasks,
                options.pickup_rate,
            )
            .await
            {
                Ok(outcome) => {
                    rows.push(
                        Row::new(
                            format!("apalis-redis pick-up at {}/s", options.pickup_rate),
                            workers.to_string(),
                        )
                        .latency(outcome.latencies.p50(), outcome.latencies.p99()),
                    );
                    notes.push(format!(
                        "apalis-redis pick-up, {workers} workers: {}",
                        outcome.profile.per_task(outcome.latencies.len())
                    ));
                }
                Err(error) => notes.push(format!(
                    "apalis-redis pick-up, {workers} workers failed: {error:#}"
                )),
            }
        }
    }

    let mut end_to_end_rate = None;
    // Authentication on (every request verifies its key) and off, one after the other:
    // what checking keys costs end to end.
    let mut completed_by_auth: Vec<(usize, bool, f64)> = Vec::new();
    let runs: Vec<(usize, bool)> = (0..options.end_to_end_pairs)
        .filter(|_| options.end_to_end)
        .flat_map(|pair| {
            let first = pair % 2 == 0;
            [(pair, first), (pair, !first)]
        })
        .collect();
    for (pair, authenticated) in runs {
        let auth = if authenticated { "auth on" } else { "auth off" };
        progress(&format!("end to end through the API ({auth})"));
        let (url, profiler) = (redis_url.clone(), profiler.clone());
        let (clients, consumers, tasks) = (
            options.end_to_end_clients,
            options.end_to_end_consumers,
            options.end_to_end_tasks,
        );
        // The database helper panics when PostgreSQL is unreachable: report, go on.
        let handle = tokio::spawn(async move {
            end_to_end::run(&url, &profiler, clients, consumers, tasks, authenticated).await
        });
        match handle.await {
            Ok(Ok(outcome)) => {
                let completed = per_second(outcome.tasks, outcome.complete_elapsed);
                if authenticated && end_to_end_rate.is_none() {
                    end_to_end_rate = Some(completed);
                }
                completed_by_auth.push((pair, authenticated, completed));
                if pair > 0 {
                    continue;
                }
                rows.push(
                    Row::new(
                        format!("end to end, {auth}: submitted (POST → PostgreSQL → Redis)"),
                        format!("{} clients", options.end_to_end_clients),
                    )
                    .rate(per_second(outcome.tasks, outcome.submit_elapsed))
                    .latency(outcome.http_latency.p50(), outcome.http_latency.p99()),
                );
                rows.push(
                    Row::new(
                        format!("end to end, {auth}: completed (claim, start, finish, ack)"),
                        format!("{} consumers", options.end_to_end_consumers),
                    )
                    .rate(completed)
                    .latency(outcome.submit_to_done.p50(), outcome.submit_to_done.p99()),
                );
                notes.push(format!(
                    "end to end, {auth}: {}",
                    outcome.profile.per_task(outcome.tasks)
                ));
            }
            Ok(Err(error)) => notes.push(format!("end to end ({auth}) failed: {error:#}")),
            Err(error) => notes.push(format!("end to end ({auth}) panicked: {error}")),
        }
    }
    let mut ratios: Vec<f64> = (0..options.end_to_end_pairs)
        .filter_map(|pair| {
            let rate = |on: bool| {
                completed_by_auth
                    .iter()
                    .find(|(p, authenticated, _)| *p == pair && *authenticated == on)
                    .map(|(_, _, rate)| *rate)
            };
            Some(rate(true)? / rate(false)?)
        })
        .collect();
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        let listed: Vec<String> = completed_by_auth
            .iter()
            .map(|(pair, on, rate)| {
                format!(
                    "pair {} {}: {rate:.0}",
                    pair + 1,
                    if *on { "on" } else { "off" }
                )
            })
            .collect();
        notes.push(format!(
            "authentication on vs off, completed end to end ({}); on/off per pair {}; median {:+.1} %",
            listed.join(", "),
            ratios
                .iter()
                .map(|ratio| format!("{:+.1} %", (ratio - 1.0) * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            (median(&ratios) - 1.0) * 100.0
        ));
    }

    for row in &mut rows {
        let Some(rate) = row.tasks_per_second else {
            continue;
        };
        if row.workload.starts_with("redis-benchmark") {
            continue;
        }
        row.ceiling_ratio = ceiling_script_rate.map(|ceiling| rate / ceiling);
        if row.workload.starts_with("RedisQueue claim+ack (own")
            && let Ok(workers) = row.workers.parse::<usize>()
        {
            row.baseline_ratio = throughputs.apalis.get(&workers).map(|apalis| rate / apalis);
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMachine: {machine}; load average {} at the end",
        load_average()
    );
    let _ = writeln!(
        out,
        "Redis: {}\n",
        if redis.is_private() {
            "a private redis-server started for this run (no other traffic)"
        } else {
            "the SHARED test Redis (other traffic disturbs the figures)"
        }
    );
    out.push_str(&report::render(&rows));
    let _ = writeln!(
        out,
        "\ntasks/s of claim+ack: no-op tasks drained after enqueue_many; \"own queue each\" = every worker \
         its own RedisQueue::connect (its own connections, like separate worker processes), \
         \"one shared queue\" = one RedisQueue for all (like one process' concurrent tasks).\n\
         pick-up: latency from enqueue() called to claim() returned, workers idle in claim.\n\
         end-to-end p50/p99: HTTP round trip for \"submitted\", request sent → finish recorded and acked for \"completed\".\n\
         vs redis ceiling: tasks/s over redis-benchmark's EVALSHA -P 16 rate of a one-command script; \
         a task takes at least 3 scripts (enqueue, claim, ack), so 0.33 is the most a script-per-step queue can reach."
    );
    let _ = writeln!(
        out,
        "\nWhere the time goes (per task, from INFO commandstats and /proc):"
    );
    for note in &notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out, "\nGoals:");
    let best_backend = rows
        .iter()
        .filter(|row| row.workload.starts_with("RedisQueue claim+ack"))
        .filter_map(|row| Some((row.tasks_per_second?, row)))
        .max_by(|(left, _), (right, _)| left.total_cmp(right));
    if let Some((rate, row)) = best_backend {
        let _ = writeln!(
            out,
            "- backend ≥ {GOAL_BACKEND_TASKS_PER_SECOND:.0} tasks/s: best claim+ack {rate:.0} ({}, {} workers) → {}",
            row.workload,
            row.workers,
            verdict(rate >= GOAL_BACKEND_TASKS_PER_SECOND)
        );
    }
    match end_to_end_rate {
        Some(rate) => {
            let _ = writeln!(
                out,
                "- end to end ≥ {GOAL_END_TO_END_TASKS_PER_SECOND:.0} tasks/s: completed {rate:.0} → {}",
                verdict(rate >= GOAL_END_TO_END_TASKS_PER_SECOND)
            );
        }
        None => {
            let _ = writeln!(out, "- end to end: not measured");
        }
    }
    let worst_pickup = rows
        .iter()
        .filter(|row| row.workload.starts_with("RedisQueue pick-up"))
        .filter_map(|row| row.p50)
        .max();
    if let Some(p50) = worst_pickup {
        let _ = writeln!(
            out,
            "- pick-up p50 < {} ms: worst {:.2} ms → {}",
            GOAL_PICKUP_P50.as_millis(),
            p50.as_secs_f64() * 1000.0,
            verdict(p50 < GOAL_PICKUP_P50)
        );
    }
    println!("{out}");
    Ok(())
}

/// The one-minute load average. Other people's builds share these cores: the load says
/// how undisturbed a run was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|loadavg| loadavg.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn progress(what: &str) {
    eprintln!("bench: {what}…");
}

async fn machine_line(redis: &BenchRedis) -> String {
    let cores = std::thread::available_parallelism()
        .map(|cores| cores.get().to_string())
        .unwrap_or_else(|_| "?".to_owned());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|cpuinfo| {
            cpuinfo.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name.trim() == "model name").then(|| value.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let version = redis
        .server_info("redis_version")
        .await
        .unwrap_or_else(|_| "?".to_owned());
    format!(
        "{cores} cores (nproc), {cpu}; Redis {version}; load average {} at start",
        load_average()
    )
}
