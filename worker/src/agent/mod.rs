//! `agent` tasks: a language model drives the page towards a goal in plain language.
//!
//! - [`model`]: the OpenAI-compatible chat-completions client (retries honouring
//!   `Retry-After`, JSON mode for servers without tools, error classification).
//! - [`observe`]: the page as the model sees it (one DOM snapshot, indexed elements).
//! - [`tools`]: the actions offered and their parsing.
//!
//! The loop: observe → ask → act, one action per step. Before each model call the
//! budget is checked (tokens, cost from the settings' price table, duration), so a task
//! never spends past a limit by more than the one call that crossed it; `max_steps`
//! ends it as `agent_max_steps`. An action on element `[n]` runs as the script step on
//! that element's selector (`click` → the `click` step), through the same executor as
//! `script` tasks, and is recorded as that step: the result's `script` replays the run
//! without the model. A loop detector (the same action on the same element, or a page
//! that does not change, several steps running) first tells the model, then fails the
//! task `agent_stuck`. `done`'s output is checked against `output_schema`; a mismatch
//! gets one repair turn, then `invalid_output`.
//!
//! The script cache (`cache: reuse`): a run first replays the script a succeeded run
//! of the same goal left, then asks the model, told what was replayed, from the first
//! step that failed (or only for the output). A run that succeeds leaves its script,
//! healed where a cached step failed, as the cached one.
//!
//! Secrets: the model sees `{{name}}` only. The executor types the real value; page
//! text, element values, step records, logs and the result are masked.

pub mod journal;
pub mod model;
pub mod observe;
pub mod tools;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use operator_config::{AgentSettings, ModelPrice};
use operator_domain::agent::{
    AgentInput, ScriptCache, Vision, fill_secrets, mask_secrets, mask_secrets_in, output_problems,
};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use operator_domain::steps::{
    Click, Goto, Hover, Press, Scroll, Select, StepOutput, StepPage, TypeText, WaitFor,
};
use operator_domain::{ElementState, ImageFormat, PageEvent, Step, TargetUrl, WaitSpec};
use operator_domain::{NewArtifact, TenantId};
use operator_store::db::{AgentStepWrite, ModelSettingsRepository, ModelUsage};
use operator_store::models::{ModelsError, TenantModels};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::render::{Rendered, RenderedFile};
use crate::session::Session;
use journal::Journal;
use model::{ModelAnswer, ModelClient, ModelRequest, TokenUsage};
use observe::{Element, Observation, Observer};
use tools::{AgentAction, Chosen};

/// How long the page may take to load after an action that navigates.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a page is given to go network-idle after an action (best effort).
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Estimated characters per token, for the observation's size in the step records.
const CHARS_PER_TOKEN: usize = 4;
/// The most characters of page text one `extract` sends.
const EXTRACT_TEXT_CHARS: usize = 40_000;

/// What a worker's agent tasks share: the model client (none until `llm.base_url` is
/// set) and the observation and loop settings.
/// A tenant's model client and the time of the settings it was built from.
type TenantClient = (chrono::DateTime<chrono::Utc>, Arc<ModelClient>);

pub struct AgentRuntime {
    /// The service's model (`llm.*`), when it has one.
    model: Option<Arc<ModelClient>>,
    llm: operator_config::LlmSettings,
    /// Tenants' own models, read through a short-lived cache.
    tenants: TenantModels,
    /// A client per tenant with its own model, rebuilt when its settings change.
    clients: Mutex<HashMap<TenantId, TenantClient>>,
    pub settings: AgentSettings,
}

impl AgentRuntime {
    pub fn new(
        llm: &operator_config::LlmSettings,
        settings: &AgentSettings,
        database: sea_orm::DatabaseConnection,
    ) -> Result<Self, CodedError> {
        let model = match llm.base_url {
            Some(_) => Some(Arc::new(ModelClient::new(llm)?)),
            None => None,
        };
        let tenants = TenantModels::new(ModelSettingsRepository::new(database), llm)
            .map_err(|error| CodedError::new(ErrorCode::Internal, error.to_string()))?;
        Ok(Self {
            model,
            llm: llm.clone(),
            tenants,
            clients: Mutex::default(),
            settings: settings.clone(),
        })
    }

    /// The model `tenant`'s agent tasks talk to: its own, or the service's; the task's
    /// `llm_not_configured` when there is neither.
    pub async fn model_for(&self, tenant: &TenantId) -> Result<Arc<ModelClient>, CodedError> {
        let own = self
            .tenants
            .get(tenant)
            .await
            .map_err(|error| match error {
                ModelsError::Repo(error) => CodedError::new(
                    ErrorCode::Unavailable,
                    format!("cannot read the tenant's model settings: {error}"),
                ),
                ModelsError::Seal(error) => CodedError::new(
                    ErrorCode::LlmNotConfigured,
                    format!("the tenant's model key cannot be opened: {error}"),
                ),
            })?;
        let Some(own) = own else {
            if let Ok(mut clients) = self.clients.lock() {
                clients.remove(tenant);
            }
            return self.model.clone().ok_or_else(|| {
                CodedError::new(
                    ErrorCode::LlmNotConfigured,
                    "agent tasks need a language model: set llm.base_url (and llm.model), or the tenant's own (PUT /v1/model-settings)",
                )
            });
        };
        if let Ok(clients) = self.clients.lock()
            && let Some((updated_at, client)) = clients.get(tenant)
            && *updated_at == own.updated_at
        {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(ModelClient::new(&self.llm.for_tenant(&own.model))?);
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(tenant.clone(), (own.updated_at, Arc::clone(&client)));
        }
        Ok(client)
    }
}

/// What one agent task runs with.
pub(crate) struct AgentRun<'a> {
    pub session: &'a Session<'a>,
    pub input: &'a AgentInput,
    pub model: &'a ModelClient,
    pub settings: &'a AgentSettings,
    pub policy: &'a NetworkPolicy,
    pub journal: &'a Journal,
}

/// Tokens and cost so far.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Spent {
    tokens: TokenUsage,
    cost_usd: f64,
    calls: u32,
}

impl Spent {
    fn add(&mut self, usage: TokenUsage, price: Option<ModelPrice>) {
        self.tokens.prompt_tokens += usage.prompt_tokens;
        self.tokens.completion_tokens += usage.completion_tokens;
        self.cost_usd += usage.cost(price);
        self.calls += 1;
    }

    /// The use since `earlier`, as the tenant's usage counts it (cost in millionths of a
    /// dollar, rounded on the running totals so that the parts add up to the whole).
    fn since(&self, earlier: &Self) -> ModelUsage {
        let micros = |cost: f64| (cost * 1e6).round().max(0.0) as u64;
        ModelUsage {
            calls: u64::from(self.calls.saturating_sub(earlier.calls)),
            prompt_tokens: self
                .tokens
                .prompt_tokens
                .saturating_sub(earlier.tokens.prompt_tokens),
            completion_tokens: self
                .tokens
                .completion_tokens
                .saturating_sub(earlier.tokens.completion_tokens),
            cost_micro_usd: micros(self.cost_usd).saturating_sub(micros(earlier.cost_usd)),
        }
    }

    fn to_json(self, model: &str, priced: bool) -> Value {
        json!({
            "model": model,
            "model_calls": self.calls,
            "prompt_tokens": self.tokens.prompt_tokens,
            "completion_tokens": self.tokens.completion_tokens,
            "total_tokens": self.tokens.total(),
            "cost_usd": if priced { json!(self.cost_usd) } else { Value::Null },
        })
    }
}

/// Counts steps that repeat themselves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StuckDetector {
    last: Option<(String, u64)>,
    repeats: u32,
    warned_at: Option<u32>,
    warn_after: u32,
    fail_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    No,
    Warn,
    Fail,
}

impl StuckDetector {
    fn new(settings: &AgentSettings) -> Self {
        Self {
            last: None,
            repeats: 0,
            warned_at: None,
            warn_after: settings.stuck_warn_after,
            fail_after: settings.stuck_fail_after,
        }
    }

    /// `action` (its name and element) taken on a page with `before` fingerprint that
    /// became `after`.
    fn record(&mut self, action: String, before: u64, after: u64) -> Stuck {
        let same_action = self.last.as_ref().is_some_and(|(last, _)| *last == action);
        let unchanged = before == after
            && self
                .last
                .as_ref()
                .is_some_and(|(_, previous)| *previous == before);
        if same_action || unchanged {
            self.repeats += 1;
        } else {
            self.repeats = 1;
            self.warned_at = None;
        }
        self.last = Some((action, after));
        match self.warned_at {
            Some(warned) if self.repeats >= warned + self.fail_after => Stuck::Fail,
            Some(_) => Stuck::No,
            None if self.repeats >= self.warn_after => {
                self.warned_at = Some(self.repeats);
                Stuck::Warn
            }
            None => Stuck::No,
        }
    }
}

/// One turn of the conversation kept for the next calls: what the model did and what
/// came of it (observations are not kept: each call carries the current one only).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Turn {
    call_id: String,
    name: String,
    /// Arguments as the model gave them (they hold placeholders, never secrets).
    arguments: Value,
    reason: Option<String>,
    result: String,
}

/// The last action, judged by the loop detector on the page the next look finds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Judged {
    /// The action's name, element and arguments.
    signature: String,
    /// The page's fingerprint before it.
    before: u64,
    name: String,
}

/// What replaying a cached script did.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheReplay {
    /// The cached script's steps.
    steps: usize,
    /// How many of them ran before one failed (all, when none did).
    replayed: usize,
    /// The step that failed and why (secrets masked): the model goes on from there.
    failed: Option<String>,
}

impl CacheReplay {
    /// Whether the run's script differs from the cached one, and so should replace it.
    fn changed(&self, script: &[Step]) -> bool {
        self.failed.is_some() || script.len() != self.steps
    }
}

/// The version of [`Progress`] a checkpoint holds; another is not resumed from.
const CHECKPOINT_VERSION: u32 = 1;

/// What the run has done so far: the loop's whole state, kept as the checkpoint after
/// each step. It holds placeholders and masked text only, never a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    version: u32,
    /// Steps taken: the next step's index.
    step: u32,
    turns: Vec<Turn>,
    /// The step records (also the task's progress and `agent_step` events).
    records: Vec<Value>,
    /// The actions that ran, as script steps: a replay without the model.
    script: Vec<Step>,
    /// The pages opened, in order (for `go_back`).
    visited: Vec<String>,
    spent: Spent,
    /// How much of `spent` the tenant's usage has counted (the steps recorded so far).
    #[serde(default)]
    counted: Spent,
    /// What replaying the cached script did, when the run started with it.
    #[serde(default)]
    cache: Option<CacheReplay>,
    stuck: StuckDetector,
    judged: Option<Judged>,
    nudge: Option<String>,
    /// Whether the one repair turn for an output was used.
    repaired: bool,
    /// How long the attempts so far ran (counted against `budget.max_duration_ms`).
    elapsed_ms: u64,
}

impl Progress {
    fn fresh(settings: &AgentSettings) -> Self {
        Self {
            version: CHECKPOINT_VERSION,
            step: 0,
            turns: Vec::new(),
            records: Vec::new(),
            script: Vec::new(),
            visited: Vec::new(),
            spent: Spent::default(),
            counted: Spent::default(),
            cache: None,
            stuck: StuckDetector::new(settings),
            judged: None,
            nudge: None,
            repaired: false,
            elapsed_ms: 0,
        }
    }

    /// Starting over after an earlier attempt whose steps no longer replay: the
    /// conversation begins again, while the steps taken, what was spent and the time
    /// taken still count against the limits.
    fn start_over(self, settings: &AgentSettings) -> Self {
        Self {
            step: self.step,
            records: self.records,
            spent: self.spent,
            counted: self.counted,
            elapsed_ms: self.elapsed_ms,
            ..Self::fresh(settings)
        }
    }
}

/// What a run needs besides its progress, for the record of each step.
struct Recorder<'a> {
    journal: &'a Journal,
    model_name: &'a str,
    priced: bool,
    /// When this attempt started, less the time earlier attempts took.
    started: Instant,
}

impl Recorder<'_> {
    /// Ends a step: its record joins the progress, and the step (record, screenshot,
    /// checkpoint) is written in one transaction before anything else happens.
    async fn commit(
        &self,
        progress: &mut Progress,
        record: Value,
        artifacts: &[NewArtifact],
    ) -> Result<(), CodedError> {
        progress.records.push(record.clone());
        progress.step += 1;
        progress.elapsed_ms = self.started.elapsed().as_millis() as u64;
        let model_usage = progress.spent.since(&progress.counted);
        let counted = std::mem::replace(&mut progress.counted, progress.spent);
        let shown = json!({"steps": progress.records, "usage": self.usage(progress)});
        let checkpoint = serde_json::to_value(&*progress).unwrap_or(Value::Null);
        let recorded = self
            .journal
            .record(AgentStepWrite {
                progress: &shown,
                step: record,
                checkpoint: &checkpoint,
                artifacts,
                model_usage,
            })
            .await;
        if recorded.is_err() {
            progress.counted = counted;
        }
        recorded
    }

    fn usage(&self, progress: &Progress) -> Value {
        progress.spent.to_json(self.model_name, self.priced)
    }
}

pub(crate) async fn run(agent: AgentRun<'_>) -> Result<Rendered, CodedError> {
    let AgentRun {
        session,
        input,
        model,
        settings,
        policy,
        journal,
    } = agent;
    let model_name = input
        .model
        .clone()
        .unwrap_or_else(|| model.settings().model.clone());
    let price = model.settings().price(&model_name);
    if input.budget.max_cost_usd.is_some() && price.is_none() {
        return Err(CodedError::new(
            ErrorCode::LlmNotConfigured,
            format!(
                "input.budget.max_cost_usd: the settings have no price for model {model_name:?} (llm.prices)"
            ),
        ));
    }
    let page_options = input.page_options();
    session.apply_page_options(&page_options).await?;
    let mut progress = resume(session, input, settings, journal.restored()).await?;
    let recorder = Recorder {
        journal,
        model_name: &model_name,
        priced: price.is_some(),
        started: Instant::now()
            .checked_sub(Duration::from_millis(progress.elapsed_ms))
            .unwrap_or_else(Instant::now),
    };
    let started = recorder.started;
    let cache_key = input.cache_key();
    if input.cache == ScriptCache::Reuse
        && progress.step == 0
        && let Some(cached) = journal.cached_script(&cache_key).await
    {
        let url = replay_cached(session, input, settings, &cached, &mut progress).await?;
        let shot = match settings.step_screenshots {
            true => step_screenshot(session, journal, progress.step).await,
            false => None,
        };
        let record = cache_record(&progress, url, shot.as_ref());
        recorder
            .commit(&mut progress, record, shot.as_slice())
            .await?;
    }
    let tools = tools::definitions(input.output_schema.as_ref());
    // Sent only to a server without tool calling (JSON mode).
    let json_instructions = format!(
        "Your server offers no tool calling: answer with one JSON object, {{\"reason\": \"…\", \"action\": \"<tool name>\", \"args\": {{…}}}}. The tools:\n{}",
        tools::describe_for_json_mode(&tools)
    );
    let secrets = &input.secrets;
    let mut observer = Observer::new(settings.clone());

    loop {
        session.check_stop()?;
        let step = progress.step;
        if step >= input.max_steps {
            return Err(CodedError::new(
                ErrorCode::AgentMaxSteps,
                format!("the goal was not reached in {} steps", input.max_steps),
            ));
        }
        check_budget(input, &progress.spent, started)?;
        let observation = observer.observe(session, secrets).await?;
        if let Some(judged) = progress.judged.take() {
            match progress
                .stuck
                .record(judged.signature, judged.before, observation.fingerprint)
            {
                Stuck::No => {}
                Stuck::Warn => {
                    progress.nudge = Some(
                        "You seem to be repeating yourself: the last steps did the same thing or did not change the page. Try a different approach, or call fail if the goal cannot be reached.".to_owned(),
                    );
                }
                Stuck::Fail => {
                    return Err(CodedError::new(
                        ErrorCode::AgentStuck,
                        format!(
                            "the agent kept repeating itself ({} without progress) after being told so",
                            judged.name
                        ),
                    ));
                }
            }
        }
        let screenshot = match vision_wanted(input.vision, &observation) {
            true => Some(labelled_screenshot(session, &observation).await?),
            false => None,
        };
        let messages = conversation(
            input,
            &progress.turns,
            &observation,
            step,
            progress.nudge.take(),
            screenshot.as_deref(),
        );
        let max_tokens =
            remaining_tokens(input, &progress.spent, model.settings().max_output_tokens);
        let answer = model
            .complete(ModelRequest {
                model: &model_name,
                messages,
                tools: &tools,
                json_instructions: Some(&json_instructions),
                max_tokens,
                deadline: session.deadline,
            })
            .await?;
        progress.spent.add(answer.usage, price);
        let mut record = step_record(step, &observation, &answer, answer.usage.cost(price));
        let (chosen, call_id) = match read_action(&answer) {
            Ok(parsed) => parsed,
            Err(problem) => {
                // Not an action: tell the model, and count the step.
                record["action"] = Value::Null;
                record["ok"] = json!(false);
                record["error"] = json!({"code": "invalid_action", "message": problem});
                progress.turns.push(Turn {
                    call_id: format!("call_{step}"),
                    name: "invalid".to_owned(),
                    arguments: json!({}),
                    reason: answer.content.clone().map(|text| mask_secrets(&text, secrets)),
                    result: format!("That was not a valid action ({problem}). Answer with exactly one tool call."),
                });
                progress.judged = Some(Judged {
                    signature: "invalid".to_owned(),
                    before: observation.fingerprint,
                    name: "answers that are no action".to_owned(),
                });
                recorder.commit(&mut progress, record, &[]).await?;
                continue;
            }
        };
        let step_started = Instant::now();
        let action = &chosen.action;
        let element = action
            .index()
            .and_then(|index| observation.element(index).cloned());
        let outcome = match action {
            AgentAction::Done { output } => {
                let mut output = output.clone();
                mask_secrets_in(&mut output, secrets);
                let problems = input
                    .output_schema
                    .as_ref()
                    .map(|schema| output_problems(schema, &output))
                    .unwrap_or_default();
                if problems.is_empty() {
                    describe_action(
                        &mut record,
                        &chosen,
                        element.as_ref(),
                        Ok("done"),
                        step_started,
                        secrets,
                    );
                    recorder.commit(&mut progress, record, &[]).await?;
                    let page = session.facts().await?;
                    let mut extra = serde_json::Map::new();
                    extra.insert("output".to_owned(), output);
                    extra.insert("usage".to_owned(), recorder.usage(&progress));
                    extra.insert("steps".to_owned(), Value::Array(progress.records));
                    if input.cache != ScriptCache::Off {
                        let changed = progress
                            .cache
                            .as_ref()
                            .is_none_or(|replay| replay.changed(&progress.script));
                        let saved =
                            changed && journal.cache_script(&cache_key, &progress.script).await;
                        extra.insert(
                            "cache".to_owned(),
                            cache_summary(progress.cache.as_ref(), saved),
                        );
                    }
                    let mut replay = page_options.clone();
                    replay.steps = progress.script;
                    extra.insert(
                        "script".to_owned(),
                        serde_json::to_value(&replay).unwrap_or(Value::Null),
                    );
                    info!(
                        steps = step + 1,
                        tokens = progress.spent.tokens.total(),
                        "agent reached its goal"
                    );
                    return Ok(Rendered {
                        files: Vec::new(),
                        page,
                        extra,
                    });
                }
                if progress.repaired {
                    return Err(CodedError::new(
                        ErrorCode::InvalidOutput,
                        format!(
                            "the output does not satisfy output_schema: {}",
                            problems.join("; ")
                        ),
                    ));
                }
                progress.repaired = true;
                Err(format!(
                    "the output does not satisfy output_schema: {}. Call done again with a corrected output.",
                    problems.join("; ")
                ))
            }
            AgentAction::Fail { reason: why } => {
                describe_action(
                    &mut record,
                    &chosen,
                    element.as_ref(),
                    Ok("gave up"),
                    step_started,
                    secrets,
                );
                recorder.commit(&mut progress, record, &[]).await?;
                return Err(CodedError::new(
                    ErrorCode::AgentFailed,
                    format!("the agent gave up: {}", mask_secrets(why, secrets)),
                ));
            }
            AgentAction::Extract { question } => {
                check_budget(input, &progress.spent, started)?;
                let (answer_text, usage) =
                    extract(model, &model_name, session, question, &observation).await?;
                progress.spent.add(usage, price);
                Ok(format!("Answer: {}", mask_secrets(&answer_text, secrets)))
            }
            other => match plan(other, &observation, input, policy, &progress.visited).await {
                Ok(steps) => run_steps(
                    session,
                    other,
                    steps,
                    input,
                    &mut progress.script,
                    &mut progress.visited,
                )
                .await?
                .map(str::to_owned),
                Err(problem) => Err(problem),
            },
        };
        session.check_document_allowed()?;
        // After the action: a screenshot for the record, and the stuck check on what the
        // page looks like now.
        let shot = match settings.step_screenshots {
            true => step_screenshot(session, journal, step).await,
            false => None,
        };
        let result_text = match &outcome {
            Ok(text) => text.clone(),
            Err(problem) => format!("Error: {problem}"),
        };
        describe_action(
            &mut record,
            &chosen,
            element.as_ref(),
            outcome.as_deref().map_err(String::as_str),
            step_started,
            secrets,
        );
        if let Some(shot) = &shot {
            record["screenshot"] = json!(shot.name);
        }
        progress.turns.push(Turn {
            call_id,
            name: action.name().to_owned(),
            arguments: chosen.arguments.clone(),
            reason: chosen
                .reason
                .as_deref()
                .map(|text| mask_secrets(text, secrets)),
            result: mask_secrets(&result_text, secrets),
        });
        progress.judged = Some(Judged {
            signature: format!(
                "{}:{}:{}",
                action.name(),
                element
                    .as_ref()
                    .map_or_else(String::new, |element| element.selector.clone()),
                chosen.arguments
            ),
            before: observation.fingerprint,
            name: action.name().to_owned(),
        });
        recorder
            .commit(&mut progress, record, shot.as_slice())
            .await?;
    }
}

/// Where to go on from: an earlier attempt's checkpoint, with its page restored by
/// replaying its steps, or the start. Opens the start URL either way.
async fn resume(
    session: &Session<'_>,
    input: &AgentInput,
    settings: &AgentSettings,
    saved: Option<&Value>,
) -> Result<Progress, CodedError> {
    let earlier = saved.and_then(|saved| {
        serde_json::from_value::<Progress>(saved.clone())
            .ok()
            .filter(|progress| progress.version == CHECKPOINT_VERSION)
    });
    if saved.is_some() && earlier.is_none() {
        warn!("the agent's checkpoint is unreadable; starting afresh");
    }
    open_start(session, input).await?;
    let Some(earlier) = earlier else {
        let mut progress = Progress::fresh(settings);
        progress
            .visited
            .extend(input.url.iter().map(|url| url.as_str().to_owned()));
        return Ok(progress);
    };
    // As a script runs: a `wait_for` navigation sees the navigation the step before it
    // started.
    let mut previous = session.event_sequence();
    for (index, step) in earlier.script.iter().enumerate() {
        let started = session.event_sequence();
        let replayed = run_step(session, input, step, index, previous).await?;
        previous = started;
        if let Err(problem) = replayed {
            warn!(step = index, problem = %problem, "a recorded step no longer replays; the agent starts over");
            open_start(session, input).await?;
            let mut progress = earlier.start_over(settings);
            progress
                .visited
                .extend(input.url.iter().map(|url| url.as_str().to_owned()));
            return Ok(progress);
        }
    }
    info!(
        steps = earlier.step,
        replayed = earlier.script.len(),
        "agent resumed from its checkpoint"
    );
    Ok(earlier)
}

/// Replays a cached script on the start page, each step bounded by
/// `agent.cached_step_timeout`, until one fails: the steps that ran join the run's
/// script, and the model is told (as the next look's note) what was done and where to
/// go on from. Returns the URL it ended on.
async fn replay_cached(
    session: &Session<'_>,
    input: &AgentInput,
    settings: &AgentSettings,
    cached: &[Step],
    progress: &mut Progress,
) -> Result<Option<String>, CodedError> {
    let limit = settings.cached_step_timeout;
    let mut previous = session.event_sequence();
    let mut failed = None;
    for (index, step) in cached.iter().enumerate() {
        let started = session.event_sequence();
        let outcome = match tokio::time::timeout(
            limit,
            run_step(session, input, step, index, previous),
        )
        .await
        {
            Ok(outcome) => outcome?,
            Err(_) => Err(format!("it did not finish within {limit:?}")),
        };
        previous = started;
        if let Err(problem) = outcome {
            failed = Some(format!(
                "step {} ({}): {}",
                index + 1,
                describe_step(step),
                mask_secrets(&problem, &input.secrets)
            ));
            break;
        }
        progress.script.push(step.clone());
    }
    let url = note_visited(session, &mut progress.visited).await;
    let done: Vec<String> = progress.script.iter().map(describe_step).collect();
    let mut note = format!(
        "These actions of an earlier run of this goal were replayed already: {}.",
        if done.is_empty() {
            "none".to_owned()
        } else {
            done.join("; ")
        }
    );
    match &failed {
        Some(problem) => note.push_str(&format!(
            " The next recorded action failed, {problem}. Go on from the page as it is now."
        )),
        None => note.push_str(
            " Check that the page shows what the goal asks for and finish (done with the output), or go on.",
        ),
    }
    info!(
        replayed = progress.script.len(),
        cached = cached.len(),
        healed = failed.is_some(),
        "agent replayed its cached script"
    );
    progress.nudge = Some(note);
    progress.cache = Some(CacheReplay {
        steps: cached.len(),
        replayed: progress.script.len(),
        failed,
    });
    Ok(url)
}

/// A script step in a few words, for the model: `click #submit`.
fn describe_step(step: &Step) -> String {
    let value = serde_json::to_value(step).unwrap_or(Value::Null);
    let target = ["selector", "url", "key", "event"]
        .iter()
        .find_map(|field| value[*field].as_str())
        .unwrap_or_default();
    let text = value["text"]
        .as_str()
        .map(|text| format!(" {text:?}"))
        .unwrap_or_default();
    format!("{} {target}{text}", step.action())
        .trim_end()
        .to_owned()
}

/// The record of the step that replayed the cached script: no model call.
fn cache_record(progress: &Progress, url: Option<String>, shot: Option<&NewArtifact>) -> Value {
    let replay = progress.cache.as_ref();
    let mut record = json!({
        "index": progress.step,
        "action": "replay_cached",
        "ok": replay.is_some_and(|replay| replay.failed.is_none()),
        "replayed": replay.map_or(0, |replay| replay.replayed),
        "of": replay.map_or(0, |replay| replay.steps),
        "url": url,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
    });
    if let Some(problem) = replay.and_then(|replay| replay.failed.as_ref()) {
        record["error"] = json!({"code": "cached_step_failed", "message": problem});
    }
    if let Some(shot) = shot {
        record["screenshot"] = json!(shot.name);
    }
    record
}

/// The result's `cache`: whether a cached script was replayed, how far, and whether
/// this run's script is the cached one now.
fn cache_summary(replay: Option<&CacheReplay>, saved: bool) -> Value {
    json!({
        "hit": replay.is_some(),
        "replayed": replay.map_or(0, |replay| replay.replayed),
        "healed": replay.is_some_and(|replay| replay.failed.is_some()),
        "saved": saved,
    })
}

async fn open_start(session: &Session<'_>, input: &AgentInput) -> Result<(), CodedError> {
    if let Some(url) = &input.url {
        session
            .open(
                url.as_str(),
                &WaitSpec {
                    wait_until: input.wait_until,
                    ..WaitSpec::default()
                },
            )
            .await?;
    }
    Ok(())
}

/// A JPEG of the page after step `step`, stored with the task at once.
async fn step_screenshot(
    session: &Session<'_>,
    journal: &Journal,
    step: u32,
) -> Option<NewArtifact> {
    match session
        .capture_clip(ImageFormat::Jpeg, Some(60), false, None)
        .await
    {
        Ok(bytes) => {
            journal
                .store(RenderedFile {
                    name: format!("steps/{:03}.jpg", step + 1),
                    content_type: "image/jpeg".to_owned(),
                    bytes,
                })
                .await
        }
        Err(error) => {
            debug!(error = %error, "no screenshot of the step");
            None
        }
    }
}

fn check_budget(input: &AgentInput, spent: &Spent, started: Instant) -> Result<(), CodedError> {
    let budget = &input.budget;
    if let Some(max) = budget.max_tokens
        && spent.tokens.total() >= max
    {
        return Err(CodedError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "{} tokens used of budget.max_tokens {max}",
                spent.tokens.total()
            ),
        ));
    }
    if let Some(max) = budget.max_cost_usd
        && spent.cost_usd >= max
    {
        return Err(CodedError::new(
            ErrorCode::BudgetExceeded,
            format!("${:.6} spent of budget.max_cost_usd ${max}", spent.cost_usd),
        ));
    }
    if let Some(max) = budget.max_duration_ms
        && started.elapsed() >= Duration::from_millis(max)
    {
        return Err(CodedError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "{} ms taken of budget.max_duration_ms {max}",
                started.elapsed().as_millis()
            ),
        ));
    }
    Ok(())
}

/// The most tokens the next answer may have: the setting, or what is left of the
/// token budget if less.
fn remaining_tokens(input: &AgentInput, spent: &Spent, setting: u32) -> u32 {
    match input.budget.max_tokens {
        Some(max) => {
            let left = max.saturating_sub(spent.tokens.total()).max(1);
            u32::try_from(left).unwrap_or(u32::MAX).min(setting)
        }
        None => setting,
    }
}

fn vision_wanted(vision: Vision, observation: &Observation) -> bool {
    match vision {
        Vision::Off => false,
        Vision::On => true,
        // A page whose text says little (canvas, images): the picture may say more.
        Vision::Auto => {
            observation.text_chars < 40
                && observation.elements.len() < 2
                && !observation.url.starts_with("about:")
        }
    }
}

/// A JPEG of the viewport with each listed element's index drawn on it.
async fn labelled_screenshot(
    session: &Session<'_>,
    observation: &Observation,
) -> Result<Vec<u8>, CodedError> {
    let boxes: Vec<Value> = observation
        .elements
        .iter()
        .map(|element| {
            json!([
                element.index,
                element.bounds[0],
                element.bounds[1],
                element.bounds[2],
                element.bounds[3]
            ])
        })
        .collect();
    let draw = format!(
        "(() => {{ const layer = document.createElement('div'); layer.id = '__operator_labels'; \
         layer.style.cssText = 'position:absolute;left:0;top:0;pointer-events:none;z-index:2147483647'; \
         for (const [index, x, y, w, h] of {boxes}) {{ const box = document.createElement('div'); \
         box.style.cssText = `position:absolute;left:${{x}}px;top:${{y}}px;width:${{w}}px;height:${{h}}px;outline:2px solid #e5195f`; \
         const label = document.createElement('span'); label.textContent = index; \
         label.style.cssText = 'position:absolute;left:0;top:-14px;font:bold 11px sans-serif;background:#e5195f;color:#fff;padding:0 2px'; \
         box.appendChild(label); layer.appendChild(box); }} \
         document.documentElement.appendChild(layer); return true; }})()",
        boxes = Value::Array(boxes)
    );
    session.evaluate(&draw).await?;
    let shot = session
        .capture_clip(ImageFormat::Jpeg, Some(60), false, None)
        .await;
    session
        .evaluate("document.getElementById('__operator_labels')?.remove(), true")
        .await?;
    shot
}

const SYSTEM_PROMPT: &str = "You drive a web browser to reach the user's goal. Each turn shows the current page: its title, URL and scroll position, then its visible content in page order, where each element you can act on has an index, e.g. [3]<button>Sign in</button>; *[7] marks an element that appeared since your last action. Take exactly one action per turn, referring to elements by index. Secrets are written as {{name}}: type the placeholder itself, never guess a value. When the goal is reached, call done with the output; when it cannot be reached, call fail with the reason. Give each action a short reason.";

/// The messages of the next call: instructions, the goal, the steps so far (as tool
/// calls and their results; the client rewrites them for a server in JSON mode) and
/// the current page.
fn conversation(
    input: &AgentInput,
    turns: &[Turn],
    observation: &Observation,
    step: u32,
    nudge: Option<String>,
    screenshot: Option<&[u8]>,
) -> Vec<Value> {
    let system = SYSTEM_PROMPT.to_owned();
    let mut goal = format!("Goal: {}", input.goal);
    if let Some(schema) = &input.output_schema {
        goal.push_str(&format!(
            "\n\nThe output given to done must satisfy this JSON Schema: {schema}"
        ));
    }
    if !input.secrets.is_empty() {
        let names: Vec<String> = input
            .secrets
            .keys()
            .map(|name| format!("{{{{{name}}}}}"))
            .collect();
        goal.push_str(&format!(
            "\n\nSecrets you can type by their placeholder: {}.",
            names.join(", ")
        ));
    }
    if !input.allowed_domains.is_empty() {
        goal.push_str(&format!(
            "\n\nOnly these sites can be reached: {}.",
            input.allowed_domains.join(", ")
        ));
    }
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": goal}),
    ];
    for turn in turns {
        let mut arguments = turn.arguments.clone();
        if let (Some(reason), Some(object)) = (&turn.reason, arguments.as_object_mut()) {
            object.entry("reason").or_insert_with(|| json!(reason));
        }
        messages.push(json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": turn.call_id, "type": "function", "function": {"name": turn.name, "arguments": arguments.to_string()}}],
        }));
        messages
            .push(json!({"role": "tool", "tool_call_id": turn.call_id, "content": turn.result}));
    }
    let mut current = format!(
        "Step {} of at most {}. The current page:\n\n{}",
        step + 1,
        input.max_steps,
        observation.text
    );
    if let Some(nudge) = nudge {
        current.push_str(&format!("\n\nNote: {nudge}"));
    }
    match screenshot {
        Some(bytes) => {
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            messages.push(json!({"role": "user", "content": [
                {"type": "text", "text": current},
                {"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{data}")}},
            ]}));
        }
        None => messages.push(json!({"role": "user", "content": current})),
    }
    messages
}

/// The action in an answer, with its call id: a tool call, or a JSON object in the text.
fn read_action(answer: &ModelAnswer) -> Result<(Chosen, String), String> {
    if let Some(call) = answer.tool_calls.first() {
        let mut chosen = Chosen::from_call(&call.name, &call.arguments)?;
        if chosen.reason.is_none() {
            chosen.reason = answer.content.clone();
        }
        return Ok((chosen, call.id.clone()));
    }
    let content = answer.content.as_deref().ok_or("the answer was empty")?;
    Ok((Chosen::parse_json(content)?, "call_json".to_owned()))
}

/// A step's record as far as the model's answer tells: where, and what it cost.
fn step_record(step: u32, observation: &Observation, answer: &ModelAnswer, cost: f64) -> Value {
    json!({
        "index": step,
        "url": observation.url,
        "tokens_in": answer.usage.prompt_tokens,
        "tokens_out": answer.usage.completion_tokens,
        "cost_usd": cost,
        "latency_ms": answer.latency.as_millis() as u64,
        "observation": {
            "elements": observation.elements.len(),
            "interactive_total": observation.interactive_total,
            "text_chars": observation.text_chars,
            "estimated_tokens": observation.text.len() / CHARS_PER_TOKEN,
            "dom_nodes": observation.dom_nodes,
            "took_ms": observation.took.as_secs_f64() * 1000.0,
        },
    })
}

/// Adds to a step's record the action, the element it resolved to and what came of it
/// (secrets masked).
fn describe_action(
    record: &mut Value,
    chosen: &Chosen,
    element: Option<&Element>,
    outcome: Result<&str, &str>,
    started: Instant,
    secrets: &BTreeMap<String, String>,
) {
    let mut arguments = chosen.arguments.clone();
    mask_secrets_in(&mut arguments, secrets);
    record["action"] = json!(chosen.action.name());
    record["args"] = arguments;
    record["reason"] = json!(
        chosen
            .reason
            .as_deref()
            .map(|text| mask_secrets(text, secrets))
    );
    record["ok"] = json!(outcome.is_ok());
    record["duration_ms"] = json!(started.elapsed().as_millis() as u64);
    match outcome {
        Ok(result) => record["result"] = json!(mask_secrets(result, secrets)),
        Err(problem) => {
            record["error"] =
                json!({"code": "action_failed", "message": mask_secrets(problem, secrets)})
        }
    }
    if let Some(element) = element {
        record["element"] = json!({"index": element.index, "selector": element.selector, "tag": element.tag, "name": element.name});
    }
}

/// The script steps an action is.
async fn plan(
    action: &AgentAction,
    observation: &Observation,
    input: &AgentInput,
    policy: &NetworkPolicy,
    visited: &[String],
) -> Result<Vec<Step>, String> {
    let element = |index: u32| -> Result<&Element, String> {
        observation
            .element(index)
            .ok_or_else(|| format!("there is no element [{index}] on the page now"))
    };
    let steps: Vec<Step> = match action {
        AgentAction::Click { index } => vec![Step::Click(Click {
            selector: element(*index)?.selector.clone(),
            timeout_ms: None,
        })],
        AgentAction::Hover { index } => vec![Step::Hover(Hover {
            selector: element(*index)?.selector.clone(),
            timeout_ms: None,
        })],
        AgentAction::Type {
            index,
            text,
            submit,
        } => {
            let target = element(*index)?;
            if !target.is_text_field() && target.tag != "div" && target.tag != "span" {
                return Err(format!(
                    "[{index}] is a {} that text cannot be typed into",
                    target.tag
                ));
            }
            fill_secrets(text, &input.secrets)?;
            let mut steps = vec![Step::Type(TypeText {
                selector: target.selector.clone(),
                // The placeholder is kept; the value is filled in as it is typed.
                text: text.clone(),
                delay_ms: None,
                clear: true,
                timeout_ms: None,
            })];
            if *submit {
                steps.push(Step::Press(Press {
                    key: "Enter".to_owned(),
                    selector: Some(target.selector.clone()),
                    timeout_ms: None,
                }));
            }
            steps
        }
        AgentAction::Select { index, values } => {
            let target = element(*index)?;
            if target.tag != "select" {
                return Err(format!("[{index}] is not a select"));
            }
            let chosen: Result<Vec<String>, String> = values
                .iter()
                .map(|wanted| {
                    target
                        .options
                        .iter()
                        .find(|(text, value)| text == wanted || value == wanted)
                        .or_else(|| {
                            target
                                .options
                                .iter()
                                .find(|(text, _)| text.eq_ignore_ascii_case(wanted.trim()))
                        })
                        .map(|(_, value)| value.clone())
                        .ok_or_else(|| format!("[{index}] has no option {wanted:?}"))
                })
                .collect();
            vec![Step::Select(Select {
                selector: target.selector.clone(),
                values: chosen?,
                timeout_ms: None,
            })]
        }
        AgentAction::Press { key, index } => vec![Step::Press(Press {
            key: key.clone(),
            selector: match index {
                Some(index) => Some(element(*index)?.selector.clone()),
                None => None,
            },
            timeout_ms: None,
        })],
        AgentAction::Scroll { down, index } => vec![Step::Scroll(match index {
            Some(index) => Scroll {
                selector: Some(element(*index)?.selector.clone()),
                x: 0,
                y: 0,
                timeout_ms: None,
            },
            None => {
                let distance = (observation.viewport_height * 0.8).round() as i32;
                Scroll {
                    selector: None,
                    x: 0,
                    y: if *down { distance } else { -distance },
                    timeout_ms: None,
                }
            }
        })],
        AgentAction::Goto { url } => {
            let target = TargetUrl::parse(url).map_err(|error| error.message)?;
            let host = target.as_url().host_str().unwrap_or_default().to_owned();
            if !input.allows_host(&host) {
                return Err(format!("{host} is not in allowed_domains"));
            }
            crate::resolve::check_url(policy, target.as_url())
                .await
                .map_err(|error| error.message)?;
            vec![Step::Goto(Goto {
                url: target,
                wait_until: input.wait_until,
                timeout_ms: None,
            })]
        }
        AgentAction::GoBack => {
            // The page before this one, opened again (its URL is what a replay can use).
            let current = observation.url.clone();
            let previous = visited.iter().rev().find(|url| **url != current).cloned();
            let Some(previous) = previous else {
                return Err("there is no previous page".to_owned());
            };
            let target = TargetUrl::parse(&previous).map_err(|error| error.message)?;
            vec![Step::Goto(Goto {
                url: target,
                wait_until: input.wait_until,
                timeout_ms: None,
            })]
        }
        AgentAction::Wait { seconds } => vec![Step::WaitFor(WaitFor {
            selector: None,
            state: ElementState::default(),
            event: None,
            delay_ms: Some((seconds * 1000.0).round() as u32),
            timeout_ms: Some((seconds * 1000.0).round() as u32 + 1000),
        })],
        AgentAction::Extract { .. } | AgentAction::Done { .. } | AgentAction::Fail { .. } => {
            Vec::new()
        }
    };
    Ok(steps)
}

/// The page's URL now, appended to `visited` when it is not the last one there (for
/// `go_back`); none when the page does not answer.
async fn note_visited(session: &Session<'_>, visited: &mut Vec<String>) -> Option<String> {
    let url = session.evaluate("location.href").await.ok()?;
    let url = url.as_str()?.to_owned();
    if visited.last() != Some(&url) {
        visited.push(url.clone());
    }
    Some(url)
}

/// Runs an action's steps through the script executor, appending each to `script`.
async fn run_steps(
    session: &Session<'_>,
    action: &AgentAction,
    steps: Vec<Step>,
    input: &AgentInput,
    script: &mut Vec<Step>,
    visited: &mut Vec<String>,
) -> Result<Result<&'static str, String>, CodedError> {
    for step in steps {
        let sequence = session.event_sequence();
        if let Err(problem) = run_step(session, input, &step, script.len(), sequence).await? {
            return Ok(Err(problem));
        }
        let opens_itself = matches!(step, Step::Goto(_));
        script.push(step);
        // The agent's next look waited for the page this step led to; a replay must
        // too, or its next step (or its end) would act on the page being left.
        if !opens_itself && session.events.navigated_since(sequence) {
            script.push(Step::WaitFor(WaitFor {
                selector: None,
                state: ElementState::default(),
                event: Some(PageEvent::Navigation),
                delay_ms: None,
                timeout_ms: None,
            }));
        }
    }
    note_visited(session, visited).await;
    Ok(Ok(match action {
        AgentAction::Click { .. } => "clicked",
        AgentAction::Type { submit: true, .. } => "typed and pressed Enter",
        AgentAction::Type { .. } => "typed",
        AgentAction::Select { .. } => "selected",
        AgentAction::Press { .. } => "pressed",
        AgentAction::Hover { .. } => "hovered",
        AgentAction::Scroll { .. } => "scrolled",
        AgentAction::Goto { .. } | AgentAction::GoBack => "opened",
        AgentAction::Wait { .. } => "waited",
        _ => "done",
    }))
}

/// Runs one script step (its placeholders filled) and lets the page settle. `Ok(Err)`
/// is a step that failed (the model reads why; secrets masked), `Err` a failure that
/// ends the task (cancelled, timed out, the browser gone, a refused document).
async fn run_step(
    session: &Session<'_>,
    input: &AgentInput,
    step: &Step,
    index: usize,
    previous_sequence: u64,
) -> Result<Result<(), String>, CodedError> {
    let sequence = session.event_sequence();
    let filled = match step.with_secrets(&input.secrets) {
        Ok(filled) => filled,
        Err(problem) => return Ok(Err(problem)),
    };
    let mut output = StepOutput::default();
    if let Err(error) = filled
        .run(session, index, previous_sequence, &mut output)
        .await
    {
        session.check_document_allowed()?;
        return match error.code {
            ErrorCode::Cancelled
            | ErrorCode::TaskTimeout
            | ErrorCode::BrowserCrashed
            | ErrorCode::BrowserError
            | ErrorCode::UrlNotAllowed => Err(error),
            _ => Ok(Err(mask_secrets(&error.message, &input.secrets))),
        };
    }
    settle(session, sequence).await;
    Ok(Ok(()))
}

/// Waits for a navigation the action started to load, then (briefly) for the network
/// to go quiet, so the next look sees the page the action led to.
async fn settle(session: &Session<'_>, sequence: u64) {
    tokio::time::sleep(Duration::from_millis(60)).await;
    let until = Instant::now() + SETTLE_TIMEOUT;
    while session.events.navigation_pending_since(sequence) && Instant::now() < until {
        if session.check_stop().is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let idle_until = Instant::now() + IDLE_TIMEOUT;
    while !session.events.network_idle_for(Duration::from_millis(200))
        && Instant::now() < idle_until
    {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `extract`: one more model call, with the page's whole text and the question.
async fn extract(
    model: &ModelClient,
    model_name: &str,
    session: &Session<'_>,
    question: &str,
    observation: &Observation,
) -> Result<(String, TokenUsage), CodedError> {
    let text: String = observation
        .full_text
        .chars()
        .take(EXTRACT_TEXT_CHARS)
        .collect();
    let messages = vec![
        json!({"role": "system", "content": "Answer the question from the page's text only. Be brief; say so when the text does not tell."}),
        json!({"role": "user", "content": format!("Page: {} ({})\n\n{text}\n\nQuestion: {question}", observation.title, observation.url)}),
    ];
    let answer = model
        .complete(ModelRequest {
            model: model_name,
            messages,
            tools: &[],
            json_instructions: None,
            max_tokens: model.settings().max_output_tokens,
            deadline: session.deadline,
        })
        .await?;
    Ok((answer.content.unwrap_or_default(), answer.usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AgentSettings {
        AgentSettings {
            stuck_warn_after: 3,
            stuck_fail_after: 2,
            ..AgentSettings::default()
        }
    }

    /// Feeds `steps` (action, page before, page after) and returns each verdict.
    fn verdicts(steps: &[(&str, u64, u64)]) -> Vec<Stuck> {
        let mut detector = StuckDetector::new(&settings());
        steps
            .iter()
            .map(|(action, before, after)| detector.record((*action).to_owned(), *before, *after))
            .collect()
    }

    #[test]
    fn repeating_the_same_action_warns_then_fails() {
        let same = [
            ("click:#a", 1, 2),
            ("click:#a", 2, 3),
            ("click:#a", 3, 4),
            ("click:#a", 4, 5),
            ("click:#a", 5, 6),
        ];
        assert_eq!(
            verdicts(&same),
            [Stuck::No, Stuck::No, Stuck::Warn, Stuck::No, Stuck::Fail]
        );
    }

    #[test]
    fn a_page_that_does_not_change_counts_as_repeating() {
        let unchanged = [
            ("click:#a", 7, 7),
            ("scroll:", 7, 7),
            ("hover:#b", 7, 7),
            ("click:#c", 7, 8),
            ("click:#d", 8, 9),
        ];
        // Progress (a changed page, another action) resets the count.
        assert_eq!(
            verdicts(&unchanged),
            [Stuck::No, Stuck::No, Stuck::Warn, Stuck::No, Stuck::No]
        );
    }
}
