//! Added tokens (`<|im_start|>`, `<|endoftext|>`, ...) are found in the raw text before any
//! pre-tokenization and emitted whole, leftmost-longest, as HF `tokenizers`' `AddedVocabulary`
//! does with its Aho-Corasick automaton. There are few of them, so candidates are indexed
//! by first byte and compared in place.

/// One added token and the matching options of HF's `AddedToken`.
#[derive(Debug, Clone)]
pub(crate) struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Special tokens are dropped by `decode(.., skip_special = true)`.
    pub special: bool,
    /// Also swallow the whitespace on the left / right of a match.
    pub lstrip: bool,
    pub rstrip: bool,
    /// Only match when not inside a word.
    pub single_word: bool,
}

impl AddedToken {
    /// A token with every matching option off (what a GGUF file implies).
    pub(crate) fn plain(content: String, id: u32, special: bool) -> Self {
        Self {
            content,
            id,
            special,
            lstrip: false,
            rstrip: false,
            single_word: false,
        }
    }
}

/// A stretch of the input: an added token's id, or text for the pre-tokenizer and BPE.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Segment<'t> {
    Token(u32),
    Text(&'t str),
}

/// The added tokens of a tokenizer, indexed for matching.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddedTokens {
    tokens: Vec<AddedToken>,
    /// Indices into `tokens` by first byte, longest content first.
    by_first_byte: Vec<Vec<usize>>,
}

impl AddedTokens {
    /// Index `tokens` (empty contents are dropped; a later duplicate content is ignored).
    pub(crate) fn new(mut tokens: Vec<AddedToken>) -> Self {
        tokens.retain(|t| !t.content.is_empty());
        let mut seen = std::collections::HashSet::new();
        tokens.retain(|t| seen.insert(t.content.clone()));
        let mut by_first_byte = vec![Vec::new(); 256];
        for (i, t) in tokens.iter().enumerate() {
            if let Some(&b) = t.content.as_bytes().first() {
                by_first_byte[usize::from(b)].push(i);
            }
        }
        for list in &mut by_first_byte {
            list.sort_by_key(|&i| std::cmp::Reverse(tokens[i].content.len()));
        }
        Self {
            tokens,
            by_first_byte,
        }
    }

    /// How many added tokens there are.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The longest token starting at byte `at` of `text`.
    fn longest_at(&self, text: &str, at: usize) -> Option<&AddedToken> {
        let rest = &text.as_bytes()[at..];
        let first = usize::from(*rest.first()?);
        self.by_first_byte[first]
            .iter()
            .map(|&i| &self.tokens[i])
            .find(|t| rest.starts_with(t.content.as_bytes()))
    }

    /// Cut `text` into added tokens and the text between them.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<Segment<'t>> {
        if self.tokens.is_empty() {
            return vec![Segment::Text(text)];
        }
        let bytes = text.as_bytes();
        let mut segments = Vec::new();
        let mut emitted = 0; // end of the last segment pushed
        let mut at = 0;
        while at < bytes.len() {
            if !text.is_char_boundary(at) || self.by_first_byte[usize::from(bytes[at])].is_empty() {
                at += 1;
                continue;
            }
            let Some(token) = self.longest_at(text, at) else {
                at += 1;
                continue;
            };
            let end = at + token.content.len();
            if token.single_word && !stands_alone(text, at, end) {
                // tokenizers moves on past a refused match rather than retrying inside it.
                at = end;
                continue;
            }
            let mut start = at;
            if token.lstrip {
                let kept = text[emitted..at].trim_end_matches(char::is_whitespace);
                start = emitted + kept.len();
            }
            let mut stop = end;
            if token.rstrip {
                let rest = &text[end..];
                stop = end + (rest.len() - rest.trim_start_matches(char::is_whitespace).len());
            }
            if start > emitted {
                segments.push(Segment::Text(&text[emitted..start]));
            }
            segments.push(Segment::Token(token.id));
            emitted = stop;
            at = stop;
        }
        if emitted < text.len() {
            segments.push(Segment::Text(&text[emitted..]));
        }
        segments
    }
}

/// Whether `text[start..end]` has no word character right before or after it.
fn stands_alone(text: &str, start: usize, end: usize) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let before = text[..start].chars().next_back().is_some_and(word);
    let after = text[end..].chars().next().is_some_and(word);
    !before && !after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AddedTokens {
        AddedTokens::new(vec![
            AddedToken::plain("<|im_start|>".into(), 1, true),
            AddedToken::plain("<|im".into(), 7, false),
            AddedToken::plain("<|im_end|>".into(), 2, true),
            AddedToken::plain(String::new(), 9, true),
        ])
    }

    #[test]
    fn matches_leftmost_longest() {
        use Segment::*;
        assert_eq!(
            tokens().split("<|im_start|>user\nhé<|im_end|><|im x"),
            vec![Token(1), Text("user\nhé"), Token(2), Token(7), Text(" x")]
        );
        assert_eq!(tokens().split("plain"), vec![Text("plain")]);
        assert_eq!(tokens().split(""), Vec::<Segment>::new());
    }

    #[test]
    fn strip_and_single_word_options() {
        use Segment::*;
        let mut mask = AddedToken::plain("<mask>".into(), 5, true);
        mask.lstrip = true;
        mask.rstrip = true;
        let t = AddedTokens::new(vec![mask]);
        assert_eq!(
            t.split("a  <mask>  b"),
            vec![Text("a"), Token(5), Text("b")]
        );
        let mut word = AddedToken::plain("ab".into(), 6, false);
        word.single_word = true;
        let t = AddedTokens::new(vec![word]);
        assert_eq!(
            t.split("ab cab ab"),
            vec![Token(6), Text(" cab "), Token(6)]
        );
    }
}
