//! The CLIP tokenizer, producing exactly what HF transformers' `CLIPTokenizer` gives with
//! `padding="max_length", max_length=77, truncation=True`.
//!
//! `tokenizer/tokenizer.json` is used when the export has one. Most SD exports ship only the slow
//! tokenizer's `vocab.json` + `merges.txt`; for those the fast tokenizer is rebuilt the way
//! transformers' `CLIPConverter` (`convert_slow_tokenizer.py`) builds it. Either way the sequence
//! is `<|startoftext|>`, at most 75 tokens, `<|endoftext|>`, then the pad token up to 77. The pad
//! token matters: the UNet cross-attends to all 77 positions, and SD 1.x pads with
//! `<|endoftext|>` while SD 2.x pads with `!`; it is read from `special_tokens_map.json`.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::LoadError;

/// CLIP's pre-tokenization pattern (the fast tokenizer's copy of the slow one's `self.pat`).
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The slow `CLIPTokenizer` reads only this many merges (`[1 : 49152 - 256 - 2 + 1]`, after the
/// header line); the converter inherits that, so a longer merges.txt must be cut the same way.
const MAX_MERGES: usize = 49152 - 256 - 2;

/// `CLIPTokenizer.__init__`'s defaults for the special tokens.
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";

/// A prompt as token ids, always exactly [`ClipTokenizer::max_len`] long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    /// True when tokens past the limit were dropped.
    pub truncated: bool,
}

/// A CLIP BPE tokenizer configured to truncate and pad to the text encoder's sequence length.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json` if present, otherwise builds the tokenizer from `vocab.json` and
    /// `merges.txt` ([`ClipTokenizer::from_vocab_and_merges`]). `max_len` counts BOS and EOS
    /// (77 for every SD text encoder).
    pub fn load(dir: &Path, max_len: usize) -> Result<ClipTokenizer, LoadError> {
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return ClipTokenizer::from_vocab_and_merges(dir, max_len);
        }
        let specials = SpecialTokens::read(dir)?;
        let inner =
            Tokenizer::from_file(&json).map_err(|source| LoadError::Tokenizer { path: json.clone(), source })?;
        ClipTokenizer::configure(inner, &specials, max_len, &json)
    }

    /// Builds the tokenizer from the slow tokenizer's files, as transformers' `CLIPConverter` does.
    pub fn from_vocab_and_merges(dir: &Path, max_len: usize) -> Result<ClipTokenizer, LoadError> {
        let specials = SpecialTokens::read(dir)?;
        let vocab_path = dir.join("vocab.json");
        let vocab: Vocab = read_json(&vocab_path, "the CLIP vocabulary (token → id)")?;
        let merges = read_merges(&dir.join("merges.txt"))?;
        let id_of = |token: &str| -> Result<u32, LoadError> {
            vocab.get(token).copied().ok_or_else(|| {
                LoadError::invalid(&vocab_path, format!("the special token {token:?} is not in the vocabulary"))
            })
        };
        let (bos_id, eos_id) = (id_of(&specials.bos)?, id_of(&specials.eos)?);
        // Checked before they are registered as added tokens, which would give them fresh ids
        // past the end of the text encoder's embedding table.
        id_of(&specials.unk)?;
        id_of(&specials.pad)?;

        let tokenizer_error = |source: tokenizers::Error| LoadError::Tokenizer { path: dir.to_path_buf(), source };
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(specials.unk.clone())
            .end_of_word_suffix("</w>".to_owned())
            .fuse_unk(false)
            .build()
            .map_err(tokenizer_error)?;
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".to_owned()), " ").map_err(tokenizer_error)?.into(),
            Lowercase.into(),
        ]);
        let pre_tokenizer = PreTokenizerSequence::new(vec![
            Split::new(SplitPattern::Regex(CLIP_PATTERN.to_owned()), SplitDelimiterBehavior::Removed, true)
                .map_err(tokenizer_error)?
                .into(),
            ByteLevel::default().add_prefix_space(false).into(),
        ]);
        let post_processor = RobertaProcessing::new((specials.eos.clone(), eos_id), (specials.bos.clone(), bos_id))
            .trim_offsets(false)
            .add_prefix_space(false);

        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(normalizer))
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_post_processor(Some(post_processor))
            .with_decoder(Some(ByteLevelDecoder::default()));
        let mut special: Vec<&str> = vec![&specials.bos, &specials.eos, &specials.unk, &specials.pad];
        special.dedup();
        let added: Vec<AddedToken> = special.into_iter().map(|t| AddedToken::from(t.to_owned(), true)).collect();
        inner.add_special_tokens(&added);
        ClipTokenizer::configure(inner, &specials, max_len, dir)
    }

    /// Installs truncation to `max_len` (special tokens included) and fixed padding with the pad
    /// token, replacing whatever `tokenizer.json` said.
    fn configure(
        mut inner: Tokenizer,
        specials: &SpecialTokens,
        max_len: usize,
        path: &Path,
    ) -> Result<Self, LoadError> {
        let pad_id = inner.token_to_id(&specials.pad).ok_or_else(|| {
            LoadError::invalid(path, format!("the pad token {:?} is not in the vocabulary", specials.pad))
        })?;
        if max_len < 2 {
            return Err(LoadError::invalid(
                path,
                format!("a sequence length of {max_len} leaves no room for BOS and EOS"),
            ));
        }
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|source| LoadError::Tokenizer { path: path.to_path_buf(), source })?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: specials.pad.clone(),
        }));
        Ok(ClipTokenizer { inner, max_len })
    }

    /// The sequence length every encoding has.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes one prompt: BOS, tokens, EOS, padding; truncated to [`ClipTokenizer::max_len`].
    pub fn encode(&self, text: &str) -> Result<TokenizedPrompt, tokenizers::Error> {
        let encoding = self.inner.encode(text, true)?;
        let ids = encoding.get_ids().to_vec();
        if ids.len() != self.max_len {
            return Err(format!("the tokenizer produced {} ids instead of {}", ids.len(), self.max_len).into());
        }
        Ok(TokenizedPrompt { ids, truncated: !encoding.get_overflowing().is_empty() })
    }
}

/// The special tokens, from `special_tokens_map.json`, else `tokenizer_config.json`, else
/// `CLIPTokenizer`'s defaults. A value is a string or an `AddedToken` object with `content`.
#[derive(Debug, Clone, PartialEq)]
struct SpecialTokens {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
}

impl SpecialTokens {
    fn read(dir: &Path) -> Result<SpecialTokens, LoadError> {
        let mut sources = Vec::new();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if path.is_file() {
                sources.push(read_json::<serde_json::Value>(&path, "a JSON object")?);
            }
        }
        let token = |key: &str, default: &str| -> String {
            sources
                .iter()
                .find_map(|source| match source.get(key)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_else(|| default.to_owned())
        };
        Ok(SpecialTokens {
            bos: token("bos_token", DEFAULT_BOS),
            eos: token("eos_token", DEFAULT_EOS),
            unk: token("unk_token", DEFAULT_EOS),
            pad: token("pad_token", DEFAULT_EOS),
        })
    }
}

/// merges.txt as the slow tokenizer reads it: strip, split lines, drop the first (the
/// `#version` header), keep at most [`MAX_MERGES`], split each on whitespace.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let text = read_text(path, "the BPE merge list (one \"a b\" pair per line after a #version header)")?;
    text.trim()
        .split('\n')
        .skip(1)
        .take(MAX_MERGES)
        .enumerate()
        .map(|(i, line)| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_owned(), b.to_owned())),
                _ => Err(LoadError::invalid(path, format!("line {} is not a pair of tokens: {line:?}", i + 2))),
            }
        })
        .collect()
}

fn read_text(path: &Path, expected: &'static str) -> Result<String, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(LoadError::MissingFile { path: PathBuf::from(path), expected })
        }
        Err(source) => Err(LoadError::Io { path: PathBuf::from(path), source }),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, expected: &'static str) -> Result<T, LoadError> {
    let text = read_text(path, expected)?;
    serde_json::from_str(&text).map_err(|source| LoadError::Json { path: PathBuf::from(path), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A toy vocabulary: enough to tokenize "a cat" and nothing else.
    fn toy_dir(pad: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let vocab = serde_json::json!({
            "!": 0, "a": 1, "c": 2, "t": 3, "a</w>": 4, "ca": 5, "cat</w>": 6, "t</w>": 7,
            "<|startoftext|>": 8, "<|endoftext|>": 9
        });
        std::fs::write(dir.path().join("vocab.json"), vocab.to_string()).unwrap();
        std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\nc a\nca t</w>\n").unwrap();
        let map = serde_json::json!({"bos_token": "<|startoftext|>", "eos_token": {"content": "<|endoftext|>"},
            "unk_token": "<|endoftext|>", "pad_token": pad});
        std::fs::write(dir.path().join("special_tokens_map.json"), map.to_string()).unwrap();
        dir
    }

    #[test]
    fn a_prompt_is_wrapped_in_bos_and_eos_and_padded_with_the_pad_token() {
        let dir = toy_dir(serde_json::json!("!"));
        let tokenizer = ClipTokenizer::load(dir.path(), 8).unwrap();
        let t = tokenizer.encode("A  CAT").unwrap();
        assert_eq!(t.ids, [8, 4, 6, 9, 0, 0, 0, 0]);
        assert!(!t.truncated);
    }

    #[test]
    fn the_pad_token_may_be_an_added_token_object() {
        let dir = toy_dir(serde_json::json!({"content": "<|endoftext|>", "lstrip": false}));
        let tokenizer = ClipTokenizer::load(dir.path(), 6).unwrap();
        assert_eq!(tokenizer.encode("").unwrap().ids, [8, 9, 9, 9, 9, 9]);
    }

    #[test]
    fn a_long_prompt_is_truncated_to_the_limit_and_still_ends_with_eos() {
        let dir = toy_dir(serde_json::json!("!"));
        let tokenizer = ClipTokenizer::load(dir.path(), 5).unwrap();
        let t = tokenizer.encode("cat cat cat cat").unwrap();
        assert_eq!(t.ids, [8, 6, 6, 6, 9]);
        assert!(t.truncated);
        let exact = tokenizer.encode("cat cat cat").unwrap();
        assert_eq!(exact.ids, [8, 6, 6, 6, 9]);
        assert!(!exact.truncated, "three tokens fit exactly");
    }

    #[test]
    fn a_pad_token_missing_from_the_vocabulary_is_a_load_error() {
        let dir = toy_dir(serde_json::json!("<pad>"));
        let err = ClipTokenizer::load(dir.path(), 77).unwrap_err();
        assert!(err.to_string().contains("<pad>"), "{err}");
    }

    #[test]
    fn a_tokenizer_json_is_preferred_and_its_own_padding_is_replaced() {
        let dir = toy_dir(serde_json::json!("!"));
        // HF's serialisation of a CLIP fast tokenizer, trimmed to the toy vocabulary, with a
        // padding setting of its own that must not survive.
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": null,
                        "pad_id": 1, "pad_type_id": 0, "pad_token": "a"},
            "added_tokens": [
                {"id": 8, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
                 "normalized": false, "special": true},
                {"id": 9, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
                 "normalized": false, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 9], "cls": ["<|startoftext|>", 8],
                               "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
                      "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"!": 0, "a": 1, "c": 2, "t": 3, "a</w>": 4, "ca": 5, "cat</w>": 6, "t</w>": 7,
                                "<|startoftext|>": 8, "<|endoftext|>": 9},
                      "merges": [["c", "a"], ["ca", "t</w>"]]}
        });
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        // Break the slow files: only tokenizer.json may be read.
        std::fs::write(dir.path().join("merges.txt"), "not a merge list").unwrap();
        let tokenizer = ClipTokenizer::load(dir.path(), 6).unwrap();
        assert_eq!(tokenizer.encode("a\tcat").unwrap().ids, [8, 4, 6, 9, 0, 0]);
    }

    #[test]
    fn missing_merges_are_reported_by_file_name() {
        let dir = toy_dir(serde_json::json!("!"));
        std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
        let err = ClipTokenizer::load(dir.path(), 77).unwrap_err();
        assert!(matches!(&err, LoadError::MissingFile { path, .. } if path.ends_with("merges.txt")), "{err}");
    }
}
