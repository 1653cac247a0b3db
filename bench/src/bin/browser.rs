//! `just bench browser`: the screenshot endpoint against a puppeteer-core baseline on the
//! same page and Chromium. See `operator_bench::browser_suite`.

use std::path::PathBuf;

use clap::Parser;

/// The `operator` binary's allocator: this bench runs the API in its own process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use operator_bench::browser_suite::{self, Options};

#[derive(Debug, Parser)]
#[command(about = "Browser benchmark: POST /v1/screenshot vs a puppeteer-core script")]
struct Arguments {
    /// Few screenshots: checks the bench runs; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Screenshots per concurrency level and side.
    #[arg(long)]
    count: Option<usize>,
    /// Concurrency levels, comma-separated (default 1,4,8).
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// The Chromium both sides drive.
    #[arg(long, env = "CHROME_PATH", default_value = "/usr/bin/chromium")]
    chrome: PathBuf,
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
    if let Some(count) = arguments.count {
        options.count = count;
    }
    if let Some(levels) = arguments.concurrency.filter(|levels| !levels.is_empty()) {
        options.concurrency = levels;
    }
    options.chrome = arguments.chrome;
    browser_suite::run(&options).await
}
