//! `/healthz` (the process answers) and `/readyz` (its dependencies answer).

use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::state::SharedState;
use crate::tasks::ApiTags;

/// A readiness check gives each dependency this long before calling it down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Object)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

#[derive(Debug, Clone, Object)]
pub struct DependencyCheck {
    /// `database`, `queue` or `storage`.
    pub name: String,
    pub ok: bool,
    /// Why it failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Object)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub checks: Vec<DependencyCheck>,
}

#[derive(ApiResponse)]
pub enum ReadinessResponse {
    /// Every dependency answers.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency does not answer; see `checks`.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

pub struct HealthApi {
    pub state: SharedState,
}

async fn check<F, E>(name: &str, probe: F) -> DependencyCheck
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe).await;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    };
    DependencyCheck {
        name: name.to_owned(),
        ok: error.is_none(),
        error,
        latency_ms: started.elapsed().as_millis() as u64,
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is up.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Liveness> {
        Json(Liveness {
            status: "ok".into(),
        })
    }

    /// Readiness: the database, the queue and artifact storage all answer.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadinessResponse {
        let state = &self.state;
        let (database, queue, storage) = tokio::join!(
            check("database", state.repo.ping()),
            check("queue", state.queue.ping()),
            check("storage", state.storage.check()),
        );
        let checks = vec![database, queue, storage];
        let ready = checks.iter().all(|check| check.ok);
        let body = Json(Readiness {
            status: if ready { "ready" } else { "not_ready" }.into(),
            checks,
        });
        if ready {
            ReadinessResponse::Ready(body)
        } else {
            ReadinessResponse::NotReady(body)
        }
    }
}
