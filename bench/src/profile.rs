//! Where the time goes during one run: what Redis executed (`INFO commandstats`: calls
//! and the microseconds it spent in each command), how much CPU the Redis process, the
//! PostgreSQL server (all its processes) and this process used (`/proc/<pid>/stat`),
//! how busy the whole machine was (`/proc/stat`), and the wall time.
//!
//! Divided by the tasks of the run, that gives round trips and server time per task, and
//! shows which side was saturated.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fred::prelude::*;

/// Linux reports process CPU time in clock ticks, 100 per second on every mainstream
/// architecture (`getconf CLK_TCK`); reading it properly would need libc.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The counters at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// Command name → (calls, microseconds inside Redis).
    commands: BTreeMap<String, (u64, u64)>,
    redis_cpu: Option<Duration>,
    postgres_cpu: Option<Duration>,
    own_cpu: Option<Duration>,
    machine_busy: Option<Duration>,
}

/// The difference between two snapshots.
#[derive(Debug, Clone)]
pub struct Profile {
    pub wall: Duration,
    pub commands: BTreeMap<String, (u64, u64)>,
    pub redis_cpu: Option<Duration>,
    pub postgres_cpu: Option<Duration>,
    pub own_cpu: Option<Duration>,
    /// CPU time every process of the machine used (all cores summed): shows whether
    /// something else ran beside the bench.
    pub machine_busy: Option<Duration>,
}

/// Takes snapshots of one Redis server (whose process must run on this machine for its
/// CPU time to be read).
#[derive(Clone)]
pub struct Profiler {
    client: Client,
    redis_pid: Option<u32>,
}

impl Profiler {
    pub async fn new(client: Client) -> anyhow::Result<Self> {
        let info: String = client.info(Some(fred::types::InfoKind::Server)).await?;
        let redis_pid = crate::redis_server::info_field(&info, "process_id")
            .and_then(|pid| pid.trim().parse().ok());
        Ok(Self { client, redis_pid })
    }

    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let info: String = self
            .client
            .info(Some(fred::types::InfoKind::CommandStats))
            .await?;
        Ok(Snapshot {
            at: Instant::now(),
            commands: parse_commandstats(&info),
            redis_cpu: self.redis_pid.and_then(process_cpu),
            postgres_cpu: postgres_cpu(),
            own_cpu: process_cpu(std::process::id()),
            machine_busy: machine_busy(),
        })
    }
}

impl Snapshot {
    /// What happened between `self` and `later`.
    pub fn until(&self, later: &Snapshot) -> Profile {
        let mut commands = BTreeMap::new();
        for (name, (calls, usec)) in &later.commands {
            let (calls_before, usec_before) = self.commands.get(name).copied().unwrap_or((0, 0));
            let calls = calls.saturating_sub(calls_before);
            if calls > 0 {
                commands.insert(name.clone(), (calls, usec.saturating_sub(usec_before)));
            }
        }
        let difference = |before: Option<Duration>, after: Option<Duration>| {
            Some(after?.saturating_sub(before?))
        };
        Profile {
            wall: later.at.saturating_duration_since(self.at),
            commands,
            redis_cpu: difference(self.redis_cpu, later.redis_cpu),
            postgres_cpu: difference(self.postgres_cpu, later.postgres_cpu),
            own_cpu: difference(self.own_cpu, later.own_cpu),
            machine_busy: difference(self.machine_busy, later.machine_busy),
        }
    }
}

impl Profile {
    /// One line: per task, the commands Redis ran (by name), the time it spent in them,
    /// and the CPU use of Redis and of this process over the run.
    pub fn per_task(&self, tasks: usize) -> String {
        let tasks = tasks.max(1) as f64;
        let calls = |name: &str| self.commands.get(name).map_or(0, |(calls, _)| *calls);
        let usec = |name: &str| self.commands.get(name).map_or(0, |(_, usec)| *usec);
        // Redis counts the commands a script runs as well as the EVALSHA itself (whose
        // time includes theirs); the profiler's own INFO calls are not the workload's.
        let inner: Vec<String> = self
            .commands
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "info" | "evalsha" | "blpop"))
            .map(|(name, (calls, _))| format!("{name} {:.2}", *calls as f64 / tasks))
            .collect();
        let share = |cpu: Option<Duration>| {
            cpu.map(|cpu| {
                format!(
                    "{:.0}%",
                    100.0 * cpu.as_secs_f64() / self.wall.as_secs_f64().max(f64::EPSILON)
                )
            })
            .unwrap_or_else(|| "?".to_owned())
        };
        format!(
            "EVALSHA {:.2}/task ({:.1} µs/task inside scripts), BLPOP {:.2}/task; other commands/task (mostly run by the scripts): {}; CPU over {:.2} s: redis-server {}, PostgreSQL {}, bench process {}, whole machine {} (of one core)",
            calls("evalsha") as f64 / tasks,
            usec("evalsha") as f64 / tasks,
            calls("blpop") as f64 / tasks,
            inner.join(", "),
            self.wall.as_secs_f64(),
            share(self.redis_cpu),
            share(self.postgres_cpu),
            share(self.own_cpu),
            share(self.machine_busy),
        )
    }
}

/// `cmdstat_<name>:calls=…,usec=…,…` lines into name → (calls, usec).
pub fn parse_commandstats(info: &str) -> BTreeMap<String, (u64, u64)> {
    let mut commands = BTreeMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(name) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let field = |wanted: &str| {
            fields.split(',').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key == wanted).then(|| value.parse::<u64>().ok())?
            })
        };
        if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
            commands.insert(name.to_owned(), (calls, usec));
        }
    }
    commands
}

fn ticks(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|stat| ticks(stat.own_ticks))
}

/// The CPU time of a local PostgreSQL server: its running processes, plus what the
/// postmaster's exited children (backends of closed connections) used, which the
/// kernel adds to the postmaster's `cutime`/`cstime` when it reaps them. `None` when no
/// `postgres` process runs here (a remote server).
fn postgres_cpu() -> Option<Duration> {
    let processes: Vec<(u32, Stat)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let parsed = parse_stat(&stat)?;
            (parsed.name == "postgres").then_some((pid, parsed))
        })
        .collect();
    if processes.is_empty() {
        return None;
    }
    let pids: Vec<u32> = processes.iter().map(|(pid, _)| *pid).collect();
    let total = processes
        .iter()
        .map(|(_, stat)| {
            let is_postmaster = !pids.contains(&stat.parent);
            stat.own_ticks
                + if is_postmaster {
                    stat.children_ticks
                } else {
                    0
                }
        })
        .sum();
    Some(ticks(total))
}

/// Busy CPU time of the whole machine, all cores summed: the first line of
/// `/proc/stat` less its idle and iowait columns.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let columns: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|column| column.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = columns.iter().take(8).sum();
    let idle = columns.get(3)? + columns.get(4)?;
    Some(ticks(total.saturating_sub(idle)))
}

/// The fields of `/proc/<pid>/stat` the profile uses.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    name: String,
    parent: u32,
    /// utime + stime.
    own_ticks: u64,
    /// cutime + cstime: children that exited and were waited for.
    children_ticks: u64,
}

/// The name is field 2, in parentheses, and may contain spaces, so the other fields are
/// counted from the closing parenthesis: state (3), parent (4), …, utime (14), stime
/// (15), cutime (16), cstime (17).
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some(Stat {
        name,
        parent: u32::try_from(field(1)?).ok()?,
        own_ticks: field(11)? + field(12)?,
        children_ticks: field(13)? + field(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=250,usec_per_call=25.00,rejected_calls=0,failed_calls=0\r\ncmdstat_blpop:calls=3,usec=9,usec_per_call=3.00\r\n";
        let commands = parse_commandstats(info);
        assert_eq!(commands.get("evalsha"), Some(&(10, 250)));
        assert_eq!(commands.get("blpop"), Some(&(3, 9)));
    }

    #[test]
    fn parses_stat_past_a_name_with_spaces() {
        let stat = "1234 (redis (server)) S 77 2 3 4 5 6 7 8 9 10 150 50 30 12 20 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                name: "redis (server)".to_owned(),
                parent: 77,
                own_ticks: 200,
                children_ticks: 42,
            })
        );
    }
}
