//! Agent tasks against a scripted model (the suite's one fake) and a real site and
//! browser: a login that extracts a value matching `output_schema` with the password
//! never leaving the worker, a three-page navigation, and every guard (budget,
//! `max_steps`, the loop detector, a 429 retried after `Retry-After`, a 401 that is
//! final, an invalid output repaired once). All on both setups.

use std::time::{Duration, Instant};

use poem::web::{Form, Html};
use poem::{EndpointExt, Route, get, handler, post};
use serde_json::{Value, json};

use crate::helpers::{ENDED, Setup, on_both_setups, serve_on_loopback};
use crate::model_server::{Call, ModelServer, Reply, index_in};

/// The password the login page wants; it must appear in no request the model server
/// sees, and in no event, log or artifact.
const PASSWORD: &str = "hunter2-Xq9zK";

#[handler]
fn login_page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>Sign in</title></head><body><h1>Sign in to the shop</h1>\
         <form method=\"post\" action=\"/shop/welcome\">\
         <label for=\"user\">User name</label><input id=\"user\" name=\"user\">\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\">\
         <select id=\"plan\" name=\"plan\"><option value=\"free\">Free</option><option value=\"pro\">Pro</option></select>\
         <button id=\"submit\" type=\"submit\">Sign in</button></form></body></html>",
    )
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
    plan: String,
}

/// Greets a user with the right password; logs the password to the console, as a
/// careless page would, to show that logs are masked too.
#[handler]
fn welcome_page(Form(login): Form<Login>) -> Html<String> {
    if login.password != PASSWORD {
        return Html("<!doctype html><html><body><h1>Wrong password</h1></body></html>".to_owned());
    }
    Html(format!(
        "<!doctype html><html><head><title>Welcome</title></head><body><h1>Welcome, {} ({})</h1>\
         <script>console.log('signed in with ' + {:?});</script></body></html>",
        login.user, login.plan, login.password
    ))
}

#[handler]
fn page_a() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>A</title></head><body><p>Start here.</p><a href=\"/shop/b\">Next to B</a></body></html>",
    )
}

#[handler]
fn page_b() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>B</title></head><body><p>Halfway.</p><a href=\"/shop/c\">Next to C</a></body></html>",
    )
}

#[handler]
fn page_c() -> Html<&'static str> {
    Html("<!doctype html><html><head><title>C</title></head><body><p>Code: C-42</p></body></html>")
}

/// The cached run's site: page 2's link changes its id once `moved` is set, so a
/// recorded click on it no longer finds it.
#[handler]
fn cache_page(
    poem::web::Path(number): poem::web::Path<u32>,
    moved: poem::web::Data<&std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Html<String> {
    let id = match (number, moved.load(std::sync::atomic::Ordering::SeqCst)) {
        (2, true) => "onward".to_owned(),
        _ => format!("to-{}", number + 1),
    };
    let body = match number {
        3 => "<p>Code: K-7</p>".to_owned(),
        _ => format!(
            "<p>Page {number}</p><a id=\"{id}\" href=\"/cache/{}\">Next to {}</a>",
            number + 1,
            number + 1
        ),
    };
    Html(format!(
        "<!doctype html><html><head><title>Cache {number}</title></head><body>{body}</body></html>"
    ))
}

/// A checkout whose card form is in a same-origin frame and whose last button is in an
/// open shadow root: the agent must see and act inside both.
#[handler]
fn framed_page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>Checkout</title></head><body><h1>Checkout</h1>\
         <iframe id=\"pay\" src=\"/shop/inner\" style=\"width:400px;height:120px;border:3px solid #000\"></iframe>\
         <x-go></x-go><p id=\"status\"></p><script>\
         customElements.define('x-go', class extends HTMLElement { connectedCallback() {\
         const root = this.attachShadow({mode: 'open'}); root.innerHTML = '<button>Shadow go</button>';\
         root.querySelector('button').onclick = () => { document.getElementById('status').textContent = 'Shadow clicked'; }; } });\
         </script></body></html>",
    )
}

#[handler]
fn inner_page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><body style=\"margin:0\"><input name=\"card\" placeholder=\"Card number\">\
         <button onclick=\"if (document.querySelector('input').value === '4242') document.body.insertAdjacentHTML('beforeend', '<p>Thanks, paid</p>')\">Pay</button>\
         </body></html>",
    )
}

#[handler]
fn stuck_page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>Stuck</title></head><body><button id=\"noop\">Nothing</button></body></html>",
    )
}

/// What the scripted model does, by the scenario its goal names.
fn script(call: &Call<'_>) -> Reply {
    let goal = call.goal();
    let page = call.page();
    if goal.contains("LOGIN") {
        if let Some(line) = page.lines().find(|line| line.contains("Welcome,")) {
            let greeting = line.trim_start_matches(|c: char| c != 'W');
            return Reply::Tool(
                "done",
                json!({"output": {"greeting": greeting}, "reason": "signed in"}),
            );
        }
        if page.contains("Wrong password") {
            return Reply::Tool("fail", json!({"reason": "the password was refused"}));
        }
        let line_of = |needle: &str| {
            page.lines()
                .find(|line| line.contains(needle))
                .unwrap_or_default()
                .to_owned()
        };
        let user = line_of("name=\"user\"");
        if !user.contains("value=\"ada\"") {
            return Reply::Tool(
                "type",
                json!({"index": index_in(&page, "name=\"user\""), "text": "ada", "reason": "the user name"}),
            );
        }
        if !line_of("name=\"password\"").contains("value=\"{{password}}\"") {
            return Reply::Tool(
                "type",
                json!({"index": index_in(&page, "name=\"password\""), "text": "{{password}}"}),
            );
        }
        if !line_of("name=\"plan\"").contains("Pro (selected)") {
            return Reply::Tool(
                "select",
                json!({"index": index_in(&page, "name=\"plan\""), "values": ["Pro"]}),
            );
        }
        return Reply::Tool(
            "click",
            json!({"index": call.index_of(">Sign in</button>")}),
        );
    }
    if goal.contains("NAVIGATE") {
        if page.contains("Code: C-42") {
            return Reply::Tool("done", json!({"output": {"code": "C-42"}}));
        }
        return Reply::Tool("click", json!({"index": call.index_of("Next to")}));
    }
    if goal.contains("FRAMES") {
        if page.contains("Shadow clicked") {
            return Reply::Tool(
                "done",
                json!({"output": {"paid": page.contains("Thanks, paid")}}),
            );
        }
        if page.contains("Thanks, paid") {
            return Reply::Tool(
                "click",
                json!({"index": call.index_of(">Shadow go</button>")}),
            );
        }
        if !page
            .lines()
            .any(|line| line.contains("name=\"card\"") && line.contains("value=\"4242\""))
        {
            return Reply::Tool(
                "type",
                json!({"index": call.index_of("name=\"card\""), "text": "4242"}),
            );
        }
        return Reply::Tool("click", json!({"index": call.index_of(">Pay</button>")}));
    }
    if goal.contains("CACHED") {
        if page.contains("Code: K-7") {
            return Reply::Tool("done", json!({"output": {"code": "K-7"}}));
        }
        return Reply::Tool("click", json!({"index": call.index_of("Next to")}));
    }
    if goal.contains("MAXSTEPS") {
        return Reply::Tool("click", json!({"index": call.index_of("Next to")}));
    }
    if goal.contains("BUDGET") {
        return Reply::Tool("wait", json!({"seconds": 0.1}));
    }
    if goal.contains("LOOP") {
        return Reply::Tool("click", json!({"index": call.index_of("Nothing")}));
    }
    if goal.contains("RATELIMIT") {
        if call.earlier == 0 {
            return Reply::Status(429, Some(1));
        }
        return Reply::Tool("done", json!({"output": {"ok": true}}));
    }
    if goal.contains("AUTH") {
        return Reply::Status(401, None);
    }
    if goal.contains("REPAIR") {
        if call.earlier == 0 {
            return Reply::Tool("done", json!({"output": {"total": "12.50"}}));
        }
        return Reply::Tool("done", json!({"output": {"total": 12.5}}));
    }
    if goal.contains("JSONMODE") {
        if call.request.get("tools").is_some() {
            return Reply::Refuse(400, "this server does not support tools");
        }
        return Reply::Text(
            json!({"reason": "nothing to do", "action": "done", "args": {"output": {"mode": "json"}}})
                .to_string(),
        );
    }
    Reply::Text("not an action".to_owned())
}

async fn agent_scenarios(setup: Setup) {
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (site, _stop) = serve_on_loopback(
        Route::new()
            .at("/cache/:number", get(cache_page))
            .at("/shop/login", get(login_page))
            .at("/shop/welcome", post(welcome_page))
            .at("/shop/a", get(page_a))
            .at("/shop/b", get(page_b))
            .at("/shop/c", get(page_c))
            .at("/shop/stuck", get(stuck_page))
            .at("/shop/framed", get(framed_page))
            .at("/shop/inner", get(inner_page))
            .data(std::sync::Arc::clone(&moved)),
    )
    .await;
    let model = ModelServer::start(script).await;
    let base_url = model.base_url.clone();
    let app = setup
        .start(move |settings| {
            settings.llm.base_url = Some(base_url);
            settings.llm.max_retries = 2;
            settings.agent.cached_step_timeout = Duration::from_secs(1);
        })
        .await;
    let agent = |goal: &str, url: &str, extra: Value| {
        let mut input = json!({"goal": goal, "url": format!("{site}{url}")});
        if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
            input.extend(extra.clone());
        }
        json!({"kind": "agent", "max_attempts": 3, "input": input})
    };
    // A dollar budget needs a price for the model: refused at submission.
    let (status, refused) = app
        .submit(&agent(
            "x",
            "/shop/a",
            json!({"budget": {"max_cost_usd": 1.0}}),
        ))
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["code"], "llm_not_configured");

    let scenarios = [
        (
            "LOGIN",
            agent(
                "LOGIN: sign in as ada with the password {{password}} on the Pro plan and read the greeting",
                "/shop/login",
                json!({
                    "secrets": {"password": PASSWORD},
                    "output_schema": {"type": "object", "required": ["greeting"], "properties": {"greeting": {"type": "string", "pattern": "^Welcome"}}},
                }),
            ),
        ),
        (
            "NAVIGATE",
            agent(
                "NAVIGATE: follow the pages to the code",
                "/shop/a",
                json!({}),
            ),
        ),
        (
            "MAXSTEPS",
            agent(
                "MAXSTEPS: follow the pages",
                "/shop/a",
                json!({"max_steps": 2}),
            ),
        ),
        (
            "BUDGET",
            agent(
                "BUDGET: wait",
                "/shop/a",
                json!({"budget": {"max_tokens": 50}}),
            ),
        ),
        (
            "LOOP",
            agent("LOOP: press the button", "/shop/stuck", json!({})),
        ),
        (
            "RATELIMIT",
            agent("RATELIMIT: finish", "/shop/a", json!({})),
        ),
        ("AUTH", agent("AUTH: anything", "/shop/a", json!({}))),
        (
            "FRAMES",
            agent(
                "FRAMES: pay with card 4242, then go",
                "/shop/framed",
                json!({}),
            ),
        ),
        ("JSONMODE", agent("JSONMODE: finish", "/shop/a", json!({}))),
        (
            "REPAIR",
            agent(
                "REPAIR: read the total",
                "/shop/a",
                json!({
                    "output_schema": {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}},
                }),
            ),
        ),
    ];
    let mut ids = Vec::new();
    for (name, task) in &scenarios {
        let (status, created) = app.submit(task).await;
        assert_eq!(status, 202, "{name}: {created}");
        ids.push((*name, created["id"].as_str().expect("id").to_owned()));
    }
    let mut done = std::collections::HashMap::new();
    for (name, id) in &ids {
        let task = app.wait_for(id, &ENDED, crate::TASK_DEADLINE).await;
        done.insert(*name, task);
    }

    // The login: five steps, each the script step on a concrete selector.
    let login = &done["LOGIN"];
    assert_eq!(
        login["state"],
        "succeeded",
        "{login}\nthe last page the model saw: {}",
        model
            .requests_for("LOGIN")
            .last()
            .map(crate::model_server::last_user_text)
            .unwrap_or_default()
    );
    assert_eq!(login["result"]["output"]["greeting"], "Welcome, ada (pro)");
    let actions: Vec<&str> = login["result"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| step["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        ["type", "type", "select", "click", "done"],
        "{login}"
    );
    let script_steps = login["result"]["script"]["steps"]
        .as_array()
        .expect("script");
    let selectors: Vec<&str> = script_steps
        .iter()
        .filter_map(|step| step["selector"].as_str())
        .collect();
    assert_eq!(
        selectors,
        ["#user", "#password", "#plan", "#submit"],
        "{login}"
    );
    let actions: Vec<&str> = script_steps
        .iter()
        .filter_map(|step| step["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["type", "type", "select", "click", "wait_for"],
        "the click's form post is waited for, as the agent did"
    );
    assert_eq!(script_steps[4]["event"], "navigation");
    assert_eq!(
        script_steps[1]["text"], "{{password}}",
        "the script keeps the placeholder"
    );
    assert_eq!(
        script_steps[2]["values"],
        json!(["pro"]),
        "the option's value, chosen by its text"
    );
    let usage = &login["result"]["usage"];
    assert_eq!(usage["model_calls"], 5, "{usage}");
    assert!(usage["total_tokens"].as_u64().expect("tokens") > 0);
    assert_eq!(login["input"]["secrets"]["password"], "[redacted]");
    // The model saw the login button with its index, and never the password.
    let login_requests = model.requests_for("LOGIN");
    assert_eq!(login_requests.len(), 5);
    let first_page = crate::model_server::last_user_text(&login_requests[0]);
    assert!(
        index_in(&first_page, ">Sign in</button>").is_some(),
        "the first observation lists the button: {first_page}"
    );
    let sent = serde_json::to_string(&model.requests()).expect("json");
    assert!(
        !sent.contains(PASSWORD),
        "a model request carried the password"
    );
    assert!(
        sent.contains("value=\\\"{{password}}\\\""),
        "the typed field is shown masked"
    );
    // Nor any event, the task itself, or any artifact.
    let id = ids[0].1.clone();
    let events = app.events(&id).await;
    let agent_steps = events
        .iter()
        .filter(|event| event.data["kind"] == "agent_step")
        .count();
    assert_eq!(agent_steps, 5, "one agent_step event per step: {events:?}");
    let events_text = format!("{events:?}");
    assert!(
        !events_text.contains(PASSWORD),
        "an event carried the password"
    );
    assert!(!login.to_string().contains(PASSWORD));
    let (_, full) = app.get(&format!("/v1/tasks/{id}")).await;
    let artifacts = full["artifacts"].as_array().expect("artifacts");
    assert!(
        artifacts
            .iter()
            .any(|artifact| artifact["name"] == "steps/001.jpg"),
        "a screenshot per step: {artifacts:?}"
    );
    let mut console_seen = false;
    for artifact in artifacts {
        let (_, bytes) = app.download(artifact["url"].as_str().expect("url")).await;
        let haystack = String::from_utf8_lossy(&bytes);
        assert!(
            !haystack.contains(PASSWORD),
            "{} carried the password",
            artifact["name"]
        );
        if artifact["name"] == "console.json" {
            console_seen = haystack.contains("signed in with {{password}}");
        }
    }
    assert!(console_seen, "the page's console line is kept, masked");

    let navigate = &done["NAVIGATE"];
    assert_eq!(navigate["state"], "succeeded", "{navigate}");
    assert_eq!(navigate["result"]["output"], json!({"code": "C-42"}));
    assert!(
        navigate["result"]["page"]["url"]
            .as_str()
            .expect("url")
            .ends_with("/shop/c")
    );

    // Inside a same-origin frame and an open shadow root: seen, acted on, and
    // recorded as deep selectors that a replay can follow.
    let framed = &done["FRAMES"];
    assert_eq!(framed["state"], "succeeded", "{framed}");
    assert_eq!(framed["result"]["output"], json!({"paid": true}));
    let deep: Vec<&str> = framed["result"]["script"]["steps"]
        .as_array()
        .expect("script")
        .iter()
        .filter_map(|step| step["selector"].as_str())
        .collect();
    assert_eq!(deep.len(), 3, "{framed}");
    assert!(
        deep[0].starts_with("#pay >>> ") && deep[1].starts_with("#pay >>> "),
        "{deep:?}"
    );
    assert!(
        deep[2].contains("x-go") && deep[2].ends_with(">>> button:nth-of-type(1)"),
        "{deep:?}"
    );

    let max_steps = &done["MAXSTEPS"];
    assert_eq!(max_steps["state"], "failed", "{max_steps}");
    assert_eq!(max_steps["error"]["code"], "agent_max_steps");
    assert_eq!(model.requests_for("MAXSTEPS").len(), 2);

    let budget = &done["BUDGET"];
    assert_eq!(budget["error"]["code"], "budget_exceeded", "{budget}");
    assert_eq!(
        model.requests_for("BUDGET").len(),
        1,
        "no call past the budget"
    );

    let looped = &done["LOOP"];
    assert_eq!(looped["error"]["code"], "agent_stuck", "{looped}");
    let loop_requests = model.requests_for("LOOP");
    assert_eq!(
        loop_requests.len(),
        5,
        "warned after 3 repeats, failed 2 later"
    );
    assert!(
        crate::model_server::last_user_text(&loop_requests[3]).contains("repeating yourself"),
        "the model was told before the task failed"
    );

    let retried = &done["RATELIMIT"];
    assert_eq!(retried["state"], "succeeded", "{retried}");
    assert_eq!(retried["attempts"], 1, "retried inside the attempt");
    let timed: Vec<Instant> = model
        .timed_requests()
        .into_iter()
        .filter(|(_, request)| crate::model_server::goal_of(request).contains("RATELIMIT"))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(timed.len(), 2);
    assert!(
        timed[1] - timed[0] >= Duration::from_millis(950),
        "the retry waited for Retry-After: 1 ({:?})",
        timed[1] - timed[0]
    );

    let refused = &done["AUTH"];
    assert_eq!(refused["state"], "failed", "{refused}");
    assert_eq!(refused["error"]["code"], "llm_auth_failed");
    assert_eq!(refused["attempts"], 1, "final at once");

    // A server that refuses tools is asked again in JSON mode, with the tools described.
    let json_mode = &done["JSONMODE"];
    assert_eq!(json_mode["state"], "succeeded", "{json_mode}");
    assert_eq!(json_mode["result"]["output"], json!({"mode": "json"}));
    let json_requests = model.requests_for("JSONMODE");
    let last = json_requests.last().expect("a request");
    assert!(last.get("tools").is_none(), "{last}");
    assert_eq!(last["response_format"]["type"], "json_object");
    assert!(
        last["messages"]
            .to_string()
            .contains("offers no tool calling")
    );

    let repaired = &done["REPAIR"];
    assert_eq!(repaired["state"], "succeeded", "{repaired}");
    assert_eq!(repaired["result"]["output"]["total"], 12.5);
    let repair_requests = model.requests_for("REPAIR");
    assert_eq!(repair_requests.len(), 2);
    assert!(
        repair_requests[1]
            .to_string()
            .contains("does not satisfy output_schema"),
        "the repair turn says why"
    );

    // The tenant's month counts every recorded step's model use: what the tasks'
    // progress shows, summed.
    let mut shown = (0, 0);
    for (_, id) in &ids {
        let (_, task) = app.get(&format!("/v1/tasks/{id}")).await;
        let usage = &task["progress"]["usage"];
        shown.0 += usage["model_calls"].as_u64().unwrap_or(0);
        shown.1 += usage["total_tokens"].as_u64().unwrap_or(0);
    }
    let (status, month) = app.get("/v1/usage").await;
    assert_eq!(status, 200, "{month}");
    assert!(shown.0 >= 20, "{shown:?}");
    assert_eq!(
        (
            month["model"]["calls"].as_u64(),
            month["model"]["total_tokens"].as_u64()
        ),
        (Some(shown.0), Some(shown.1)),
        "{month}"
    );

    // The script cache: the first run records its script; the second replays it and
    // asks the model only for the output; when the site changes under a recorded step,
    // the third replays up to it, the model takes over there, and the healed script
    // serves the fourth.
    let cached = agent(
        "CACHED: follow the pages to the code",
        "/cache/1",
        json!({"cache": "reuse"}),
    );
    let mut runs = Vec::new();
    for run in 1..=4 {
        if run == 3 {
            moved.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let asked_before = model.requests_for("CACHED").len();
        let (status, created) = app.submit(&cached).await;
        assert_eq!(status, 202, "{created}");
        let id = created["id"].as_str().expect("id");
        let task = app.wait_for(id, &ENDED, crate::TASK_DEADLINE).await;
        assert_eq!(task["state"], "succeeded", "run {run}: {task}");
        assert_eq!(task["result"]["output"], json!({"code": "K-7"}));
        let asked = model.requests_for("CACHED").len() - asked_before;
        runs.push((asked, task["result"]["cache"].clone()));
    }
    assert_eq!(
        runs,
        vec![
            (
                3,
                json!({"hit": false, "replayed": 0, "healed": false, "saved": true})
            ),
            (
                1,
                json!({"hit": true, "replayed": 4, "healed": false, "saved": false})
            ),
            (
                2,
                json!({"hit": true, "replayed": 2, "healed": true, "saved": true})
            ),
            (
                1,
                json!({"hit": true, "replayed": 4, "healed": false, "saved": false})
            ),
        ],
        "model calls and cache outcome per run"
    );
    let cached_requests = model.requests_for("CACHED");
    let healing = crate::model_server::last_user_text(&cached_requests[4]);
    assert!(
        healing.contains("replayed already: click #to-2; wait_for navigation")
            && healing.contains("step 3 (click #to-3)"),
        "the model is told what was replayed and what failed: {healing}"
    );

    // The login replayed as a script with the model server gone: its recorded steps
    // sign in again, the password typed from the agent task's secrets, and the replay
    // shows and keeps the password nowhere.
    model.stop();
    let login_id = &ids[0].1;
    let (status, replay) = app.post(&format!("/v1/tasks/{login_id}/replay")).await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["kind"], "script");
    assert_eq!(replay["input"]["secrets"]["password"], "[redacted]");
    let replay_id = replay["id"].as_str().expect("id");
    let replayed = app.wait_for(replay_id, &ENDED, crate::TASK_DEADLINE).await;
    assert_eq!(replayed["state"], "succeeded", "{replayed}");
    assert_eq!(replayed["result"]["page"]["title"], "Welcome", "{replayed}");
    assert!(!replayed.to_string().contains(PASSWORD));
    let (_, full) = app.get(&format!("/v1/tasks/{replay_id}")).await;
    let console = full["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .find(|artifact| artifact["name"] == "console.json")
        .expect("console.json");
    let (_, bytes) = app.download(console["url"].as_str().expect("url")).await;
    let console = String::from_utf8_lossy(&bytes);
    assert!(
        console.contains("signed in with {{password}}") && !console.contains(PASSWORD),
        "the page's console line is masked: {console}"
    );
    // Only a succeeded agent task has a run to replay; another id is not found.
    let (status, refused) = app.post(&format!("/v1/tasks/{replay_id}/replay")).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let failed_id = &ids[2].1;
    let (status, refused) = app.post(&format!("/v1/tasks/{failed_id}/replay")).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let (status, missing) = app
        .post("/v1/tasks/0190a0a0-0000-7000-8000-000000000000/replay")
        .await;
    assert_eq!(
        (status, missing["code"].as_str()),
        (404, Some("task_not_found"))
    );
    app.shutdown().await;
}

/// A tenant brings its own model: its agent tasks talk to its endpoint with its key and
/// model (priced by its own table), other tenants' to the service's; the key is never
/// shown back; removed, the tenant's tasks use the service's model again.
async fn a_tenant_brings_its_own_model(setup: Setup) {
    let (site, _stop) = serve_on_loopback(
        Route::new()
            .at("/shop/a", get(page_a))
            .at("/shop/b", get(page_b))
            .at("/shop/c", get(page_c)),
    )
    .await;
    let service = ModelServer::start(script).await;
    let own = ModelServer::start(script).await;
    let service_url = service.base_url.clone();
    let app = setup
        .start(move |settings| {
            settings.llm.base_url = Some(service_url);
            settings.llm.api_key = Some("sk-service-0000".to_owned().into());
            settings.llm.key_encryption_key =
                Some(operator_store::models::KeySealer::generate_setting().into());
            settings.llm.tenant_settings_ttl = Duration::ZERO;
        })
        .await;
    let admin = app.platform_admin().await;
    let (status, created) = admin
        .post_json("/v1/admin/tenants", &json!({"id": "acme", "name": "Acme"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let acme = operator_testkit::ApiClient::with_key(
        app.base.clone(),
        created["owner_key"]["key"].as_str().expect("key"),
    );
    let (status, settings) = acme.get("/v1/model-settings").await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["source"], "service");
    assert_eq!(settings["configured"], true);
    assert_eq!(
        settings["base_url"],
        Value::Null,
        "the service's endpoint is not shown"
    );

    const KEY: &str = "sk-acme-secret-9876";
    let (status, settings) = acme
        .put(
            "/v1/model-settings",
            &json!({
                "base_url": own.base_url,
                "model": "acme-model",
                "api_key": KEY,
                "prices": {"acme-model": {"input_per_million": 1.0, "output_per_million": 2.0}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["source"], "tenant");
    assert_eq!(settings["has_api_key"], true);
    assert_eq!(settings["api_key_hint"], "…9876");
    let (_, read) = acme.get("/v1/model-settings").await;
    assert_eq!(read, settings);
    let (_, audit) = acme.get("/v1/audit-events").await;
    for shown in [&settings, &audit] {
        assert!(
            !shown.to_string().contains(KEY),
            "the key is never shown: {shown}"
        );
    }
    let (status, refused) = acme
        .put(
            "/v1/model-settings",
            &json!({"base_url": "ftp://models.example/v1", "model": "m"}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("url_scheme_not_allowed"))
    );

    let task = |budget: Value| {
        json!({"kind": "agent", "input": {
            "goal": "NAVIGATE: follow the pages to the code",
            "url": format!("{site}/shop/a"),
            "budget": budget,
        }})
    };
    // A dollar budget is priced by the tenant's own table; the service has no price.
    let (status, refused) = app.submit(&task(json!({"max_cost_usd": 1.0}))).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("llm_not_configured"))
    );
    let run = |client: &operator_testkit::ApiClient, body: Value| {
        let client = client.clone();
        async move {
            let (status, created) = client.submit(&body).await;
            assert_eq!(status, 202, "{created}");
            client
                .wait_for(
                    created["id"].as_str().expect("id"),
                    &ENDED,
                    crate::TASK_DEADLINE,
                )
                .await
        }
    };
    let acme_task = run(&acme, task(json!({"max_cost_usd": 1.0}))).await;
    assert_eq!(acme_task["state"], "succeeded", "{acme_task}");
    assert!(
        acme_task["result"]["usage"]["cost_usd"]
            .as_f64()
            .expect("priced")
            > 0.0
    );
    let default_task = run(&app, task(json!({}))).await;
    assert_eq!(default_task["state"], "succeeded", "{default_task}");
    let tenant_key = Some(format!("Bearer {KEY}"));
    let own_callers = own.callers();
    assert_eq!(own_callers.len(), 3, "acme's three steps");
    assert!(
        own_callers
            .iter()
            .all(|(key, model)| *key == tenant_key && model == "acme-model"),
        "{own_callers:?}"
    );
    let service_callers = service.callers();
    assert_eq!(service_callers.len(), 3, "the default tenant's three steps");
    assert!(
        service_callers
            .iter()
            .all(|(key, _)| key.as_deref() == Some("Bearer sk-service-0000")),
        "{service_callers:?}"
    );
    let (_, usage) = acme.get("/v1/usage").await;
    assert_eq!(usage["model"]["calls"], 3, "{usage}");
    assert!(usage["model"]["cost_usd"].as_f64().expect("cost") > 0.0);

    // Removed: acme's next task talks to the service's model.
    let (status, _) = acme.delete("/v1/model-settings").await;
    assert_eq!(status, 204);
    let again = run(&acme, task(json!({}))).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(
        own.callers().len(),
        3,
        "nothing more to acme's own endpoint"
    );
    assert_eq!(service.callers().len(), 6);
    app.shutdown().await;
}

on_both_setups!(agent_scenarios, a_tenant_brings_its_own_model);
