//! SentencePiece vocabularies (`tokenizer.ggml.model = llama`: LLaMA-2, Mistral-7B,
//! TinyLlama) tokenized as llama.cpp's `llm_tokenizer_spm` does: spaces become `▁`, a `▁` is
//! put before the text (`tokenizer.ggml.add_space_prefix`, default true), then adjacent
//! pieces are merged highest score first, and characters no piece covers fall back to the
//! `<0xXX>` byte tokens. Checked against llama.cpp's `ggml-vocab-llama-spm` cases by
//! `tests/test_llama_vocabs.py`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::gguf_meta::{TOKEN_TYPE_BYTE, TOKEN_TYPE_NORMAL};
use crate::{Error, Result};

/// SentencePiece's word-boundary mark, which stands for a space inside pieces.
const SPACE: char = '\u{2581}';

/// How an id turns back into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// A vocabulary piece: its text with `▁` read as a space.
    Normal,
    /// A `<0xXX>` token: that one byte.
    Byte(u8),
    /// Control, user-defined and unknown tokens: their text as written.
    Verbatim,
}

/// A SentencePiece model: pieces, their scores, and the byte fallback.
#[derive(Debug, Clone)]
pub(crate) struct Spm {
    /// Piece -> id; where a spelling repeats the later id wins, as in llama.cpp.
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    pieces: Vec<Piece>,
    /// The id each byte falls back to (`<0xXX>`, else the one-byte piece), if any.
    byte_ids: Vec<Option<u32>>,
    unk_id: Option<u32>,
    add_space_prefix: bool,
}

impl Spm {
    /// Build from the GGUF arrays: `tokens`, `scores` (0 where absent) and `token_type`
    /// (normal where absent).
    pub(crate) fn new(
        tokens: &[String],
        scores: &[f32],
        types: &[i64],
        unk_id: Option<u32>,
        add_space_prefix: bool,
    ) -> Self {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let pieces: Vec<Piece> = tokens
            .iter()
            .enumerate()
            .map(
                |(id, t)| match types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL) {
                    TOKEN_TYPE_BYTE => byte_of(t).map_or(Piece::Verbatim, Piece::Byte),
                    TOKEN_TYPE_NORMAL => Piece::Normal,
                    _ => Piece::Verbatim,
                },
            )
            .collect();
        let byte_ids = (0..=255u8)
            .map(|b| {
                ids.get(format!("<0x{b:02X}>").as_str())
                    .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| ids.get(s)))
                    .copied()
            })
            .collect();
        let scores = (0..tokens.len())
            .map(|i| scores.get(i).copied().unwrap_or(0.0))
            .collect();
        Self {
            ids,
            scores,
            pieces,
            byte_ids,
            unk_id,
            add_space_prefix,
        }
    }

    /// Append the ids of `text`, a stretch between added tokens (so always after a special
    /// token or at the start: llama.cpp then adds the prefix space).
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut escaped = String::with_capacity(text.len() + 3 * (text.len() / 4 + 1));
        if self.add_space_prefix {
            escaped.push(SPACE);
        }
        for c in text.chars() {
            escaped.push(if c == ' ' { SPACE } else { c });
        }
        for (start, end) in self.merge(&escaped) {
            let piece = &escaped[start..end];
            if let Some(&id) = self.ids.get(piece) {
                out.push(id);
                continue;
            }
            // Every merged symbol is a piece, so only a single character can be missing;
            // llama.cpp's `resegment` reduces to this byte fallback then. Without byte tokens
            // the character is one unknown token, as in SentencePiece.
            let bytes: Option<Vec<u32>> = piece
                .bytes()
                .map(|b| self.byte_ids[usize::from(b)])
                .collect();
            match (bytes, self.unk_id) {
                (Some(bytes), _) => out.extend(bytes),
                (None, Some(unk)) => out.push(unk),
                (None, None) => {
                    return Err(Error::Tokenizer(format!(
                        "cannot encode {piece:?}: no piece, no byte tokens for it \
                         and no unknown token"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The symbols of `text` after merging, as byte ranges in order.
    fn merge(&self, text: &str) -> Vec<(usize, usize)> {
        // One symbol per character, in a linked list so merges unlink the right one.
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(i, c)| Symbol {
                start: i,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        for i in 1..n {
            self.push_bigram(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left, bigram.right);
            // A bigram whose symbols changed since it was queued is stale.
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != bigram.len
            {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            symbols[l].next = symbols[r].next;
            if let Some(next) = symbols[r].next {
                symbols[next].prev = Some(l);
            }
            if let Some(prev) = symbols[l].prev {
                self.push_bigram(text, &symbols, prev, l, &mut queue);
            }
            if let Some(next) = symbols[l].next {
                self.push_bigram(text, &symbols, l, next, &mut queue);
            }
        }
        let mut out = Vec::new();
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            out.push((symbols[i].start, symbols[i].start + symbols[i].len));
            at = symbols[i].next;
        }
        out
    }

    /// Queue the merge of two adjacent symbols if their text is a piece.
    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (start, len) = (symbols[left].start, symbols[left].len + symbols[right].len);
        if let Some(&id) = self.ids.get(&text[start..start + len]) {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                len,
            });
        }
    }

    /// Append the text of `id` (spelled `token` in the vocabulary); `first` strips the
    /// space the prefix put before the first word.
    pub(crate) fn push_piece(&self, id: u32, token: &str, first: bool, out: &mut Vec<u8>) {
        match self
            .pieces
            .get(id as usize)
            .copied()
            .unwrap_or(Piece::Verbatim)
        {
            Piece::Byte(b) => out.push(b),
            Piece::Verbatim => out.extend_from_slice(token.as_bytes()),
            Piece::Normal => {
                let text = token.replace(SPACE, " ");
                let text = if first && self.add_space_prefix {
                    text.strip_prefix(' ').unwrap_or(&text)
                } else {
                    &text
                };
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// The byte of a `<0xXX>` token.
fn byte_of(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// A stretch of the text being merged; `len == 0` once merged into its left neighbour.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge. The queue pops the highest score first, then the leftmost, as
/// llama.cpp's `llm_bigram_spm::comparator` orders them.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to recognise stale entries.
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::gguf_meta::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN};

    /// Pieces with scores: "▁h" and "el" score higher than "he", "▁hel" above "lo".
    fn toy(add_space_prefix: bool) -> Spm {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
        let mut scores = vec![0.0; 3];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend(std::iter::repeat_n(TOKEN_TYPE_BYTE, 256));
        scores.extend(std::iter::repeat_n(0.0, 256));
        for (piece, score) in [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("▁h", -3.0),
            ("el", -3.0),
            ("he", -4.0),
            ("▁hel", -5.0),
            ("lo", -6.0),
            ("▁hello", -7.0),
        ] {
            tokens.push(piece.into());
            types.push(TOKEN_TYPE_NORMAL);
            scores.push(score);
        }
        Spm::new(&tokens, &scores, &types, Some(0), add_space_prefix)
    }

    fn encode(spm: &Spm, text: &str) -> Vec<String> {
        let mut ids = Vec::new();
        spm.encode(text, &mut ids).expect("encode");
        let by_id: HashMap<u32, &String> = spm.ids.iter().map(|(t, &i)| (i, t)).collect();
        ids.iter().map(|i| by_id[i].clone()).collect()
    }

    #[test]
    fn merges_by_score_with_a_prefix_space() {
        let spm = toy(true);
        // "▁h" and "el" first (score -3), never "he" (-4); then "▁hel", "lo", "▁hello".
        assert_eq!(encode(&spm, "hello"), ["▁hello"]);
        assert_eq!(encode(&spm, "hel lo"), ["▁hel", "▁", "lo"]);
        assert_eq!(encode(&spm, "he"), ["▁h", "e"]);
        assert_eq!(encode(&toy(false), "he"), ["he"]);
        assert_eq!(encode(&spm, ""), Vec::<String>::new());
    }

    #[test]
    fn falls_back_to_byte_tokens() {
        let spm = toy(true);
        assert_eq!(encode(&spm, "hé\n"), ["▁h", "<0xC3>", "<0xA9>", "<0x0A>"]);
        let mut ids = Vec::new();
        spm.encode("hé hello", &mut ids).expect("encode");
        let tokens: Vec<String> = {
            let by_id: HashMap<u32, &String> = spm.ids.iter().map(|(t, &i)| (i, t)).collect();
            ids.iter().map(|i| by_id[i].clone()).collect()
        };
        let mut text = Vec::new();
        for (i, (&id, token)) in ids.iter().zip(&tokens).enumerate() {
            spm.push_piece(id, token, i == 0, &mut text);
        }
        assert_eq!(String::from_utf8(text).expect("utf-8"), "hé hello");
    }

    #[test]
    fn without_byte_tokens_unknown_characters_become_unk() {
        let tokens: Vec<String> = ["<unk>", "▁", "a"].map(String::from).to_vec();
        let types = [TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_NORMAL, TOKEN_TYPE_NORMAL];
        let spm = Spm::new(&tokens, &[0.0, -1.0, -1.0], &types, Some(0), true);
        let mut ids = Vec::new();
        spm.encode("aé", &mut ids).expect("encode");
        assert_eq!(ids, [1, 2, 0]);
        let spm = Spm::new(&tokens, &[0.0, -1.0, -1.0], &types, None, true);
        let err = spm
            .encode("é", &mut Vec::new())
            .expect_err("nothing covers é");
        assert!(err.to_string().contains("no byte tokens"), "{err}");
    }
}
