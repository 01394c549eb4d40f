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
    env.set_unknown_method_callback(python_method);
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

/// The Python `str` and `dict` methods chat templates call (`message['content'].strip()`,
/// `tools.items()`), which minijinja lacks and transformers' Jinja2 has.
fn python_method(
    state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    use minijinja::value::{ValueKind, from_args};
    use minijinja::{ErrorKind, Value};

    let unknown = || minijinja::Error::from(ErrorKind::UnknownMethod);
    if let Some(s) = value.as_str() {
        return match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<&str>,) = from_args(args)?;
                let strip = |c: char| chars.map_or(c.is_whitespace(), |set| set.contains(c));
                Ok(Value::from(match method {
                    "strip" => s.trim_matches(strip),
                    "lstrip" => s.trim_start_matches(strip),
                    _ => s.trim_end_matches(strip),
                }))
            }
            "startswith" | "endswith" => {
                let (affix,): (&str,) = from_args(args)?;
                Ok(Value::from(if method == "startswith" {
                    s.starts_with(affix)
                } else {
                    s.ends_with(affix)
                }))
            }
            "upper" | "lower" | "title" | "capitalize" => {
                let _: () = from_args(args)?;
                state.apply_filter(method, std::slice::from_ref(value))
            }
            "replace" => {
                let (old, new): (&str, &str) = from_args(args)?;
                Ok(Value::from(s.replace(old, new)))
            }
            "split" => {
                let (sep,): (Option<&str>,) = from_args(args)?;
                Ok(Value::from(match sep {
                    Some(sep) => s.split(sep).map(Value::from).collect::<Vec<_>>(),
                    None => s.split_whitespace().map(Value::from).collect(),
                }))
            }
            _ => Err(unknown()),
        };
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => {
                let _: () = from_args(args)?;
                state.apply_filter("items", std::slice::from_ref(value))
            }
            "keys" | "values" => {
                let _: () = from_args(args)?;
                let keys = value.try_iter()?;
                let out = keys
                    .map(|k| {
                        if method == "keys" {
                            Ok(k)
                        } else {
                            value.get_item(&k)
                        }
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Value::from(out))
            }
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                let found = value.get_item(&key)?;
                Ok(if found.is_undefined() {
                    default.unwrap_or(Value::from(()))
                } else {
                    found
                })
            }
            _ => Err(unknown()),
        };
    }
    Err(unknown())
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
    fn python_string_and_dict_methods_render_as_in_jinja2() {
        let template = "{{ messages[0]['content'].strip() }}|{{ ' x '.lstrip() }}|\
            {{ 'xxaxx'.strip('x') }}|{{ 'ab'.startswith('a') }}|{{ 'a,b'.split(',') | join(';') }}|\
            {{ 'Hi'.upper() }}|{{ 'a-b'.replace('-', '+') }}|\
            {% for k, v in {'k': 1}.items() %}{{ k }}={{ v }}{% endfor %}|\
            {{ {'k': 1}.get('z', 2) }}|{% for k in {'k': 1}.keys() %}{{ k }}{% endfor %}";
        let out = render(template, &[Message::new("user", "  hi \n")], false, "", "").unwrap();
        // What Jinja2 renders for the same template.
        assert_eq!(out, "hi|x |a|True|a;b|HI|a+b|k=1|2|k");
        let err = render("{{ 'x'.nonesuch() }}", &[], false, "", "").unwrap_err();
        assert!(err.to_string().contains("nonesuch"), "{err}");
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
