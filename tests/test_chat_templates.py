"""Chat templates come from the GGUF (`tokenizer.chat_template`) and render as transformers renders
them: `Tokenizer.apply_chat_template` against transformers' `apply_chat_template` on the llama.cpp
test vocabularies that carry a template (Phi-3, Qwen2, Qwen3.5), against jinja2 with
transformers' settings where transformers cannot build the tokenizer (Command-R), and on a small
GGUF written here by gguf-py with a template of its own. `encode_chat` puts BOS exactly once
where the model adds it, and none where it does not.

Run: `pytest tests/test_chat_templates.py` (about 30 s: builds transformers' tokenizers).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from lora_ens_rs import TokenizerError
from lora_ens_rs._core import Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 7?\nA. 19\nB. 20"}],
    [
        {"role": "system", "content": "Answer with one letter."},
        {"role": "user", "content": "Où est la gare ? 駅はどこ\uff1f"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! 👋"},
        {"role": "user", "content": "  spaced  <s> text\r\n"},
    ],
]


@functools.cache
def hf_tokenizer(directory: Path, name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, gguf_file=f"ggml-vocab-{name}.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phi-3", "qwen2", "qwen35"])
@pytest.mark.parametrize("generation", [False, True])
def test_rendering_and_ids_match_transformers(llama_vocabs, name, generation):
    hf = hf_tokenizer(llama_vocabs, name)
    tok = Tokenizer.from_gguf(llama_vocabs / f"ggml-vocab-{name}.gguf")
    assert tok.chat_template == hf.chat_template is not None
    for messages in CONVERSATIONS:
        if name == "phi-3" and messages[0]["role"] == "system":
            continue  # Phi-3's template drops system messages; nothing to compare
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        assert tok.apply_chat_template(messages, generation) == text
        ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        assert tok.encode_chat(messages, generation) == ids
        if tok.add_bos_token:  # the template writes BOS and the model adds it: once
            assert ids[0] == tok.bos_id != ids[1]


def test_command_r_renders_as_jinja2_with_transformers_settings(llama_vocabs):
    """transformers cannot build Command-R's tokenizer from a GGUF; render its template with
    jinja2 the way transformers does (trim_blocks, lstrip_blocks, `raise_exception`)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tok = Tokenizer.from_gguf(llama_vocabs / "ggml-vocab-command-r.gguf")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    template = env.from_string(tok.chat_template)
    bos, eos = tok.id_to_token(tok.bos_id), tok.id_to_token(tok.eos_id)
    assert bos == "<BOS_TOKEN>" and tok.add_bos_token
    for messages in CONVERSATIONS:
        for generation in [False, True]:
            want = template.render(
                messages=messages, add_generation_prompt=generation, bos_token=bos, eos_token=eos
            )
            assert tok.apply_chat_template(messages, generation) == want
            ids = tok.encode_chat(messages, generation)
            # The template writes <BOS_TOKEN> and the model adds BOS: once, not twice.
            assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
            assert ids == tok.encode(want, False)


def write_vocab(path: Path, template: str | None, add_bos: bool) -> Path:
    """A byte-level vocabulary (the 256 byte tokens, `<s>` control) with its own template."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "<s>", "</s>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3, 3])
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_add_bos_token(add_bos)
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("add_bos", [False, True])
def test_the_gguf_own_template_is_used(tmp_path, add_bos):
    template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}"
    )
    tok = Tokenizer.from_gguf(write_vocab(tmp_path / "own.gguf", template, add_bos))
    assert tok.chat_template == template and tok.add_bos_token is add_bos
    messages = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, True)
    assert text == "<s>[user] hi\n[assistant]</s>"
    # BOS once either way: from the model (its copy in the text dropped) or from the text.
    ids = tok.encode_chat(messages, True)
    assert ids == [256, *tok.encode("[user] hi\n[assistant]", False), 257]


def test_no_template_is_a_tokenizer_error(tmp_path):
    tok = Tokenizer.from_gguf(write_vocab(tmp_path / "bare.gguf", None, False))
    assert tok.chat_template is None
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(KeyError, match='message 0 has no "content"'):
        tok.encode_chat([{"role": "user"}])
