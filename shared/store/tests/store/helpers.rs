//! Per-test backends on the real services.

use std::sync::Arc;
use std::time::Duration;

use operator_domain::QueueName;
use operator_store::db::{self, TaskRepository};
use operator_store::queue::database::DatabaseQueue;
use operator_store::queue::redis::RedisQueue;
use operator_store::queue::{QueueLimits, SharedQueue};
use operator_testkit::{RedisPrefix, TestDatabase};

/// The database queue's poll for work from other processes, in these tests.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// A queue backend for one test, with the guards that clean up after it.
pub struct QueueUnderTest {
    queue: SharedQueue,
    _redis: Option<RedisPrefix>,
    _database: Option<TestDatabase>,
}

impl QueueUnderTest {
    pub fn queue(&self) -> SharedQueue {
        SharedQueue::clone(&self.queue)
    }
}

/// Claims of the queues under test take from `serves`.
pub async fn redis_queue(limits: QueueLimits, serves: Vec<QueueName>) -> QueueUnderTest {
    let prefix = RedisPrefix::new();
    let redis = RedisQueue::connect(prefix.settings())
        .await
        .expect("Redis is reachable (run scripts/services.sh)")
        .with_limits(limits)
        .serving(serves);
    QueueUnderTest {
        queue: Arc::new(redis),
        _redis: Some(prefix),
        _database: None,
    }
}

async fn database_queue(
    database: TestDatabase,
    limits: QueueLimits,
    serves: Vec<QueueName>,
) -> QueueUnderTest {
    let connection = db::connect_url(database.url(), 4, Duration::from_secs(10))
        .await
        .expect("connect");
    QueueUnderTest {
        queue: Arc::new(
            // Longer than any wake-up bound below, so a wake-up test fails when the
            // wake-up is gone instead of passing on the next poll.
            DatabaseQueue::new(connection, POLL_INTERVAL)
                .with_limits(limits)
                .serving(serves),
        ),
        _redis: None,
        _database: Some(database),
    }
}

/// A database queue whose tenant `capped` has its own running cap of `cap` (a tenant
/// row, as the admin API writes it).
pub async fn database_queue_with_a_capped_tenant(
    database: TestDatabase,
    limits: QueueLimits,
    cap: u32,
) -> QueueUnderTest {
    let connection = db::connect_url(database.url(), 4, Duration::from_secs(10))
        .await
        .expect("connect");
    let tenants = operator_store::db::TenantRepository::new(connection);
    let capped = operator_domain::TenantId::parse("capped").expect("tenant");
    tenants
        .create_tenant(&capped, "Capped")
        .await
        .expect("create the tenant");
    tenants
        .set_limits(
            &capped,
            operator_store::db::TenantLimits {
                running_per_queue: Some(cap),
                ..Default::default()
            },
        )
        .await
        .expect("set its cap");
    database_queue(database, limits, vec![QueueName::default()]).await
}

pub async fn database_queue_sqlite(limits: QueueLimits, serves: Vec<QueueName>) -> QueueUnderTest {
    database_queue(TestDatabase::sqlite().await, limits, serves).await
}

pub async fn database_queue_postgres(
    limits: QueueLimits,
    serves: Vec<QueueName>,
) -> QueueUnderTest {
    database_queue(TestDatabase::postgres().await, limits, serves).await
}

/// A repository on a fresh database; keep the `TestDatabase` alive for the test.
pub async fn repository(database: &TestDatabase) -> TaskRepository {
    let connection = db::connect_url(database.url(), 4, Duration::from_secs(10))
        .await
        .expect("connect");
    TaskRepository::new(connection)
}

/// The conformance suite: each named `async fn(TaskRepository)` runs as one test on
/// SQLite and one on PostgreSQL, so every transition, guard and outbox rule is shown
/// to hold on both implementations of the hot writes (transactions on SQLite, batched
/// statements with a transactional fallback on PostgreSQL).
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let database = operator_testkit::TestDatabase::sqlite().await;
                    super::$name(crate::helpers::repository(&database).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let database = operator_testkit::TestDatabase::postgres().await;
                    super::$name(crate::helpers::repository(&database).await).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_databases;
