//! API key authentication. Each dialect names its own header scheme; the secret is the same.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use easel_core::keys::{ApiKey, AuthError, authenticate};

use crate::AppState;

/// How a dialect expects the key to be presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `authorization: Token <key>` (Hive).
    Token,
    /// `Authorization: Bearer <key>` (OpenAI).
    Bearer,
    /// `Authorization: <key>` or `Authentication: <key>`, bare or as `Bearer <key>` (basic
    /// textToImage: its document names `Authentication`, its example sends `Authorization`).
    Basic,
    /// Any of the above, or the bare key (dialect-neutral endpoints).
    Any,
}

impl Scheme {
    pub fn expected(self) -> &'static str {
        match self {
            Scheme::Token => "'authorization: Token <key>'",
            Scheme::Bearer => "'Authorization: Bearer <key>'",
            Scheme::Basic => "'Authorization: <key>'",
            Scheme::Any => "'Authorization: Bearer <key>'",
        }
    }
}

/// Why a request was not authenticated; the message is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing API key: send the header {0}")]
    Missing(&'static str),
    #[error("malformed authorization header: expected {0}")]
    Malformed(&'static str),
    #[error("invalid API key")]
    Unknown,
    #[error("this API key was revoked")]
    Revoked,
    #[error("the key store is unavailable")]
    Unavailable(#[source] easel_core::ports::StoreError),
}

fn extract(headers: &HeaderMap, scheme: Scheme) -> Result<&str, AuthFailure> {
    let value = headers
        .get(AUTHORIZATION)
        .or_else(|| if scheme == Scheme::Basic { headers.get("authentication") } else { None })
        .ok_or(AuthFailure::Missing(scheme.expected()))?;
    let value = value.to_str().map_err(|_| AuthFailure::Malformed(scheme.expected()))?.trim();
    let (word, rest) = match value.split_once(char::is_whitespace) {
        Some((word, rest)) => (Some(word), rest.trim()),
        None => (None, value),
    };
    let secret = match (scheme, word) {
        (Scheme::Token, Some(w)) if w.eq_ignore_ascii_case("token") => rest,
        (Scheme::Bearer, Some(w)) if w.eq_ignore_ascii_case("bearer") => rest,
        (Scheme::Any, Some(w)) if w.eq_ignore_ascii_case("bearer") || w.eq_ignore_ascii_case("token") => rest,
        (Scheme::Basic, Some(w)) if w.eq_ignore_ascii_case("bearer") => rest,
        (Scheme::Any | Scheme::Basic, None) => value,
        _ => return Err(AuthFailure::Malformed(scheme.expected())),
    };
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(AuthFailure::Malformed(scheme.expected()));
    }
    Ok(secret)
}

/// Finds the active key the request presents.
pub async fn require_key(state: &AppState, headers: &HeaderMap, scheme: Scheme) -> Result<ApiKey, AuthFailure> {
    let secret = extract(headers, scheme)?;
    authenticate(state.keys.as_ref(), secret).await.map_err(|e| match e {
        AuthError::Unknown => AuthFailure::Unknown,
        AuthError::Revoked => AuthFailure::Revoked,
        AuthError::Store(e) => AuthFailure::Unavailable(e),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn the_token_scheme_accepts_token_in_any_case_and_refuses_others() {
        assert_eq!(extract(&headers("Token abc"), Scheme::Token).unwrap(), "abc");
        assert_eq!(extract(&headers("token   abc "), Scheme::Token).unwrap(), "abc");
        assert!(matches!(extract(&headers("Bearer abc"), Scheme::Token), Err(AuthFailure::Malformed(_))));
        assert!(matches!(extract(&headers("abc"), Scheme::Token), Err(AuthFailure::Malformed(_))));
        assert!(matches!(extract(&headers("Token "), Scheme::Token), Err(AuthFailure::Malformed(_))));
        assert!(matches!(extract(&HeaderMap::new(), Scheme::Token), Err(AuthFailure::Missing(_))));
    }

    #[test]
    fn the_neutral_scheme_accepts_bearer_token_or_a_bare_key() {
        for v in ["Bearer abc", "Token abc", "abc"] {
            assert_eq!(extract(&headers(v), Scheme::Any).unwrap(), "abc", "{v}");
        }
        assert!(matches!(extract(&headers("Basic abc"), Scheme::Any), Err(AuthFailure::Malformed(_))));
    }

    #[test]
    fn the_basic_scheme_reads_authorization_or_authentication_with_a_bare_or_bearer_key() {
        assert_eq!(extract(&headers("abc"), Scheme::Basic).unwrap(), "abc");
        assert_eq!(extract(&headers("Bearer abc"), Scheme::Basic).unwrap(), "abc");
        let mut h = HeaderMap::new();
        h.insert("authentication", "abc".parse().unwrap());
        assert_eq!(extract(&h, Scheme::Basic).unwrap(), "abc");
        assert!(matches!(extract(&h, Scheme::Bearer), Err(AuthFailure::Missing(_))));
        assert!(matches!(extract(&headers("Token abc"), Scheme::Basic), Err(AuthFailure::Malformed(_))));
    }
}
