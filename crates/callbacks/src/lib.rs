//! easel-callbacks: requests to URLs that callers chose, behind the SSRF guard ([`guard`]): the
//! notifier's signed callback POSTs ([`HttpCallbackSender`]) and the API's input-image downloads
//! ([`HttpImageFetcher`]).

pub mod guard;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use easel_core::notify::CallbackSender;
use easel_core::ports::{FetchError, ImageFetcher};
use easel_core::task::CallbackAttempt;
use time::OffsetDateTime;

pub use crate::guard::{Failure, Guard, Resolve, StaticResolver, SystemResolver, loopback_only};

pub const USER_AGENT: &str = concat!("easel/", env!("CARGO_PKG_VERSION"), " (callbacks)");

/// How much of a receiver's answer is read (and then dropped: it is never stored).
pub const MAX_CALLBACK_ANSWER_BYTES: usize = 64 * 1024;

/// Posts callbacks through a [`Guard`].
#[derive(Debug, Clone)]
pub struct HttpCallbackSender {
    guard: Guard,
}

impl HttpCallbackSender {
    pub fn new(guard: Guard) -> Self {
        HttpCallbackSender { guard }
    }
}

/// Seconds from a `Retry-After` header: delta-seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap, now: OffsetDateTime) -> Option<u64> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = OffsetDateTime::parse(&value.replace("GMT", "+0000"), &format).ok()?;
    Some(u64::try_from((at - now).whole_seconds()).unwrap_or(0))
}

#[async_trait]
impl CallbackSender for HttpCallbackSender {
    async fn post(&self, url: &str, headers: Vec<(&'static str, String)>, body: Vec<u8>) -> CallbackAttempt {
        let at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let mut headers = headers;
        headers.push(("content-type", "application/json".to_owned()));
        let result = self.guard.post(url, &headers, body).await;
        let mut attempt = CallbackAttempt {
            at,
            status: None,
            error: None,
            error_class: None,
            retry_after_secs: None,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            gave_up: false,
        };
        match result {
            Ok(answer) => {
                attempt.status = Some(answer.status);
                if !(200..300).contains(&answer.status) {
                    attempt.error = Some(format!("the receiver answered {}", answer.status));
                    attempt.error_class = Some("status".into());
                    attempt.retry_after_secs = retry_after(&answer.headers, OffsetDateTime::now_utc());
                }
            }
            Err(failure) => {
                if let Failure::Redirect { status } = failure {
                    attempt.status = Some(status);
                }
                attempt.error_class = Some(failure.class().into());
                attempt.error = Some(failure.to_string());
            }
        }
        attempt
    }
}

/// Downloads input images (OpenAI's `image` as a URL) through a [`Guard`] whose body cap is the
/// largest image accepted.
#[derive(Debug, Clone)]
pub struct HttpImageFetcher {
    guard: Guard,
}

impl HttpImageFetcher {
    pub fn new(guard: Guard) -> Self {
        HttpImageFetcher { guard }
    }
}

#[async_trait]
impl ImageFetcher for HttpImageFetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let answer = self.guard.get(url).await.map_err(|f| match f {
            refused @ (Failure::Refused(_) | Failure::Egress(_)) => FetchError::Refused(refused.to_string()),
            other => FetchError::Failed(other.to_string()),
        })?;
        if !(200..300).contains(&answer.status) {
            return Err(FetchError::Failed(format!("the image server answered {}", answer.status)));
        }
        Ok(answer.body)
    }
}

/// The guard's default deadline for one callback, from connecting to the end of the answer.
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "120".parse().unwrap());
        let now = OffsetDateTime::from_unix_timestamp(1_445_412_480).unwrap(); // 2015-10-21 07:28:00 UTC
        assert_eq!(retry_after(&h, now), Some(120));
        h.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:29:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(60));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
