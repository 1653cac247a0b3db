//! `just bench browser`: latency (p50, p95) and throughput of `POST /v1/screenshot` at
//! concurrency 1, 4 and 8, beside a puppeteer-core baseline that drives the same
//! Chromium with a fresh incognito context per screenshot (bench/puppeteer-baseline.mjs).
//!
//! Everything runs on this machine: `operator serve` in-process on the embedded
//! defaults (SQLite, database queue, local files), a static 1280×800 page on loopback.
//! `BENCH_REQUESTS` sets the requests per level (default 40).

use std::time::{Duration, Instant};

use operator::{Application, Roles};
use operator_shared::testkit::embedded_settings;
use poem::web::Html;
use poem::{Route, Server, get, handler};
use tokio_util::sync::CancellationToken;

const LEVELS: [usize; 3] = [1, 4, 8];

#[handler]
fn page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>bench</title>\
         <style>html,body{margin:0;background:#3366cc;font:16px sans-serif}</style></head>\
         <body><h1>Benchmark page</h1><p>A static page on loopback.</p></body></html>",
    )
}

struct Level {
    p50_ms: f64,
    p95_ms: f64,
    per_second: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let index = ((q * sorted.len() as f64) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

async fn screenshot(client: &reqwest::Client, api: &str, url: &str) -> f64 {
    let started = Instant::now();
    let response = client
        .post(format!("{api}/v1/screenshot"))
        .json(&serde_json::json!({"url": url}))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body = response.bytes().await.expect("body");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body.starts_with(b"\x89PNG"), "a PNG");
    started.elapsed().as_secs_f64() * 1000.0
}

async fn run_level(
    client: &reqwest::Client,
    api: &str,
    url: &str,
    concurrency: usize,
    requests: usize,
) -> Level {
    for _ in 0..3 {
        screenshot(client, api, url).await;
    }
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, api, url, next) =
            (client.clone(), api.to_owned(), url.to_owned(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < requests {
                latencies.push(screenshot(&client, &api, &url).await);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("join"));
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Level {
        p50_ms: quantile(&latencies, 0.5),
        p95_ms: quantile(&latencies, 0.95),
        per_second: requests as f64 / seconds,
    }
}

fn baseline(url: &str, requests: usize) -> Option<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/puppeteer-baseline.mjs");
    let mut command = std::process::Command::new("node");
    command.arg(script).arg(url).arg(requests.to_string());
    for level in LEVELS {
        command.arg(level.to_string());
    }
    match command.output() {
        Ok(output) if output.status.success() => serde_json::from_slice(&output.stdout).ok(),
        Ok(output) => {
            eprintln!(
                "baseline failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            None
        }
        Err(error) => {
            eprintln!("baseline not run (node: {error})");
            None
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken.
    operator_shared::install_crypto_provider();
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(40);
    let acceptor =
        poem::listener::Listener::into_acceptor(poem::listener::TcpListener::bind("127.0.0.1:0"))
            .await?;
    let port = poem::listener::Acceptor::local_addr(&acceptor)
        .into_iter()
        .find_map(|address| address.as_socket_addr().map(|socket| socket.port()))
        .ok_or_else(|| anyhow::anyhow!("no port"))?;
    let stop = CancellationToken::new();
    tokio::spawn(
        Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            Route::new().at("/", get(page)),
            stop.clone().cancelled_owned(),
            Some(Duration::from_secs(1)),
        ),
    );
    let url = format!("http://127.0.0.1:{port}/");

    let directory = tempfile::tempdir()?;
    let mut settings = embedded_settings(directory.path());
    settings.worker.concurrency = 8;
    settings.telemetry.log_filter = "warn".to_owned();
    let application = Application::build(settings, Roles::SERVE).await?;
    let api = application
        .public_url()
        .ok_or_else(|| anyhow::anyhow!("no API"))?;
    let stop_application = CancellationToken::new();
    let running =
        tokio::spawn(application.run_until_stopped(stop_application.clone().cancelled_owned()));
    let client = reqwest::Client::new();

    println!(
        "POST /v1/screenshot, 1280x800 PNG of a static loopback page, {requests} requests per level"
    );
    let mut ours = Vec::new();
    for level in LEVELS {
        ours.push((level, run_level(&client, &api, &url, level, requests).await));
    }
    stop_application.cancel();
    let _ = running.await;
    // The page server keeps serving for the baseline.
    let reference = baseline(&url, requests);
    stop.cancel();

    println!();
    println!(
        "{:<12} {:>11} {:>11} {:>10}   {:>11} {:>11} {:>10}",
        "concurrency", "p50 ms", "p95 ms", "per s", "puppeteer", "p95 ms", "per s"
    );
    for (level, result) in &ours {
        let theirs = reference.as_ref().map(|all| &all[level.to_string()]);
        let field = |name: &str| {
            theirs
                .and_then(|value| value[name].as_f64())
                .map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"))
        };
        println!(
            "{:<12} {:>11.1} {:>11.1} {:>10.2}   {:>11} {:>11} {:>10}",
            level,
            result.p50_ms,
            result.p95_ms,
            result.per_second,
            field("p50_ms"),
            field("p95_ms"),
            field("per_second")
        );
    }
    if reference.is_none() {
        println!("(no baseline; `npm install --prefix bench` installs puppeteer-core)");
    }
    Ok(())
}
