//! Who may do what: the roles of a tenant's members and keys, the permissions
//! operations ask for, the one table granting permissions to roles, and the format of
//! API keys.
//!
//! Which permission each API operation asks for is the API's route table
//! (`operator_api::access`); what a role grants is [`Role::grants`], here and nowhere
//! else.
//!
//! ## API keys
//!
//! A key reads `opk_` + a 12-character look-up id + a 32-character secret + a
//! 6-character checksum, all base62 (54 characters): `opk_3fZq…`. The checksum is the
//! first 32 bits of SHA-256 over the 44 characters before it, so a secret scanner can
//! tell a real key from noise, and a mistyped or truncated key is refused without a
//! database read. The database keeps the look-up id and the SHA-256 of the secret only;
//! the key is shown once, when it is made. `opk_` + the look-up id (16 characters) is the
//! key's public prefix, which lists and logs may show.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A member's or a key's role in its tenant, from the most to the least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including keys and members of any role.
    Owner,
    /// Everything an owner may, except making or revoking owners.
    Admin,
    /// Submit, cancel and retry tasks; read everything a viewer reads.
    Member,
    /// Read only: tasks, artifacts, events, queues, webhook endpoints and deliveries.
    Viewer,
}

/// What an operation needs. The wire form (`tasks:write`) is what a `403 forbidden`
/// names and what the API document lists per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read tasks, their attempts, artifacts and events.
    TasksRead,
    /// Submit, cancel and retry tasks.
    TasksWrite,
    /// Read queues and their statistics.
    QueuesRead,
    /// Create, pause, resume and cap queues. Queues are the platform's (every tenant's
    /// tasks share them, and workers are deployed per queue), so no tenant role grants
    /// it: only platform-admin keys hold it, as `tenants:manage`.
    QueuesManage,
    /// Read webhook endpoints (without secrets) and deliveries.
    WebhooksRead,
    /// Create, change, delete and re-send webhooks; read and rotate signing secrets.
    WebhooksManage,
    /// List the tenant's API keys.
    KeysRead,
    /// Make and revoke API keys (never of a role above the caller's own).
    KeysManage,
    /// Read the tenant's audit log.
    AuditRead,
    /// List the tenant's members and invitations.
    MembersRead,
    /// Read the tenant's monthly usage and quotas.
    UsageRead,
    /// Read the tenant's language-model settings (never the key).
    ModelRead,
    /// Set or remove the tenant's language-model settings and key.
    ModelManage,
    /// Invite people, change members' roles, remove members (never above the caller's
    /// own role).
    MembersManage,
    /// Create and list tenants. No tenant role grants it: only platform-admin keys
    /// (`operator keys create --platform-admin`) hold it.
    TenantsManage,
}

impl Permission {
    pub const ALL: [Permission; 15] = [
        Permission::TasksRead,
        Permission::TasksWrite,
        Permission::QueuesRead,
        Permission::QueuesManage,
        Permission::WebhooksRead,
        Permission::WebhooksManage,
        Permission::KeysRead,
        Permission::KeysManage,
        Permission::AuditRead,
        Permission::MembersRead,
        Permission::MembersManage,
        Permission::UsageRead,
        Permission::ModelRead,
        Permission::ModelManage,
        Permission::TenantsManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TasksRead => "tasks:read",
            Self::TasksWrite => "tasks:write",
            Self::QueuesRead => "queues:read",
            Self::QueuesManage => "queues:manage",
            Self::WebhooksRead => "webhooks:read",
            Self::WebhooksManage => "webhooks:manage",
            Self::KeysRead => "keys:read",
            Self::KeysManage => "keys:manage",
            Self::AuditRead => "audit:read",
            Self::MembersRead => "members:read",
            Self::MembersManage => "members:manage",
            Self::UsageRead => "usage:read",
            Self::ModelRead => "model:read",
            Self::ModelManage => "model:manage",
            Self::TenantsManage => "tenants:manage",
        }
    }

    /// Whether holding it only reads.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Self::TasksRead
                | Self::QueuesRead
                | Self::WebhooksRead
                | Self::KeysRead
                | Self::AuditRead
                | Self::MembersRead
                | Self::UsageRead
                | Self::ModelRead
        )
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role: expected owner, admin, member or viewer, got {0:?}")]
pub struct InvalidRole(pub String);

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Result<Self, InvalidRole> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| InvalidRole(text.to_owned()))
    }

    /// The grant table: whether this role holds `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Owner | Self::Admin => !matches!(permission, TenantsManage | QueuesManage),
            Self::Member => matches!(
                permission,
                TasksRead | TasksWrite | QueuesRead | WebhooksRead | UsageRead | ModelRead
            ),
            Self::Viewer => matches!(
                permission,
                TasksRead | QueuesRead | WebhooksRead | UsageRead | ModelRead
            ),
        }
    }

    /// Whether a caller of this role may make or revoke a key (or member) of `other`:
    /// an owner any, an admin any but an owner, so nobody can raise their own role.
    pub fn may_manage(self, other: Role) -> bool {
        match self {
            Self::Owner => true,
            Self::Admin => other != Role::Owner,
            Self::Member | Self::Viewer => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

pub const KEY_PREFIX: &str = "opk_";
const LOOKUP_LENGTH: usize = 12;
const SECRET_LENGTH: usize = 32;
const CHECKSUM_LENGTH: usize = 6;
/// `opk_` and the look-up id: what may be shown of a key.
pub const KEY_DISPLAY_LENGTH: usize = KEY_PREFIX.len() + LOOKUP_LENGTH;
const KEY_LENGTH: usize = KEY_DISPLAY_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented key is refused before any look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("not an OperatorNext API key (they start with opk_ and are 54 characters)")]
    Shape,
    #[error("the key's checksum does not match: it was mistyped or cut short")]
    Checksum,
}

/// A full API key, as made once and then presented by clients. Its `Debug` and
/// `Display` show the public prefix only.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyToken(String);

impl ApiKeyToken {
    /// A new random key.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut body = String::with_capacity(KEY_LENGTH);
        body.push_str(KEY_PREFIX);
        for _ in 0..LOOKUP_LENGTH + SECRET_LENGTH {
            body.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
        }
        let checksum = checksum(&body[KEY_PREFIX.len()..]);
        body.push_str(&checksum);
        Self(body)
    }

    /// Checks the shape and the checksum (no look-up).
    pub fn parse(text: &str) -> Result<Self, MalformedKey> {
        let body = text.strip_prefix(KEY_PREFIX).ok_or(MalformedKey::Shape)?;
        if text.len() != KEY_LENGTH || !body.bytes().all(|byte| BASE62.contains(&byte)) {
            return Err(MalformedKey::Shape);
        }
        let (signed, sum) = body.split_at(LOOKUP_LENGTH + SECRET_LENGTH);
        if checksum(signed) != sum {
            return Err(MalformedKey::Checksum);
        }
        Ok(Self(text.to_owned()))
    }

    /// The id the database finds the key by.
    pub fn lookup(&self) -> &str {
        &self.0[KEY_PREFIX.len()..KEY_DISPLAY_LENGTH]
    }

    /// `opk_` and the look-up id: safe to show and log.
    pub fn display_prefix(&self) -> &str {
        &self.0[..KEY_DISPLAY_LENGTH]
    }

    /// The SHA-256 of the secret part, hex: what the database keeps.
    pub fn secret_hash(&self) -> String {
        hex(&self.secret_digest())
    }

    /// The SHA-256 of the secret part.
    pub fn secret_digest(&self) -> [u8; 32] {
        let secret = &self.0[KEY_DISPLAY_LENGTH..KEY_DISPLAY_LENGTH + SECRET_LENGTH];
        Sha256::digest(secret.as_bytes()).into()
    }

    /// The whole key, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ApiKeyToken({}…)", self.display_prefix())
    }
}

impl fmt::Display for ApiKeyToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}…", self.display_prefix())
    }
}

/// The look-up id in a key's public prefix (`opk_` + the id).
pub fn lookup_of_prefix(prefix: &str) -> &str {
    prefix.strip_prefix(KEY_PREFIX).unwrap_or(prefix)
}

/// A stored hex hash as bytes (`None` when it is not 64 hex digits).
pub fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, pair) in bytes.chunks(2).enumerate() {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        digest[index] = u8::try_from(high * 16 + low).ok()?;
    }
    Some(digest)
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_match(presented: &[u8], stored: &[u8]) -> bool {
    if presented.len() != stored.len() {
        return false;
    }
    presented
        .iter()
        .zip(stored)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

fn checksum(signed: &str) -> String {
    let digest = Sha256::digest(signed.as_bytes());
    let mut value = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut digits = [b'0'; CHECKSUM_LENGTH];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_shows_only_its_prefix() {
        let key = ApiKeyToken::generate();
        assert_eq!(key.expose().len(), 54);
        let parsed = ApiKeyToken::parse(key.expose()).expect("parses");
        assert_eq!(parsed.lookup(), key.lookup());
        assert_eq!(lookup_of_prefix(key.display_prefix()), key.lookup());
        assert_eq!(parsed.secret_hash(), key.secret_hash());
        assert_eq!(
            format!("{key:?}"),
            format!("ApiKeyToken({}…)", key.display_prefix())
        );
        assert!(!format!("{key}").contains(&key.expose()[KEY_DISPLAY_LENGTH..]));
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let key = ApiKeyToken::generate();
        let mut text = key.expose().to_owned().into_bytes();
        let position = KEY_DISPLAY_LENGTH + 3;
        text[position] = if text[position] == b'a' { b'b' } else { b'a' };
        let text = String::from_utf8(text).expect("ascii");
        assert_eq!(ApiKeyToken::parse(&text), Err(MalformedKey::Checksum));
        assert_eq!(
            ApiKeyToken::parse(&key.expose()[..50]),
            Err(MalformedKey::Shape)
        );
        assert_eq!(
            ApiKeyToken::parse("Bearer nonsense"),
            Err(MalformedKey::Shape)
        );
    }

    #[test]
    fn the_grant_table() {
        for permission in Permission::ALL {
            let tenant_wide = !matches!(
                permission,
                Permission::TenantsManage | Permission::QueuesManage
            );
            assert_eq!(Role::Owner.grants(permission), tenant_wide);
            assert_eq!(Role::Admin.grants(permission), tenant_wide);
            assert_eq!(
                Role::Viewer.grants(permission),
                permission.is_read()
                    && !matches!(
                        permission,
                        Permission::KeysRead | Permission::AuditRead | Permission::MembersRead
                    ),
                "{permission}"
            );
        }
        assert!(Role::Member.grants(Permission::TasksWrite));
        assert!(!Role::Member.grants(Permission::WebhooksManage));
        assert!(!Role::Member.grants(Permission::KeysRead));
        assert!(!Role::Member.grants(Permission::MembersRead));
    }

    #[test]
    fn no_role_manages_one_above_it() {
        assert!(Role::Owner.may_manage(Role::Owner));
        assert!(!Role::Admin.may_manage(Role::Owner));
        assert!(Role::Admin.may_manage(Role::Admin));
        assert!(Role::Admin.may_manage(Role::Viewer));
        assert!(!Role::Member.may_manage(Role::Viewer));
        assert!(!Role::Viewer.may_manage(Role::Viewer));
    }

    #[test]
    fn hashes_compare() {
        assert!(hashes_match(b"abc", b"abc"));
        assert!(!hashes_match(b"abc", b"abd"));
        assert!(!hashes_match(b"abc", b"abcd"));
        let key = ApiKeyToken::generate();
        assert_eq!(
            digest_from_hex(&key.secret_hash()),
            Some(key.secret_digest())
        );
        assert_eq!(digest_from_hex("zz"), None);
    }
}
