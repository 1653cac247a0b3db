//! `just bench agent`: what an agent's look at a page costs, on real pages nobody here
//! wrote (Debian's `python3.11-doc` and `debian-handbook`, served from loopback).
//!
//! Each page is opened by an `agent` task of `operator serve` (in this process) whose
//! model is a loopback stand-in that answers `done` at once: the task's first step
//! records how long the look took and how many DOM nodes and elements it read, and the
//! stand-in keeps the observation it was sent, whose tokens are counted with o200k_base
//! (tiktoken-rs, offline). Beside them, in the same run: the raw HTML's tokens and the
//! visible text's (the page's `innerText`, read by a `scrape` task in the same browser).
//! The anchor (browser-use 0.13's page state on such pages, 0.5k-4.8k tokens and
//! 50 ms-9.7 s, from issue 18) is printed as quoted, not re-measured.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use operator::{Application, Roles};
use operator_testkit::{ApiClient, embedded_settings};
use poem::web::{Data, Json};
use poem::{EndpointExt, Route, handler, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::stats::Latencies;

/// The pages, by what they are: (label, path under /usr/share/doc).
pub const PAGES: [(&str, &str); 8] = [
    (
        "tutorial (classes)",
        "python3.11/html/tutorial/classes.html",
    ),
    ("module ref (re)", "python3.11/html/library/re.html"),
    ("module ref (os)", "python3.11/html/library/os.html"),
    (
        "large tables (stdtypes)",
        "python3.11/html/library/stdtypes.html",
    ),
    (
        "huge index (genindex-all)",
        "python3.11/html/genindex-all.html",
    ),
    ("search page", "python3.11/html/search.html"),
    ("handbook (apt)", "debian-handbook/html/en-US/apt.html"),
    (
        "handbook (network services)",
        "debian-handbook/html/en-US/network-services.html",
    ),
];

const DOC_ROOT: &str = "/usr/share/doc";

pub struct Options {
    /// Looks per page.
    pub repeats: usize,
    pub chrome: PathBuf,
}

impl Options {
    pub fn full() -> Self {
        Self {
            repeats: 7,
            chrome: PathBuf::from("/usr/bin/chromium"),
        }
    }

    pub fn quick() -> Self {
        Self {
            repeats: 2,
            ..Self::full()
        }
    }
}

/// The stand-in model: records the last user message of each request, answers `done`.
#[derive(Default)]
struct Seen {
    observations: Mutex<Vec<String>>,
}

#[handler]
fn complete(Json(request): Json<Value>, seen: Data<&Arc<Seen>>) -> Json<Value> {
    let last = request["messages"]
        .as_array()
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|message| message["role"] == "user")
        })
        .map(|message| match &message["content"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    if let Ok(mut observations) = seen.observations.lock() {
        observations.push(last);
    }
    Json(json!({
        "id": "bench", "object": "chat.completion", "created": 0, "model": request["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "done", "arguments": "{\"output\": {}}"}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }))
}

/// Serves `root`'s files (the documentation) and the stand-in model on one port.
async fn serve(root: PathBuf, seen: Arc<Seen>, stop: &CancellationToken) -> anyhow::Result<String> {
    let app = Route::new()
        .at("/v1/chat/completions", post(complete).data(seen))
        .nest("/doc", poem::endpoint::StaticFilesEndpoint::new(root));
    let port = crate::serve_loopback(app, stop).await?;
    Ok(format!("http://127.0.0.1:{port}"))
}

/// One page's figures.
struct PageFigures {
    label: &'static str,
    html_tokens: usize,
    text_tokens: usize,
    observation_tokens: Vec<usize>,
    took: Latencies,
    dom_nodes: u64,
    elements: u64,
    interactive_total: u64,
}

fn tokens(text: &str) -> usize {
    tiktoken_rs::o200k_base_singleton()
        .encode_with_special_tokens(text)
        .len()
}

async fn finished(api: &ApiClient, body: &Value) -> anyhow::Result<Value> {
    let (status, created) = api.submit(body).await;
    anyhow::ensure!(status == 202, "submission answered {status}: {created}");
    let id = created["id"].as_str().context("id")?;
    let task = api
        .wait_for(
            id,
            &["succeeded", "failed", "dead", "timed_out", "cancelled"],
            Duration::from_secs(120),
        )
        .await;
    anyhow::ensure!(
        task["state"] == "succeeded",
        "task {id} ended {}",
        task["state"]
    );
    Ok(task)
}

async fn measure(
    api: &ApiClient,
    base: &str,
    seen: &Seen,
    label: &'static str,
    path: &str,
    repeats: usize,
) -> anyhow::Result<PageFigures> {
    let html = std::fs::read_to_string(Path::new(DOC_ROOT).join(path)).with_context(|| {
        format!("{DOC_ROOT}/{path}: install python3.11-doc and debian-handbook")
    })?;
    let url = format!("{base}/doc/{path}");
    let scraped = finished(
        api,
        &json!({"kind": "scrape", "input": {"url": url, "extract": [{"name": "text", "selector": "body", "what": "text"}]}}),
    )
    .await?;
    let text = scraped["result"]["data"]["text"]
        .as_str()
        .unwrap_or_default();
    let mut took = Vec::new();
    let mut observation_tokens = Vec::new();
    let mut last = Value::Null;
    for _ in 0..repeats {
        let before = seen.observations.lock().map(|seen| seen.len()).unwrap_or(0);
        let task = finished(
            api,
            &json!({"kind": "agent", "input": {"goal": "Read the page.", "url": url, "vision": "off", "max_steps": 2}}),
        )
        .await?;
        let step = task["result"]["steps"][0]["observation"].clone();
        took.push(Duration::from_secs_f64(
            step["took_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        ));
        let observation = seen
            .observations
            .lock()
            .ok()
            .and_then(|seen| seen.get(before).cloned())
            .unwrap_or_default();
        observation_tokens.push(tokens(&observation));
        last = step;
    }
    Ok(PageFigures {
        label,
        html_tokens: tokens(&html),
        text_tokens: tokens(text),
        observation_tokens,
        took: Latencies::from_samples(took),
        dom_nodes: last["dom_nodes"].as_u64().unwrap_or(0),
        elements: last["elements"].as_u64().unwrap_or(0),
        interactive_total: last["interactive_total"].as_u64().unwrap_or(0),
    })
}

fn ms(duration: Option<Duration>) -> f64 {
    duration.map_or(f64::NAN, |duration| duration.as_secs_f64() * 1000.0)
}

pub async fn run(options: &Options) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let seen = Arc::new(Seen::default());
    let base = serve(PathBuf::from(DOC_ROOT), Arc::clone(&seen), &stop).await?;
    let data = tempfile::tempdir()?;
    let mut settings = embedded_settings(data.path());
    settings.browser.chrome_path = Some(options.chrome.clone());
    settings.llm.base_url = Some(format!("{base}/v1"));
    settings.agent.step_screenshots = false;
    let application = Application::build(settings, Roles::SERVE).await?;
    let api_url = application.public_url().context("the API")?;
    let key = application.first_key().context("the owner key")?.to_owned();
    let running = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));
    let api = ApiClient::with_key(api_url, &key);

    let mut figures = Vec::new();
    for (label, path) in PAGES {
        figures.push(measure(&api, &base, &seen, label, path, options.repeats).await?);
    }
    stop.cancel();
    running.await??;

    println!();
    println!(
        "agent bench: one look per task, {} tasks per page, tokens in o200k_base; vision off",
        options.repeats
    );
    println!(
        "{:<28} | {:>9} | {:>9} | {:>11} | {:>15} | {:>8} | {:>14}",
        "page", "HTML tok", "text tok", "look tok", "look p50/p95 ms", "nodes", "elements shown"
    );
    for page in &figures {
        let look = page.observation_tokens.iter().copied().max().unwrap_or(0);
        println!(
            "{:<28} | {:>9} | {:>9} | {:>11} | {:>7.1}/{:<7.1} | {:>8} | {:>6} of {:<5}",
            page.label,
            page.html_tokens,
            page.text_tokens,
            look,
            ms(page.took.p50()),
            ms(page.took.percentile(0.95)),
            page.dom_nodes,
            page.elements,
            page.interactive_total,
        );
    }
    println!(
        "anchor (quoted from issue 18, not measured here): browser-use 0.13's page state on such pages, 0.5k-4.8k tokens, 50 ms-9.7 s (re 1.7 s, os 3.5 s, the full index 9.7 s)"
    );
    // Linear in the page: the time per thousand DOM nodes, smallest and largest page.
    let per_kilonode: Vec<(u64, f64)> = figures
        .iter()
        .filter(|page| page.dom_nodes > 0)
        .map(|page| {
            (
                page.dom_nodes,
                ms(page.took.p50()) / page.dom_nodes as f64 * 1000.0,
            )
        })
        .collect();
    if let (Some(small), Some(large)) = (
        per_kilonode.iter().min_by_key(|(nodes, _)| *nodes),
        per_kilonode.iter().max_by_key(|(nodes, _)| *nodes),
    ) {
        println!(
            "look time per 1000 DOM nodes: {:.2} ms at {} nodes, {:.2} ms at {} nodes",
            small.1, small.0, large.1, large.0
        );
    }
    Ok(())
}
