//! What every handler needs, built once at start-up and shared.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use operator_config::Settings;
use operator_domain::error::ErrorCode;
use operator_domain::links;
use operator_domain::network::NetworkPolicy;
use operator_domain::{QueueName, TaskId, TenantId};
use operator_store::credentials::{KeyVerifier, VerifierTiming};
use operator_store::db::{
    AuditEntry, AuditRepository, ModelSettingsRepository, TaskRepository, TenantRepository,
    UsageRepository,
};
use operator_store::events::EventBus;
use operator_store::limits::{Quotas, TenantLimitsCache};
use operator_store::models::TenantModels;
use operator_store::queue::SharedQueue;
use operator_store::rate::SubmissionLimiter;
use operator_store::signing::LinkSigner;
use operator_store::storage::ArtifactStore;
use operator_store::submit::Submitter;

use crate::access::{Authenticator, Caller};
use crate::error::ApiError;

pub struct AppState {
    pub settings: Settings,
    pub repo: TaskRepository,
    pub queue: SharedQueue,
    /// Stores tasks and dispatches them: every handler that creates or re-drives a
    /// task goes through it.
    pub submitter: Submitter,
    pub storage: ArtifactStore,
    pub policy: NetworkPolicy,
    /// The address clients reach this API at, for links in responses.
    pub public_url: String,
    /// Queues known to exist. Queues are never deleted, so a name seen once stays valid
    /// and submissions to it need no database read.
    pub known_queues: KnownQueues,
    /// Resolves each request's credentials to a tenant and a role.
    pub authenticator: Arc<Authenticator>,
    /// Sign-in through OpenID Connect and the sessions it opens.
    pub sign_in: Arc<crate::signin::SignIn>,
    /// Signs artifact links and stream tickets.
    pub signer: Arc<LinkSigner>,
    /// The tenants' own limits, cached; forgotten here when an admin changes them.
    pub limits: Arc<TenantLimitsCache>,
    /// Each tenant's submission rate.
    pub limiter: Arc<SubmissionLimiter>,
    /// Each tenant's monthly quotas.
    pub quotas: Arc<Quotas>,
    /// Tenants' own language models (their keys sealed), cached.
    pub models: Arc<TenantModels>,
}

#[derive(Debug, Default)]
pub struct KnownQueues(RwLock<HashSet<QueueName>>);

impl KnownQueues {
    fn contains(&self, queue: &QueueName) -> bool {
        self.0.read().is_ok_and(|known| known.contains(queue))
    }

    pub fn insert(&self, queue: &QueueName) {
        if let Ok(mut known) = self.0.write() {
            known.insert(queue.clone());
        }
    }
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        settings: Settings,
        repo: TaskRepository,
        queue: SharedQueue,
        storage: ArtifactStore,
        policy: NetworkPolicy,
        public_url: String,
    ) -> Self {
        let submitter = Submitter::new(
            repo.clone(),
            SharedQueue::clone(&queue),
            settings.queue.dispatch_timeout,
        );
        let verifier = settings.auth.enabled.then(|| {
            KeyVerifier::start(
                TenantRepository::new(repo.connection().clone()),
                repo.event_bus()
                    .cloned()
                    .unwrap_or_else(EventBus::in_process),
                VerifierTiming {
                    cache_ttl: settings.auth.key_cache_ttl,
                    last_used_interval: settings.auth.last_used_interval,
                },
                settings.database_url().starts_with("sqlite:"),
            )
        });
        let signer = Arc::new(LinkSigner::new(repo.connection().clone()));
        let limits = Arc::new(TenantLimitsCache::new(TenantRepository::new(
            repo.connection().clone(),
        )));
        let limiter = Arc::new(SubmissionLimiter::new(
            Arc::clone(&limits),
            settings.limits.clone(),
            &settings.redis,
        ));
        let quotas = Arc::new(Quotas::new(
            Arc::clone(&limits),
            UsageRepository::new(repo.connection().clone()),
            settings.limits.clone(),
        ));
        let models = Arc::new(
            TenantModels::new(
                ModelSettingsRepository::new(repo.connection().clone()),
                &settings.llm,
            )
            .expect("llm.key_encryption_key was checked with the settings"),
        );
        let sign_in = crate::signin::service(
            &settings.auth,
            repo.connection().clone(),
            public_url.clone(),
        );
        let authenticator = Arc::new(Authenticator::new(
            verifier,
            Arc::clone(&signer),
            Arc::clone(&sign_in),
            settings.auth.failures_per_minute,
        ));
        Self {
            settings,
            repo,
            queue,
            submitter,
            storage,
            policy,
            public_url,
            known_queues: KnownQueues::default(),
            authenticator,
            sign_in,
            signer,
            limits,
            limiter,
            quotas,
            models,
        }
    }

    /// The tenant's own model, if it set one; a sealed key that no longer opens (the
    /// encryption key changed) is a server fault, not the client's.
    pub async fn tenant_model(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<operator_config::TenantModel>, ApiError> {
        match self.models.get(tenant).await {
            Ok(model) => Ok(model.map(|resolved| resolved.model)),
            Err(operator_store::models::ModelsError::Repo(error)) => Err(error.into()),
            Err(operator_store::models::ModelsError::Seal(error)) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("the tenant's model settings cannot be read: {error}"),
            )),
        }
    }

    /// Appends to the tenant's audit log what `caller` did. The action is done by now:
    /// a failure to record it is logged, not answered.
    pub async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        resource_type: &str,
        resource_id: impl std::fmt::Display,
        detail: serde_json::Value,
    ) {
        let entry = AuditEntry {
            tenant: caller.tenant.clone(),
            actor: caller.actor_label(),
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_string(),
            address: caller.address.clone(),
            detail,
        };
        if let Err(error) = AuditRepository::new(self.repo.connection().clone())
            .record(entry)
            .await
        {
            tracing::error!(error = %error, action, tenant = %caller.tenant, "recording an audit event failed");
        }
    }

    /// Whether `tenant` may start more browser work (a submission or a retry): refused
    /// with `quota_exceeded` when its browser time this month has reached its quota.
    /// Otherwise the monthly quota of tasks a creation must stay within.
    pub async fn admit(&self, tenant: &TenantId) -> Result<Option<u64>, ApiError> {
        Ok(self.quotas.admit(tenant, chrono::Utc::now()).await??)
    }

    /// A task's address, for `Location` headers.
    pub fn task_url(&self, id: TaskId) -> String {
        links::task_url(&self.public_url, id)
    }

    /// Refuses a task for a queue nobody created, which no worker would ever take it
    /// from (`unknown_queue`); a failure to look the queue up is `unavailable`.
    pub async fn check_queue(&self, queue: &QueueName) -> Result<(), ApiError> {
        if queue.is_default() || self.known_queues.contains(queue) {
            return Ok(());
        }
        if self.repo.queue(queue).await?.is_some() {
            self.known_queues.insert(queue);
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::UnknownQueue,
            format!("queue: no queue \"{queue}\"; create it first with PUT /v1/queues/{queue}"),
        ))
    }
}
