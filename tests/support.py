"""Plain helpers shared by the test modules (test modules do not import each other):
the benchmark data directory, CommonsenseQA prompts, transformers' reference model of a GGUF
and its logits, PEFT's choice scores, and NumPy references of the reducer and of ECE.

    from support import DATA, csqa_prompts, load_reference
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np

import lora_ens_rs

#: The benchmark data: ``$LORA_ENS_RS_DATA``, else ``shared/data`` beside the repository.
DATA = Path(
    os.environ.get("LORA_ENS_RS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
LABELS = "ABCDE"
#: Choice normalisations of the engine.
NORMALIZATIONS = ("sum", "per_token", "per_byte")


def csqa_prompts(n: int | None = None) -> list[str]:
    """The first `n` (default: all) CommonsenseQA dev questions as lettered multiple-choice
    prompts."""
    path = DATA / "commonsenseqa" / "dev_rand_split.jsonl"
    prompts = []
    with path.open() as f:
        for line in itertools.islice(f, n):
            q = json.loads(line)["question"]
            choices = "\n".join(f"{c['label']}. {c['text']}" for c in q["choices"])
            prompts.append(f"Question: {q['stem']}\n{choices}\nAnswer:")
    return prompts


def label_ids(tok) -> list[int]:
    """The token of " A" ... " E" (the label as it follows "Answer:")."""
    ids = [tok(" " + label, add_special_tokens=False)["input_ids"] for label in LABELS]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


def load_reference(path: str):
    """transformers' tokenizer and fp32 model built from the GGUF file at `path`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return tok, model.eval()


def right_padded(chunk: list[list[int]]):
    """(input_ids, attention_mask) of token id lists, right-padded with zeros to the longest."""
    import torch

    width = max(map(len, chunk))
    input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, seq in enumerate(chunk):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return input_ids, mask


def reference_last_logits(model, ids: list[list[int]], batch_size: int = 16) -> np.ndarray:
    """transformers' last-position logits, right-padded batches with an attention mask."""
    import torch

    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        input_ids, mask = right_padded(chunk)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        last = torch.tensor([len(s) - 1 for s in chunk])
        out.append(logits[torch.arange(len(chunk)), last].numpy())
    return np.concatenate(out)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (``-inf`` entries, such as padding, get probability 0)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_reduction(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    def entropy(p: np.ndarray) -> np.ndarray:
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)

    probs = member_probs.mean(axis=1)
    h = entropy(probs)
    eh = entropy(member_probs).mean(axis=1)
    return {
        "probs": probs,
        "prediction": probs.argmax(-1),
        "confidence": probs.max(-1),
        "entropy": h,
        "expected_entropy": eh,
        "mutual_information": h - eh,
    }


def peft_choice_scores(
    peft_model, tok, contexts: list[str], choices: list[list[str]]
) -> dict[str, np.ndarray]:
    """Per normalisation, (N, M, K) choice log-likelihoods (-inf padding) from full-sequence
    passes (context + choice, no cache) with each PEFT member active in turn."""
    import torch

    n, k = len(contexts), max(map(len, choices))
    out = {norm: np.full((n, 3, k), -np.inf) for norm in NORMALIZATIONS}
    seqs, where = [], []
    for i, (context, options) in enumerate(zip(contexts, choices, strict=True)):
        ctx = tok.encode(context)
        for j, option in enumerate(options):
            text = lora_ens_rs.choice_continuation(option)
            cont = tok.encode(text, add_special_tokens=False)
            seqs.append(ctx + cont)
            where.append((i, j, len(ctx), len(cont), len(text.encode())))
    for m in range(3):
        peft_model.set_adapter(f"m{m}")
        for start in range(0, len(seqs), 16):
            chunk = seqs[start : start + 16]
            ids, mask = right_padded(chunk)
            with torch.no_grad():
                logp = torch.log_softmax(peft_model(input_ids=ids, attention_mask=mask).logits, -1)
            for r, s in enumerate(chunk):
                i, j, n_ctx, n_cont, n_bytes = where[start + r]
                pos = torch.arange(n_ctx - 1, n_ctx - 1 + n_cont)
                total = logp[r, pos, torch.tensor(s[n_ctx:])].double().sum().item()
                out["sum"][i, m, j] = total
                out["per_token"][i, m, j] = total / n_cont
                out["per_byte"][i, m, j] = total / n_bytes
    return out


def loop_ece(probs: np.ndarray, answers: np.ndarray, n_bins: int) -> float:
    """ECE written out bin by bin: bin b holds confidences in (b/n, (b+1)/n], 0 in bin 0."""
    conf = probs.max(1)
    correct = probs.argmax(1) == answers
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [(lo < c <= hi) or (b == 0 and c == 0.0) for c in conf]
        idx = np.nonzero(inside)[0]
        if len(idx):
            total += len(idx) / len(conf) * abs(correct[idx].mean() - conf[idx].mean())
    return total
