//! `just bench agent`: an agent's look at real documentation pages: time, tokens and
//! elements, beside the pages' HTML and text tokens. See `operator_bench::agent_suite`.

use std::path::PathBuf;

use clap::Parser;
use operator_bench::agent_suite::{self, Options};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Agent observation benchmark on Debian's documentation pages")]
struct Arguments {
    /// Two looks per page: checks the bench runs; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Looks per page.
    #[arg(long)]
    repeats: Option<usize>,
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
    if let Some(repeats) = arguments.repeats {
        options.repeats = repeats.max(1);
    }
    options.chrome = arguments.chrome;
    agent_suite::run(&options).await
}
