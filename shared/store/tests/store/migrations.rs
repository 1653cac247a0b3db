//! The latest migrations go down and up again on both databases, keeping the rows.

use operator_domain::TenantId;
use operator_testkit::{TestDatabase, screenshot_task};
use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::MigratorTrait;

use crate::helpers::repository;

async fn named_queues_migrate_down_and_up_keeping_tasks(database: TestDatabase) {
    let repo = repository(&database).await;
    let task = repo
        .create(screenshot_task(&TenantId::default_tenant()))
        .await
        .expect("create");
    let connection = repo.connection();
    let select = |sql: &str| Statement::from_string(connection.get_database_backend(), sql);

    operator_migrations::Migrator::down(connection, Some(4))
        .await
        .expect("down (tenant model settings, agent scripts, model usage, task checkpoints)");
    for table in ["tenant_model_settings", "agent_scripts", "task_checkpoints"] {
        assert!(
            connection
                .query_one_raw(select(&format!("SELECT * FROM {table}")))
                .await
                .is_err(),
            "down removed {table}"
        );
    }
    assert!(
        connection
            .query_one_raw(select("SELECT model_calls FROM tenant_usage"))
            .await
            .is_err(),
        "down removed the model usage columns"
    );
    operator_migrations::Migrator::down(connection, Some(4))
        .await
        .expect(
            "down (spent refresh tokens, monthly usage, tenant running caps, users and sessions)",
        );
    assert!(
        connection
            .query_one_raw(select("SELECT kid FROM session_keys"))
            .await
            .is_err(),
        "down removed the session tables"
    );
    operator_migrations::Migrator::down(connection, Some(3))
        .await
        .expect("down (tenant limits, audit events, link keys)");
    operator_migrations::Migrator::down(connection, Some(1))
        .await
        .expect("down (tenants and keys)");
    assert!(
        connection
            .query_one_raw(select("SELECT id FROM tenants"))
            .await
            .is_err(),
        "down removed tenants"
    );
    assert!(
        repo.get_any(task.id).await.expect("read").is_some(),
        "tasks stay"
    );
    operator_migrations::Migrator::down(connection, Some(1))
        .await
        .expect("down (named queues)");
    assert!(
        connection
            .query_one_raw(select("SELECT queue FROM tasks"))
            .await
            .is_err(),
        "down removed tasks.queue"
    );
    operator_migrations::Migrator::up(connection, None)
        .await
        .expect("up again");
    let stored = repo.get_any(task.id).await.expect("read").expect("kept");
    assert_eq!(
        stored.queue.as_str(),
        "default",
        "an old task is in `default`"
    );
    let queues: Vec<String> = repo
        .queues()
        .await
        .expect("queues")
        .into_iter()
        .map(|queue| queue.name.as_str().to_owned())
        .collect();
    assert_eq!(queues, ["default"], "`default` exists");
    let tenant = connection
        .query_one_raw(select("SELECT id FROM tenants"))
        .await
        .expect("tenants again")
        .expect("a row");
    assert_eq!(
        tenant.try_get::<String>("", "id").expect("id"),
        "default",
        "the tenant every earlier row names"
    );
}

#[tokio::test]
async fn named_queues_migrate_down_and_up_keeping_tasks_on_sqlite() {
    named_queues_migrate_down_and_up_keeping_tasks(TestDatabase::sqlite().await).await;
}

#[tokio::test]
async fn named_queues_migrate_down_and_up_keeping_tasks_on_postgres() {
    named_queues_migrate_down_and_up_keeping_tasks(TestDatabase::postgres().await).await;
}
