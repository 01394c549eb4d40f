//! Pre-tokenizers: the regex splits a byte-level BPE applies before merging, as a sequence
//! of "isolated" splits (each match and each gap between matches becomes a piece), which is
//! how both llama.cpp (`tokenizer.ggml.pre`) and HF `tokenizers` (`Split`, `Digits`,
//! `ByteLevel`) chain them. The lists per name are llama.cpp's (`llm_tokenizer_bpe` in
//! `src/llama-vocab.cpp`), spelled as in the models' `tokenizer.json` where llama.cpp
//! rewrites a pattern for its own regex engine.

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

/// Qwen3.5's split: Qwen2's with combining marks (`\p{M}`) kept with the letters.
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every number character on its own (HF `Digits(individual_digits=true)`).
pub(crate) const DIGITS: &str = r"\p{N}";
/// Runs of number characters (HF `Digits(individual_digits=false)`).
pub(crate) const DIGIT_RUNS: &str = r"\p{N}+";
/// Runs of ASCII digits in threes (Falcon's and llama.cpp's default last split).
const THREE_DIGITS: &str = r"[0-9][0-9][0-9]";
/// One line break at a time (DeepSeek's first split).
const LINE_BREAK: &str = r"[\r\n]";
/// Runs of Han ideographs, of U+0800..U+4E00 and of Hangul (DeepSeek's CJK split).
const DEEPSEEK_CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// DeepSeek-LLM: an optional space and a run of cased letters (Latin, Greek, Cyrillic,
/// Armenian, Georgian, Cherokee, ... as listed in its `tokenizer.json`), an optional space
/// and a run of ASCII / full-width punctuation, trailing whitespace, CJK runs, number runs.
const DEEPSEEK_LLM: &[&str] = &[
    LINE_BREAK,
    r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
    r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
    r"\s+$",
    DEEPSEEK_CJK,
    DIGIT_RUNS,
];

/// DeepSeek-Coder: line breaks, letter runs and punctuation runs (each with an optional
/// leading space), CJK runs, single digits.
const DEEPSEEK_CODER: &[&str] = &[LINE_BREAK, r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK, DIGITS];

/// One `tokenizer.ggml.pre` family: its names, splits, and the flags llama.cpp sets for it.
struct Family {
    names: &'static [&'static str],
    splits: &'static [&'static str],
    /// llama.cpp's `ignore_merges` (HF `BPE(ignore_merges=true)`): a piece that is itself a
    /// vocabulary token is emitted whole, even where the merges would stop short of it
    /// (LLaMA-3's " Việt" is one token, but its merges end at ` Vi` + `ệ` + `t`).
    ignore_merges: bool,
    /// Whether BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    add_bos: bool,
}

const fn family(names: &'static [&'static str], splits: &'static [&'static str]) -> Family {
    Family {
        names,
        splits,
        ignore_merges: false,
        add_bos: false,
    }
}

/// The `tokenizer.ggml.pre` names this engine knows, as llama.cpp groups them. `default`
/// (and a file without the key) is llama.cpp's default list, not GPT-2's regex.
const FAMILIES: &[Family] = &[
    family(
        &["default"],
        &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, DIGIT_RUNS, THREE_DIGITS],
    ),
    family(
        &[
            "gpt-2", "gpt2", "mpt", "olmo", "phi-2", "jais", "exaone4", "trillion", "mellum",
        ],
        &[GPT2],
    ),
    // Every number character on its own, then GPT-2's regex (SmolLM2 splits every digit).
    family(
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        &[DIGITS, GPT2],
    ),
    family(&["falcon"], &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, THREE_DIGITS]),
    Family {
        names: &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        splits: &[LLAMA3],
        ignore_merges: true,
        add_bos: true,
    },
    family(&["dbrx", "smaug-bpe"], &[LLAMA3]),
    family(
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "stablelm2",
            "megrez",
            "kormo",
            "f2llmv2",
        ],
        &[QWEN2],
    ),
    family(&["qwen35"], &[QWEN35]),
    family(&["deepseek-llm"], DEEPSEEK_LLM),
    family(&["deepseek-coder"], DEEPSEEK_CODER),
];

/// The family of a `tokenizer.ggml.pre` name; an unknown name is an error that lists the
/// known ones (a wrong split gives wrong ids silently, so there is no fallback).
fn find(name: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .find(|f| f.names.contains(&name))
        .ok_or_else(|| {
            let known: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.names.iter().copied())
                .collect();
            Error::Tokenizer(format!(
                "pre-tokenizer `{name}` (tokenizer.ggml.pre) is not supported; supported: {}",
                known.join(", ")
            ))
        })
}

/// Whether the BPE under the `tokenizer.ggml.pre` name `name` ignores merges.
pub(crate) fn ignores_merges(name: &str) -> Result<bool> {
    Ok(find(name)?.ignore_merges)
}

/// Whether llama.cpp adds BOS for the `tokenizer.ggml.pre` name `name` when the file has no
/// `tokenizer.ggml.add_bos_token` (LLaMA-3 does; GPT-2, Qwen2, SmolLM2, ... do not).
pub(crate) fn adds_bos_by_default(name: &str) -> Result<bool> {
    Ok(find(name)?.add_bos)
}

/// A sequence of isolated regex splits.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    splits: Vec<Regex>,
}

impl PreTokenizer {
    /// The splits of a `tokenizer.ggml.pre` name; an unknown name is an error that lists the
    /// supported ones.
    pub(crate) fn named(name: &str) -> Result<Self> {
        Self::from_patterns(find(name)?.splits.iter().copied())
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
    fn deepseek_coder_isolates_line_breaks_letters_punctuation_and_digits() {
        assert_eq!(
            split("deepseek-coder", "if x:\n  return 42;"),
            ["if", " x", ":", "\n", " ", " return", " ", "4", "2", ";"]
        );
    }

    #[test]
    fn deepseek_llm_splits_cjk_from_latin_and_keeps_trailing_space() {
        assert_eq!(
            split("deepseek-llm", "apple工作123 hi  "),
            ["apple", "工作", "123", " hi", "  "]
        );
    }

    #[test]
    fn falcon_isolates_punctuation_then_digit_triples() {
        assert_eq!(
            split("falcon", "a,b 12345!"),
            ["a", ",", "b", " ", "123", "45", "!"]
        );
    }

    #[test]
    fn qwen35_keeps_combining_marks_with_letters() {
        // U+0301 is a combining mark: Qwen2 cuts it off, Qwen3.5 keeps it in the word.
        assert_eq!(
            split("qwen35", " cafe\u{301} 12"),
            [" cafe\u{301}", " ", "1", "2"]
        );
        assert_eq!(split("qwen2", " cafe\u{301}"), [" cafe", "\u{301}"]);
    }

    #[test]
    fn default_is_llama_cpp_default_list() {
        assert_eq!(split("default", "x=1234."), ["x", "=", "123", "4", "."]);
    }

    #[test]
    fn unknown_name_is_a_typed_error() {
        let err = PreTokenizer::named("nonesuch").expect_err("unknown");
        let msg = err.to_string();
        assert!(matches!(err, Error::Tokenizer(_)));
        assert!(
            msg.contains("`nonesuch`") && msg.contains("supported:") && msg.contains("qwen35"),
            "{msg}"
        );
    }
}
