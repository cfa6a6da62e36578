//! The CLIP tokenizer against HF transformers' `CLIPTokenizer` (fixture written by
//! `infra/models/make_tiny_model.py` with `padding="max_length", max_length=77, truncation=True`).
#![allow(clippy::unwrap_used)]

mod common;

use easel_diffusion::ClipTokenizer;

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    input_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tokens.json");
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 5, "the fixture should cover several kinds of prompt");
    cases
}

fn assert_matches_fixture(tokenizer: &ClipTokenizer) {
    for case in cases() {
        let tokens = tokenizer.encode(&case.prompt).unwrap();
        assert_eq!(tokens.ids, case.input_ids, "prompt {:?}", case.prompt);
    }
}

#[test]
fn the_tiny_models_tokenizer_gives_exactly_hf_clip_tokenizer_ids_for_every_fixture_prompt() {
    let dir = common::tiny_model_dir().join("tokenizer");
    assert_matches_fixture(&ClipTokenizer::load(&dir, 77).unwrap());
}

#[test]
fn the_tokenizer_rebuilt_from_vocab_and_merges_gives_exactly_the_same_ids() {
    let dir = common::tiny_model_dir().join("tokenizer");
    assert_matches_fixture(&ClipTokenizer::from_vocab_and_merges(&dir, 77).unwrap());
}

#[test]
fn only_the_overlong_fixture_prompt_is_reported_truncated() {
    let tokenizer = ClipTokenizer::load(&common::tiny_model_dir().join("tokenizer"), 77).unwrap();
    let truncated: Vec<String> = cases()
        .into_iter()
        .filter(|case| tokenizer.encode(&case.prompt).unwrap().truncated)
        .map(|case| case.prompt)
        .collect();
    assert_eq!(truncated.len(), 1, "{truncated:?}");
    assert!(truncated[0].len() > 300);
}
