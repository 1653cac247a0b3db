//! `spawn_api()`: the API role as `operator api` builds it (`Application::build`), on
//! port 0 over its own SQLite database, the database queue and local files; no worker.

use operator::{Application, Roles};
use operator_config::Settings;
use operator_domain::QueueName;
use operator_domain::auth::Role;
use operator_store::db::TaskRepository;
use operator_store::queue::{QueueStats, SharedQueue};
use operator_store::storage::ArtifactStore;
use operator_testkit::{ApiClient, TestDatabase, embedded_settings, issue_key, issue_key_with};
use tokio_util::sync::CancellationToken;

pub struct TestApi {
    /// A client with an owner key of the `default` tenant that is also a platform admin
    /// (as `operator serve`'s first key).
    api: ApiClient,
    pub url: String,
    /// The owner key `api` presents.
    pub key: String,
    pub queue: SharedQueue,
    /// The API's own repository, for putting tasks into states only workers reach.
    pub repo: TaskRepository,
    /// The API's artifact storage, for files only workers write.
    pub storage: ArtifactStore,
    stop: CancellationToken,
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
    adjust(&mut settings);
    let application = Application::build(settings, Roles::API)
        .await
        .expect("build the API role");
    let url = application.public_url().expect("the API role serves");
    let services = application.services();
    let (repo, queue, storage) = (
        services.repo.clone(),
        SharedQueue::clone(&services.queue),
        services.storage.clone(),
    );
    // As `operator serve` makes it: an owner of `default` that runs the platform too.
    let key = issue_key_with(repo.connection(), "default", Role::Owner, true).await;
    let stop = CancellationToken::new();
    tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));
    TestApi {
        api: ApiClient::with_key(url.clone(), &key),
        url,
        key,
        queue,
        repo,
        storage,
        stop,
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
        self.stop.cancel();
    }
}
