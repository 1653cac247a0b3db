//! `just bench queue`: the queue backend against apalis-redis and Redis' own ceiling, and
//! the API end to end. See `operator_bench::queue_suite`.

use clap::Parser;

/// The `operator` binary's allocator: this bench runs the API in its own process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use operator_bench::queue_suite::{self, Options};

#[derive(Debug, Parser)]
#[command(about = "Queue benchmark: our Redis queue, apalis-redis, redis-benchmark, end to end")]
struct Arguments {
    /// Tiny counts: checks the bench runs; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Tasks per throughput run.
    #[arg(long)]
    tasks: Option<usize>,
    /// Tasks per end-to-end run.
    #[arg(long)]
    end_to_end_tasks: Option<usize>,
    /// HTTP clients submitting in the end-to-end run (default 16).
    #[arg(long)]
    end_to_end_clients: Option<usize>,
    /// Consumers (concurrent worker slots) completing in the end-to-end run (default 16).
    #[arg(long)]
    end_to_end_consumers: Option<usize>,
    /// Worker counts, comma-separated (default 1,4,16).
    #[arg(long, value_delimiter = ',')]
    workers: Option<Vec<usize>>,
    #[arg(long)]
    skip_apalis: bool,
    #[arg(long)]
    skip_ceiling: bool,
    #[arg(long)]
    skip_end_to_end: bool,
    /// End-to-end pairs, authentication on and off (default 3).
    #[arg(long)]
    end_to_end_pairs: Option<usize>,
    /// Used only when no private redis-server can be started.
    #[arg(long, env = "TEST_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    operator_store::install_crypto_provider();
    let arguments = Arguments::parse();
    let mut options = if arguments.quick {
        Options::quick()
    } else {
        Options::full()
    };
    if let Some(tasks) = arguments.tasks {
        options.tasks = tasks;
    }
    if let Some(tasks) = arguments.end_to_end_tasks {
        options.end_to_end_tasks = tasks;
    }
    if let Some(clients) = arguments.end_to_end_clients {
        options.end_to_end_clients = clients.max(1);
    }
    if let Some(consumers) = arguments.end_to_end_consumers {
        options.end_to_end_consumers = consumers.max(1);
    }
    if let Some(pairs) = arguments.end_to_end_pairs {
        options.end_to_end_pairs = pairs.max(1);
    }
    if let Some(workers) = arguments.workers.filter(|workers| !workers.is_empty()) {
        options.worker_counts = workers;
    }
    options.apalis &= !arguments.skip_apalis;
    options.ceiling &= !arguments.skip_ceiling;
    options.end_to_end &= !arguments.skip_end_to_end;
    queue_suite::run(&options, &arguments.redis_url).await
}
