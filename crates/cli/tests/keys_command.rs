//! `easel keys` as a user runs it, on an embedded data folder: create, list, show and rotate the
//! callback secret, revoke.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn easel(data_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("EASEL_LOG", "warn")
        .env_remove("EASEL_TABLE")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
    line[name.len()..].split_whitespace().next().unwrap()
}

#[test]
fn a_keys_callback_secret_is_shown_rotated_with_a_grace_period_and_the_key_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let created = stdout(&easel(tmp.path(), &["create", "--name", "app"]));
    let id = field(&created, "id:");
    let secret = field(&created, "callback secret:");
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(stdout(&easel(tmp.path(), &["callback-secret", id])).trim(), secret);

    let rotated = stdout(&easel(tmp.path(), &["rotate-callback-secret", id, "--grace-hours", "2"]));
    let new_secret = field(&rotated, "callback secret:");
    assert!(new_secret.starts_with("whsec_") && new_secret != secret, "{rotated}");
    assert!(rotated.contains("previous secret also signs callbacks until"), "{rotated}");
    assert_eq!(stdout(&easel(tmp.path(), &["callback-secret", id])).trim(), new_secret);

    assert!(stdout(&easel(tmp.path(), &["list"])).contains(&format!("{id}\tapp\t")));
    assert_eq!(stdout(&easel(tmp.path(), &["revoke", id])).trim(), format!("revoked {id}"));
    assert!(stdout(&easel(tmp.path(), &["list"])).contains("revoked"));
    let missing = easel(tmp.path(), &["callback-secret", "key_missing"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no key with id key_missing"));
}
