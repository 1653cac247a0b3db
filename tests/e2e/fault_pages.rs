//! A loopback site whose pages misbehave on purpose: slow ones (a task that is still
//! running when its worker is killed) and flaky ones (fail N times, then load). It
//! counts requests per page, so a test can tell how many times a task really ran.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::{Data, Html, Path};
use poem::{EndpointExt, IntoResponse, Response, Route, get, handler};
use tokio_util::sync::CancellationToken;

use crate::helpers::serve_on_loopback;

#[derive(Clone, Default)]
struct Behaviour {
    /// How long `/slow/...` pages take to answer.
    slow_for: Duration,
    /// How many times each `/flaky/...` page answers 503 before it loads.
    failures: usize,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Behaviour {
    fn count(&self, page: &str) -> usize {
        let mut hits = self.hits.lock().expect("lock");
        let count = hits.entry(page.to_owned()).or_default();
        *count += 1;
        *count
    }
}

fn html(name: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><title>{name}</title></head>\
         <body style=\"background:#3366cc\"><h1>{name}</h1></body></html>"
    ))
}

#[handler]
async fn slow(Path(name): Path<String>, Data(behaviour): Data<&Behaviour>) -> Html<String> {
    behaviour.count(&format!("slow/{name}"));
    tokio::time::sleep(behaviour.slow_for).await;
    html(&name)
}

#[handler]
async fn flaky(Path(name): Path<String>, Data(behaviour): Data<&Behaviour>) -> Response {
    if behaviour.count(&format!("flaky/{name}")) <= behaviour.failures {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    html(&name).into_response()
}

pub struct FaultPages {
    base: String,
    behaviour: Behaviour,
    stop: CancellationToken,
}

impl FaultPages {
    pub async fn start(slow_for: Duration, failures: usize) -> Self {
        let behaviour = Behaviour {
            slow_for,
            failures,
            hits: Arc::default(),
        };
        let app = Route::new()
            .at("/slow/:name", get(slow))
            .at("/flaky/:name", get(flaky))
            .data(behaviour.clone());
        let (base, stop) = serve_on_loopback(app).await;
        Self {
            base,
            behaviour,
            stop,
        }
    }

    /// `kind` is `slow` or `flaky`.
    pub fn url(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.base)
    }

    pub fn hits(&self, kind: &str, name: &str) -> usize {
        self.behaviour
            .hits
            .lock()
            .expect("lock")
            .get(&format!("{kind}/{name}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FaultPages {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
