//! The byte-level BPE model: GPT-2's byte-to-character alphabet, merge ranks keyed by the
//! pair of token ids, and the merge loop of HF `tokenizers`' `BPE` (lowest rank first, then
//! leftmost), with a per-word cache.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::RwLock;

/// Words longer than this many bytes are not cached (they are rare and would bloat it).
const CACHE_MAX_WORD: usize = 64;
/// Entries the per-word cache holds before it stops growing.
const CACHE_CAPACITY: usize = 100_000;
/// Marks a symbol merged into its left neighbour.
const DEAD: u32 = u32::MAX;
const NONE: usize = usize::MAX;

/// Word bytes -> its token ids.
type WordCache = RwLock<HashMap<Box<[u8]>, Box<[u32]>>>;

/// GPT-2's reversible byte -> character map: printable Latin-1 bytes stand for themselves,
/// the other 68 (controls, space, 0x7f-0xa0, 0xad) become U+0100.. in byte order, so every
/// token is a printable string ("Ġ" is the space, "Ċ" the newline).
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let b = byte as u32;
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        let code = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The inverse of [`byte_to_char`], indexed by code point (all of them are below U+0144).
pub(crate) fn char_to_byte() -> Vec<Option<u8>> {
    let mut table = vec![None; 0x144];
    for (byte, c) in byte_to_char().iter().enumerate() {
        if let Some(slot) = table.get_mut(*c as usize) {
            *slot = u8::try_from(byte).ok();
        }
    }
    table
}

/// The bytes a token spelled in the byte alphabet stands for; `None` if it uses any other
/// character (an added token written as plain text, such as `"<think>\n"`).
pub(crate) fn spelled_bytes(token: &str, char_to_byte: &[Option<u8>]) -> Option<Vec<u8>> {
    token
        .chars()
        .map(|c| char_to_byte.get(c as usize).copied().flatten())
        .collect()
}

/// Spell raw bytes in the byte alphabet.
pub(crate) fn spell(bytes: &[u8], byte_to_char: &[char; 256]) -> String {
    bytes
        .iter()
        .map(|&b| byte_to_char[usize::from(b)])
        .collect()
}

/// Vocabulary, merge ranks and the merge loop.
pub(crate) struct Bpe {
    /// Token id of each single byte's character, `None` where the vocabulary lacks it.
    byte_ids: [Option<u32>; 256],
    /// (left id, right id) -> (rank, merged id); a lower rank merges first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Llama-3's `ignore_merges`: a word that is itself a token is emitted whole.
    ignore_merges: Option<HashMap<String, u32>>,
    byte_to_char: [char; 256],
    cache: WordCache,
}

impl Bpe {
    /// Build from the vocabulary (`token -> id`, tokens in the byte alphabet) and the merges
    /// in rank order. A merge whose parts or result are not tokens can never fire and is
    /// skipped (llama.cpp does the same; `tokenizers` refuses the file).
    pub(crate) fn new(
        vocab: &HashMap<String, u32>,
        merges: &[(String, String)],
        ignore_merges: bool,
    ) -> Self {
        let byte_to_char = byte_to_char();
        let mut byte_ids = [None; 256];
        for (id, c) in byte_ids.iter_mut().zip(byte_to_char.iter()) {
            *id = vocab.get(c.to_string().as_str()).copied();
        }
        let mut ranks = HashMap::with_capacity(merges.len());
        let mut merged = String::new();
        for (rank, (left, right)) in merges.iter().enumerate() {
            merged.clear();
            merged.push_str(left);
            merged.push_str(right);
            let ids = (vocab.get(left), vocab.get(right), vocab.get(&merged));
            if let (Some(&l), Some(&r), Some(&m), Ok(rank)) = (ids.0, ids.1, ids.2, rank.try_into())
            {
                ranks.entry((l, r)).or_insert((rank, m));
            }
        }
        Self {
            byte_ids,
            merges: ranks,
            ignore_merges: ignore_merges.then(|| vocab.clone()),
            byte_to_char,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Append the tokens of one pre-tokenized word. Bytes whose character is not in the
    /// vocabulary are dropped, as `tokenizers` does for a BPE without an unknown token.
    pub(crate) fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if let [byte] = word {
            out.extend(self.byte_ids[usize::from(*byte)]);
            return;
        }
        if let Some(id) = self
            .ignore_merges
            .as_ref()
            .and_then(|vocab| vocab.get(&spell(word, &self.byte_to_char)))
        {
            out.push(*id);
            return;
        }
        let cacheable = word.len() <= CACHE_MAX_WORD;
        if cacheable {
            // A poisoned lock only means another thread panicked mid-insert: skip the cache.
            if let Ok(cache) = self.cache.read() {
                if let Some(ids) = cache.get(word) {
                    out.extend_from_slice(ids);
                    return;
                }
            }
        }
        let start = out.len();
        self.merge(word, out);
        if cacheable {
            if let Ok(mut cache) = self.cache.try_write() {
                if cache.len() < CACHE_CAPACITY {
                    cache.insert(word.into(), out[start..].into());
                }
            }
        }
    }

    /// The merge loop over a word's bytes: a heap of candidate pairs ordered by
    /// (rank, position) and a linked list of live symbols; stale heap entries are skipped.
    fn merge(&self, word: &[u8], out: &mut Vec<u32>) {
        struct Sym {
            id: u32,
            prev: usize,
            next: usize,
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(word.len());
        for &b in word {
            if let Some(id) = self.byte_ids[usize::from(b)] {
                let prev = syms.len().checked_sub(1).unwrap_or(NONE);
                let next = syms.len() + 1;
                syms.push(Sym { id, prev, next });
            }
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        let mut heap = BinaryHeap::with_capacity(syms.len());
        for (i, pair) in syms.windows(2).enumerate() {
            if let Some(&(rank, _)) = self.merges.get(&(pair[0].id, pair[1].id)) {
                heap.push(Reverse((rank, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            let j = syms[i].next;
            if syms[i].id == DEAD || j == NONE {
                continue;
            }
            let Some(&(r, merged)) = self.merges.get(&(syms[i].id, syms[j].id)) else {
                continue;
            };
            if r != rank {
                continue;
            }
            let k = syms[j].next;
            syms[i].id = merged;
            syms[i].next = k;
            syms[j].id = DEAD;
            if k != NONE {
                syms[k].prev = i;
                if let Some(&(r, _)) = self.merges.get(&(merged, syms[k].id)) {
                    heap.push(Reverse((r, i)));
                }
            }
            let p = syms[i].prev;
            if p != NONE {
                if let Some(&(r, _)) = self.merges.get(&(syms[p].id, merged)) {
                    heap.push(Reverse((r, p)));
                }
            }
        }
        out.extend(syms.iter().filter(|s| s.id != DEAD).map(|s| s.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Bpe {
        let b2c = byte_to_char();
        let mut vocab: HashMap<String, u32> = (0..=255u8)
            .map(|b| (b2c[usize::from(b)].to_string(), u32::from(b)))
            .collect();
        for (i, t) in ["ab", "abc", "aa", "Ġa", "aaaa"].iter().enumerate() {
            vocab.insert((*t).to_owned(), 256 + i as u32);
        }
        let merges = [
            ("a", "b"),
            ("ab", "c"),
            ("a", "a"),
            ("Ġ", "a"),
            ("aa", "aa"),
        ]
        .map(|(l, r)| (l.to_owned(), r.to_owned()));
        Bpe::new(&vocab, &merges, false)
    }

    fn enc(bpe: &Bpe, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_word(word.as_bytes(), &mut out);
        out
    }

    #[test]
    fn alphabet_is_a_bijection() {
        let b2c = byte_to_char();
        let c2b = char_to_byte();
        assert_eq!(b2c[usize::from(b' ')], 'Ġ');
        assert_eq!(b2c[usize::from(b'\n')], 'Ċ');
        assert_eq!(b2c[usize::from(b'A')], 'A');
        for (b, c) in b2c.iter().enumerate() {
            assert_eq!(c2b[*c as usize], Some(b as u8));
        }
        assert_eq!(spelled_bytes("Ġhi", &c2b), Some(b" hi".to_vec()));
        assert_eq!(spelled_bytes("a\nb", &c2b), None);
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let bpe = toy();
        assert_eq!(enc(&bpe, "abc"), vec![257]);
        assert_eq!(enc(&bpe, "aaa"), vec![258, u32::from(b'a')]);
        assert_eq!(enc(&bpe, "aaaa"), vec![260]);
        // "a b" (rank 0) beats "Ġ a" (rank 3) even though "Ġ a" is further left.
        assert_eq!(enc(&bpe, " ab"), vec![u32::from(b' '), 256]);
        assert_eq!(enc(&bpe, " ac"), vec![259, u32::from(b'c')]);
        assert_eq!(enc(&bpe, "xyz"), b"xyz".map(u32::from).to_vec());
        // The cached answer is the same as the computed one.
        assert_eq!(enc(&bpe, "abc"), vec![257]);
    }

    #[test]
    fn ignore_merges_emits_whole_tokens() {
        let b2c = byte_to_char();
        let mut vocab: HashMap<String, u32> = (0..=255u8)
            .map(|b| (b2c[usize::from(b)].to_string(), u32::from(b)))
            .collect();
        vocab.insert("xyz".to_owned(), 300);
        let bpe = Bpe::new(&vocab, &[], true);
        assert_eq!(enc(&bpe, "xyz"), vec![300]);
        assert_eq!(enc(&bpe, "xy"), vec![120, 121]);
    }
}
