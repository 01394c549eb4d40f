"""Scoring large question sets on Ray Data: a pool of actors, each holding one
:class:`~lora_ens_rs.Ensemble`, maps batches of questions to the records ``lora-ens-rs infer``
writes (the engine's ``Record``, as an Arrow table). Needs the ``ray`` extra
(``pip install 'lora-ens-rs[ray]'``); the command line is ``lora-ens-rs infer ... --ray``.

    import ray, lora_ens_rs.ray as ler
    ds = ray.data.read_json("questions/")             # id, question, choices[, labels, answer]
    ler.score_dataset(ds, "model.gguf", "runs/arc", concurrency=4).write_parquet("scores/")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lora_ens_rs import _core
from lora_ens_rs._args import int_arg, threads_arg
from lora_ens_rs.ensemble import Ensemble, PathLike
from lora_ens_rs.errors import InputError, LoraEnsError

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "QUESTION_FIELDS",
    "RecordScorer",
    "record_from_row",
    "record_schema",
    "score_dataset",
    "unwrap_error",
]

#: Fields each question row must have; ``labels``, ``answer`` and any other fields the engine's
#: question reader knows (``subject``, or a dataset's own layout) are optional.
QUESTION_FIELDS = ("id", "question", "choices")
SCORINGS = ("labels", "choices")
NORMALIZATIONS = ("sum", "per_token", "per_byte")

# The Arrow type of each field of the engine's record (``lora_ens::questions::Record``), in its
# key order; the engine owns the fields, tests/test_ray.py holds these to ``Scores.to_records``.
# Numbers are float64: ``to_records`` gives Python floats, and these keep them bit for bit.
_RECORD_TYPES: tuple[tuple[str, pa.DataType], ...] = (
    ("id", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("probs", pa.list_(pa.float64())),
    ("prediction", pa.string()),
    ("prediction_index", pa.int64()),
    ("confidence", pa.float64()),
    ("entropy", pa.float64()),
    ("expected_entropy", pa.float64()),
    ("mutual_information", pa.float64()),
    ("agreement", pa.float64()),
    ("answer", pa.string()),
    ("correct", pa.bool_()),
    ("member_probs", pa.list_(pa.list_(pa.float64()))),
    ("schema_version", pa.int64()),
)
#: Fields a record has only sometimes (null in the Arrow table when absent).
OPTIONAL_FIELDS = frozenset({"answer", "correct", "member_probs"})


def record_schema(members: bool = False) -> pa.Schema:
    """The Arrow schema of the records (``member_probs`` only with ``members``)."""
    return pa.schema(
        [
            pa.field(name, kind, nullable=name in OPTIONAL_FIELDS)
            for name, kind in _RECORD_TYPES
            if members or name != "member_probs"
        ]
    )


def record_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of :func:`score_dataset`'s output as the record ``infer`` writes: the optional
    fields that are null are left out, as ``infer`` leaves them out."""
    return {k: v for k, v in row.items() if not (v is None and k in OPTIONAL_FIELDS)}


def _question_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of any layout the engine's reader takes, as the question dicts it returns.

    Each row goes through the engine's JSONL parser (the reader ``infer`` uses), so answers
    given as labels or indices, default labels and dataset layouts mean what they mean there.
    """
    for i, row in enumerate(rows):
        if row.get("id") is None:
            raise InputError(
                f"question row {i} of a batch (question {str(row.get('question'))[:60]!r}): "
                "`id` is missing; rows scored on Ray need an id, which keys their record"
            )
    source = f"<ray batch from id {rows[0]['id']}>"
    text = "".join(json.dumps(row, default=_plain) + "\n" for row in rows)
    return _core.parse_questions(text, source)


def _plain(value: Any) -> Any:
    """JSON for the NumPy scalars and arrays a non-Arrow batch may hold."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a question field has a value JSON cannot hold: {type(value).__name__}")


class RecordScorer:
    """The callable class :func:`score_dataset` maps over batches: loads one
    :class:`~lora_ens_rs.Ensemble` per actor, then turns each Arrow batch of questions into an
    Arrow table of records (:func:`record_schema`), one per question, keyed by ``id``.

    A subclass may add per-batch work in ``__call__`` (pass it as ``actor_class``)."""

    def __init__(
        self,
        model: str | None,
        adapters: list[str],
        *,
        device: str,
        threads: int | None,
        scoring: str | None,
        normalization: str | None,
        engine_batch_size: int,
        members: bool,
    ) -> None:
        self.ensemble = Ensemble(model, adapters, device=device, threads=threads)
        self.scoring = scoring
        self.normalization = normalization
        self.engine_batch_size = engine_batch_size
        self.members = members
        self.schema = record_schema(members)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        if not rows:
            return self.schema.empty_table()
        scores = self.ensemble.score_questions(
            _question_rows(rows),
            self.scoring,
            normalization=self.normalization,
            batch_size=self.engine_batch_size,
        )
        records = scores.to_records(members=self.members)
        return pa.Table.from_pylist(records, schema=self.schema)


def score_dataset(
    ds: ray.data.Dataset,
    model: PathLike | None = None,
    adapters: PathLike | Sequence[PathLike] | None = None,
    *,
    scoring: str | None = None,
    normalization: str | None = None,
    members: bool = False,
    concurrency: int = 2,
    num_cpus: float = 1,
    num_gpus: float = 0,
    threads: int | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    engine_batch_size: int = 16,
    max_restarts: int | None = None,
    start_timeout_s: float = 600.0,
    actor_class: type[RecordScorer] = RecordScorer,
) -> ray.data.Dataset:
    """Score every question of ``ds`` with the ensemble, on a pool of Ray actors.

    Args:
        ds: rows with ``id``, ``question`` and ``choices``, optionally ``labels`` and
            ``answer`` (a label or an index), as ``lora-ens-rs infer``'s generic JSONL, or in
            any layout its reader takes (CommonsenseQA, OpenBookQA, ARC records) with an id.
        model, adapters: as for :class:`~lora_ens_rs.Ensemble`; paths must exist on every
            node (``None``: the default model, fetched into each node's cache).
        scoring, normalization, members: as for ``infer``: the ensemble manifest's scoring
            unless given; ``members`` adds ``member_probs``.
        concurrency: actors (each loads the ensemble once).
        num_cpus, num_gpus: Ray resources per actor. Leave the cluster a CPU for reading
            ``ds`` (``concurrency * num_cpus`` below its CPUs), or ``ds.materialize()`` it
            first: Ray Data does not start a read while the actors hold every CPU.
        threads: engine threads per actor (default: ``num_cpus``, at least 1).
        device: ``"cpu"`` or ``"cuda:N"`` (CUDA builds).
        batch_size: questions per actor call; ``engine_batch_size``: per forward pass.
        max_restarts: times Ray restarts a dead actor (and retries its batches) before the
            run fails; ``None``: Ray Data's default, which restarts and retries without limit
            (Ray 2.5x warns that passing a number this way is deprecated).
        start_timeout_s: fail, rather than wait for ever, when the actors cannot all start
            within this many seconds (the cluster lacks the CPUs / GPUs asked for).
        actor_class: :class:`RecordScorer` or a subclass.

    Returns:
        A lazy Dataset of records (:func:`record_schema`), one per question, in no set order
        (``ds.context.execution_options.preserve_order = True`` keeps the input's); ready for
        ``write_parquet`` / ``write_json``. :func:`record_from_row` gives ``infer``'s dicts.

    Raises:
        InputError: an unknown scoring or normalization, a bad count, or a dataset whose
            schema lacks a field of :data:`QUESTION_FIELDS` (named). Errors in the actors
            surface when the dataset runs, wrapped by Ray; :func:`unwrap_error` finds ours.
    """
    if scoring is not None and scoring not in SCORINGS:
        raise InputError(f"unknown scoring {scoring!r}: expected one of {list(SCORINGS)}")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise InputError(
            f"unknown normalization {normalization!r}: expected one of {list(NORMALIZATIONS)}"
        )
    concurrency = int_arg("concurrency", concurrency, minimum=1)
    batch_size = int_arg("batch_size", batch_size, minimum=1)
    engine_batch_size = int_arg("engine_batch_size", engine_batch_size, minimum=1)
    restarts: dict[str, int] = {}
    if max_restarts is not None:
        n = int_arg("max_restarts", max_restarts, minimum=0)
        restarts = {"max_restarts": n, "max_task_retries": n}
    from ray.data import ActorPoolStrategy

    if threads is None:
        threads = max(1, int(num_cpus))
    threads = threads_arg(threads)
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        missing = [f for f in QUESTION_FIELDS if f not in schema.names]
        if missing:
            raise InputError(
                f"the question dataset has no `{missing[0]}` field (fields: {schema.names}); "
                f"each row needs {', '.join(QUESTION_FIELDS)}"
            )
    if adapters is None:
        paths: list[str] = []
    elif isinstance(adapters, str | os.PathLike):
        paths = [os.path.abspath(adapters)]
    else:
        paths = [os.path.abspath(a) for a in adapters]
    out = ds.map_batches(
        actor_class,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        fn_constructor_kwargs={
            "model": None if model is None else os.path.abspath(model),
            "adapters": paths,
            "device": device,
            "threads": threads,
            "scoring": scoring,
            "normalization": normalization,
            "engine_batch_size": engine_batch_size,
            "members": members,
        },
        **restarts,
    )
    context = getattr(out, "context", None) or _data_context()
    context.wait_for_min_actors_s = start_timeout_s
    if hasattr(context, "raise_original_map_exception"):  # newer Ray: raise our typed error itself
        context.raise_original_map_exception = True
    return out


def _data_context() -> Any:
    import ray.data

    return ray.data.DataContext.get_current()


def unwrap_error(error: BaseException) -> BaseException:
    """The :class:`~lora_ens_rs.LoraEnsError` behind a Ray error (Ray wraps exceptions
    raised in actors, sometimes twice), else ``error`` itself."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LoraEnsError) and type(e).__module__.startswith("lora_ens_rs"):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return error
