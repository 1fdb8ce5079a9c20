"""32-bit binary arithmetic coder (Witten-Neal-Cleary style) over 24-bit frequency tables.

Invariants (all part of the bitstream format):
- state: 32-bit ``low``/``high`` (held in int64; every intermediate product is < 2**57) with the
  interval [low, high] inclusive.  A symbol with cumulative range [c_lo, c_hi) of TOTAL = 2**24
  maps range = high - low + 1 to
      high = low + (range * c_hi >> 24) - 1,  low = low + (range * c_lo >> 24).
- renormalisation: E1 (high < 2**31: emit 0), E2 (low >= 2**31: emit 1), E3 (2**30 <= low and
  high < 3 * 2**30: one pending bit), then low = 2*low, high = 2*high + 1.  An emitted bit b is
  followed by all pending bits as (1 - b).  After renormalisation low < 2**31 <= high and not E3,
  so range > 2**30: every symbol with frequency >= 1 gets a sub-interval of >= 64 values, and
  the rounding (each width is within +-1 of range * f / 2**24) costs at most ~1.5 * V / 2**30
  bits per symbol on average (3.5e-4 bits for V = 262144).
- bits are packed MSB-first into bytes; the last byte is padded with zero bits and trailing zero
  bytes are then dropped (the decoder reads zero bits past the end of the stream, so they carry
  no information).
- termination (``Encoder.finish``): pending += 1, then emit 0 if low < 2**30 else 1 (the emit is
  followed by the pending bits), i.e. the standard two disambiguating bits.
- the decoder reads zero bits past the end of its input.  It keeps low <= value <= high for ANY
  input, so corrupted data decodes to garbage symbols (always in [0, V)) but never crashes or
  loops; checksums elsewhere catch it.
- decoding: count = ((value - low + 1) * 2**24 - 1) // range; the symbol is the s with
  cum[s] <= count < cum[s + 1] (linear scan).

The encoder/decoder state lives in small int64 numpy arrays and the per-token work is one njit
call: ``Encoder.encode_logits`` / ``Decoder.decode_logits`` quantize the logits (cdf.quantize_into,
the same compiled function on both sides), build the cumulative range and code the symbol.
Scratch buffers for the frequency table are shared per vocabulary size (module level; njit
kernels hold the GIL, so calls never overlap) - nothing is allocated per token.
"""
from __future__ import annotations

import hashlib

import numpy as np
from numba import njit

from . import cdf as _cdf
from .cdf import PRECISION_BITS, TOTAL, quantize_into

HALF = 1 << 31
QUARTER = 1 << 30
THREE_QUARTERS = 3 << 30
TOP = (1 << 32) - 1

# encoder state slots
E_LOW, E_HIGH, E_PENDING, E_NBYTES, E_ACC, E_NACC, E_ERR = range(7)
# decoder state slots
D_LOW, D_HIGH, D_VALUE, D_BITPOS, D_ERR = range(5)

_INITIAL_BUFFER = 256


# ----------------------------------------------------------------------------- encoder kernels

@njit(cache=True)
def _reserve(st, buf):
    """buf, grown (amortised doubling) if it has less room than one symbol or the finish can
    take: one symbol emits at most pending + 26 bits (its range keeps >= 64 of the 2^32 values,
    so at most 26 doublings restore it), so pending / 8 + 8 bytes always suffice.  Every CPU
    kernel that codes calls it first; the steps below never allocate (mixer/device.py runs them
    on a device, with buffers sized for 4 bytes per token)."""
    n = st[E_NBYTES]
    need = n + (st[E_PENDING] >> 3) + 8
    if need <= buf.shape[0]:
        return buf
    nb = np.zeros(max(2 * buf.shape[0], need, 64), dtype=np.uint8)
    nb[:n] = buf[:n]
    return nb


@njit(cache=True)
def _write_byte(st, buf, byte):
    n = st[E_NBYTES]
    if n < buf.shape[0]:                        # always after _reserve; a full fixed buffer
        buf[n] = byte                           # drops the byte and its count tells
    st[E_NBYTES] = n + 1


@njit(cache=True)
def _put_bit(st, buf, bit):
    acc = (st[E_ACC] << 1) | bit
    k = st[E_NACC] + 1
    if k == 8:
        _write_byte(st, buf, acc)
        acc = 0
        k = 0
    st[E_ACC] = acc
    st[E_NACC] = k


@njit(cache=True)
def _emit(st, buf, bit):
    """Emit bit followed by the pending (opposite) bits."""
    _put_bit(st, buf, bit)
    nbit = 1 - bit
    for _ in range(st[E_PENDING]):
        _put_bit(st, buf, nbit)
    st[E_PENDING] = 0


@njit(cache=True)
def _encode_range(st, buf, c_lo, c_hi):
    """Code the cumulative range [c_lo, c_hi) of TOTAL (0 <= c_lo < c_hi <= TOTAL); buf must
    have _reserve's room."""
    low = st[E_LOW]
    high = st[E_HIGH]
    rng = high - low + 1
    high = low + ((rng * c_hi) >> PRECISION_BITS) - 1
    low = low + ((rng * c_lo) >> PRECISION_BITS)
    while True:
        if high < HALF:
            _emit(st, buf, 0)
        elif low >= HALF:
            _emit(st, buf, 1)
            low -= HALF
            high -= HALF
        elif low >= QUARTER and high < THREE_QUARTERS:
            st[E_PENDING] += 1
            low -= QUARTER
            high -= QUARTER
        else:
            break
        low = low << 1
        high = (high << 1) | 1
    st[E_LOW] = low
    st[E_HIGH] = high


@njit(cache=True)
def _enc_freqs_kernel(st, buf, freqs, sym):
    """Validate freqs (all >= 1, total == TOTAL) and code sym; on error set st[E_ERR]."""
    n = freqs.shape[0]
    tot = 0
    c_lo = 0
    fmin = TOTAL
    for i in range(n):
        f = freqs[i]
        if i == sym:
            c_lo = tot
        tot += f
        fmin = min(fmin, f)
    if tot != TOTAL or fmin < 1 or sym < 0 or sym >= n:
        st[E_ERR] = 1
        return buf
    buf = _reserve(st, buf)
    _encode_range(st, buf, c_lo, c_lo + freqs[sym])
    return buf


@njit(cache=True)
def _enc_bit_kernel(st, buf, f1, bit):
    """Code bit with the two-symbol table (TOTAL - f1, f1), 1 <= f1 < TOTAL."""
    buf = _reserve(st, buf)
    if bit:
        _encode_range(st, buf, TOTAL - f1, TOTAL)
    else:
        _encode_range(st, buf, 0, TOTAL - f1)
    return buf


@njit(cache=True)
def _enc_uniform_kernel(st, buf, value, nbits):
    shift = PRECISION_BITS - nbits
    buf = _reserve(st, buf)
    _encode_range(st, buf, value << shift, (value + 1) << shift)
    return buf


@njit(cache=True)
def _finish(st, buf):
    """Terminate the stream (buf must have _reserve's room)."""
    st[E_PENDING] += 1
    if st[E_LOW] < QUARTER:
        _emit(st, buf, 0)
    else:
        _emit(st, buf, 1)
    if st[E_NACC] > 0:                          # pad the last byte with zero bits
        _write_byte(st, buf, st[E_ACC] << (8 - st[E_NACC]))
        st[E_ACC] = 0
        st[E_NACC] = 0
    n = min(st[E_NBYTES], buf.shape[0])
    while n > 0 and buf[n - 1] == 0:            # zero bytes at the end carry no information
        n -= 1
    if st[E_NBYTES] <= buf.shape[0]:            # else kept as is: the device reports it
        st[E_NBYTES] = n


@njit(cache=True)
def _enc_finish_kernel(st, buf):
    buf = _reserve(st, buf)
    _finish(st, buf)
    return buf


# ----------------------------------------------------------------------------- decoder kernels

@njit(cache=True)
def _get_bit(st, data):
    pos = st[D_BITPOS]
    st[D_BITPOS] = pos + 1
    j = pos >> 3
    if j >= data.shape[0]:
        return 0                                # zero bits past the end
    return (np.int64(data[j]) >> (7 - (pos & 7))) & 1


@njit(cache=True)
def _dec_init_kernel(st, data):
    st[D_LOW] = 0
    st[D_HIGH] = TOP
    st[D_BITPOS] = 0
    st[D_ERR] = 0
    v = 0
    for _ in range(32):
        v = (v << 1) | _get_bit(st, data)
    st[D_VALUE] = v


@njit(cache=True)
def _dec_count(st):
    """The cumulative count the next symbol's range must contain, in [0, TOTAL)."""
    low = st[D_LOW]
    rng = st[D_HIGH] - low + 1
    count = (((st[D_VALUE] - low + 1) << PRECISION_BITS) - 1) // rng
    # low <= value <= high always holds, so this clamp is a no-op; it is a second line of defence.
    if count < 0:
        count = 0
    elif count >= TOTAL:
        count = TOTAL - 1
    return count


@njit(cache=True)
def _dec_update(st, data, c_lo, c_hi):
    low = st[D_LOW]
    high = st[D_HIGH]
    value = st[D_VALUE]
    rng = high - low + 1
    high = low + ((rng * c_hi) >> PRECISION_BITS) - 1
    low = low + ((rng * c_lo) >> PRECISION_BITS)
    while True:
        if high < HALF:
            pass
        elif low >= HALF:
            low -= HALF
            high -= HALF
            value -= HALF
        elif low >= QUARTER and high < THREE_QUARTERS:
            low -= QUARTER
            high -= QUARTER
            value -= QUARTER
        else:
            break
        low = low << 1
        high = (high << 1) | 1
        value = (value << 1) | _get_bit(st, data)
    st[D_LOW] = low
    st[D_HIGH] = high
    st[D_VALUE] = value


@njit(cache=True)
def _find_symbol(freqs, count):
    """(s, cum[s]) with cum[s] <= count < cum[s + 1]; s is clamped to the last symbol."""
    return _find_from(freqs, 0, 0, count)


@njit(cache=True)
def _find_from(freqs, s, cum, count):
    """_find_symbol's walk from symbol s, whose cum[s] is cum (the device's block of threads
    starts it at the chunk that holds count)."""
    n = freqs.shape[0]
    while s < n - 1:
        nxt = cum + freqs[s]
        if count < nxt:
            break
        cum = nxt
        s += 1
    return s, cum


@njit(cache=True)
def _freqs_valid(freqs):
    tot = 0
    fmin = TOTAL
    for i in range(freqs.shape[0]):
        tot += freqs[i]
        fmin = min(fmin, freqs[i])
    return freqs.shape[0] >= 1 and tot == TOTAL and fmin >= 1


@njit(cache=True)
def _dec_freqs_kernel(st, data, freqs):
    if not _freqs_valid(freqs):
        st[D_ERR] = 1
        return -1
    return _decode_symbol(st, data, freqs, _dec_count(st))


@njit(cache=True)
def _dec_bit_kernel(st, data, f1):
    bit = 1 if _dec_count(st) >= TOTAL - f1 else 0
    if bit:
        _dec_update(st, data, TOTAL - f1, TOTAL)
    else:
        _dec_update(st, data, 0, TOTAL - f1)
    return bit


@njit(cache=True)
def _dec_uniform_kernel(st, data, nbits):
    shift = PRECISION_BITS - nbits
    v = _dec_count(st) >> shift
    _dec_update(st, data, v << shift, (v + 1) << shift)
    return v


# ----------------------------------------------------------------------------- fused kernels
#
# Numba's on-disk cache is keyed on the source of the file that defines a function, not on the
# files of the functions it calls: after an edit of cdf.py (or a package upgrade that changes
# cdf.py but not this file) the cached fused kernels would keep the OLD quantizer compiled in,
# and in one process stale and fresh copies of the same mangled symbol can even shadow each
# other.  The fused kernels are therefore closures over a hash of cdf.py: numba includes closure
# values in its cache key, so any change to cdf.py recompiles them.

def _source_stamp(*sources) -> int:
    """A hash of the source files of these modules (or paths); an unreadable one counts as empty."""
    h = hashlib.sha256()
    for src in sources:
        try:
            with open(getattr(src, "__file__", src), "rb") as fh:
                h.update(fh.read())
        except (OSError, TypeError):
            pass
    return int.from_bytes(h.digest()[:7], "little")


@njit(cache=True)
def _encode_symbol(st, buf, freqs, sym):
    """Code symbol sym of the frequency table freqs (total TOTAL); buf must have _reserve's
    room."""
    c_lo = 0
    for i in range(sym):
        c_lo += freqs[i]
    _encode_range(st, buf, c_lo, c_lo + freqs[sym])


@njit(cache=True)
def _decode_symbol(st, data, freqs, count):
    """The symbol of freqs whose range holds count (from _dec_count), consumed."""
    s, c_lo = _find_symbol(freqs, count)
    _dec_update(st, data, c_lo, c_lo + freqs[s])
    return s


def _make_fused_kernels(cdf_stamp):
    @njit(cache=True)
    def enc_logits_kernel(st, buf, logits, sym, freqs, p):
        """Fused: quantize logits into the scratch freqs, then code sym."""
        _ = cdf_stamp                           # part of the cache key (see above)
        quantize_into(logits, freqs, p)
        buf = _reserve(st, buf)
        _encode_symbol(st, buf, freqs, sym)
        return buf

    @njit(cache=True)
    def dec_logits_kernel(st, data, logits, freqs, p):
        """Fused: quantize logits into the scratch freqs, find and consume the symbol."""
        _ = cdf_stamp                           # part of the cache key (see above)
        count = _dec_count(st)
        quantize_into(logits, freqs, p)
        return _decode_symbol(st, data, freqs, count)

    return enc_logits_kernel, dec_logits_kernel


_enc_logits_kernel, _dec_logits_kernel = _make_fused_kernels(_source_stamp(_cdf))


# ----------------------------------------------------------------------------- Python API

_scratch: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared (freqs int64[n], p float64[n]) scratch buffers for vocabulary size n.

    After an encode_logits/decode_logits call, ``scratch(V)[0]`` holds that call's frequencies.
    """
    s = _scratch.get(n)
    if s is None:
        if len(_scratch) >= 8:                  # a handful of vocab sizes at most in practice
            _scratch.clear()
        s = _scratch[n] = (np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float64))
    return s


_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _as_logits(logits) -> np.ndarray:
    if type(logits) is not np.ndarray or (logits.dtype != _F32 and logits.dtype != _F64):
        logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 1 or logits.shape[0] < 1 or logits.shape[0] > TOTAL:
        raise ValueError("logits must be a 1-D array of length 1 .. 2**24")
    return logits


def _as_freqs(freqs) -> np.ndarray:
    freqs = np.asarray(freqs, dtype=np.int64)
    if freqs.ndim != 1:
        raise ValueError("freqs must be 1-D")
    return freqs


class Encoder:
    """Arithmetic encoder; ``finish()`` returns the stream (the encoder is then unusable)."""

    __slots__ = ("_st", "_buf", "_done")

    def __init__(self):
        self._st = np.zeros(8, dtype=np.int64)
        self._st[E_HIGH] = TOP
        self._buf = np.zeros(_INITIAL_BUFFER, dtype=np.uint8)
        self._done = False

    def _check(self):
        if self._done:
            raise ValueError("encoder already finished")

    def encode_freqs(self, freqs: np.ndarray, sym: int) -> None:
        """Code sym with the table freqs (int64[V], every entry >= 1, total exactly 2**24)."""
        self._check()
        self._buf = _enc_freqs_kernel(self._st, self._buf, _as_freqs(freqs), int(sym))
        if self._st[E_ERR]:
            self._st[E_ERR] = 0
            raise ValueError("invalid frequency table (need all >= 1, total 2**24) or symbol")

    def encode_logits(self, logits: np.ndarray, sym: int) -> None:
        """Code sym under quantize(logits) - one njit call (quantize + cumulative + encode)."""
        self._check()
        logits = _as_logits(logits)
        n = logits.shape[0]
        sym = int(sym)
        if not 0 <= sym < n:
            raise ValueError(f"symbol {sym} out of range [0, {n})")
        freqs, p = scratch(n)
        self._buf = _enc_logits_kernel(self._st, self._buf, logits, sym, freqs, p)

    def encode_bit(self, f1: int, bit: int) -> None:
        """Code a bit with the two-symbol table (TOTAL - f1, f1); 1 <= f1 <= TOTAL - 1."""
        self._check()
        f1 = int(f1)
        if not 1 <= f1 < TOTAL:
            raise ValueError("encode_bit: need 1 <= f1 < 2**24")
        self._buf = _enc_bit_kernel(self._st, self._buf, f1, 1 if bit else 0)

    def encode_uniform(self, value: int, nbits: int) -> None:
        """Code an nbits-bit value (0 <= nbits <= 24) with all values equiprobable."""
        self._check()
        value, nbits = int(value), int(nbits)
        if not 0 <= nbits <= PRECISION_BITS or not 0 <= value < (1 << nbits):
            raise ValueError("encode_uniform: need 0 <= nbits <= 24 and 0 <= value < 2**nbits")
        self._buf = _enc_uniform_kernel(self._st, self._buf, value, nbits)

    def cost_bits(self) -> int:
        """Exact length in bits that finish() would produce now (before byte padding/trimming)."""
        st = self._st
        return int(8 * st[E_NBYTES] + st[E_NACC] + st[E_PENDING] + 2)

    def finish(self) -> bytes:
        """Flush (standard termination) and return the stream; the encoder is unusable after."""
        self._check()
        self._done = True
        self._buf = _enc_finish_kernel(self._st, self._buf)
        return self._buf[: self._st[E_NBYTES]].tobytes()


class Decoder:
    """Arithmetic decoder for one Encoder stream; reads zero bits past the end of data."""

    __slots__ = ("_st", "_data")

    def __init__(self, data: bytes):
        self._data = np.frombuffer(bytes(data), dtype=np.uint8).copy()
        self._st = np.zeros(8, dtype=np.int64)
        _dec_init_kernel(self._st, self._data)

    def decode_freqs(self, freqs: np.ndarray) -> int:
        """Decode one symbol coded with the table freqs (int64[V], all >= 1, total 2**24)."""
        s = _dec_freqs_kernel(self._st, self._data, _as_freqs(freqs))
        if s < 0:
            self._st[D_ERR] = 0
            raise ValueError("invalid frequency table (need all >= 1, total 2**24)")
        return int(s)

    def decode_logits(self, logits: np.ndarray) -> int:
        """Decode one symbol coded with quantize(logits) - one njit call."""
        logits = _as_logits(logits)
        freqs, p = scratch(logits.shape[0])
        return int(_dec_logits_kernel(self._st, self._data, logits, freqs, p))

    def decode_bit(self, f1: int) -> int:
        """Decode a bit coded with encode_bit(f1, .)."""
        f1 = int(f1)
        if not 1 <= f1 < TOTAL:
            raise ValueError("decode_bit: need 1 <= f1 < 2**24")
        return int(_dec_bit_kernel(self._st, self._data, f1))

    def decode_uniform(self, nbits: int) -> int:
        nbits = int(nbits)
        if not 0 <= nbits <= PRECISION_BITS:
            raise ValueError("decode_uniform: need 0 <= nbits <= 24")
        return int(_dec_uniform_kernel(self._st, self._data, nbits))
