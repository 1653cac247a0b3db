//! `just bench browser`: the service's screenshot path against a hand-written Puppeteer
//! script, on the same local page and the same Chromium, in one run.
//!
//! - The service: `operator serve` in this process (embedded defaults: SQLite, the
//!   embedded queue, local files), a screenshot per request through the one-call
//!   endpoint `POST /v1/screenshot` (submit, run, answer with the PNG), so the figure is
//!   what a client sees end to end.
//! - The baseline: `bench/baseline/screenshot.mjs` (puppeteer-core driving the same
//!   Chromium binary, one warm browser, a fresh incognito context per screenshot).
//! - Memory: the peak of the summed RSS and PSS of each side's Chromium processes,
//!   sampled every 100 ms.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use operator::{Application, Roles};
use operator_testkit::embedded_settings;
use poem::web::Html;
use poem::{Route, get, handler};
use tokio_util::sync::CancellationToken;

use crate::stats::{Latencies, per_second};

pub struct Options {
    pub concurrency: Vec<usize>,
    /// Screenshots per concurrency level, per side.
    pub count: usize,
    pub warmup: usize,
    pub chrome: PathBuf,
}

impl Options {
    pub fn full() -> Self {
        Self {
            concurrency: vec![1, 4, 8],
            count: 60,
            warmup: 6,
            chrome: PathBuf::from("/usr/bin/chromium"),
        }
    }

    pub fn quick() -> Self {
        Self {
            count: 8,
            warmup: 2,
            ..Self::full()
        }
    }
}

/// One side's figures at one concurrency.
#[derive(Debug, Clone, Default)]
struct Level {
    p50_ms: f64,
    p95_ms: f64,
    per_second: f64,
    failures: usize,
}

#[handler]
fn bench_page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>bench</title>\
         <style>body{margin:0;background:#3366cc;font:24px sans-serif}</style></head>\
         <body><h1>OperatorNext bench page</h1><p>Static text, no scripts, no images.</p></body></html>",
    )
}

async fn serve_page(stop: &CancellationToken) -> anyhow::Result<String> {
    let port = crate::serve_loopback(Route::new().at("/page", get(bench_page)), stop).await?;
    Ok(format!("http://127.0.0.1:{port}/page"))
}

/// Summed (RSS, PSS) in bytes of the processes whose command line contains `marker`.
fn chromium_memory(marker: &str) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    let mut rss = 0;
    let mut pss = 0;
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
    {
        let matches = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker));
        if !matches {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        for line in rollup.lines() {
            let mut fields = line.split_whitespace();
            let (Some(name), Some(kilobytes)) = (fields.next(), fields.next()) else {
                continue;
            };
            let bytes = kilobytes.parse::<u64>().unwrap_or(0) * 1024;
            match name {
                "Rss:" => rss += bytes,
                "Pss:" => pss += bytes,
                _ => {}
            }
        }
    }
    (rss, pss)
}

/// Samples the memory of `marker`'s processes until dropped; keeps the peaks.
struct MemoryWatch {
    running: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl MemoryWatch {
    fn start(marker: String) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&running);
        let sampler = std::thread::spawn(move || {
            let mut peak = (0, 0);
            while flag.load(Ordering::Relaxed) {
                let (rss, pss) = chromium_memory(&marker);
                peak = (peak.0.max(rss), peak.1.max(pss));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Self {
            running,
            sampler: Some(sampler),
        }
    }

    fn peak(mut self) -> (u64, u64) {
        self.running.store(false, Ordering::Relaxed);
        self.sampler
            .take()
            .and_then(|sampler| sampler.join().ok())
            .unwrap_or_default()
    }
}

async fn screenshot(http: &reqwest::Client, api: &str, page: &str) -> anyhow::Result<()> {
    let response = http
        .post(format!("{api}/v1/screenshot"))
        .json(&serde_json::json!({"url": page}))
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    anyhow::ensure!(
        status == 200 && bytes.starts_with(b"\x89PNG"),
        "screenshot answered {status}: {}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
    Ok(())
}

async fn service_level(
    http: &reqwest::Client,
    api: &str,
    page: &str,
    concurrency: usize,
    count: usize,
) -> Level {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let lanes = (0..concurrency).map(|_| {
        let next = Arc::clone(&next);
        async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let begun = Instant::now();
                match screenshot(http, api, page).await {
                    Ok(()) => latencies.push(begun.elapsed()),
                    Err(error) => {
                        failures += 1;
                        eprintln!("service screenshot failed: {error:#}");
                    }
                }
            }
            (latencies, failures)
        }
    });
    let results = futures::future::join_all(lanes).await;
    let elapsed = started.elapsed();
    let failures = results.iter().map(|(_, failures)| failures).sum();
    let latencies = Latencies::from_samples(
        results
            .into_iter()
            .flat_map(|(samples, _)| samples)
            .collect(),
    );
    let millis =
        |value: Option<Duration>| value.map_or(f64::NAN, |value| value.as_secs_f64() * 1e3);
    Level {
        p50_ms: millis(latencies.p50()),
        p95_ms: millis(latencies.percentile(0.95)),
        per_second: per_second(latencies.len(), elapsed),
        failures,
    }
}

fn baseline_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("baseline")
}

/// Installs puppeteer-core (pinned in package-lock.json) when it is missing.
fn ensure_baseline() -> anyhow::Result<()> {
    let directory = baseline_dir();
    if directory.join("node_modules/puppeteer-core").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&directory)
        .status()
        .context("npm is needed for the Puppeteer baseline")?;
    anyhow::ensure!(status.success(), "npm ci failed in {}", directory.display());
    Ok(())
}

fn baseline_levels(options: &Options, page: &str) -> anyhow::Result<(Vec<Level>, (u64, u64))> {
    ensure_baseline()?;
    let profile =
        std::env::temp_dir().join(format!("operator-bench-baseline-{}", std::process::id()));
    let watch = MemoryWatch::start(profile.display().to_string());
    let levels: Vec<String> = options
        .concurrency
        .iter()
        .map(ToString::to_string)
        .collect();
    let output = std::process::Command::new("node")
        .arg("screenshot.mjs")
        .args(["--url", page])
        .args(["--chrome", &options.chrome.display().to_string()])
        .args(["--concurrency", &levels.join(",")])
        .args(["--count", &options.count.to_string()])
        .args(["--warmup", &options.warmup.to_string()])
        .args(["--profile", &profile.display().to_string()])
        .current_dir(baseline_dir())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("node is needed for the Puppeteer baseline")?;
    let memory = watch.peak();
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(output.status.success(), "the baseline script failed");
    let levels = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)?;
            let number = |name: &str| value[name].as_f64().unwrap_or(f64::NAN);
            Ok(Level {
                p50_ms: number("p50_ms"),
                p95_ms: number("p95_ms"),
                per_second: number("per_second"),
                failures: value["failures"].as_u64().unwrap_or(0) as usize,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((levels, memory))
}

fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub async fn run(options: &Options) -> anyhow::Result<()> {
    // The page outlives the service: the baseline loads it afterwards.
    let page_stop = CancellationToken::new();
    let page = serve_page(&page_stop).await?;
    let stop = CancellationToken::new();
    let data = tempfile::tempdir()?;
    let mut settings = embedded_settings(data.path());
    settings.worker.concurrency = options.concurrency.iter().copied().max().unwrap_or(1);
    settings.browser.chrome_path = Some(options.chrome.clone());
    let application = Application::build(settings, Roles::SERVE).await?;
    let api = application
        .public_url()
        .context("operator serve runs the API")?;
    let key = application
        .first_key()
        .context("operator serve makes an owner key on its first start")?
        .to_owned();
    let running = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));

    let http = operator_testkit::ApiClient::with_key(api.clone(), &key).http;
    for _ in 0..options.warmup {
        screenshot(&http, &api, &page).await?;
    }
    let watch = MemoryWatch::start(format!("operator-chromium-{}-", std::process::id()));
    let mut service = Vec::new();
    for &concurrency in &options.concurrency {
        service.push(service_level(&http, &api, &page, concurrency, options.count).await);
    }
    let service_memory = watch.peak();
    stop.cancel();
    running.await??;

    let (baseline, baseline_memory) = baseline_levels(options, &page)?;
    page_stop.cancel();

    println!();
    println!(
        "browser bench: {} screenshots per level, 1280x800 PNG of a local page, Chromium {}",
        options.count,
        options.chrome.display()
    );
    println!(
        "{:>5} | {:>22} | {:>22} | {:>16}",
        "conc", "OperatorNext p50/p95", "Puppeteer p50/p95", "shots/s ours/pptr"
    );
    for ((concurrency, ours), theirs) in options.concurrency.iter().zip(&service).zip(&baseline) {
        println!(
            "{concurrency:>5} | {:>9.0} / {:>6.0} ms | {:>9.0} / {:>6.0} ms | {:>6.2} / {:>6.2}   p50 ratio {:.2}, throughput ratio {:.2}{}",
            ours.p50_ms,
            ours.p95_ms,
            theirs.p50_ms,
            theirs.p95_ms,
            ours.per_second,
            theirs.per_second,
            ours.p50_ms / theirs.p50_ms,
            ours.per_second / theirs.per_second,
            if ours.failures + theirs.failures > 0 {
                format!(
                    "  (failures: ours {}, baseline {})",
                    ours.failures, theirs.failures
                )
            } else {
                String::new()
            },
        );
    }
    println!(
        "peak Chromium memory: ours {:.0} MiB RSS / {:.0} MiB PSS; Puppeteer {:.0} MiB RSS / {:.0} MiB PSS",
        mebibytes(service_memory.0),
        mebibytes(service_memory.1),
        mebibytes(baseline_memory.0),
        mebibytes(baseline_memory.1),
    );
    println!("(a p50 ratio below 1 and a throughput ratio above 1 mean the service is ahead)");
    Ok(())
}
