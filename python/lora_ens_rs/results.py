"""Result objects of :class:`lora_ens_rs.Ensemble`: :class:`Scores` (one row per question)
and :class:`Generation` (one entry per generated token), NumPy arrays throughout. Both are
the engine's typed classes (``lora_ens_rs._core``), re-exported here.

    s = ens.score_choices(contexts, choices)
    s.probs[i, : s.n_options[i]]     # the ensemble's distribution over question i's options
    s.to_records()                    # list of dicts, one per question (the infer schema)
    s.to_json("scores.json")          # written atomically
"""

from __future__ import annotations

from lora_ens_rs import _core

#: The typed results, defined in the engine's bindings (one schema: ``Scores.to_records`` is
#: what ``lora-ens-rs infer`` writes). Attributes are NumPy arrays made once per result.
Scores = _core.Scores
Reduced = _core.Reduced
Generation = _core.Generation
