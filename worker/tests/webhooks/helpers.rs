//! A database with a finished task whose deliveries wait in the outbox, and dispatchers
//! built the way the worker builds them.

use operator_testkit::screenshot_task;
use std::time::Duration;

use operator_config::WebhookSettings;
use operator_domain::network::NetworkPolicy;
use operator_domain::{LeaseToken, NewTask, TaskOutcome, TaskRecord, TenantId};
use operator_store::db::{
    self, Delivery, DeliveryFilter, FinishOutcome, NewEndpoint, StartOutcome, TaskRepository,
    WebhookRepository,
};
use operator_testkit::TestDatabase;
use operator_worker::webhooks::Dispatcher;
use serde_json::json;

pub struct Fixture {
    pub tasks: TaskRepository,
    pub webhooks: WebhookRepository,
    pub tenant: TenantId,
    _database: TestDatabase,
}

pub async fn fixture(database: TestDatabase) -> Fixture {
    let connection = db::connect_url(database.url(), 4, Duration::from_secs(10))
        .await
        .expect("connect");
    Fixture {
        tasks: TaskRepository::new(connection.clone()),
        webhooks: WebhookRepository::new(connection),
        tenant: TenantId::default_tenant(),
        _database: database,
    }
}

/// Retries a few milliseconds apart, so a test walks the whole schedule quickly.
pub fn quick_settings() -> WebhookSettings {
    WebhookSettings {
        retry_schedule: vec![Duration::from_millis(50).into(); 7],
        poll_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(6),
        ..WebhookSettings::default()
    }
}

/// Loopback allowed, as the test configuration allows it for pages.
pub fn loopback_policy() -> NetworkPolicy {
    NetworkPolicy::parse(&["127.0.0.0/8".to_owned()], false).expect("policy")
}

pub fn dispatcher(
    fixture: &Fixture,
    policy: NetworkPolicy,
    settings: WebhookSettings,
) -> Dispatcher {
    Dispatcher::new(
        fixture.webhooks.clone(),
        policy,
        settings,
        "https://operator.example".to_owned(),
        None,
    )
}

impl Fixture {
    pub async fn endpoint(&self, url: &str) -> operator_store::db::WebhookEndpoint {
        self.webhooks
            .create_endpoint(NewEndpoint {
                tenant: self.tenant.clone(),
                url: url.to_owned(),
                description: None,
                event_types: Vec::new(),
                enabled: true,
            })
            .await
            .expect("create the endpoint")
    }

    /// A task that ran and succeeded; `webhook_url` is its own destination.
    pub async fn finished_task(&self, webhook_url: Option<&str>) -> TaskRecord {
        let task = self
            .tasks
            .create(NewTask {
                webhook_url: webhook_url.map(str::to_owned),
                ..screenshot_task(&self.tenant)
            })
            .await
            .expect("create");
        let token = LeaseToken::new();
        let until = chrono::Utc::now() + chrono::Duration::seconds(30);
        let StartOutcome::Started(_) = self
            .tasks
            .start_attempt(task.id, token, "test-worker", until)
            .await
            .expect("start")
        else {
            panic!("the task starts");
        };
        let FinishOutcome::Recorded(record) = self
            .tasks
            .finish(
                task.id,
                token,
                TaskOutcome::Succeeded {
                    result: json!({"page": {"title": "done"}}),
                    artifacts: Vec::new(),
                },
            )
            .await
            .expect("finish")
        else {
            panic!("the outcome is recorded");
        };
        *record
    }

    pub async fn task_deliveries(&self, task: &TaskRecord) -> Vec<Delivery> {
        self.webhooks
            .deliveries(
                &self.tenant,
                &DeliveryFilter {
                    task_id: Some(task.id),
                    limit: 100,
                    ..DeliveryFilter::default()
                },
            )
            .await
            .expect("deliveries")
    }

    /// Runs the dispatcher until `done` says so; panics after `timeout`.
    pub async fn dispatch_until(
        &self,
        dispatcher: &Dispatcher,
        timeout: Duration,
        mut done: impl AsyncFnMut() -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dispatcher did not finish within {timeout:?}"
            );
            dispatcher.run_once().await.expect("dispatch");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
