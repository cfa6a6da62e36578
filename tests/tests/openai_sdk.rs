//! The official `openai` Python package (pinned in infra/test-tools.txt), unchanged, against the
//! local server: `client.images.generate` in both response formats, `client.images.edit` (a
//! multipart upload), its error classes, and `client.models.list` (tests/openai_sdk/check.py).
#![allow(clippy::unwrap_used)]

use easel_testkit::workspace_root;
use easel_tests::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_generates_images_and_reads_errors_unchanged() {
    let h = Harness::start().await;
    let python = workspace_root().join(".easel/tools/bin/python");
    assert!(python.exists(), "{} is missing; run `bash infra/setup.sh --test-tools`", python.display());
    let output = tokio::process::Command::new(python)
        .arg(workspace_root().join("tests/openai_sdk/check.py"))
        .arg(&h.base)
        .arg(&h.key)
        .env("NO_PROXY", "*")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "the SDK check failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with(": ok")).count(), 5, "{stdout}");
}
