//! The one prompt template shared by training (Python, through the bindings) and inference
//! (Rust), so the two can never drift: lettered multiple-choice prompts scored on the label
//! token, and question / choice-text pairs scored on the choice's tokens.
//! Test: `cargo test -p lora-ens --lib prompt`.

use crate::{Error, Result};

/// Name of this template, recorded in ensemble manifests.
pub const TEMPLATE_NAME: &str = "qa-v1";

/// What precedes a label in the model's answer: the label is scored as the next token after
/// `"Answer:"`, written `" A"` (see [`label_continuation`]).
pub const LABEL_PREFIX: &str = " ";

/// The lettered multiple-choice prompt, one line per choice, labels as given (`A`-`E`,
/// `1`-`4`, ...):
///
/// ```text
/// Question: {question}
/// {label}. {choice}
/// ...
/// Answer:
/// ```
///
/// The question and choices are used verbatim (no trimming), and there is no trailing space:
/// the model's answer is the next token, the label preceded by [`LABEL_PREFIX`].
///
/// # Errors
///
/// [`Error::Input`] when there are no choices, `choices` and `labels` differ in length, or a
/// label is empty.
///
/// # Example
///
/// ```
/// let choices = ["red".to_owned(), "blue".to_owned()];
/// let labels = ["A".to_owned(), "B".to_owned()];
/// let prompt = lora_ens::prompt::label_prompt("Sky colour?", &choices, &labels).unwrap();
/// assert_eq!(prompt, "Question: Sky colour?\nA. red\nB. blue\nAnswer:");
/// ```
pub fn label_prompt(question: &str, choices: &[String], labels: &[String]) -> Result<String> {
    if choices.is_empty() {
        return Err(Error::Input("a question needs at least one choice".into()));
    }
    if choices.len() != labels.len() {
        return Err(Error::Input(format!(
            "{} choices but {} labels: each choice needs one label",
            choices.len(),
            labels.len()
        )));
    }
    if let Some(i) = labels.iter().position(|l| l.is_empty()) {
        return Err(Error::Input(format!("label {i} is empty")));
    }
    let body: usize = choices
        .iter()
        .zip(labels)
        .map(|(c, l)| c.len() + l.len() + 3)
        .sum();
    let mut prompt = String::with_capacity(question.len() + body + 20);
    prompt.push_str("Question: ");
    prompt.push_str(question);
    prompt.push('\n');
    for (choice, label) in choices.iter().zip(labels) {
        prompt.push_str(label);
        prompt.push_str(". ");
        prompt.push_str(choice);
        prompt.push('\n');
    }
    prompt.push_str("Answer:");
    Ok(prompt)
}

/// The text scored for `label` after a [`label_prompt`]: [`LABEL_PREFIX`] + label (`" A"`).
pub fn label_continuation(label: &str) -> String {
    format!("{LABEL_PREFIX}{label}")
}

/// The context for choice-text scoring: `"Question: {question}\nAnswer:"` (question verbatim).
pub fn choice_context(question: &str) -> String {
    format!("Question: {question}\nAnswer:")
}

/// The continuation scored for one choice text after [`choice_context`]: a space, then the
/// choice trimmed of surrounding whitespace (`" blue"`).
pub fn choice_continuation(choice: &str) -> String {
    format!(" {}", choice.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn label_prompt_has_one_line_per_choice() {
        let p = label_prompt(
            "Where do you keep milk?",
            &strings(&["fridge", "oven", "closet", "roof", "car"]),
            &strings(&["A", "B", "C", "D", "E"]),
        )
        .unwrap();
        assert_eq!(
            p,
            "Question: Where do you keep milk?\nA. fridge\nB. oven\nC. closet\nD. roof\nE. car\nAnswer:"
        );
    }

    #[test]
    fn label_prompt_keeps_labels_and_text_verbatim() {
        let p = label_prompt(
            " two  spaces ",
            &strings(&[" x", "y "]),
            &strings(&["1", "2"]),
        )
        .unwrap();
        assert_eq!(p, "Question:  two  spaces \n1.  x\n2. y \nAnswer:");
    }

    #[test]
    fn label_prompt_rejects_bad_choice_lists() {
        let err = |c: &[&str], l: &[&str]| {
            label_prompt("q", &strings(c), &strings(l))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[], &[]).contains("at least one choice"));
        assert!(err(&["a", "b"], &["A"]).contains("2 choices but 1 labels"));
        assert!(err(&["a"], &["A", "B"]).contains("1 choices but 2 labels"));
        assert!(err(&["a", "b"], &["A", ""]).contains("label 1 is empty"));
        assert!(matches!(label_prompt("q", &[], &[]), Err(Error::Input(_))));
    }

    #[test]
    fn continuations_follow_the_prompts() {
        assert_eq!(label_continuation("A"), " A");
        assert_eq!(label_continuation("3"), " 3");
        assert_eq!(choice_context("Why?"), "Question: Why?\nAnswer:");
        assert_eq!(choice_continuation("  the sun \n"), " the sun");
        assert_eq!(choice_continuation("moon"), " moon");
        assert_eq!(TEMPLATE_NAME, "qa-v1");
        assert_eq!(LABEL_PREFIX, " ");
    }

    #[test]
    fn label_prompt_ends_where_the_label_continuation_starts() {
        let p = label_prompt("q", &strings(&["a"]), &strings(&["A"])).unwrap();
        let full = format!("{p}{}", label_continuation("A"));
        assert!(full.ends_with("\nAnswer: A"));
    }
}
