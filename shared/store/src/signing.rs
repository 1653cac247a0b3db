//! The keys that sign artifact links and stream tickets (`operator_domain::links`),
//! kept in the `link_keys` table so that every API replica and worker signs and checks
//! with the same ones. The first process that needs a key makes it; the others read it.
//! Keys are read once per process (they do not change while it runs: a new key is a
//! new row, and links name the key that signed them).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, QueryOrder};
use tokio::sync::OnceCell;

use crate::db::entities::link_key;
use crate::db::{RepoError, now};
use operator_domain::links::LinkKey;

/// The first key's id; later ones would count on.
const FIRST_KID: &str = "lk1";

#[derive(Debug)]
pub struct LinkSigner {
    db: DatabaseConnection,
    keys: OnceCell<Vec<LinkKey>>,
}

impl LinkSigner {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            keys: OnceCell::new(),
        }
    }

    /// Every key, newest first (made if there is none yet).
    pub async fn keys(&self) -> Result<&[LinkKey], RepoError> {
        self.keys
            .get_or_try_init(|| async {
                let mut keys = self.read().await?;
                if keys.is_empty() {
                    self.make_first().await?;
                    keys = self.read().await?;
                }
                if keys.is_empty() {
                    return Err(RepoError::Corrupt("no link key after making one".into()));
                }
                Ok(keys)
            })
            .await
            .map(Vec::as_slice)
    }

    /// The key new links and tickets are signed with.
    pub async fn current(&self) -> Result<LinkKey, RepoError> {
        self.keys()
            .await?
            .first()
            .cloned()
            .ok_or_else(|| RepoError::Corrupt("no link key".into()))
    }

    async fn read(&self) -> Result<Vec<LinkKey>, RepoError> {
        link_key::Entity::find()
            .order_by_desc(link_key::Column::CreatedAt)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                let secret = BASE64
                    .decode(&row.secret)
                    .map_err(|_| RepoError::Corrupt(format!("link key {}: secret", row.kid)))?;
                Ok(LinkKey {
                    kid: row.kid,
                    secret,
                })
            })
            .collect()
    }

    /// Two processes racing here both insert the same id; one row wins.
    async fn make_first(&self) -> Result<(), RepoError> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        link_key::Entity::insert(link_key::ActiveModel {
            kid: Set(FIRST_KID.to_owned()),
            secret: Set(BASE64.encode(secret)),
            created_at: Set(now()),
        })
        .on_conflict(
            OnConflict::column(link_key::Column::Kid)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }
}
