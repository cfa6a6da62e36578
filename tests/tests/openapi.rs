//! The OpenAPI document at `/openapi.json`, its docs page, and schemathesis (pinned in
//! infra/test-tools.txt) run against the local server with a bounded number of examples per
//! operation: no 5xx, every answer as documented (status, content type, headers, body schema),
//! documented requests accepted, undocumented ones refused (tests/openapi/schemathesis.toml).
//!
//! `EASEL_SCHEMATHESIS_EXAMPLES` (default 15) and `EASEL_SCHEMATHESIS_SEED` (default fixed, so
//! that CI is reproducible) change the run.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use easel_testkit::workspace_root;
use easel_tests::{Harness, serve_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_server_serves_its_openapi_document_and_a_docs_page_that_reads_it() {
    let h = Harness::start_without_worker().await;
    let resp = h.client.get(h.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert!(doc["paths"]["/v1/images/generations"]["post"].is_object());

    let page = h.client.get(h.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let init = h.client.get(h.url("/docs/swagger-initializer.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("/openapi.json"), "the docs page must load this server's document: {init}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() {
    // A short synchronous wait: generations answer 202 + Location unless the tiny model is quick.
    let tmp = tempfile::tempdir().unwrap();
    let mut config = serve_config(tmp.path());
    config.sync_wait = Duration::from_secs(2);
    let h = Harness::start_with(config, true).await;

    let tools = workspace_root().join(".easel/tools/bin");
    let schemathesis = tools.join("schemathesis");
    assert!(schemathesis.exists(), "{} is missing; run `bash infra/setup.sh --test-tools`", schemathesis.display());
    let examples = std::env::var("EASEL_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let seed = std::env::var("EASEL_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261202".into());
    let output = tokio::process::Command::new(&schemathesis)
        .arg("--no-color")
        .arg("--config-file")
        .arg(workspace_root().join("tests/openapi/schemathesis.toml"))
        .args(["run", &h.url("/openapi.json"), "--max-examples", &examples, "--seed", &seed, "--workers", "1"])
        .args(["--request-timeout", "30"])
        .env("EASEL_KEY", &h.key)
        .env("NO_PROXY", "*")
        .current_dir(tmp.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary_at = stdout.find("SUMMARY").unwrap_or(0);
    println!("{}", &stdout[summary_at..]);
    assert!(output.status.success(), "schemathesis found failures:\n{stdout}\n{stderr}");
    // Every operation of the document must have been exercised.
    let number_after = |label: &str| -> u32 {
        let at = stdout.find(label).unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}")) + label.len();
        stdout[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let (total, tested) = (number_after("selected /"), number_after("Tested:"));
    assert!(total >= 12 && tested == total, "{tested} of {total} operations tested:\n{stdout}");
}
