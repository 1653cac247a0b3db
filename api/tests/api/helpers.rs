//! `spawn_api()`: the real API on port 0 over its own SQLite database, no worker.

use std::sync::Arc;
use std::time::Duration;

use operator_api::{ApiServer, AppState};
use operator_config::Settings;
use operator_domain::QueueName;
use operator_domain::auth::Role;
use operator_store::db::{self, TaskRepository};
use operator_store::events::EventBus;
use operator_store::queue::database::DatabaseQueue;
use operator_store::queue::{QueueStats, SharedQueue};
use operator_store::storage::ArtifactStore;
use operator_testkit::{ApiClient, TestDatabase, embedded_settings, issue_key, issue_key_with};
use tokio::sync::oneshot;

pub struct TestApi {
    /// A client with an owner key of the `default` tenant.
    api: ApiClient,
    pub url: String,
    /// The owner key `api` presents.
    pub key: String,
    pub queue: SharedQueue,
    /// The API's own repository, for putting tasks into states only workers reach.
    pub repo: TaskRepository,
    /// The API's artifact storage, for files only workers write.
    pub storage: ArtifactStore,
    stop: Option<oneshot::Sender<()>>,
    _database: TestDatabase,
    _directory: tempfile::TempDir,
}

pub async fn spawn_api() -> TestApi {
    spawn_api_with(|_| {}).await
}

pub async fn spawn_api_with(adjust: impl FnOnce(&mut Settings)) -> TestApi {
    let directory = tempfile::tempdir().expect("tempdir");
    let database = TestDatabase::sqlite().await;
    let mut settings = embedded_settings(directory.path());
    settings.database.url = Some(database.url().to_owned().into());
    settings.storage.url = Some("memory://".into());
    adjust(&mut settings);
    let connection = db::connect(&settings).await.expect("connect");
    let queue: SharedQueue = Arc::new(DatabaseQueue::new(
        connection.clone(),
        Duration::from_millis(50),
    ));
    let repo = TaskRepository::new(connection.clone()).with_event_bus(EventBus::in_process());
    let server = ApiServer::bind("127.0.0.1", 0).await.expect("bind");
    let url = settings.public_url(server.port());
    let policy = settings.network_policy().expect("policy");
    let storage = ArtifactStore::from_settings(&settings).expect("storage");
    let state = Arc::new(AppState::new(
        settings,
        repo.clone(),
        SharedQueue::clone(&queue),
        storage.clone(),
        policy,
        url.clone(),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until_stopped(state, async move {
        let _ = stopped.await;
    }));
    let key = issue_key(&connection, "default", Role::Owner).await;
    TestApi {
        api: ApiClient::with_key(url.clone(), &key),
        url,
        key,
        queue,
        repo,
        storage,
        stop: Some(stop),
        _database: database,
        _directory: directory,
    }
}

impl TestApi {
    /// A client holding a new key of `role` for `tenant` (made if new).
    pub async fn client_for(&self, tenant: &str, role: Role) -> ApiClient {
        let key = issue_key(self.repo.connection(), tenant, role).await;
        ApiClient::with_key(self.url.clone(), &key)
    }

    /// A client holding a platform-admin key (an owner of `default` that may also
    /// manage tenants).
    pub async fn platform_admin(&self) -> ApiClient {
        let key = issue_key_with(self.repo.connection(), "default", Role::Owner, true).await;
        ApiClient::with_key(self.url.clone(), &key)
    }

    /// A client presenting no credentials.
    pub fn anonymous(&self) -> ApiClient {
        ApiClient::new(self.url.clone())
    }

    /// What the queue backend holds for `queue`.
    pub async fn stats(&self, queue: &str) -> QueueStats {
        let queue = QueueName::parse(queue).expect("queue name");
        self.queue.stats(&queue).await.expect("stats")
    }
}

impl std::ops::Deref for TestApi {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
