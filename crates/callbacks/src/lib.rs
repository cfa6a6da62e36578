//! easel-callbacks: the HTTP side of the notify use case.
//!
//! A plain JSON POST with a timeout and no redirects followed (a redirect could lead the
//! notifier anywhere the receiver likes). Signing, backoff and the guard against private
//! addresses are the notifier's next layer.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use easel_core::notify::CallbackSender;
use easel_core::task::CallbackAttempt;
use time::OffsetDateTime;

pub const USER_AGENT: &str = concat!("easel/", env!("CARGO_PKG_VERSION"), " (callbacks)");

#[derive(Debug, Clone)]
pub struct HttpCallbackSender {
    client: reqwest::Client,
}

impl HttpCallbackSender {
    /// `timeout` bounds one attempt, from connecting to the end of the receiver's answer.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()?;
        Ok(HttpCallbackSender { client })
    }
}

#[async_trait]
impl CallbackSender for HttpCallbackSender {
    async fn post(&self, url: &str, body: Vec<u8>) -> CallbackAttempt {
        let at = OffsetDateTime::now_utc();
        let started = Instant::now();
        let result = self.client.post(url).header("content-type", "application/json").body(body).send().await;
        let (status, error) = match result {
            Ok(resp) => {
                let status = resp.status();
                // Drain (bounded by the timeout) so the connection can be reused; the content is ignored.
                let _ = resp.bytes().await;
                let error = (!status.is_success()).then(|| format!("the receiver answered {status}"));
                (Some(status.as_u16()), error)
            }
            Err(e) => (None, Some(describe(&e))),
        };
        CallbackAttempt {
            at,
            status,
            error,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A short, stable description of a failed request, without the URL (it may carry secrets).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else if e.is_builder() {
        "invalid callback URL".to_owned()
    } else {
        let mut msg = "request failed".to_owned();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg
    }
}
