//! OpenAI's `image` given as a URL (the AIGNE Hub form): downloaded behind the SSRF guard with a
//! size cap, then edited like an uploaded image. The image server is on 127.0.0.1; the harness's
//! guard resolves names from a table and connects to loopback only.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use easel_core::generator::GeneratedImage;
use easel_tests::{Harness, decode_png, serve_config, test_guard};
use serde_json::json;
use tokio::net::TcpListener;

const OPENAI: &str = "/v1/images/generations";

fn gradient_png() -> Vec<u8> {
    let (w, h) = (64u32, 64u32);
    let rgb = (0..w * h).flat_map(|i| [(i % w * 4) as u8, (i / w * 4) as u8, 128]).collect();
    easel_core::png::encode_png(&GeneratedImage { width: w, height: h, seed: 0, rgb }).unwrap()
}

/// `/in.png` serves a PNG, `/missing.png` 404, `/text` a non-image, `/huge` 7 MiB.
async fn image_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let png = gradient_png();
    let app = axum::Router::new()
        .route("/in.png", get(move || async move { ([("content-type", "image/png")], png).into_response() }))
        .route("/missing.png", get(|| async { StatusCode::NOT_FOUND }))
        .route("/text", get(|| async { "not an image" }))
        .route("/huge", get(|| async { vec![0u8; 7 * 1024 * 1024] }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_url_is_downloaded_behind_the_guard_and_edited() {
    let base = image_server().await;
    let h = Harness::start().await;
    let auth = [("authorization", format!("Bearer {}", h.key))];
    let edit = |image: String| json!({"prompt": "at night", "image": image, "strength": 0.6, "size": "256x256", "seed": 7, "response_format": "b64_json"});
    let (code, headers, answer) = h.post(OPENAI, &auth, &edit(format!("{base}/in.png"))).await;
    assert_eq!(code, 200, "{answer}");
    let b64 = answer["data"][0]["b64_json"].as_str().unwrap();
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    assert_eq!(decode_png(&png).0, 256);
    let (_, task) = h.get_json(&format!("/v1/tasks/{}", headers["x-easel-task-id"].to_str().unwrap())).await;
    assert_eq!(task["request"]["init_image"]["strength"].as_f64().map(|s| (s * 10.0).round()), Some(6.0), "{task}");

    for (image, expect) in [
        (format!("{base}/missing.png"), "answered 404"),
        (format!("{base}/text"), "downloaded image"),
        (format!("{base}/huge"), "larger than"),
        ("https://10.0.0.7/cat.png".to_owned(), "private"),
        ("https://[::ffff:169.254.169.254]/".to_owned(), "IPv4-mapped"),
        ("https://u:p@example.com/cat.png".to_owned(), "credentials"),
        ("https://images.example.com/cat.png".to_owned(), "could not be resolved"),
    ] {
        let (code, _, e) = h.post(OPENAI, &auth, &edit(image.clone())).await;
        assert_eq!((code, e["error"]["param"].as_str()), (400, Some("image")), "{image}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(expect), "{image}: {e}");
    }
    assert_eq!(h.queue_depth().0, 0, "no refused request left a task behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_image_url_is_refused_unless_loopback_is_allowed() {
    let base = image_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = serve_config(tmp.path());
    config.outbound = test_guard(false);
    config.sync_wait = Duration::ZERO;
    let h = Harness::start_with(config, false).await;
    let auth = [("authorization", format!("Bearer {}", h.key))];
    let (code, _, e) = h.post(OPENAI, &auth, &json!({"prompt": "x", "image": format!("{base}/in.png")})).await;
    assert_eq!(code, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("EASEL_ALLOW_LOOPBACK_CALLBACKS"), "{e}");
}
