"""The K-quant quantizer and GGUF re-encoding, for scripts and tests that import ``kquants``
from this directory: a re-export of :mod:`lora_ens_rs.quantize` (its one home, which
``lora-ens-rs convert`` uses).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import lora_ens_rs.quantize  # noqa: F401
except ImportError:  # a checkout without the package on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from lora_ens_rs.quantize import K_TYPES, QK_K, q4_k_m_type, quantize, requantize_gguf

__all__ = ["K_TYPES", "QK_K", "q4_k_m_type", "quantize", "requantize_gguf"]
