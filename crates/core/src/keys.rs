//! API keys: random secrets shown once, stored only as a hash.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::ports::{KeyStore, StoreError};

const SECRET_PREFIX: &str = "easel_sk_";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public identifier, e.g. `key_3f2a…`; safe to log and show.
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, hex. A plain fast hash suffices: secrets are 256 random bits,
    /// so there is nothing for a slow password hash to protect against.
    pub secret_hash: String,
    /// Standard Webhooks signing secret (`whsec_…`) for this key's callbacks.
    pub callback_secret: String,
    /// The secret before the last rotation: callbacks carry a second signature made with it
    /// until `previous_callback_secret_until`, so receivers can switch without losing any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_callback_secret: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default, skip_serializing_if = "Option::is_none")]
    pub previous_callback_secret_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// The secrets a callback sent at `now` is signed with: the current one, and the previous one
    /// during its grace period.
    pub fn signing_secrets(&self, now: OffsetDateTime) -> Vec<&str> {
        let mut secrets = vec![self.callback_secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_callback_secret, self.previous_callback_secret_until)
            && now < until
        {
            secrets.push(previous);
        }
        secrets
    }
}

fn new_callback_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{}{}", crate::webhook::SECRET_PREFIX, STANDARD.encode(bytes))
}

/// Gives key `id` a new callback secret; the old one keeps signing (as a second signature) for
/// `grace`. Returns the updated key, or `None` when there is no such key.
pub async fn rotate_callback_secret(
    store: &dyn KeyStore,
    id: &str,
    grace: std::time::Duration,
    now: OffsetDateTime,
) -> Result<Option<ApiKey>, StoreError> {
    let Some(mut key) = store.get(id).await? else { return Ok(None) };
    let old = std::mem::replace(&mut key.callback_secret, new_callback_secret());
    key.previous_callback_secret = Some(old);
    key.previous_callback_secret_until = Some(now + grace);
    Ok(store.replace(&key).await?.then_some(key))
}

/// A freshly created key and its secret. The secret exists only here: print it once and drop it.
#[derive(Clone)]
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("key", &self.key).finish_non_exhaustive()
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Generates a key (not yet stored).
pub fn generate_key(name: &str, now: OffsetDateTime) -> NewKey {
    let secret_bytes: [u8; 32] = rand::random();
    let id_bytes: [u8; 8] = rand::random();
    let hook_bytes: [u8; 32] = rand::random();
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret_bytes));
    NewKey {
        key: ApiKey {
            id: format!("key_{}", hex::encode(id_bytes)),
            name: name.to_owned(),
            secret_hash: hash_secret(&secret),
            callback_secret: format!("whsec_{}", STANDARD.encode(hook_bytes)),
            previous_callback_secret: None,
            previous_callback_secret_until: None,
            created_at: now,
            revoked_at: None,
        },
        secret,
    }
}

/// Creates and stores a key; returns it with its secret.
pub async fn create_key(store: &dyn KeyStore, name: &str) -> Result<NewKey, StoreError> {
    let new = generate_key(name, OffsetDateTime::now_utc());
    store.insert(&new.key).await?;
    Ok(new)
}

/// Why a presented secret was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown API key")]
    Unknown,
    #[error("this API key was revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finds the active key for a presented secret.
pub async fn authenticate(store: &dyn KeyStore, secret: &str) -> Result<ApiKey, AuthError> {
    let key = store.find_by_hash(&hash_secret(secret)).await?.ok_or(AuthError::Unknown)?;
    if key.is_active() { Ok(key) } else { Err(AuthError::Revoked) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_stores_only_the_hash_of_its_secret() {
        let new = generate_key("dev", OffsetDateTime::now_utc());
        assert!(new.secret.starts_with(SECRET_PREFIX));
        assert_eq!(new.key.secret_hash, hash_secret(&new.secret));
        assert!(!new.key.secret_hash.contains(&new.secret));
        assert!(!format!("{new:?}").contains(&new.secret), "Debug must not print the secret");
        assert!(new.key.callback_secret.starts_with("whsec_"));
    }

    #[test]
    fn two_generated_keys_differ() {
        let now = OffsetDateTime::now_utc();
        let (a, b) = (generate_key("a", now), generate_key("b", now));
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.key.id, b.key.id);
    }
}
