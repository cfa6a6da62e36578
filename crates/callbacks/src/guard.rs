//! The outbound HTTP client for URLs a caller chose (callbacks, input images), behind the SSRF
//! guard of DESIGN.md §7: [`easel_core::egress`]'s rules on the URL, then the host resolved once,
//! here, every address it resolves to checked, and the connection pinned to those addresses (the
//! HTTP client never resolves the name again). No redirects are followed; proxies from the
//! environment are ignored; one deadline covers resolving, connecting, sending and reading the
//! answer; the answer's body is read up to a cap.
//!
//! Written here rather than taken from a crate: no maintained Rust crate does resolve-check-pin for
//! reqwest (the proxies that do, such as smokescreen, are separate services).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use easel_core::egress::{Refusal, check_address, check_url, is_loopback};
use url::{Host, Url};

/// Resolves host names to addresses. [`SystemResolver`] asks the operating system;
/// [`StaticResolver`] answers from a table (tests, and hosts pinned by configuration).
#[async_trait]
pub trait Resolve: Send + Sync {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect())
    }
}

/// A fixed table of names; any other name does not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver(HashMap<String, Vec<IpAddr>>);

impl StaticResolver {
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, Vec<IpAddr>)>) -> Self {
        StaticResolver(entries.into_iter().map(|(host, addrs)| (host.to_ascii_lowercase(), addrs)).collect())
    }
}

#[async_trait]
impl Resolve for StaticResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        self.0
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "unknown host"))
    }
}

/// Why a request was not made, or failed. `class()` is the stable word recorded on the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0} is outside this process's egress filter")]
    Egress(IpAddr),
    #[error("{host} could not be resolved")]
    Unresolvable { host: String },
    #[error("the server answered {status} with a redirect; redirects are not followed")]
    Redirect { status: u16 },
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("could not connect")]
    Connect,
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request failed: {0}")]
    Request(String),
}

impl Failure {
    /// A stable word for the kind of failure.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Refused(_) | Failure::Egress(_) => "refused",
            Failure::Unresolvable { .. } => "dns",
            Failure::Redirect { .. } => "redirect",
            Failure::Timeout(_) => "timeout",
            Failure::Connect => "connect",
            Failure::TooLarge(_) => "too_large",
            Failure::Request(_) => "request",
        }
    }
}

/// An answer that arrived: its status, headers and (capped) body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// A URL that passed the guard, with the addresses to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub url: Url,
    pub addrs: Vec<IpAddr>,
}

/// A last check on every address before a connection is made. Production allows what the guard
/// allowed; tests pass [`loopback_only`], so that even a broken guard cannot reach beyond loopback.
pub type Egress = fn(IpAddr) -> bool;

/// An [`Egress`] that allows loopback addresses only.
pub fn loopback_only(ip: IpAddr) -> bool {
    is_loopback(ip)
}

fn any_address(_: IpAddr) -> bool {
    true
}

/// The guard and the HTTP client behind it.
#[derive(Clone)]
pub struct Guard {
    allow_loopback_http: bool,
    resolver: Arc<dyn Resolve>,
    egress: Egress,
    deadline: Duration,
    max_body: usize,
    user_agent: &'static str,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("allow_loopback_http", &self.allow_loopback_http)
            .field("deadline", &self.deadline)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard over the system resolver. `deadline` bounds a whole request; answers are read up
    /// to `max_body` bytes.
    pub fn new(deadline: Duration, max_body: usize) -> Self {
        Guard {
            allow_loopback_http: false,
            resolver: Arc::new(SystemResolver),
            egress: any_address,
            deadline,
            max_body,
            user_agent: crate::USER_AGENT,
        }
    }

    /// Allows `http://` and `https://` to loopback addresses (local use only).
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback_http = allow;
        self
    }

    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }

    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.egress = egress;
        self
    }

    pub fn allows_loopback(&self) -> bool {
        self.allow_loopback_http
    }

    /// The same guard with another cap on the answers read.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// All the rules, resolving the host once: the addresses returned are the only ones a request
    /// to this URL may connect to.
    pub async fn check(&self, raw: &str) -> Result<Checked, Failure> {
        let url = check_url(raw, self.allow_loopback_http)?;
        let addrs = match url.host() {
            Some(Host::Ipv4(v4)) => vec![IpAddr::V4(v4)],
            Some(Host::Ipv6(v6)) => vec![IpAddr::V6(v6)],
            Some(Host::Domain(domain)) => {
                let unresolvable = || Failure::Unresolvable { host: domain.to_owned() };
                let addrs = self.resolver.resolve(domain).await.map_err(|_| unresolvable())?;
                if addrs.is_empty() {
                    return Err(unresolvable());
                }
                addrs
            }
            None => return Err(Refusal::InvalidUrl("it has no host".into()).into()),
        };
        // Every address must pass: a name with one private record among public ones is refused
        // (the client could pick any of them).
        for &ip in &addrs {
            check_address(&url, ip, self.allow_loopback_http)?;
        }
        Ok(Checked { url, addrs })
    }

    /// A client pinned to the checked addresses. One per request: reqwest pins names per client,
    /// and a callback or an image download is not a hot path (it costs about a millisecond).
    fn client_for(&self, checked: &Checked) -> Result<reqwest::Client, Failure> {
        if let Some(&ip) = checked.addrs.iter().find(|ip| !(self.egress)(**ip)) {
            return Err(Failure::Egress(ip));
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(self.user_agent)
            .connect_timeout(self.deadline);
        if let Some(Host::Domain(domain)) = checked.url.host() {
            let port = checked.url.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = checked.addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            builder = builder.resolve_to_addrs(domain, &addrs);
        }
        builder.build().map_err(|e| Failure::Request(e.to_string()))
    }

    /// POSTs `body` with `headers` to `url`, within the deadline. Any answer is returned (a 3xx
    /// as [`Failure::Redirect`]); its body is read up to the cap.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Result<Answer, Failure> {
        self.within_deadline(async {
            let checked = self.check(url).await?;
            let client = self.client_for(&checked)?;
            let mut request = client.post(checked.url.clone()).body(body);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            self.read(request).await
        })
        .await
    }

    /// GETs `url` within the deadline; a body over the cap is an error (nothing is kept of it).
    pub async fn get(&self, url: &str) -> Result<Answer, Failure> {
        self.within_deadline(async {
            let checked = self.check(url).await?;
            let client = self.client_for(&checked)?;
            let answer = self.read(client.get(checked.url.clone())).await?;
            if answer.body.len() > self.max_body {
                return Err(Failure::TooLarge(self.max_body));
            }
            Ok(answer)
        })
        .await
    }

    async fn within_deadline(&self, work: impl Future<Output = Result<Answer, Failure>>) -> Result<Answer, Failure> {
        tokio::time::timeout(self.deadline, work).await.unwrap_or(Err(Failure::Timeout(self.deadline)))
    }

    /// Sends and reads at most `max_body + 1` bytes of the answer (one more, to tell "too large").
    async fn read(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let mut response = request.send().await.map_err(|e| self.describe(&e))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            return Err(Failure::Redirect { status });
        }
        let headers = response.headers().clone();
        if response.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(Failure::TooLarge(self.max_body));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > self.max_body {
                body.truncate(self.max_body + 1);
                break;
            }
        }
        Ok(Answer { status, headers, body })
    }

    /// A short, stable description of a failed request, without the URL (it may carry secrets).
    fn describe(&self, e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::Timeout(self.deadline);
        }
        if e.is_connect() {
            return Failure::Connect;
        }
        let mut msg = String::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = if msg.is_empty() { s.to_string() } else { format!("{msg}: {s}") };
            source = s.source();
        }
        Failure::Request(if msg.is_empty() { "no answer".into() } else { msg })
    }
}
