"""K-quant weights (Q2_K ... Q6_K): the engine's dequantization against gguf-py's, bit for bit.

Matrices are encoded by our numpy quantizer (`scripts/kquants.py`: gguf-py can decode K-quants
but not encode them), written with gguf-py's `GGUFWriter`, read back by the engine's own
kernels (`_core.read_tensor`) and compared with `gguf.quants.dequantize` of the bytes on disk
with `np.array_equal` on the float32 values and on their bit patterns. The quantizer's own
accuracy (relative RMS error on Gaussian data) is bounded per type, and `requantize_gguf`
with the Q4_K_M-like recipe is checked for the types it picks, the metadata it copies and
its atomic write. Run: `pytest tests/test_kquants.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lora_ens_rs import _core
from lora_ens_rs.errors import ModelLoadError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import kquants

K_TYPES = kquants.K_TYPES
#: Upper bounds of the relative RMS error of dequantize(quantize(x)) on standard Gaussian
#: data; measured (seed 0, 256 x 512): Q2_K 0.329, Q3_K 0.156, Q4_K 0.078, Q5_K 0.038,
#: Q6_K 0.019.
ERROR_BOUND = {QT.Q2_K: 0.35, QT.Q3_K: 0.17, QT.Q4_K: 0.085, QT.Q5_K: 0.042, QT.Q6_K: 0.021}


def matrices(cols: int, seed: int) -> np.ndarray:
    """Gaussian rows plus the awkward ones: zeros, constants, one spike, huge and tiny
    magnitudes (tiny ones give subnormal f16 scales), mixed signs."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(cols) * s for s in (1.0, 0.02, 300.0)]
    rows += [np.zeros(cols), np.full(cols, 0.75), np.full(cols, -2.5)]
    spike = rng.standard_normal(cols) * 0.1
    spike[cols // 3] = 3.0e4
    rows += [spike, rng.standard_normal(cols) * 1e-6, rng.uniform(-6.0e4, 6.0e4, cols)]
    rows += [np.where(rng.random(cols) < 0.5, -1.0, 1.0) * rng.random(cols) ** 8]
    return np.stack(rows).astype(np.float32)


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, QT]]) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def assert_engine_matches_gguf_py(path: Path) -> dict[str, QT]:
    """Every tensor of `path` read by the engine equals gguf-py's dequantization, bit for bit.
    Returns each tensor's type."""
    types = {}
    for t in gguf.GGUFReader(path).tensors:
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        want = want.reshape(tuple(reversed(t.shape.tolist())))
        got = _core.read_tensor(path, t.name)
        assert got.dtype == np.float32 and got.shape == want.shape, (t.name, got.shape)
        assert np.array_equal(got, want, equal_nan=True), (t.name, t.tensor_type.name)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name
        types[t.name] = t.tensor_type
    return types


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda q: q.name)
def test_engine_dequantizes_k_quants_as_gguf_py(tmp_path: Path, qtype: QT) -> None:
    tensors = {}
    for i, (cols, seed) in enumerate([(256, 1), (512, 2), (768, 3)]):
        x = matrices(cols, seed)
        blocks = kquants.quantize(x, qtype)
        assert blocks.dtype == np.uint8
        assert blocks.shape == (x.shape[0], cols // 256 * gguf.GGML_QUANT_SIZES[qtype][1])
        tensors[f"m{i}.weight"] = (blocks, qtype)
    # Random bytes are valid blocks too: every bit pattern of the scales and quants.
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (6, 2 * gguf.GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    tensors["noise.weight"] = (noise, qtype)
    path = tmp_path / f"{qtype.name}.gguf"
    write_gguf(path, tensors)
    types = assert_engine_matches_gguf_py(path)
    assert set(types.values()) == {qtype}


@pytest.mark.parametrize(
    "qtype",
    [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0],
    ids=lambda q: q.name,
)
def test_engine_dequantizes_other_types_as_gguf_py(tmp_path: Path, qtype: QT) -> None:
    # Encoded by gguf-py's own quantizers (through `kquants.quantize`).
    tensors = {f"m{c}.weight": (kquants.quantize(matrices(c, c), qtype), qtype) for c in (32, 512)}
    path = tmp_path / f"{qtype.name}.gguf"
    write_gguf(path, tensors)
    assert set(assert_engine_matches_gguf_py(path).values()) == {qtype}


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda q: q.name)
def test_quantizer_accuracy(qtype: QT) -> None:
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    y = gguf.quants.dequantize(kquants.quantize(x, qtype), qtype)
    rel = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
    assert rel < ERROR_BOUND[qtype], (qtype.name, rel)
    # A coarser type is never the more accurate one.
    order = list(K_TYPES)
    if qtype != QT.Q6_K:
        finer = order[order.index(qtype) + 1]
        y2 = gguf.quants.dequantize(kquants.quantize(x, finer), finer)
        assert np.mean((y2 - x) ** 2) < np.mean((y - x) ** 2)
    # Zeros decode to zeros; a constant row decodes close to itself.
    z = gguf.quants.dequantize(kquants.quantize(np.zeros((1, 256), np.float32), qtype), qtype)
    assert np.array_equal(z, np.zeros((1, 256), np.float32))
    c = gguf.quants.dequantize(kquants.quantize(np.full((1, 256), -1.5, np.float32), qtype), qtype)
    assert np.allclose(c, -1.5, rtol=0.05)


def test_quantize_refuses_partial_blocks() -> None:
    with pytest.raises(ValueError, match="256"):
        kquants.quantize(np.zeros((2, 320), np.float32), QT.Q4_K)


# ---------------------------------------------------------------------------------------------
# A Q4_K_M-like file

N_LAYER, HIDDEN, INTER, N_KV, VOCAB = 8, 256, 320, 128, 300


def f32_model(path: Path) -> dict[str, np.ndarray]:
    """A LLaMA-shaped F32 GGUF with 256-multiple rows, except `ffn_down` (rows of 320)."""
    rng = np.random.default_rng(7)
    weights = {
        "token_embd.weight": (VOCAB, HIDDEN),
        "output_norm.weight": (HIDDEN,),
        "output.weight": (VOCAB, HIDDEN),
    }
    for i in range(N_LAYER):
        weights |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k.weight": (N_KV, HIDDEN),
            f"blk.{i}.attn_v.weight": (N_KV, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (INTER, HIDDEN),
            f"blk.{i}.ffn_up.weight": (INTER, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, INTER),
        }
    values = {n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in weights.items()}
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(N_LAYER)
    writer.add_embedding_length(HIDDEN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    writer.add_token_scores([float(-i) for i in range(VOCAB)])
    writer.add_string("general.name", "k-quant test model")
    for name, v in values.items():
        writer.add_tensor(name, v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


def q4_k_m(name: str, shape: tuple[int, ...]) -> QT:
    return kquants.q4_k_m_type(name, shape, N_LAYER)


def test_q4_k_m_recipe() -> None:
    # use_more_bits(i, 8): layers 0 and 7 (first / last eighth), 3 and 6 (every third).
    more_bits = {0, 3, 6, 7}
    for i in range(N_LAYER):
        want = QT.Q6_K if i in more_bits else QT.Q4_K
        assert q4_k_m(f"blk.{i}.attn_v.weight", (128, 256)) == want, i
        assert q4_k_m(f"blk.{i}.ffn_down.weight", (256, 512)) == want, i
        assert q4_k_m(f"blk.{i}.attn_q.weight", (256, 256)) == QT.Q4_K
    assert q4_k_m("output.weight", (300, 256)) == QT.Q6_K
    assert q4_k_m("token_embd.weight", (300, 256)) == QT.Q4_K
    assert kquants.q4_k_m_type("token_embd.weight", (9, 256), 8, has_output=False) == QT.Q6_K
    assert q4_k_m("blk.0.attn_norm.weight", (256,)) == QT.F32
    # Rows that are not whole super-blocks: llama.cpp's fallbacks.
    assert q4_k_m("blk.0.ffn_down.weight", (256, 320)) == QT.Q8_0
    assert q4_k_m("blk.1.ffn_down.weight", (256, 320)) == QT.Q5_0
    assert q4_k_m("blk.1.attn_q.weight", (64, 48)) == QT.F16


def test_requantized_q4_k_m_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "f32.gguf", tmp_path / "q4_k_m.gguf"
    values = f32_model(src)
    kquants.requantize_gguf(src, dst, q4_k_m, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf", "q4_k_m.gguf"]

    types = assert_engine_matches_gguf_py(dst)
    assert types == {n: q4_k_m(n, v.shape) for n, v in values.items()}
    assert {QT.Q4_K, QT.Q6_K, QT.Q8_0, QT.Q5_0, QT.F32} == set(types.values())
    for name, v in values.items():
        got = _core.read_tensor(dst, name)
        if types[name] == QT.F32:
            assert np.array_equal(got, v), name
        else:
            rel = np.sqrt(np.mean((got - v) ** 2) / np.mean(v**2))
            assert rel < 0.09, (name, types[name].name, rel)

    a, b = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    fields = {n: f.contents() for n, f in a.fields.items() if not n.startswith("GGUF.")}
    copied = {n: f.contents() for n, f in b.fields.items() if not n.startswith("GGUF.")}
    assert copied.pop("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert fields.pop("general.file_type") == gguf.LlamaFileType.ALL_F32
    assert copied == fields
    assert [t.name for t in b.tensors] == [t.name for t in a.tensors]


def test_requantize_is_atomic(tmp_path: Path) -> None:
    src, dst = tmp_path / "f32.gguf", tmp_path / "out.gguf"
    f32_model(src)
    dst.write_bytes(b"previous")

    def refuse(name: str, shape: tuple[int, ...]) -> QT:
        if name == "blk.5.ffn_up.weight":
            raise RuntimeError("stop here")
        return QT.F32

    with pytest.raises(RuntimeError, match="stop here"):
        kquants.requantize_gguf(src, dst, refuse)
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf", "out.gguf"]
    # Same types throughout: a byte-for-byte copy of every tensor.
    kquants.requantize_gguf(src, dst, lambda name, shape: QT.F32)
    for t_src, t_dst in zip(
        gguf.GGUFReader(src).tensors, gguf.GGUFReader(dst).tensors, strict=True
    ):
        assert np.array_equal(np.asarray(t_src.data), np.asarray(t_dst.data)), t_src.name


def test_read_tensor_errors(tmp_path: Path) -> None:
    path = tmp_path / "q8_k.gguf"
    # Q8_K (llama.cpp's intermediate type) is valid in a GGUF; the engine does not dequantize it.
    raw = np.zeros((2, gguf.GGML_QUANT_SIZES[QT.Q8_K][1]), np.uint8)
    ones = np.ones((2, 32), np.float32)
    write_gguf(path, {"odd.weight": (raw, QT.Q8_K), "ok.weight": (ones, QT.F32)})
    assert np.array_equal(_core.read_tensor(path, "ok.weight"), np.ones((2, 32), np.float32))
    with pytest.raises(ModelLoadError, match=r"odd\.weight.*Q8_K"):
        _core.read_tensor(path, "odd.weight")
    with pytest.raises(ModelLoadError, match=r"no\.such\.weight.*missing"):
        _core.read_tensor(path, "no.such.weight")
