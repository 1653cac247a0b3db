//! `spawn_api()`: the real API on port 0 over its own SQLite database, no worker.

use std::sync::Arc;
use std::time::Duration;

use operator_api::{ApiServer, AppState};
use operator_shared::config::Settings;
use operator_shared::db::{self, TaskRepository};
use operator_shared::queue::SharedQueue;
use operator_shared::queue::database::DatabaseQueue;
use operator_shared::storage::ArtifactStore;
use operator_shared::testkit::{TestDatabase, embedded_settings};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct TestApi {
    pub url: String,
    pub client: reqwest::Client,
    pub queue: SharedQueue,
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
    let server = ApiServer::bind("127.0.0.1", 0).await.expect("bind");
    let url = settings.public_url(server.port());
    let state = Arc::new(AppState {
        policy: settings.network_policy().expect("policy"),
        public_url: url.clone(),
        repo: TaskRepository::new(connection),
        queue: SharedQueue::clone(&queue),
        storage: ArtifactStore::from_settings(&settings).expect("storage"),
        settings,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until_stopped(state, async move {
        let _ = stopped.await;
    }));
    TestApi {
        url,
        client: reqwest::Client::new(),
        queue,
        stop: Some(stop),
        _database: database,
        _directory: directory,
    }
}

impl TestApi {
    /// POSTs a raw body as JSON; returns status and parsed body.
    pub async fn submit_raw(&self, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/v1/tasks", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        read(response).await
    }

    pub async fn submit(&self, body: &Value) -> (u16, Value) {
        self.submit_raw(&body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        read(response).await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        read(response).await
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
