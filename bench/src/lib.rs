//! Benchmarks of OperatorNext. They measure; they assert nothing (the tests do that).
//!
//! Binaries, one per benchmark (`cargo run --release -p operator-bench --bin <name>`):
//! - `queue`: the Redis queue backend against apalis-redis and Redis' own ceiling, and
//!   the API end to end on PostgreSQL (`just bench queue`).
//! - `browser`: `POST /v1/screenshot` against a hand-written puppeteer-core script on
//!   the same Chromium, with peak Chromium memory (`just bench browser`).
//! - `agent`: an agent's look at real documentation pages: time, tokens, elements,
//!   beside the pages' HTML and text tokens (`just bench agent`).
//!
//! Modules:
//! - [`redis_server`]: a private `redis-server` per run, so other people's traffic on the
//!   shared Redis does not disturb the figures (the shared one is the fallback).
//! - [`queue_backend`]: our `RedisQueue` through the `Queue` trait: throughput and pick-up
//!   latency at 1/4/16 workers.
//! - [`apalis_baseline`]: the same workload through apalis-redis 1.0.
//! - [`ceiling`]: `redis-benchmark` of LPUSH and EVALSHA on the same server.
//! - [`end_to_end`]: HTTP submissions to the API, consumed the way a worker records them.
//! - [`profile`]: what Redis did during a run (commands, its CPU time) and our CPU time.
//! - [`browser_suite`]: the `browser` binary's run.
//! - [`queue_suite`]: the `queue` binary's run: every workload, one table.
//! - [`stats`], [`report`]: percentiles and the printed table.

pub mod agent_suite;
pub mod apalis_baseline;
pub mod browser_suite;
pub mod ceiling;
pub mod end_to_end;
pub mod profile;
pub mod queue_backend;
pub mod queue_suite;
pub mod redis_server;
pub mod report;
pub mod stats;

/// Serves `app` on a free loopback port until `stop`; returns the port.
pub async fn serve_loopback(
    app: impl poem::Endpoint + 'static,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<u16> {
    let acceptor =
        poem::listener::Listener::into_acceptor(poem::listener::TcpListener::bind("127.0.0.1:0"))
            .await?;
    let port = poem::listener::Acceptor::local_addr(&acceptor)
        .into_iter()
        .find_map(|address| address.as_socket_addr().map(|socket| socket.port()))
        .ok_or_else(|| anyhow::anyhow!("the loopback server has no port"))?;
    tokio::spawn(
        poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            stop.clone().cancelled_owned(),
            None,
        ),
    );
    Ok(port)
}
