"""GGUF loading for the portable engine (PyPI `gguf`): llama architecture, Q4_1 / Q8_0 matrices.

Invariants:
- only general.architecture == "llama" is accepted, with matrices in Q4_1 or Q8_0 (all block
  matrices of one kind), F32/F16 norm vectors, no RoPE scaling; anything else is a NacritError
  naming what is unsupported; a truncated or hostile file is a NacritError too (every shape,
  count and offset is checked before use);
- weights are rearranged once into the kernels' interleaved layout, which keeps the stored
  integers exactly (only their place changes; Mat.plain() gives GGUF's order back): rows are
  padded with zero rows to groups of R = 16; per group and 32-column block, Q4_1 has 4 chunks
  of 64 bytes, byte 4r + c of chunk k = GGUF byte 4k + c of row r's block (packed nibbles),
  Q8_0 has 8 chunks, byte 4r + c of chunk k = code 4k + c of row r; q is uint8 [groups,
  nb*256 | nb*512], d and m float32 [groups, nb*16] (block b, row r at 16b + r); fp16 scales
  widen to float32 exactly.  Per layer, q/k/v rows are concatenated (one matrix), gate/up
  likewise, before interleaving.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NacritError
from .simd import R
from .vocab import build_pieces

GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q8_0 = 0, 1, 3, 8
KIND = {GGML_Q8_0: 0, GGML_Q4_1: 1}
NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
         11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16"}


@dataclass
class Mat:
    kind: int                   # 0 = Q8_0, 1 = Q4_1
    q: np.ndarray               # uint8 codes (GGUF order from _mat, interleaved after _ilv)
    d: np.ndarray               # float32 [rows, nb] / [groups, nb*16]
    m: np.ndarray               # float32 like d (Q4_1) or a zero dummy ([1, 1] / [1, 16])
    rows: int = 0

    def plain(self, l=None):
        """(q, d, m) of layer l (or of an unstacked matrix) in GGUF's order: q [rows, nb*16 |
        nb*32], d and m [rows, nb] (m a [1, 1] dummy for Q8_0)."""
        q, d, m = (self.q, self.d, self.m) if l is None else (self.q[l], self.d[l], self.m[l])
        G, nb = d.shape[0], d.shape[1] // R
        n = self.rows
        k, c = (4, 4) if self.kind == 1 else (8, 4)
        q = q.reshape(G, nb, k, R, c).transpose(0, 3, 1, 2, 4).reshape(G * R, nb * k * c)[:n]
        unf = lambda a: a.reshape(G, nb, R).transpose(0, 2, 1).reshape(G * R, nb)[:n]  # noqa: E731
        return (np.ascontiguousarray(q), np.ascontiguousarray(unf(d)),
                np.ascontiguousarray(unf(m)) if self.kind == 1 else np.zeros((1, 1), np.float32))


def _ilv(mat: Mat) -> Mat:
    """GGUF order -> the kernels' interleaved layout (module docstring)."""
    rows, nb = mat.d.shape
    G = -(-rows // R)
    pad = G * R - rows
    k, c = (4, 4) if mat.kind == 1 else (8, 4)
    q = np.pad(mat.q, ((0, pad), (0, 0))).reshape(G, R, nb, k, c).transpose(0, 2, 3, 1, 4)

    def f(a):
        return np.ascontiguousarray(np.pad(a, ((0, pad), (0, 0))).reshape(G, R, nb)
                                    .transpose(0, 2, 1)).reshape(G, nb * R)
    m = f(mat.m) if mat.kind == 1 else np.zeros((1, R), np.float32)
    return Mat(mat.kind, np.ascontiguousarray(q).reshape(G, nb * k * c * R), f(mat.d), m, rows)


@dataclass
class Model:
    n_layer: int
    d_model: int
    n_head: int
    n_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_rot: int
    rope_base: float
    eps: np.float32
    kind: int
    attn_norm: np.ndarray       # [L, D]
    ffn_norm: np.ndarray        # [L, D]
    out_norm: np.ndarray        # [D]
    wqkv: Mat                   # stacked [L, ...]
    wo: Mat
    wgu: Mat
    wdn: Mat
    embd: Mat
    out: Mat
    bos: int
    pieces: list


def _fail(path, why):
    raise NacritError(f"{path}: {why}")


def _field(r, key, default=None, required=True, path=""):
    f = r.fields.get(key)
    if f is None:
        if required and default is None:
            _fail(path, f"portable engine: GGUF metadata {key} missing")
        return default
    try:
        return f.contents()
    except Exception:
        _fail(path, f"portable engine: GGUF metadata {key} unreadable")


def _raw_strings(f):
    return [bytes(f.parts[i]) for i in f.data]


def _mat(t, rows, cols, path) -> Mat:
    ty = int(t.tensor_type)
    if ty not in KIND:
        _fail(path, f"portable engine: tensor {t.name} has unsupported type "
                    f"{NAMES.get(ty, ty)} (Q4_1 and Q8_0 only)")
    shp = [int(v) for v in t.shape]
    if shp != [cols, rows] or cols % 32:
        _fail(path, f"portable engine: tensor {t.name} has shape {shp}, expected {[cols, rows]}")
    nb = cols // 32
    bs = 20 if ty == GGML_Q4_1 else 34
    data = np.asarray(t.data)
    if data.dtype != np.uint8 or data.size != rows * nb * bs:
        _fail(path, f"portable engine: tensor {t.name} data is truncated or malformed")
    blk = data.reshape(rows, nb, bs)
    d = np.ascontiguousarray(blk[:, :, 0:2]).view(np.float16).reshape(rows, nb).astype(np.float32)
    if ty == GGML_Q4_1:
        m = np.ascontiguousarray(blk[:, :, 2:4]).view(np.float16).reshape(rows, nb)
        q = np.ascontiguousarray(blk[:, :, 4:20]).reshape(rows, nb * 16)
        return Mat(1, q, d, m.astype(np.float32), rows)
    q = np.ascontiguousarray(blk[:, :, 2:34]).reshape(rows, nb * 32)
    return Mat(0, q, d, np.zeros((1, 1), np.float32), rows)


def _vec(t, n, path):
    ty = int(t.tensor_type)
    if ty not in (GGML_F32, GGML_F16) or [int(v) for v in t.shape] != [n]:
        _fail(path, f"portable engine: tensor {t.name} must be F32/F16 of shape [{n}]")
    a = np.asarray(t.data)
    if a.size != n:
        _fail(path, f"portable engine: tensor {t.name} data is truncated")
    return a.astype(np.float32).reshape(n)


def _stack(mats, path):
    kinds = {m.kind for m in mats}
    if len(kinds) != 1:
        _fail(path, "portable engine: block matrices mix Q4_1 and Q8_0 (not supported)")
    mats = [_ilv(m) for m in mats]
    return Mat(mats[0].kind, np.stack([m.q for m in mats]), np.stack([m.d for m in mats]),
               np.stack([m.m for m in mats]), mats[0].rows)


def _cat(mats):
    m0 = mats[0]
    m = np.concatenate([x.m for x in mats]) if m0.kind == 1 else m0.m
    return Mat(m0.kind, np.concatenate([x.q for x in mats]),
               np.concatenate([x.d for x in mats]), m, sum(x.rows for x in mats))


def load(path: str) -> Model:
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - install problem
        raise NacritError(f"the portable engine needs the gguf package ({e})") from None
    try:
        r = gguf.GGUFReader(str(path), "r")
    except NacritError:
        raise
    except Exception as e:
        raise NacritError(f"{path}: not a readable GGUF file ({type(e).__name__})") from None
    try:
        return _load(r, str(path))
    except NacritError:
        raise
    except Exception as e:
        raise NacritError(f"{path}: malformed GGUF file ({type(e).__name__}: {e})") from None


def _load(r, path) -> Model:
    arch = _field(r, "general.architecture", path=path)
    if arch != "llama":
        _fail(path, f"portable engine supports llama-architecture GGUFs only; this model is {arch}")
    g = lambda k, d=None: _field(r, f"llama.{k}", d, path=path)  # noqa: E731
    L, D, H = int(g("block_count")), int(g("embedding_length")), int(g("attention.head_count"))
    Hkv = int(g("attention.head_count_kv", H))
    F = int(g("feed_forward_length"))
    hd = D // H if H else 0
    n_rot = int(g("rope.dimension_count", hd))
    base = float(g("rope.freq_base", 10000.0))
    eps = np.float32(g("attention.layer_norm_rms_epsilon", 1e-5))
    if not (1 <= L <= 1024 and 1 <= H <= 1024 and 1 <= Hkv <= H and H % Hkv == 0
            and D == H * hd and hd % 32 == 0 and 2 <= n_rot <= hd and n_rot % 2 == 0
            and D % 32 == 0 and F % 32 == 0 and 0 < F <= 1 << 20 and D <= 1 << 16):
        _fail(path, f"portable engine: unsupported llama shape (layers {L}, d {D}, heads {H}/"
                    f"{Hkv}, ffn {F}, rope dims {n_rot})")
    scaling = _field(r, "llama.rope.scaling.type", "none", required=False, path=path)
    factor = _field(r, "llama.rope.scaling.factor", 1.0, required=False, path=path)
    if (scaling not in ("none", None) and factor != 1.0) or not (1.0 < base < 1e12):
        _fail(path, "portable engine: RoPE scaling is not supported")
    if "llama.rope.freq_scale" in r.fields and float(_field(r, "llama.rope.freq_scale")) != 1.0:
        _fail(path, "portable engine: RoPE frequency scaling is not supported")
    tensors = {t.name: t for t in r.tensors}

    def T(name):
        t = tensors.get(name)
        if t is None:
            _fail(path, f"portable engine: tensor {name} missing")
        return t

    tok = r.fields.get("tokenizer.ggml.tokens")
    if tok is None:
        _fail(path, "portable engine: GGUF has no tokenizer.ggml.tokens")
    texts = _raw_strings(tok)
    V = len(texts)
    types = _field(r, "tokenizer.ggml.token_type", [], required=False, path=path) or []
    pieces = build_pieces(texts, list(types), _field(r, "tokenizer.ggml.model", path=path))
    embd = _ilv(_mat(T("token_embd.weight"), V, D, path))
    out = _ilv(_mat(tensors["output.weight"], V, D, path)) if "output.weight" in tensors else embd
    bos = _field(r, "tokenizer.ggml.bos_token_id", -1, required=False, path=path)
    if bos is None or not 0 <= int(bos) < V:
        bos = _field(r, "tokenizer.ggml.eos_token_id", path=path)
    bos = int(bos)
    if not 0 <= bos < V:
        _fail(path, "portable engine: no valid BOS/EOS token")
    qkv, wo, gu, dn, an, fn = [], [], [], [], [], []
    for i in range(L):
        p = f"blk.{i}."
        qkv.append(_cat([_mat(T(p + "attn_q.weight"), D, D, path),
                         _mat(T(p + "attn_k.weight"), Hkv * hd, D, path),
                         _mat(T(p + "attn_v.weight"), Hkv * hd, D, path)]))
        wo.append(_mat(T(p + "attn_output.weight"), D, D, path))
        gu.append(_cat([_mat(T(p + "ffn_gate.weight"), F, D, path),
                        _mat(T(p + "ffn_up.weight"), F, D, path)]))
        dn.append(_mat(T(p + "ffn_down.weight"), D, F, path))
        an.append(_vec(T(p + "attn_norm.weight"), D, path))
        fn.append(_vec(T(p + "ffn_norm.weight"), D, path))
        for extra in ("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"):
            if p + extra in tensors:
                _fail(path, f"portable engine: tensor {p + extra} (biases) is not supported")
    wqkv = _stack(qkv, path)
    kind = wqkv.kind
    mats = [wqkv, _stack(wo, path), _stack(gu, path), _stack(dn, path)]
    if any(m.kind != kind for m in mats):
        _fail(path, "portable engine: block matrices mix Q4_1 and Q8_0 (not supported)")
    return Model(L, D, H, Hkv, hd, F, V, n_rot, base, eps, kind, np.stack(an), np.stack(fn),
                 _vec(T("output_norm.weight"), D, path), *mats, embd, out, bos, pieces)
