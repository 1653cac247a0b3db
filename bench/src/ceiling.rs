//! What Redis itself does on this machine: `redis-benchmark` of LPUSH (a plain command)
//! and of EVALSHA of a one-command Lua script, unpipelined and 16-deep pipelined, on the
//! same server: one connection (what one worker's sequential round trips can reach) and
//! 16 connections (the most workers the bench runs).

use std::process::Stdio;

use anyhow::{Context, bail};
use fred::prelude::*;

use crate::redis_server::BenchRedis;

/// The smallest useful script: one write, like the cheapest step of a queue.
const SMALL_SCRIPT: &str = "return redis.call('INCR', KEYS[1])";

/// (connections, pipeline depth) per figure: redis-benchmark's `-c` and `-P`.
const SHAPES: [(u32, u32); 3] = [(1, 1), (16, 1), (16, 16)];

#[derive(Debug, Clone)]
pub struct CeilingFigure {
    /// `LPUSH` or `EVALSHA`.
    pub command: &'static str,
    /// Connections (`-c`).
    pub connections: u32,
    /// Commands in flight per connection (`-P`).
    pub pipeline: u32,
    pub requests_per_second: f64,
}

/// Runs redis-benchmark for each command in each of the [`SHAPES`].
pub async fn measure(redis: &BenchRedis, requests: u64) -> anyhow::Result<Vec<CeilingFigure>> {
    let client = redis.client().await?;
    let sha: String = client.script_load(SMALL_SCRIPT).await?;
    let prefix = format!("bench_ceiling_{}", uuid::Uuid::new_v4().simple());
    let list_key = format!("{prefix}:list");
    let counter_key = format!("{prefix}:counter");
    let commands: [(&'static str, Vec<String>); 2] = [
        ("LPUSH", vec!["lpush".into(), list_key.clone(), "x".into()]),
        (
            "EVALSHA",
            vec!["evalsha".into(), sha, "1".into(), counter_key.clone()],
        ),
    ];
    let mut figures = Vec::new();
    for (command, arguments) in &commands {
        for (connections, pipeline) in SHAPES {
            let requests_per_second =
                run_benchmark(redis, requests, connections, pipeline, arguments).await?;
            figures.push(CeilingFigure {
                command,
                connections,
                pipeline,
                requests_per_second,
            });
        }
    }
    let _: i64 = client.del(vec![list_key, counter_key]).await?;
    client.quit().await?;
    Ok(figures)
}

async fn run_benchmark(
    redis: &BenchRedis,
    requests: u64,
    connections: u32,
    pipeline: u32,
    arguments: &[String],
) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-P", &pipeline.to_string()])
        .arg("--csv")
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run redis-benchmark")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    parse_csv_rate(&text).with_context(|| {
        format!("no requests-per-second figure in redis-benchmark's output: {text}")
    })
}

/// The `rps` column of `redis-benchmark --csv` (`"test","rps",…` then one line per test).
pub fn parse_csv_rate(csv: &str) -> Option<f64> {
    csv.lines()
        .map(|line| {
            line.split(',')
                .map(|cell| cell.trim().trim_matches('"'))
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.first().is_some_and(|first| *first != "test"))
        .find_map(|cells| cells.get(1)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rate_column() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"lpush k x\",\"81300.81\",\"0.180\"\n";
        assert_eq!(parse_csv_rate(csv), Some(81300.81));
        assert_eq!(parse_csv_rate("garbage"), None);
    }
}
