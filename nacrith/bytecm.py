"""Bit-level context mixing of the two models' byte distributions (the byte coder's mixer,
archive versions 7 and 8; spec: formats/FORMAT.md "Bit mixing (version 7)"; version 8 writes
preset 2).

Each byte is coded as 8 binary decisions, most significant bit first. Before bit j (j = 0..7)
the node c0 = 1 followed by the j bits so far selects the byte values still possible, lo ..
lo + 2^(8-j) - 1; a logistic mixer combines the stretches s = ln(P(1) / P(0)) of
- each model's distribution: P(0), P(1) are the masses of the node's lower and upper halves
  (summed in byte order); and each one's positive part max(s, 0) as two more inputs;
- byte n-gram models of the orders in Settings.orders: the last k bytes and c0 hash to a slot of
  a table holding a 16-bit probability and a count (input 0 while the count is 0);
- a match model: the last MINLEN bytes hash to the position after their last occurrence, whose
  byte is the prediction while the bits so far agree with it; input +-stretch of an adaptive
  16-bit probability per match-length bucket, 0 without a prediction;
- a bias 0.25.
Two weight sets are chosen, one by (match-length class, the more confident model's |s| class,
j), one by c0; p = squash((w1 . s + w2 . s) / 2) is coded with coder.py as the two-symbol table
(2^24 - f1, f1), f1 = floor(p 2^24) clamped to [1, 2^24 - 1]. After the bit each weight set
learns from its own output (w += LR (bit - squash(w . s)) s), each slot p += (bit 2^16 - p)
floor(2^16 / (n + 1.5)) / 2^16 (floored) with n capped at LIMIT, the match bucket p += (hit 2^16 -
p) / 64.

Invariants:
- encoder and decoder hold the same state before each bit: a function of the settings, the
  segment length (table sizes) and the bits before it;
- arithmetic is float64 + - * / and comparisons only, in the order written, in Numba without
  fastmath (no contraction); exp is cdf._exp_nonpos, ln is `_ln` below (exact range reduction
  by powers of two, a fixed odd series); hashes are uint64 arithmetic modulo 2^64; table and
  count updates are integer;
- every bit codes: 1 <= f1 <= 2^24 - 1.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .cdf import LN2_HI, LN2_LO, POW2, POW2_BIAS, TOTAL, _exp_nonpos

SQRT_HALF = 0.70710678118654752440
LN_FLOOR = 2.0 ** -60
S_MAX = 24.0                       # stretch inputs clamped to [-S_MAX, S_MAX]


@njit(cache=True)
def _ln(x):
    """ln(x) for 0 < x <= 1 (float64), basic operations only; x is clamped to [2^-60, 1]."""
    if x >= 1.0:
        return 0.0
    if not x > LN_FLOOR:                # also NaN
        x = LN_FLOOR
    k = 0                               # m = x 2^k in [0.5, 1): exact divisions by 2^-j
    m = x
    step = 32
    while step >= 1:
        t = m / POW2[POW2_BIAS - step]
        if t < 1.0:
            m = t
            k += step
        step >>= 1
    if m < SQRT_HALF:
        m = m * 2.0
        k += 1
    s = (m - 1.0) / (m + 1.0)           # |s| <= 0.1716: ln m = 2 (s + s^3/3 + ... + s^23/23)
    z = s * s
    p = 1.0 / 23.0
    for d in (21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0):
        p = p * z + 1.0 / d
    return 2.0 * s * p - k * LN2_HI - k * LN2_LO


# ----------------------------------------------------------------------------- settings, state

class Settings(NamedTuple):
    """What encoder and decoder must share: a frozen preset (PRESETS; the archive records its
    key, descriptor cm_preset)."""
    orders: int = 0b1111110     # bit k set: an order-k byte context model (k = 1..8)
    table_bits: int = 22        # most slots per order: 2^table_bits
    lr: float = 0.002           # mixer learning rate
    limit: int = 255            # a slot's count cap (rate 1 / (n + 1.5))
    minlen: int = 6             # match model: bytes hashed to find an earlier occurrence
    w0: tuple = (0.3, 0.7)      # every weight set's initial weights of the two models (A, B)

    def order_list(self) -> list:
        return [k for k in range(1, 9) if self.orders >> k & 1]


# frozen: never change one, add one. 1: version 7 (measured with SmolLM2 as model A); 2: the
# first model (A: level 9's Gemma-3) starts with the larger weight (the whole alice29.txt with
# A = Gemma-3: 0.9569 bpb with preset 1, 0.9519 with 2; docs/measurements.md)
PRESETS = {1: Settings(), 2: Settings(w0=(0.6, 0.4))}

NLEN = 16                        # match-length buckets
MATCH_BITS = 20                  # most slots of the match model's table of last positions
CONF = (1.0, 2.5, 5.0, 8.0)      # classes of the more confident model's |stretch|
NSET = 4 * (len(CONF) + 1) * 8   # first weight sets: (match class, confidence class, bit)
I_POS, I_C0, I_D, I_PTR, I_LEN, I_SET, I_TB, I_MB, I_MINLEN = range(9)    # CM.iv slots
F_LR, F_P1, F_P2 = range(3)                                               # CM.fv slots


class CM(NamedTuple):
    """A bit mixer's whole state for one segment (see the module docstring)."""
    iv: np.ndarray              # int64 [9]: pos, c0, bits done, match ptr and length, first set,
    #                             order table bits, match table bits, minlen
    fv: np.ndarray              # float64 [3]: learning rate, each weight set's last p
    hist: np.ndarray            # uint8 [n + 1]: the bytes so far
    orders: np.ndarray          # int64 [K]: the context orders
    h: np.ndarray               # uint64 [K]: hash of each order's context (this byte)
    idx: np.ndarray             # int64 [K]: each order's slot for this bit
    tp: np.ndarray              # uint16 [K, slots]: slot probability of a 1, / 2^16
    tn: np.ndarray              # uint8 [K, slots]: slot count (limit <= 255)
    dt: np.ndarray              # int64 [limit + 1]: floor(2^16 / (n + 1.5))
    st: np.ndarray              # float64 [4096]: stretch((i + 0.5) / 4096)
    mm: np.ndarray              # int64 [match slots]: position after a hashed context, or -1
    mp: np.ndarray              # int64 [NLEN]: P(the predicted bit) per length bucket, / 2^16
    w: np.ndarray               # float64 [NSET, inputs]: first weight sets
    w2: np.ndarray              # float64 [256, inputs]: second weight sets (by c0)
    s: np.ndarray               # float64 [inputs]: this bit's inputs
    llm: np.ndarray             # float64 [2, 256]: the two models' byte distributions (this byte)


@njit(cache=True)
def _stretch_mass(m1, m0):
    s = _ln(m1) - _ln(m0)
    return S_MAX if s > S_MAX else (-S_MAX if s < -S_MAX else s)


@njit(cache=True)
def _squash(x):
    if x >= 0.0:
        return 1.0 / (1.0 + _exp_nonpos(-x))
    e = _exp_nonpos(x)
    return e / (1.0 + e)


@njit(cache=True)
def _stretch_table(st):
    for i in range(st.shape[0]):
        p = (i + 0.5) / st.shape[0]
        st[i] = _ln(p) - _ln(1.0 - p)


def table_bits(settings: Settings, n: int) -> int:
    """log2 of an order's slots for a segment of n bytes: 16 n rounded up to a power of two,
    in [2^12, 2^settings.table_bits] (the match table: at most 2^MATCH_BITS)."""
    return max(12, min(settings.table_bits, (16 * max(n, 1) - 1).bit_length()))


def new(settings: Settings, n: int) -> CM:
    """A fresh mixer for a segment of n bytes."""
    orders = np.array(settings.order_list(), np.int64)
    k, tb = len(orders), table_bits(settings, n)
    mb = min(tb, MATCH_BITS)
    nin = k + 6
    w, w2 = np.zeros((NSET, nin)), np.zeros((256, nin))
    for ws in (w, w2):
        ws[:, 0], ws[:, 1] = settings.w0
    st = np.empty(4096)
    _stretch_table(st)
    iv = np.zeros(9, np.int64)
    iv[I_C0], iv[I_TB], iv[I_MB], iv[I_MINLEN] = 1, tb, mb, settings.minlen
    cm = CM(iv, np.array([settings.lr, 0.5, 0.5]), np.zeros(n + 1, np.uint8), orders,
            np.zeros(k, np.uint64), np.zeros(k, np.int64),
            np.full((k, 1 << tb), 32768, np.uint16), np.zeros((k, 1 << tb), np.uint8),
            np.array([int(65536 / (i + 1.5)) for i in range(settings.limit + 1)], np.int64),
            st, np.full(1 << mb, -1, np.int64), np.full(NLEN, 49152, np.int64),
            w, w2, np.zeros(nin), np.zeros((2, 256)))
    _byte_begin(cm)
    return cm


# ----------------------------------------------------------------------------- kernels

HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _byte_begin(cm):
    """This byte's context hashes and the match model's state (bytes [0, pos) known)."""
    pos = cm.iv[I_POS]
    for j in range(cm.orders.shape[0]):
        k = cm.orders[j]
        h = np.uint64(k + 1) * HASH_MUL
        for i in range(max(0, pos - k), pos):
            h = (h + np.uint64(cm.hist[i]) + np.uint64(1)) * HASH_MUL
        cm.h[j] = h
    # the match goes on if its predicted byte came, else a lookup of the last minlen bytes
    if cm.iv[I_LEN] > 0 and cm.hist[cm.iv[I_PTR]] == cm.hist[pos - 1]:
        cm.iv[I_LEN] += 1
        cm.iv[I_PTR] += 1
    else:
        cm.iv[I_LEN] = 0
    minlen = cm.iv[I_MINLEN]
    if pos >= minlen:
        h = np.uint64(0)
        for i in range(pos - minlen, pos):
            h = (h + np.uint64(cm.hist[i]) + np.uint64(1)) * HASH_MUL
        slot = np.int64(h >> np.uint64(64 - cm.iv[I_MB]))
        p = cm.mm[slot]
        if cm.iv[I_LEN] == 0 and p >= 0:
            n = 0
            while n < 32 and n < p and cm.hist[p - 1 - n] == cm.hist[pos - 1 - n]:
                n += 1
            if n >= minlen:
                cm.iv[I_LEN] = n
                cm.iv[I_PTR] = p
        cm.mm[slot] = pos


@njit(cache=True)
def _bucket(n):
    if n < 8:
        return n
    if n < 16:
        return 8 + (n - 8) // 4
    if n < 32:
        return 10 + (n - 16) // 8
    return min(NLEN - 1, 12 + (n - 32) // 32)


@njit(cache=True)
def bit_p(cm):
    """P(the next bit is 1), float64; fills cm.s, the slots and the weight sets of this bit."""
    c0, d = cm.iv[I_C0], cm.iv[I_D]
    half = 1 << (7 - d)
    lo = (c0 - (1 << d)) << (8 - d)
    s = cm.s
    k = cm.orders.shape[0]
    big = 0.0
    for m in range(2):
        m0 = 0.0
        m1 = 0.0
        for i in range(lo, lo + half):
            m0 += cm.llm[m, i]
        for i in range(lo + half, lo + 2 * half):
            m1 += cm.llm[m, i]
        v = _stretch_mass(m1, m0)
        s[m] = v
        s[k + 4 + m] = v if v > 0.0 else 0.0
        a = v if v >= 0.0 else -v
        big = a if a > big else big
    shift = np.uint64(64 - cm.iv[I_TB])
    for j in range(k):
        slot = np.int64(((cm.h[j] + np.uint64(c0)) * HASH_MUL) >> shift)
        cm.idx[j] = slot
        s[2 + j] = cm.st[np.int64(cm.tp[j, slot]) >> 4] if cm.tn[j, slot] > 0 else 0.0
    mlen = cm.iv[I_LEN]
    mc = 0
    s[k + 2] = 0.0
    if mlen > 0:
        pred = np.int64(cm.hist[cm.iv[I_PTR]]) | 256
        if (pred >> (8 - d)) == c0:
            v = cm.st[cm.mp[_bucket(mlen)] >> 4]
            s[k + 2] = v if (pred >> (7 - d)) & 1 else -v
            mc = 1 if mlen < 16 else (2 if mlen < 32 else 3)
    s[k + 3] = 0.25
    cc = 0
    while cc < len(CONF) and big >= CONF[cc]:
        cc += 1
    ws = (mc * (len(CONF) + 1) + cc) * 8 + d
    cm.iv[I_SET] = ws
    dot = 0.0
    dot2 = 0.0
    for i in range(s.shape[0]):
        dot += cm.w[ws, i] * s[i]
    for i in range(s.shape[0]):
        dot2 += cm.w2[c0, i] * s[i]
    cm.fv[F_P1] = _squash(dot)
    cm.fv[F_P2] = _squash(dot2)
    return _squash((dot + dot2) * 0.5)


@njit(cache=True)
def freq1(p):
    """The two-symbol table's frequency of a 1 (the 0 gets TOTAL - f1): 1 <= f1 <= TOTAL - 1."""
    f = np.int64(p * TOTAL)
    return 1 if f < 1 else (TOTAL - 1 if f > TOTAL - 1 else f)


@njit(cache=True)
def bit_update(cm, bit):
    """Learn the coded bit; after the 8th, take the byte into the history and the contexts."""
    s = cm.s
    c0, d = cm.iv[I_C0], cm.iv[I_D]
    g = cm.fv[F_LR] * (bit - cm.fv[F_P1])
    ws = cm.iv[I_SET]
    for i in range(s.shape[0]):
        cm.w[ws, i] += g * s[i]
    g = cm.fv[F_LR] * (bit - cm.fv[F_P2])
    for i in range(s.shape[0]):
        cm.w2[c0, i] += g * s[i]
    target = bit << 16
    lim = cm.dt.shape[0] - 1
    k = cm.orders.shape[0]
    for j in range(k):
        slot = cm.idx[j]
        n = np.int64(cm.tn[j, slot])
        p = np.int64(cm.tp[j, slot])
        p += ((target - p) * cm.dt[n]) >> 16
        cm.tp[j, slot] = np.uint16(min(65535, max(0, p)))
        cm.tn[j, slot] = np.uint8(n + 1 if n < lim else lim)
    if s[k + 2] != 0.0:
        b = _bucket(cm.iv[I_LEN])
        hit = 65535 if (np.int64(cm.hist[cm.iv[I_PTR]]) >> (7 - d)) & 1 == bit else 0
        cm.mp[b] += (hit - cm.mp[b]) >> 6
    c0 = (c0 << 1) | bit
    if d == 7:
        pos = cm.iv[I_POS]
        cm.hist[pos] = c0 & 255
        cm.iv[I_POS] = pos + 1
        cm.iv[I_C0] = 1
        cm.iv[I_D] = 0
        _byte_begin(cm)
    else:
        cm.iv[I_C0] = c0
        cm.iv[I_D] = d + 1


@njit(cache=True)
def run(cm, da, db, data, out):
    """Offline (scripts/byte_mix.py, tests): out[8 i + j] = the coded frequency of byte i's bit
    j, given the models' byte distributions da[i], db[i], as the coder codes them."""
    for i in range(data.shape[0]):
        for c in range(256):
            cm.llm[0, c] = da[i, c]
            cm.llm[1, c] = db[i, c]
        x = np.int64(data[i])
        for j in range(8):
            bit = (x >> (7 - j)) & 1
            f1 = freq1(bit_p(cm))
            out[8 * i + j] = f1 if bit == 1 else TOTAL - f1
            bit_update(cm, bit)
