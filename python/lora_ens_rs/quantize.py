"""A small numpy quantizer for ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), and GGUF
re-encoding with it: what ``lora-ens-rs convert`` writes K-quant files with, and what tests
build K-quant fixtures with, without compiling llama.cpp (scripts/kquants.py re-exports it).

gguf-py dequantizes K-quants but cannot quantize them. The encoders here write valid
super-blocks of 256 elements with simple scaling (per sub-block min/max for the types with a
minimum, signed abs-max for the symmetric ones); they are not llama.cpp's search-based
quantizers (llama.cpp's own files of the same type are more accurate): relative RMS error on
Gaussian data is about Q6_K 1.9%, Q5_K 3.8%, Q4_K 7.8%, Q3_K 16%, Q2_K 33%
(tests/test_kquants.py asserts bounds). Other types go through gguf-py's own
`gguf.quants.quantize`.

    from lora_ens_rs.quantize import quantize, requantize_gguf, q4_k_m_type
    blocks = quantize(rows, GGMLQuantizationType.Q4_K)   # (n, cols) f32 -> (n, row bytes) u8
    requantize_gguf(src, dst, lambda name, shape: q4_k_m_type(name, shape, n_layer=30))
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

QK_K = 256
K_TYPES = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
F16_MAX = float(np.finfo(np.float16).max)


def _f16(x: np.ndarray) -> np.ndarray:
    """Round to float16, saturating instead of overflowing to infinity."""
    return np.clip(x, -F16_MAX, F16_MAX).astype(np.float16)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """(n,) float16 -> (n, 2) little-endian bytes."""
    return x.astype("<f2").view(np.uint8).reshape(-1, 2)


def _safe(x: np.ndarray) -> np.ndarray:
    """`x` with zeros replaced by ones, for divisions whose zero cases are masked anyway."""
    return np.where(x == 0, np.float32(1), x)


def _affine(
    blocks: np.ndarray, n_sub: int, nmax: int, scale_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale-and-minimum quantization (Q2_K, Q4_K, Q5_K): each sub-block maps
    `[min(x, 0), max(x)]` onto `0..nmax`; the sub-block scales and minimums are themselves
    quantized to `0..scale_max` against the super-block's f16 `d` and `dmin`, and the
    elements are then rounded against the scales actually stored, so `d * sc * q - dmin * m`
    is the decoded value. Returns d, dmin (f16, (n,)), sc, m ((n, n_sub) u8), q ((n, 256) u8).
    """
    n = blocks.shape[0]
    sub = blocks.reshape(n, n_sub, QK_K // n_sub)
    lo = np.minimum(sub.min(axis=-1), 0)
    hi = np.maximum(sub.max(axis=-1), lo)
    scale = (hi - lo) / nmax
    minimum = -lo
    d = _f16(scale.max(axis=-1) / scale_max)
    dmin = _f16(minimum.max(axis=-1) / scale_max)
    df = d.astype(np.float32)[:, None]
    dminf = dmin.astype(np.float32)[:, None]
    sc = np.where(df > 0, np.clip(np.rint(scale / _safe(df)), 0, scale_max), 0).astype(np.uint8)
    m = np.where(dminf > 0, np.clip(np.rint(minimum / _safe(dminf)), 0, scale_max), 0)
    m = m.astype(np.uint8)
    ds = (df * sc.astype(np.float32))[..., None]
    dm = (dminf * m.astype(np.float32))[..., None]
    q = np.where(ds > 0, np.clip(np.rint((sub + dm) / _safe(ds)), 0, nmax), 0)
    return d, dmin, sc, m, q.astype(np.uint8).reshape(n, QK_K)


def _symmetric(
    blocks: np.ndarray, qmin: int, qmax: int, scale_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed quantization in 16 sub-blocks of 16 (Q3_K, Q6_K): the sub-block's value of
    largest magnitude maps to `qmin` (the longer side of `qmin..qmax`); the signed sub-block
    scales are quantized to `-scale_max-1..scale_max` against the f16 `d`, and the elements
    rounded against the scales stored. Returns d (f16 (n,)), sc ((n, 16) int), q ((n, 256))."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    at = np.abs(sub).argmax(axis=-1)[..., None]
    peak = np.take_along_axis(sub, at, axis=-1)[..., 0]
    scale = peak / qmin
    d = _f16(np.abs(scale).max(axis=-1) / scale_max)
    df = d.astype(np.float32)[:, None]
    sc = np.where(df > 0, np.clip(np.rint(scale / _safe(df)), -scale_max - 1, scale_max), 0)
    sc = sc.astype(np.int32)
    ds = (df * sc.astype(np.float32))[..., None]
    q = np.where(ds != 0, np.clip(np.rint(sub / _safe(ds)), qmin, qmax), 0)
    return d, sc, q.astype(np.int32).reshape(n, QK_K)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """(n, 256) values 0..3 -> (n, 64): element `128 h + 32 s + l` in bits `2s` of byte
    `32 h + l`."""
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    out = np.zeros((q.shape[0], 2, 32), dtype=np.uint8)
    for s in range(4):
        out |= q[:, :, s, :] << np.uint8(2 * s)
    return out.reshape(-1, 64)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 256) values 0..15 -> (n, 128): sub-block `2c` in the low nibbles of bytes
    `32c..32c+32`, sub-block `2c+1` in the high ones."""
    q = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    return (q[:, :, 0, :] | (q[:, :, 1, :] << np.uint8(4))).reshape(-1, 128)


def _pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """(n, 8 * 32) values 0..1 -> (n, 32): element `32 k + l` in bit `k` of byte `l`."""
    bits = bits.astype(np.uint8).reshape(-1, 8, 32)
    out = np.zeros((bits.shape[0], 32), dtype=np.uint8)
    for k in range(8):
        out |= bits[:, k, :] << np.uint8(k)
    return out


def _pack_scale_min_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> 12 bytes (ggml's `get_scale_min_k4` layout)."""
    lo = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    mid = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=1).astype(np.uint8)


def _q2_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _affine(blocks, 16, 3, 15)
    scales = sc | (m << np.uint8(4))
    return np.concatenate([scales, _pack_2bit(q), _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _q3_k(blocks: np.ndarray) -> np.ndarray:
    d, sc, q = _symmetric(blocks, -4, 3, 31)
    u = (q + 4).astype(np.uint8)  # 0..7: low 2 bits in qs, bit 2 in hmask
    su = (sc + 32).astype(np.uint8)  # 0..63
    low = (su[:, :8] & 0x0F) | ((su[:, 8:] & 0x0F) << 4)
    high = np.zeros((su.shape[0], 4), dtype=np.uint8)
    for t in range(4):
        high |= ((su[:, 4 * t : 4 * t + 4] >> 4) & 3) << np.uint8(2 * t)
    return np.concatenate(
        [_pack_bit_planes(u >> 2), _pack_2bit(u & 3), low, high, _f16_bytes(d)], axis=1
    )


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _affine(blocks, 8, 15, 63)
    return np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min_k4(sc, m), _pack_nibbles(q)], axis=1
    )


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _affine(blocks, 8, 31, 63)
    return np.concatenate(
        [
            _f16_bytes(d),
            _f16_bytes(dmin),
            _pack_scale_min_k4(sc, m),
            _pack_bit_planes(q >> 4),
            _pack_nibbles(q & 0x0F),
        ],
        axis=1,
    )


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    d, sc, q = _symmetric(blocks, -32, 31, 127)
    u = (q + 32).astype(np.uint8).reshape(-1, 2, 128)  # 0..63 per half super-block
    halves = u.reshape(-1, 2, 2, 64)
    ql = (halves[:, :, 0, :] & 0x0F) | ((halves[:, :, 1, :] & 0x0F) << 4)
    groups = u.reshape(-1, 2, 4, 32)
    qh = np.zeros((u.shape[0], 2, 32), dtype=np.uint8)
    for g in range(4):
        qh |= ((groups[:, :, g, :] >> 4) & 3) << np.uint8(2 * g)
    scales = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), scales, _f16_bytes(d)], axis=1)


_ENCODERS = {QT.Q2_K: _q2_k, QT.Q3_K: _q3_k, QT.Q4_K: _q4_k, QT.Q5_K: _q5_k, QT.Q6_K: _q6_k}


def quantize(rows: np.ndarray, qtype: QT) -> np.ndarray:
    """Encode float32 `rows` of shape (..., cols) as `qtype` blocks: uint8 (..., row bytes).
    K-quants need `cols % 256 == 0`; other types are gguf-py's own quantizers."""
    rows = np.asarray(rows, dtype=np.float32)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    cols = rows.shape[-1]
    if cols % block:
        raise ValueError(f"rows of {cols} are not a whole number of {qtype.name} blocks of {block}")
    out_shape = (*rows.shape[:-1], cols // block * type_size)
    if qtype not in _ENCODERS:
        return (
            np.ascontiguousarray(gguf.quants.quantize(rows, qtype))
            .view(np.uint8)
            .reshape(out_shape)
        )
    blocks = _ENCODERS[qtype](rows.reshape(-1, QK_K))
    assert blocks.dtype == np.uint8 and blocks.shape[1] == type_size, (blocks.dtype, blocks.shape)
    return blocks.reshape(out_shape)


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of layers, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


#: llama.cpp's replacement when a row is not a whole number of 256-element super-blocks.
FALLBACK = {
    QT.Q4_K: QT.Q5_0,
    QT.Q5_K: QT.Q5_1,
    QT.Q6_K: QT.Q8_0,
    QT.Q3_K: QT.Q4_0,
    QT.Q2_K: QT.Q4_0,
}


def q4_k_m_type(name: str, shape: tuple[int, ...], n_layer: int, has_output: bool = True) -> QT:
    """The type llama.cpp's Q4_K_M recipe gives tensor `name` of numpy shape `shape`
    (`(rows, cols)` for a matrix), simplified from `llama_tensor_get_type`:

    - 1-D tensors (norms, biases): F32.
    - `output.weight`, and `token_embd.weight` when the model has no `output.weight`
      (`has_output=False`, tied embeddings): Q6_K.
    - `attn_v` and `ffn_down` of layer `i`: Q6_K when `i` is in the first or last eighth of
      the `n_layer` layers or `i - n_layer/8` is 2 mod 3 (`use_more_bits`), else Q4_K.
    - Every other matrix: Q4_K.
    - A row length that is not a multiple of 256 falls back as llama.cpp does: Q4_K -> Q5_0,
      Q6_K -> Q8_0, and to F16 when not even a multiple of 32.

    Left out: llama.cpp's special cases for other architectures, MoE and GQA-8 attn_v.
    """
    if len(shape) < 2:
        return QT.F32
    layer = re.match(r"blk\.(\d+)\.", name)
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        qtype = QT.Q6_K
    elif layer and (".attn_v." in name or ".ffn_down." in name):
        qtype = QT.Q6_K if _use_more_bits(int(layer.group(1)), n_layer) else QT.Q4_K
    else:
        qtype = QT.Q4_K
    if shape[-1] % QK_K:
        qtype = FALLBACK[qtype]
        if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = QT.F16
    return qtype


def requantize_gguf(
    src: Path,
    dst: Path,
    type_for: Callable[[str, tuple[int, ...]], QT],
    file_type: gguf.LlamaFileType | None = None,
) -> None:
    """Copy the GGUF `src` to `dst` with every metadata key and every tensor, re-encoding
    each tensor as `type_for(name, numpy shape)` (a tensor already of that type is copied
    byte for byte; others are dequantized by gguf-py and encoded by :func:`quantize`).
    `file_type`, when given, replaces `general.file_type`. `dst` is written to a temporary
    file beside it and renamed into place, so it is either absent, the old file, or whole.
    """
    src, dst = Path(src), Path(dst)
    reader = gguf.GGUFReader(src)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ValueError(f"{src}: no {gguf.Keys.General.ARCHITECTURE}")
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch_field.contents())
        writer.data_alignment = reader.alignment
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = field.contents()
            if field.name == gguf.Keys.General.FILE_TYPE and file_type is not None:
                value = int(file_type)
            writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
        if file_type is not None and reader.get_field(gguf.Keys.General.FILE_TYPE) is None:
            writer.add_file_type(int(file_type))
        for t in reader.tensors:
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            qtype = type_for(t.name, shape)
            if qtype == t.tensor_type:
                data = np.ascontiguousarray(t.data)
            else:
                values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
                data = quantize(values, qtype)
            writer.add_tensor(t.name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
