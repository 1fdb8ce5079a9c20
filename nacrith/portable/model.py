"""GGUF loading for the portable engine (ggufio.py): llama and gemma3 architectures.

Invariants:
- general.architecture "llama" (ENGINE.md §1) or "gemma3" (§10); matrices in Q4_1, Q8_0, Q5_0,
  Q4_K or Q6_K, each turned exactly into one of the kernels' three kinds (below); F32/F16 norm
  vectors; no RoPE scaling; anything else is a NacritError naming what is unsupported; a
  truncated or hostile file is a NacritError too (every shape, count and offset is checked
  before use);
- kinds: 0 = int8 codes, one scale per 32 (Q8_0; Q5_0 as codes q - 16), 1 = nibbles, scale
  and min per 32 (Q4_1; Q4_K per 32-sub-block: scale d*sc, min -dmin*m, products of a fp16 and
  a 6-bit integer, exact in float32), 2 = int8 codes with a scale per 16 (Q6_K: codes q - 32,
  scales d*sc, exact in float32; the second half's scale in `m`); the matrices of one stack
  may differ in kind per layer (kinds[l]: Gemma-3's Q4_K_M mixes Q4_K and Q6_K), the rows of
  one matrix may not;
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

GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q5_0, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K = 0, 1, 3, 6, 8, 12, 14
KIND = {GGML_Q8_0: 0, GGML_Q5_0: 0, GGML_Q4_1: 1, GGML_Q4_K: 1, GGML_Q6_K: 2}
BLOCK = {GGML_Q8_0: (32, 34), GGML_Q5_0: (32, 22), GGML_Q4_1: (32, 20), GGML_Q4_K: (256, 144),
         GGML_Q6_K: (256, 210)}         # (elements, bytes) per GGUF block
ARCHS = ("llama", "gemma3")
NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
         11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16"}


@dataclass
class Mat:
    kind: int                   # 0 = int8 codes, 1 = nibbles + min, 2 = int8 codes, 2 scales
    q: np.ndarray               # uint8 codes (GGUF order from _mat, interleaved after _ilv)
    d: np.ndarray               # float32 [rows, nb] / [groups, nb*16]
    m: np.ndarray               # float32 like d (kinds 1, 2) or a zero dummy ([1, 1] / [1, 16])
    rows: int = 0
    kinds: np.ndarray = None    # a stack: int64 [L], the kind of each layer's matrix

    def plain(self, l=None):
        """(q, d, m) of layer l (or of an unstacked matrix) in GGUF's order: q [rows, nb*16 |
        nb*32], d and m [rows, nb] (m a [1, 1] dummy for kind 0)."""
        q, d, m = (self.q, self.d, self.m) if l is None else (self.q[l], self.d[l], self.m[l])
        kind = self.kind if l is None else int(self.kinds[l])
        G, nb = d.shape[0], d.shape[1] // R
        n = self.rows
        k, c = (4, 4) if kind == 1 else (8, 4)
        q = q[:, :nb * k * c * R]
        q = q.reshape(G, nb, k, R, c).transpose(0, 3, 1, 2, 4).reshape(G * R, nb * k * c)[:n]
        unf = lambda a: a.reshape(G, nb, R).transpose(0, 2, 1).reshape(G * R, nb)[:n]  # noqa: E731
        return (np.ascontiguousarray(q), np.ascontiguousarray(unf(d)),
                np.ascontiguousarray(unf(m)) if kind else np.zeros((1, 1), np.float32))


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
    m = f(mat.m) if mat.kind else np.zeros((1, R), np.float32)
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
    kinds: np.ndarray           # int64 [L, 4]: kind of wqkv, wo, wgu, wdn per layer
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
    arch: str = "llama"
    # gemma3 (ENGINE.md §10); llama: empty [L, 0] norms, no window
    q_norm: np.ndarray = None   # [L, hd]
    k_norm: np.ndarray = None   # [L, hd]
    post_attn: np.ndarray = None    # [L, D]
    post_ffn: np.ndarray = None     # [L, D]
    swa: np.ndarray = None      # int64 [L]: 1 = sliding-window layer
    window: int = 0             # sliding window (positions a token sees, itself included)
    rope_base_swa: float = 0.0  # RoPE base of the sliding-window layers
    emb_scale: np.float32 = np.float32(0)   # embedding scale (0 = none)
    token_types: tuple = ()     # GGUF token types (vocab.NORMAL ...; empty: all NORMAL)

    @property
    def kind(self) -> int:
        """The one kind of every block matrix (llama); -1 when they differ (gemma3)."""
        k = np.unique(self.kinds)
        return int(k[0]) if k.size == 1 else -1


def _fail(path, why):
    raise NacritError(f"{path}: {why}")


def _field(r, key, default=None, required=True, path=""):
    f = r.fields.get(key)
    if f is None:
        if required and default is None:
            _fail(path, f"portable engine: GGUF metadata {key} missing")
        return default
    return f


def _mat(t, rows, cols, path) -> Mat:
    ty = int(t.tensor_type)
    if ty not in KIND:
        _fail(path, f"portable engine: tensor {t.name} has unsupported type "
                    f"{NAMES.get(ty, ty)} (Q4_1, Q8_0, Q5_0, Q4_K and Q6_K only)")
    shp = [int(v) for v in t.shape]
    per, bs = BLOCK[ty]
    if shp != [cols, rows] or cols % per:
        _fail(path, f"portable engine: tensor {t.name} has shape {shp}, expected {[cols, rows]}")
    nb = cols // 32
    data = np.asarray(t.data)
    if data.dtype != np.uint8 or data.size != rows * (cols // per) * bs:
        _fail(path, f"portable engine: tensor {t.name} data is truncated or malformed")
    blk = data.reshape(rows, cols // per, bs)
    return _UNPACK[ty](blk, rows, nb)


def _f16(b):
    """fp16 bytes [..., 2] -> float32 [...] (exact)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _q8_0(blk, rows, nb):
    q = np.ascontiguousarray(blk[:, :, 2:34]).reshape(rows, nb * 32)
    return Mat(0, q, _f16(blk[:, :, 0:2]), np.zeros((1, 1), np.float32), rows)


def _q4_1(blk, rows, nb):
    q = np.ascontiguousarray(blk[:, :, 4:20]).reshape(rows, nb * 16)
    return Mat(1, q, _f16(blk[:, :, 0:2]), _f16(blk[:, :, 2:4]), rows)


def _q5_0(blk, rows, nb):
    """Q5_0 (d, 32 high bits, 16 bytes of nibbles; value d * (q - 16)) -> kind 0, codes q - 16."""
    qh = np.ascontiguousarray(blk[:, :, 2:6]).view("<u4")[..., 0].astype(np.uint32)
    qs = blk[:, :, 6:22]
    nib = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.int16)        # [rows, nb, 32]
    hi = (qh[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
    q = (nib | (hi.astype(np.int16) << 4)) - 16
    return Mat(0, q.astype(np.int8).view(np.uint8).reshape(rows, nb * 32),
               _f16(blk[:, :, 0:2]), np.zeros((1, 1), np.float32), rows)


def _q4_k(blk, rows, nb):
    """Q4_K (per 256: d, dmin, 8 packed 6-bit scales and mins, 128 bytes of nibbles; value
    d*sc_j*q - dmin*m_j on 32-element sub-block j) -> kind 1 per 32: scale d*sc_j, min
    -(dmin*m_j) (exact float32 products), nibbles repacked to Q4_1's order."""
    n = nb // 8
    d, dmin = _f16(blk[:, :, 0:2]), _f16(blk[:, :, 2:4])                    # [rows, n]
    sc = blk[:, :, 4:16].astype(np.int32)
    lo = np.concatenate([sc[:, :, 0:4] & 63, (sc[:, :, 8:12] & 15) | ((sc[:, :, 0:4] >> 6) << 4)],
                        axis=2)
    mn = np.concatenate([sc[:, :, 4:8] & 63, (sc[:, :, 8:12] >> 4) | ((sc[:, :, 4:8] >> 6) << 4)],
                        axis=2)
    qs = blk[:, :, 16:144].reshape(rows, n, 4, 32)
    codes = np.stack([qs & 15, qs >> 4], axis=3).reshape(rows, n * 8, 32)   # sub-blocks in order
    q = (codes[:, :, :16] | (codes[:, :, 16:] << 4)).astype(np.uint8).reshape(rows, nb * 16)
    dw = (d[:, :, None] * lo.astype(np.float32)).reshape(rows, nb)
    mw = -(dmin[:, :, None] * mn.astype(np.float32)).reshape(rows, nb)
    return Mat(1, q, dw, mw, rows)


def _q6_k(blk, rows, nb):
    """Q6_K (per 256: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, d;
    value d*sc_j*(q - 32) on 16-element sub-block j) -> kind 2: codes q - 32, per 32 the
    scales d*sc of its two halves (exact float32 products)."""
    n = nb // 8
    ql = blk[:, :, 0:128].reshape(rows, n, 2, 64).astype(np.int16)
    qh = blk[:, :, 128:192].reshape(rows, n, 2, 32).astype(np.int16)
    sc = np.ascontiguousarray(blk[:, :, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(blk[:, :, 208:210])
    q = np.empty((rows, n, 2, 128), np.int16)
    for k in range(4):          # quarter k of a 128-half: ql nibble (k >> 1), qh bits 2k, 2k+1
        low = ql[..., 32 * (k & 1):32 * (k & 1) + 32]
        low = (low >> 4) if k >= 2 else (low & 15)
        q[..., 32 * k:32 * k + 32] = (low | (((qh >> (2 * k)) & 3) << 4)) - 32
    s = (d[:, :, None] * sc).reshape(rows, nb, 2)
    return Mat(2, q.astype(np.int8).view(np.uint8).reshape(rows, nb * 32),
               np.ascontiguousarray(s[:, :, 0]), np.ascontiguousarray(s[:, :, 1]), rows)


_UNPACK = {GGML_Q8_0: _q8_0, GGML_Q4_1: _q4_1, GGML_Q5_0: _q5_0, GGML_Q4_K: _q4_k,
           GGML_Q6_K: _q6_k}


def _vec(t, n, path):
    ty = int(t.tensor_type)
    if ty not in (GGML_F32, GGML_F16) or [int(v) for v in t.shape] != [n]:
        _fail(path, f"portable engine: tensor {t.name} must be F32/F16 of shape [{n}]")
    a = np.asarray(t.data)
    if a.size != n:
        _fail(path, f"portable engine: tensor {t.name} data is truncated")
    return a.astype(np.float32).reshape(n)


def _stack(mats, path):
    """Per-layer matrices -> one stack [L, ...] (interleaved); layers of another kind are
    padded to the widest layout (kinds[l] says how much of each layer's row the kernels read)."""
    mats = [_ilv(m) for m in mats]
    kinds = np.array([m.kind for m in mats], np.int64)
    wq = max(m.q.shape[1] for m in mats)
    mm = max(mats, key=lambda m: m.m.size).m.shape

    def pad(a, shape):
        return np.pad(a, [(0, n - k) for n, k in zip(shape, a.shape)])
    return Mat(int(kinds[0]), np.stack([pad(m.q, (m.q.shape[0], wq)) for m in mats]),
               np.stack([m.d for m in mats]), np.stack([pad(m.m, mm) for m in mats]),
               mats[0].rows, kinds)


def _cat(mats, path):
    m0 = mats[0]
    if len({x.kind for x in mats}) != 1:
        _fail(path, "portable engine: the rows of one matrix (q/k/v or gate/up) mix "
                    "quantisation kinds (not supported)")
    m = np.concatenate([x.m for x in mats]) if m0.kind else m0.m
    return Mat(m0.kind, np.concatenate([x.q for x in mats]),
               np.concatenate([x.d for x in mats]), m, sum(x.rows for x in mats))


def load(path: str) -> Model:
    from .ggufio import Reader
    try:
        r = Reader(str(path))
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
    if arch not in ARCHS:
        _fail(path, f"portable engine supports llama and gemma3 GGUFs only; this model is {arch}")
    gem = arch == "gemma3"
    g = lambda k, d=None: _field(r, f"{arch}.{k}", d, path=path)  # noqa: E731
    L, D, H = int(g("block_count")), int(g("embedding_length")), int(g("attention.head_count"))
    Hkv = int(g("attention.head_count_kv", H))
    F = int(g("feed_forward_length"))
    hd = int(g("attention.key_length")) if gem else D // H if H else 0
    nq = H * hd
    n_rot = int(g("rope.dimension_count", hd))
    base = float(g("rope.freq_base", 10000.0))
    eps = np.float32(g("attention.layer_norm_rms_epsilon", 1e-5))
    if not (1 <= L <= 1024 and 1 <= H <= 1024 and 1 <= Hkv <= H and H % Hkv == 0
            and (gem or D == nq) and hd % 32 == 0 and 2 <= n_rot <= hd and n_rot % 2 == 0
            and D % 32 == 0 and F % 32 == 0 and 0 < F <= 1 << 20 and D <= 1 << 16
            and nq <= 1 << 16):
        _fail(path, f"portable engine: unsupported {arch} shape (layers {L}, d {D}, heads {H}/"
                    f"{Hkv}, ffn {F}, rope dims {n_rot})")
    scaling = _field(r, f"{arch}.rope.scaling.type", "none", required=False, path=path)
    factor = _field(r, f"{arch}.rope.scaling.factor", 1.0, required=False, path=path)
    if (scaling not in ("none", None) and factor != 1.0) or not (1.0 < base < 1e12):
        _fail(path, "portable engine: RoPE scaling is not supported")
    if f"{arch}.rope.freq_scale" in r.fields and float(_field(r, f"{arch}.rope.freq_scale")) != 1.0:
        _fail(path, "portable engine: RoPE frequency scaling is not supported")
    extra = {}
    if gem:
        if int(g("attention.value_length", hd)) != hd or L == 62:
            _fail(path, "portable engine: unsupported gemma3 variant (value length or 27B "
                        "attention scale)")
        for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
            if float(_field(r, f"{arch}.{cap}", 0.0, required=False, path=path) or 0.0):
                _fail(path, f"portable engine: {cap} is not supported")
        window = int(_field(r, f"{arch}.attention.sliding_window", 0, required=False,
                            path=path) or 0)
        base_swa = float(_field(r, f"{arch}.rope.freq_base_swa", 10000.0, required=False,
                                path=path))
        pat = _field(r, f"{arch}.attention.sliding_window_pattern", 6, required=False, path=path)
        if isinstance(pat, (list, tuple)):
            swa = np.array([1 if v else 0 for v in pat], np.int64)
        else:
            pat = int(pat)
            swa = np.array([1 if pat and l % pat < pat - 1 else 0 for l in range(L)], np.int64)
        if window <= 0:
            swa[:] = 0
        if swa.shape != (L,) or window < 0 or not (1.0 < base_swa < 1e12):
            _fail(path, "portable engine: unsupported gemma3 sliding-window settings")
        extra = dict(arch=arch, swa=swa, window=window if swa.any() else 0,
                     rope_base_swa=base_swa, emb_scale=np.float32(np.sqrt(np.float64(D))))
    tensors = {t.name: t for t in r.tensors}

    def T(name):
        t = tensors.get(name)
        if t is None:
            _fail(path, f"portable engine: tensor {name} missing")
        return t

    tok = r.fields.get("tokenizer.ggml.tokens")
    if tok is None:
        _fail(path, "portable engine: GGUF has no tokenizer.ggml.tokens")
    if not isinstance(tok, list) or not all(isinstance(t, bytes) for t in tok):
        _fail(path, "portable engine: tokenizer.ggml.tokens is not a list of strings")
    texts = tok
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
    norms = {k: [] for k in ("attn_q_norm", "attn_k_norm", "post_attention_norm",
                             "post_ffw_norm")}
    for i in range(L):
        p = f"blk.{i}."
        qkv.append(_cat([_mat(T(p + "attn_q.weight"), nq, D, path),
                         _mat(T(p + "attn_k.weight"), Hkv * hd, D, path),
                         _mat(T(p + "attn_v.weight"), Hkv * hd, D, path)], path))
        wo.append(_mat(T(p + "attn_output.weight"), D, nq, path))
        gu.append(_cat([_mat(T(p + "ffn_gate.weight"), F, D, path),
                        _mat(T(p + "ffn_up.weight"), F, D, path)], path))
        dn.append(_mat(T(p + "ffn_down.weight"), D, F, path))
        an.append(_vec(T(p + "attn_norm.weight"), D, path))
        fn.append(_vec(T(p + "ffn_norm.weight"), D, path))
        if gem:
            for k in norms:
                norms[k].append(_vec(T(p + k + ".weight"), hd if "attn" in k else D, path))
        for b in ("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"):
            if p + b in tensors:
                _fail(path, f"portable engine: tensor {p + b} (biases) is not supported")
    mats = [_stack(m, path) for m in (qkv, wo, gu, dn)]
    kinds = np.stack([m.kinds for m in mats], axis=1)
    if not gem and (np.unique(kinds).size != 1 or kinds[0, 0] == 2):
        _fail(path, "portable engine: llama block matrices must all be Q4_1 or all Q8_0")
    if not gem:
        empty = np.zeros((L, 0), np.float32)
        extra = dict(q_norm=empty, k_norm=empty, post_attn=empty, post_ffn=empty,
                     swa=np.zeros(L, np.int64))
    else:
        extra.update(q_norm=np.stack(norms["attn_q_norm"]), k_norm=np.stack(norms["attn_k_norm"]),
                     post_attn=np.stack(norms["post_attention_norm"]),
                     post_ffn=np.stack(norms["post_ffw_norm"]))
    return Model(L, D, H, Hkv, hd, F, V, n_rot, base, eps, kinds, np.stack(an), np.stack(fn),
                 _vec(T("output_norm.weight"), D, path), *mats, embd, out, bos, pieces,
                 token_types=tuple(int(t) for t in types), **extra)
