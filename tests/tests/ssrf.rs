//! The SSRF guard against a table of hostile URLs. Names resolve through a test resolver (never
//! the system's), and every guard here has the loopback-only egress filter: even a broken guard
//! cannot open a connection beyond 127.0.0.0/8 and ::1. Loopback servers stand in for a receiver
//! that answers, one that redirects to a private address, one that never answers, and one that
//! sends too much. `cargo test -p easel-tests --test ssrf -- --nocapture` prints the table.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use easel_callbacks::{Failure, Guard, StaticResolver, loopback_only};
use tokio::net::TcpListener;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A guard as the notifier builds it, over the test resolver and the loopback-only filter.
fn guard(allow_loopback: bool) -> Guard {
    let resolver = StaticResolver::new([
        ("metadata.test", vec![ip("169.254.169.254")]),
        ("internal.test", vec![ip("10.0.0.5")]),
        ("mixed.test", vec![ip("93.184.216.34"), ip("192.168.1.1")]),
        ("ula.test", vec![ip("fd00::1")]),
        ("mapped.test", vec![ip("::ffff:127.0.0.1")]),
        ("cgnat.test", vec![ip("100.100.100.200")]),
        ("public.test", vec![ip("93.184.216.34")]),
        ("localhost", vec![ip("127.0.0.1")]),
    ]);
    Guard::new(Duration::from_millis(800), 1024 * 1024)
        .allow_loopback(allow_loopback)
        .with_resolver(Arc::new(resolver))
        .with_egress(loopback_only)
}

/// Loopback servers: `/hook` answers 204, `/redirect` sends 302 to a private address, `/slow`
/// never answers, `/big` sends 2 MiB.
async fn loopback_servers() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", post(|| async { StatusCode::NO_CONTENT }))
        .route("/redirect", post(|| async { (StatusCode::FOUND, [(header::LOCATION, "http://10.0.0.1/admin")]) }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::NO_CONTENT
            }),
        )
        .route("/big", get(|| async { vec![7u8; 2 * 1024 * 1024].into_response() }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_urls_are_refused_with_a_reason_and_an_allowed_one_is_delivered() {
    let base = loopback_servers().await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let strict = guard(false);
    let local = guard(true);
    // (guard, URL, expected class, a word the reason must contain)
    let cases: Vec<(&Guard, String, &str, &str)> = vec![
        (&strict, "https://2130706433/".into(), "refused", "loopback"),
        (&strict, "https://0x7f000001/".into(), "refused", "loopback"),
        (&strict, "https://0177.0.0.1/".into(), "refused", "loopback"),
        (&strict, "https://127.1/".into(), "refused", "loopback"),
        (&strict, "https://[::1]/".into(), "refused", "loopback"),
        (&strict, "https://[::ffff:127.0.0.1]/".into(), "refused", "IPv4-mapped"),
        (&strict, "https://[::ffff:7f00:1]/".into(), "refused", "IPv4-mapped"),
        (&strict, "https://0.0.0.0/".into(), "refused", "unspecified"),
        (&strict, "https://[::]/".into(), "refused", "unspecified"),
        (&strict, "https://169.254.169.254/latest/meta-data/".into(), "refused", "link-local"),
        (&strict, "https://metadata.test/latest/meta-data/".into(), "refused", "link-local"),
        (&strict, "https://internal.test/hook".into(), "refused", "private"),
        (&strict, "https://mixed.test/hook".into(), "refused", "private"),
        (&strict, "https://ula.test/hook".into(), "refused", "unique-local"),
        (&strict, "https://mapped.test/hook".into(), "refused", "IPv4-mapped"),
        (&strict, "https://cgnat.test/hook".into(), "refused", "shared"),
        (&strict, "https://[fe80::1]/".into(), "refused", "link-local"),
        (&strict, "https://224.0.0.1/".into(), "refused", "multicast"),
        (&strict, "http://public.test/hook".into(), "refused", "https"),
        (&strict, "https://user:secret@public.test/hook".into(), "refused", "credentials"),
        (&strict, "ftp://public.test/file".into(), "refused", "https"),
        (&strict, format!("http://127.0.0.1:{port}/hook"), "refused", "EASEL_ALLOW_LOOPBACK_CALLBACKS"),
        (&strict, "https://nowhere.test/hook".into(), "dns", "resolved"),
        (&local, "http://10.0.0.1/hook".into(), "refused", "https"),
        (&local, format!("{base}/redirect"), "redirect", "not followed"),
        (&local, format!("{base}/slow"), "timeout", "within"),
        // Public by the rules, but this test's egress filter stops the connection.
        (&strict, "https://public.test/hook".into(), "refused", "egress"),
    ];
    println!("| URL | result | reason |\n| --- | --- | --- |");
    for (guard, url, class, word) in &cases {
        let result = guard.post(url, &[("content-type", "application/json".into())], b"{}".to_vec()).await;
        let failure: Failure = match result {
            Ok(answer) => panic!("{url} was delivered ({}); expected {class}", answer.status),
            Err(f) => f,
        };
        println!("| `{url}` | {} | {failure} |", failure.class());
        assert_eq!(failure.class(), *class, "{url}: {failure}");
        assert!(failure.to_string().contains(word), "{url}: {failure} (expected {word:?})");
    }
    let delivered = local.post(&format!("{base}/hook"), &[], b"{}".to_vec()).await.unwrap();
    println!("| `{base}/hook` (loopback allowed) | delivered | {} |", delivered.status);
    assert_eq!(delivered.status, 204);
    let by_name = local.post(&format!("http://localhost:{port}/hook"), &[], b"{}".to_vec()).await.unwrap();
    assert_eq!(by_name.status, 204, "a name is connected to at the address that was checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_cap_is_refused_and_not_kept() {
    let base = loopback_servers().await;
    let failure = guard(true).get(&format!("{base}/big")).await.unwrap_err();
    assert_eq!(failure, Failure::TooLarge(1024 * 1024));
}
