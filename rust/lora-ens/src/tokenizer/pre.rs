//! Pre-tokenizers: the regex splits a byte-level BPE applies before merging, as a sequence
//! of "isolated" splits (each match and each gap between matches becomes a piece), which is
//! how both llama.cpp (`tokenizer.ggml.pre`) and HF `tokenizers` (`Split`, `Digits`,
//! `ByteLevel`) chain them.

use fancy_regex::Regex;

use crate::{Error, Result};

/// GPT-2's split, also HF `ByteLevel(use_regex=true)`. `\s+(?!\S)` leaves the last space of
/// a run to the word after it.
pub(crate) const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// LLaMA-3's split (HF's spelling, with `(?i:...)` contractions); numbers in groups of 3.
pub(crate) const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: LLaMA-3's with single digits.
pub(crate) const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every number character on its own (HF `Digits(individual_digits=true)`).
pub(crate) const DIGITS: &str = r"\p{N}";
/// Runs of number characters (HF `Digits(individual_digits=false)`).
pub(crate) const DIGIT_RUNS: &str = r"\p{N}+";

/// The `tokenizer.ggml.pre` names this engine knows, with the splits each applies in order.
const NAMED: &[(&[&str], &[&str])] = &[
    (&["gpt2", "default", "gpt-2"], &[GPT2]),
    // llama.cpp gives all of these "\p{N}" then GPT-2's regex (so SmolLM2 splits every digit).
    (
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva",
        ],
        &[DIGITS, GPT2],
    ),
    (&["llama-bpe", "llama3", "llama-v3"], &[LLAMA3]),
    (&["qwen2", "deepseek-r1-qwen"], &[QWEN2]),
];

/// The names whose BPE emits a piece that is itself a vocabulary token without merging it
/// (llama.cpp's `ignore_merges`, HF's `BPE(ignore_merges=true)` in LLaMA-3's tokenizer.json):
/// merging can stop short of it, e.g. " Việt" is one token, but its merges end at
/// ` Vi` + `ệ` + `t`.
const IGNORE_MERGES: &[&str] = &["llama-bpe", "llama3", "llama-v3"];

/// Whether the BPE under the `tokenizer.ggml.pre` name `name` ignores merges.
pub(crate) fn ignores_merges(name: &str) -> bool {
    IGNORE_MERGES.contains(&name)
}

/// A sequence of isolated regex splits.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    splits: Vec<Regex>,
}

impl PreTokenizer {
    /// The splits of a `tokenizer.ggml.pre` name; an unknown name is an error that lists the
    /// known ones (a wrong split gives wrong ids silently, so there is no fallback).
    pub(crate) fn named(name: &str) -> Result<Self> {
        let Some((_, patterns)) = NAMED.iter().find(|(names, _)| names.contains(&name)) else {
            let known: Vec<&str> = NAMED.iter().flat_map(|(n, _)| n.iter().copied()).collect();
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer `{name}` (tokenizer.ggml.pre) is not supported; known: {}",
                known.join(", ")
            )));
        };
        Self::from_patterns(patterns.iter().copied())
    }

    /// Compile a sequence of patterns.
    pub(crate) fn from_patterns<S: AsRef<str>>(
        patterns: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let splits = patterns
            .into_iter()
            .map(|p| {
                let p = p.as_ref();
                Regex::new(p).map_err(|e| {
                    Error::Tokenizer(format!("pre-tokenizer regex `{p}` does not compile: {e}"))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { splits })
    }

    /// Cut `text` into pieces (slices of it, in order, covering it exactly).
    pub(crate) fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>> {
        let mut pieces = vec![text];
        for re in &self.splits {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m = m.map_err(|e| {
                        Error::Tokenizer(format!("pre-tokenizer regex failed on the input: {e}"))
                    })?;
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str, text: &str) -> Vec<String> {
        let pre = PreTokenizer::named(name).expect("known pre-tokenizer");
        let pieces = pre.split(text).expect("split");
        assert_eq!(pieces.concat(), text, "pieces must cover the text");
        pieces.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn gpt2_keeps_the_last_space_for_the_next_word() {
        assert_eq!(
            split("gpt2", "Hello  world's 123!!\n\n x"),
            ["Hello", " ", " world", "'s", " 123", "!!", "\n\n", " x"]
        );
    }

    #[test]
    fn smollm_splits_every_digit_first() {
        assert_eq!(
            split("smollm", "in 2024, ½ x"),
            ["in", " ", "2", "0", "2", "4", ",", " ", "½", " x"]
        );
        // Before the digit split " 2" would be one GPT-2 piece; after it the space stands alone.
        assert_eq!(split("smollm", "\n 2"), ["\n ", "2"]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(
            split("llama-bpe", "I'M 12345\r\n\tok"),
            ["I", "'M", " ", "123", "45", "\r\n", "\tok"]
        );
    }

    #[test]
    fn unknown_name_is_a_typed_error() {
        let err = PreTokenizer::named("nonesuch").expect_err("unknown");
        let msg = err.to_string();
        assert!(matches!(err, Error::Tokenizer(_)));
        assert!(
            msg.contains("`nonesuch`") && msg.contains("smollm"),
            "{msg}"
        );
    }
}
