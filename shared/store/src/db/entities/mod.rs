//! sea-orm entities, one per table. They stay inside the `db` module: the repository
//! converts them into domain records at its edge.

pub mod agent_script;
pub mod api_key;
pub mod artifact;
pub mod audit_event;
pub mod invitation;
pub mod link_key;
pub mod membership;
pub mod oidc_login;
pub mod queue;
pub mod session;
pub mod session_key;
pub mod spent_refresh_token;
pub mod task;
pub mod task_attempt;
pub mod task_checkpoint;
pub mod task_event;
pub mod tenant;
pub mod tenant_email_domain;
pub mod tenant_model_settings;
pub mod tenant_usage;
pub mod user;
pub mod user_identity;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_endpoint;
pub mod webhook_signing_key;
