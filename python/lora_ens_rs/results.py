"""Result objects of :class:`lora_ens_rs.Ensemble`: :class:`Scores` (one row per question)
and :class:`Generation` (one entry per generated token), NumPy arrays throughout. Both are
the engine's typed classes (``lora_ens_rs._core``), re-exported here.

    s = ens.score_choices(contexts, choices)
    s.probs[i, : s.n_options[i]]     # the ensemble's distribution over question i's options
    s.to_records()                    # list of dicts, one per question (the infer schema)
    s.to_json("scores.json")          # written atomically
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lora_ens_rs import _core

#: The typed results, defined in the engine's bindings (one schema: ``Scores.to_records`` is
#: what ``lora-ens-rs infer`` writes). Attributes are NumPy arrays made once per result.
Scores = _core.Scores
Reduced = _core.Reduced
Generation = _core.Generation


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename, so
    a reader never sees a half-written file and a failure leaves the old file intact."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
