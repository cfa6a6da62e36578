//! Standard Webhooks signatures (<https://www.standardwebhooks.com>) on every callback:
//! `webhook-id` (stable across retries of one message), `webhook-timestamp` (Unix seconds of this
//! attempt) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one
//! per valid secret, space-separated (two while a rotated secret is still in its grace period).
//!
//! Written here (a dozen lines over `hmac`/`sha2`): the `standardwebhooks` crate pins `http` 0.2,
//! which this workspace's HTTP stack (1.x) does not use. Tests verify these signatures with the
//! reference implementation from PyPI.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::task::TaskId;

pub const SECRET_PREFIX: &str = "whsec_";

/// A callback secret that is not `whsec_` followed by base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a callback secret must be 'whsec_' followed by base64")]
pub struct BadSecret;

/// The `webhook-id` of a task's callback: derived from the task id, so every retry and every
/// manual redelivery of that callback carries the same id (receivers deduplicate on it).
pub fn message_id(task: TaskId) -> String {
    format!("msg_{}", task.to_string().replace('-', ""))
}

fn key_bytes(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(BadSecret)?;
    STANDARD.decode(encoded).map_err(|_| BadSecret)
}

/// `v1,<base64 signature>` of one message with one secret.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, BadSecret> {
    let key = key_bytes(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| BadSecret)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The three headers of a signed message, as `(name, value)`, signed with each of `secrets`.
pub fn headers(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, BadSecret> {
    let signatures = secrets.iter().map(|s| sign(s, msg_id, timestamp, body)).collect::<Result<Vec<_>, _>>()?;
    Ok(vec![
        ("webhook-id", msg_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_specs_example_message_gets_the_specs_signature() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn each_secret_adds_a_signature_and_the_id_is_stable_per_task() {
        let task = TaskId::new();
        let id = message_id(task);
        assert_eq!(id, message_id(task));
        assert!(id.starts_with("msg_") && !id.contains('.') && !id.contains('-'));
        let secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25kIHNlY3JldCBvZiAyNCBieXRlcw=="];
        let headers = headers(&secrets, &id, 1, b"{}").unwrap();
        assert_eq!(headers[2].1.split(' ').count(), 2);
        assert!(headers[2].1.split(' ').all(|s| s.starts_with("v1,")));
        assert_eq!(sign("nope", &id, 1, b"{}"), Err(BadSecret));
        assert_eq!(sign("whsec_***", &id, 1, b"{}"), Err(BadSecret));
    }
}
