//! Chat prompts: renders a model's own chat template (`tokenizer.chat_template`, a Jinja
//! template as transformers' `apply_chat_template` uses) with minijinja, so a conversation
//! becomes exactly the text the model was fine-tuned on.

use serde::Serialize;

use crate::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Render `messages` with `template`. `add_generation_prompt` appends the header that opens
/// the assistant's turn; `bos_token` / `eos_token` are the strings templates may refer to.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // transformers renders with trim_blocks and lstrip_blocks; so must we, or whitespace differs.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let bad = |e: minijinja::Error| Error::Tokenizer(format!("chat template: {e}"));
    env.add_template("chat", template).map_err(bad)?;
    let tmpl = env.get_template("chat").map_err(bad)?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let out = render(CHATML, &[Message::new("user", "Hi")], true, "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = render(
            CHATML,
            &[Message::new("system", "S"), Message::new("user", "Q")],
            false,
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        );
    }

    #[test]
    fn template_errors_are_typed() {
        let err = render("{% for %}", &[], false, "", "").unwrap_err();
        assert!(matches!(err, Error::Tokenizer(_)), "{err}");
        let err = render(
            "{{ raise_exception('no system role') }}",
            &[],
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
