//! The prompt policy (DESIGN.md §6): named deny lists matched on normalized text, applied to
//! every request's prompt (and, when configured, its negative prompt) before anything is stored
//! or queued. A refusal names the policy, never the term that matched.
//!
//! The list is data: `data/prompt-policy.txt` is the default, and its header documents the
//! format. Matching is by whole words (so `nude` does not refuse "nudge" and `rape` does not refuse
//! "grapes"), after a normalization that undoes the usual ways around a word list:
//! - case, accents and lookalike letters, by transliterating to ASCII (`deunicode`: é → e,
//!   Cyrillic о → o, full-width letters → ASCII);
//! - digit and symbol substitutions: letters and their stand-ins fold to one letter on both the
//!   text and the terms (0/o, 1/l/i/!/|, 3/e, 4/a/@, 5/s/$, 7/t), a symbol counting as a letter
//!   only when a letter or digit follows it (so "nude!" is "nude");
//! - separators inside words: a word is also read with `.-_*'~+^` removed ("n.u.d.e"), and runs
//!   of single letters are also read as one word ("n u d e").
//!
//! Written by hand: the crates for word filters ship their own English lists and do not take
//! named lists from a file.

use crate::request::GenerationRequest;

/// The default policy file, compiled in.
pub const DEFAULT_POLICY: &str = include_str!("../data/prompt-policy.txt");

/// Which text of the request a policy refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptField {
    Prompt,
    NegativePrompt,
}

impl PromptField {
    pub fn words(self) -> &'static str {
        match self {
            PromptField::Prompt => "prompt",
            PromptField::NegativePrompt => "negative prompt",
        }
    }
}

/// A request refused by the prompt policy: the policy's name and the field, never the term.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {} was refused by this server's prompt policy `{policy}`; rephrase it (nothing was queued or charged)",
    .field.words()
)]
pub struct PromptRefusal {
    pub policy: String,
    pub field: PromptField,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Word(String),
    Prefix(String),
    Infix(String),
}

impl Pattern {
    fn matches(&self, word: &str) -> bool {
        match self {
            Pattern::Word(w) => word == w,
            Pattern::Prefix(p) => word.starts_with(p.as_str()),
            Pattern::Infix(p) => word.contains(p.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    name: String,
    /// Each term is a sequence of consecutive words.
    terms: Vec<Vec<Pattern>>,
}

/// The configured prompt policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptPolicy {
    policies: Vec<Policy>,
    /// Whether negative prompts are checked too. Off by default: negative prompts name what must
    /// not appear ("nsfw, nudity"), so refusing them would refuse the careful callers.
    pub check_negative: bool,
}

impl Default for PromptPolicy {
    fn default() -> Self {
        PromptPolicy::parse(DEFAULT_POLICY).unwrap_or_else(|e| unreachable!("the default policy file is valid: {e}"))
    }
}

impl PromptPolicy {
    /// No policy: every prompt is accepted.
    pub fn disabled() -> Self {
        PromptPolicy { policies: Vec::new(), check_negative: false }
    }

    /// A policy file (the format of `data/prompt-policy.txt`); errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut policies: Vec<Policy> = Vec::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(format!("line {number}: a policy name is letters, digits, - and _: {line:?}"));
                }
                policies.push(Policy { name: name.to_owned(), terms: Vec::new() });
                continue;
            }
            let Some(policy) = policies.last_mut() else {
                return Err(format!("line {number}: a term before any [policy] header: {line:?}"));
            };
            let term = line
                .split_whitespace()
                .map(|word| {
                    let (infix, word) = match word.strip_prefix('*') {
                        Some(rest) => (true, rest),
                        None => (false, word),
                    };
                    let (prefix, word) = match word.strip_suffix('*') {
                        Some(rest) => (true, rest),
                        None => (false, word),
                    };
                    let folded = words(word);
                    let [folded] = &folded[..] else {
                        return Err(format!("line {number}: {word:?} is not one word after normalization"));
                    };
                    Ok(match (infix, prefix) {
                        (true, true) => Pattern::Infix(folded.clone()),
                        (false, true) => Pattern::Prefix(folded.clone()),
                        (false, false) => Pattern::Word(folded.clone()),
                        (true, false) => {
                            return Err(format!("line {number}: *{word} needs a closing * (infix terms are *term*)"));
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            policy.terms.push(term);
        }
        if let Some(empty) = policies.iter().find(|p| p.terms.is_empty()) {
            return Err(format!("policy [{}] has no terms", empty.name));
        }
        Ok(PromptPolicy { policies, check_negative: false })
    }

    /// The policy a setting names (`EASEL_PROMPT_POLICY`): `default`, `off`, a policy file's
    /// text (it starts with `[`), or a path to a policy file.
    pub fn from_setting(value: &str) -> Result<Self, String> {
        match value.trim() {
            "" | "default" => Ok(PromptPolicy::default()),
            "off" => Ok(PromptPolicy::disabled()),
            text if text.starts_with('[') => PromptPolicy::parse(text),
            path => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read the prompt policy {path}: {e}"))?;
                PromptPolicy::parse(&text).map_err(|e| format!("{path}: {e}"))
            }
        }
    }

    /// This policy, checking negative prompts too or not.
    pub fn checking_negative(self, check_negative: bool) -> Self {
        PromptPolicy { check_negative, ..self }
    }

    /// The names of the policies, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| p.name.as_str())
    }

    /// The first policy that refuses `text`, if any.
    pub fn refusing(&self, text: &str) -> Option<&str> {
        if self.policies.is_empty() {
            return None;
        }
        let views = views(text);
        self.policies
            .iter()
            .find(|policy| policy.terms.iter().any(|term| views.iter().any(|view| contains(view, term))))
            .map(|p| p.name.as_str())
    }

    /// Checks the request's prompt, and its negative prompt when so configured.
    pub fn check(&self, request: &GenerationRequest) -> Result<(), PromptRefusal> {
        let refuse = |policy: &str, field| PromptRefusal { policy: policy.to_owned(), field };
        if let Some(policy) = self.refusing(&request.prompt) {
            return Err(refuse(policy, PromptField::Prompt));
        }
        if self.check_negative
            && let Some(policy) = request.negative_prompt.as_deref().and_then(|n| self.refusing(n))
        {
            return Err(refuse(policy, PromptField::NegativePrompt));
        }
        Ok(())
    }
}

fn contains(view: &[String], term: &[Pattern]) -> bool {
    view.windows(term.len()).any(|window| window.iter().zip(term).all(|(word, pattern)| pattern.matches(word)))
}

/// A letter and its stand-ins, folded to one letter.
fn fold(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | 'l' | '!' | '|' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        other => other,
    }
}

/// Symbols that stand for letters when a letter or digit follows them.
fn is_stand_in(c: char) -> bool {
    matches!(c, '!' | '|' | '@' | '$')
}

/// Separators people put inside a word to break it up.
fn is_joiner(c: char) -> bool {
    matches!(c, '.' | '-' | '_' | '*' | '\'' | '~' | '+' | '^' | '`')
}

/// The text as lowercase ASCII with letters folded; other characters kept for splitting.
fn normalize(text: &str) -> Vec<char> {
    let mut ascii = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            ascii.push(c.to_ascii_lowercase());
        } else if c.is_whitespace() {
            ascii.push(' ');
        } else {
            // Transliterations of CJK syllables end in a space, which keeps them apart.
            ascii.push_str(&deunicode::deunicode_char(c).unwrap_or(" ").to_ascii_lowercase());
        }
    }
    let chars: Vec<char> = ascii.chars().collect();
    (0..chars.len())
        .map(|i| {
            let c = chars[i];
            let next_is_word = chars.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric() || is_stand_in(*n));
            if c.is_ascii_alphanumeric() || (is_stand_in(c) && next_is_word) { fold(c) } else { c }
        })
        .collect()
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// The words of `text`, split at anything that is not a (folded) letter or digit.
fn words(text: &str) -> Vec<String> {
    split(&normalize(text), |c| !is_word_char(c))
}

fn split(chars: &[char], is_break: impl Fn(char) -> bool) -> Vec<String> {
    chars.split(|&c| is_break(c)).filter(|w| !w.is_empty()).map(|w| w.iter().collect()).collect()
}

/// The ways a text is read: its words; its words with separators inside them removed; its words
/// with runs of single letters joined.
fn views(text: &str) -> Vec<Vec<String>> {
    let chars = normalize(text);
    let plain = split(&chars, |c| !is_word_char(c));
    let joined: Vec<String> = split(&chars, |c| !is_word_char(c) && !is_joiner(c))
        .into_iter()
        .map(|w| w.chars().filter(|&c| is_word_char(c)).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect();
    let mut spelled = Vec::with_capacity(plain.len());
    let mut run = String::new();
    for word in &plain {
        if word.len() == 1 {
            run.push_str(word);
            continue;
        }
        if !run.is_empty() {
            spelled.push(std::mem::take(&mut run));
        }
        spelled.push(word.clone());
    }
    if !run.is_empty() {
        spelled.push(run);
    }
    vec![plain, joined, spelled]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Option<String> {
        PromptPolicy::default().refusing(text).map(str::to_owned)
    }

    #[test]
    fn the_default_policy_refuses_explicit_prompts_however_they_are_written() {
        for text in [
            "a nude woman on a beach",
            "NUDE portrait",
            "a núdé figure",
            "n.u.d.e model",
            "n-u-d-e model",
            "n u d e model",
            "nud3 statue",
            "p0rn scene",
            "pornographic art",
            "hotporngirl",
            "nudе",     // Cyrillic е
            "ｎｕｄｅ", // full-width
            "$ex scene",
            "a n4k3d man",
            "a semi-nude dancer",
        ] {
            assert_eq!(refused(text).as_deref(), Some("sexual-content"), "{text:?}");
        }
        assert_eq!(refused("a loli in a swimsuit").as_deref(), Some("minors-sexual-content"));
        assert_eq!(refused("a be-heading in the square").as_deref(), Some("graphic-violence"));
        assert_eq!(refused("severed heads on spikes").as_deref(), Some("graphic-violence"));
    }

    #[test]
    fn ordinary_words_that_contain_a_term_are_accepted() {
        for text in [
            "a nudge in the right direction",
            "grapes on a table",
            "the therapist's office",
            "an assassin in the night",
            "Scunthorpe town centre",
            "an analysis of essex county",
            "a blue tit on a branch",
            "chicken breast with rosemary",
            "a red star on the left, blue background",
            "1024x1024, 8k, highly detailed",
            "a cat, 3 dogs and 7 birds",
        ] {
            assert_eq!(refused(text), None, "{text:?}");
        }
    }

    #[test]
    fn punctuation_after_a_word_is_not_a_letter() {
        assert_eq!(refused("nude!").as_deref(), Some("sexual-content"));
        assert_eq!(refused("wow!!! such colors").as_deref(), None);
    }

    #[test]
    fn negative_prompts_are_checked_only_when_configured() {
        let mut request = GenerationRequest::new("a portrait", 512, 512, vec![1]);
        request.negative_prompt = Some("nsfw, nudity".into());
        let mut policy = PromptPolicy::default();
        assert_eq!(policy.check(&request), Ok(()));
        policy.check_negative = true;
        let refusal = policy.check(&request).unwrap_err();
        assert_eq!(refusal, PromptRefusal { policy: "sexual-content".into(), field: PromptField::NegativePrompt });
        let message = refusal.to_string();
        assert!(message.contains("negative prompt") && message.contains("`sexual-content`"), "{message}");
        assert!(!message.contains("nsfw") && !message.contains("nudity"), "the term is never named: {message}");
    }

    #[test]
    fn a_policy_file_is_parsed_with_prefixes_infixes_and_phrases() {
        let policy = PromptPolicy::parse("# mine\n[brands]\nacme*\n*zork*\nbig corp\n").unwrap();
        assert_eq!(policy.names().collect::<Vec<_>>(), vec!["brands"]);
        assert_eq!(policy.refusing("an ACMEtron robot"), Some("brands"));
        assert_eq!(policy.refusing("superzorky"), Some("brands"));
        assert_eq!(policy.refusing("a BIG   corp logo"), Some("brands"));
        assert_eq!(policy.refusing("a big corporation"), None);
        assert_eq!(policy.refusing("a nude"), None, "a replacement file replaces the default list");
    }

    #[test]
    fn malformed_policy_files_are_refused_with_the_line() {
        for (text, needle) in [
            ("nude\n", "line 1"),
            ("[a b]\nx\n", "line 1"),
            ("[x]\n\n*half\n", "line 3"),
            ("[x]\n...\n", "line 2"),
            ("[x]\n[y]\nz\n", "[x] has no terms"),
        ] {
            let err = PromptPolicy::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_setting_names_the_default_none_inline_text_or_a_file() {
        assert_eq!(PromptPolicy::from_setting("default").unwrap(), PromptPolicy::default());
        assert_eq!(PromptPolicy::from_setting("off").unwrap(), PromptPolicy::disabled());
        assert_eq!(PromptPolicy::from_setting("[mine]\nzork").unwrap().refusing("zork"), Some("mine"));
        let file = std::env::temp_dir().join(format!("easel-policy-{}.txt", std::process::id()));
        std::fs::write(&file, "[from-file]\nzork\n").unwrap();
        assert_eq!(PromptPolicy::from_setting(file.to_str().unwrap()).unwrap().refusing("ZORK"), Some("from-file"));
        std::fs::remove_file(&file).unwrap();
        assert!(PromptPolicy::from_setting("/nonexistent/policy.txt").unwrap_err().contains("cannot read"));
    }

    #[test]
    fn a_disabled_policy_accepts_everything() {
        assert_eq!(PromptPolicy::disabled().refusing("nude"), None);
    }
}
