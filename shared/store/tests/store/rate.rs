//! The submission rate: two limiters (two API replicas) on one Redis share a tenant's
//! budget; a tenant's own limits override the settings; without Redis it holds per
//! process.

use std::sync::Arc;
use std::time::Duration;

use operator_config::LimitSettings;
use operator_domain::TenantId;
use operator_store::db::{TenantLimits, TenantRepository};
use operator_store::limits::TenantLimitsCache;
use operator_store::rate::SubmissionLimiter;
use operator_testkit::{RedisPrefix, TestDatabase};

use crate::helpers::repository;

/// One API replica's cache of the tenants' own limits.
fn cache(tenants: &TenantRepository) -> Arc<TenantLimitsCache> {
    Arc::new(TenantLimitsCache::new(tenants.clone()))
}

fn limits(rate: f64, burst: u32) -> LimitSettings {
    LimitSettings {
        submissions_per_second: rate,
        submission_burst: burst,
        ..LimitSettings::default()
    }
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_a_tenants_budget() {
    let database = TestDatabase::sqlite().await;
    let tenants = TenantRepository::new(repository(&database).await.connection().clone());
    let redis = RedisPrefix::new();
    let first = SubmissionLimiter::new(cache(&tenants), limits(0.5, 2), redis.settings());
    let second = SubmissionLimiter::new(cache(&tenants), limits(0.5, 2), redis.settings());
    let tenant = TenantId::default_tenant();
    let one = first.check(&tenant).await.expect("check").expect("limited");
    assert!(one.allowed);
    assert_eq!((one.limit, one.remaining), (2, 1));
    let two = second
        .check(&tenant)
        .await
        .expect("check")
        .expect("limited");
    assert!(
        two.allowed,
        "the second replica still has the burst's second"
    );
    assert_eq!(two.remaining, 0);
    let three = first.check(&tenant).await.expect("check").expect("limited");
    assert!(!three.allowed, "the burst is spent across both replicas");
    assert!(
        three.retry_after > Duration::from_millis(1500)
            && three.retry_after <= Duration::from_secs(2),
        "one more after 1/rate: {:?}",
        three.retry_after
    );
    let other = TenantId::parse("tenant-b").expect("tenant");
    assert!(
        second
            .check(&other)
            .await
            .expect("check")
            .expect("limited")
            .allowed,
        "another tenant has its own budget"
    );
}

#[tokio::test]
async fn a_tenants_own_limits_override_the_settings_and_no_limit_is_no_check() {
    let database = TestDatabase::sqlite().await;
    let tenants = TenantRepository::new(repository(&database).await.connection().clone());
    let tenant = TenantId::default_tenant();
    let unlimited = SubmissionLimiter::new(cache(&tenants), limits(0.0, 5), &Default::default());
    assert_eq!(unlimited.check(&tenant).await.expect("check"), None);
    tenants
        .set_limits(
            &tenant,
            TenantLimits {
                submissions_per_second: Some(1.0),
                submission_burst: Some(1),
                ..TenantLimits::default()
            },
        )
        .await
        .expect("set")
        .expect("the tenant");
    let limiter = SubmissionLimiter::new(cache(&tenants), limits(0.0, 5), &Default::default());
    let first = limiter
        .check(&tenant)
        .await
        .expect("check")
        .expect("its own limit");
    assert!(first.allowed);
    assert_eq!(first.limit, 1);
    let second = limiter
        .check(&tenant)
        .await
        .expect("check")
        .expect("limited");
    assert!(!second.allowed, "a burst of one");
    tokio::time::sleep(second.retry_after + Duration::from_millis(20)).await;
    assert!(
        limiter
            .check(&tenant)
            .await
            .expect("check")
            .expect("limited")
            .allowed,
        "allowed again after Retry-After"
    );
}
