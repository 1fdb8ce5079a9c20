"""The compiled entry points of the mixer: one coder step (predict, code, learn) per call, the
offline cost loops, and the state set-up kernels, all closures over one source stamp.

Numba's on-disk cache is keyed on the source of the file that defines a function, not on the files
of the functions it calls (see coder._source_stamp).  Invariant: every function of the mixer that
Python calls is made here by _make_kernels and closes over STAMP, a hash of cdf.py, coder.py and
every module of this package, so an edit of any of them recompiles all of it; the helpers in
sparse.py / ensemble.py are plain @njit (never cached alone, so never stale).
tests/test_mixer.py checks that no other mixer function is cached.
"""
from pathlib import Path

import numpy as np
from numba import njit

from .. import cdf as _cdf
from .. import coder as _coder
from ..coder import _dec_count, _decode_symbol, _encode_symbol, _reserve, _source_stamp
from .ensemble import _apm_init, _predict, _update
from .sparse import _learn_sparse, _skip_conf, _skip_predict


STAMP = _source_stamp(_cdf, _coder, *sorted(Path(__file__).parent.glob("*.py")))


@njit
def enc_step(st, buf, logits, sym, freqs, S):
    """One coder step: predict, code sym (buf with coder._reserve's room), learn.  The device's
    kernels (device.py) call it, and the skip step, as they are."""
    _predict(logits, S, freqs)
    _encode_symbol(st, buf, freqs, sym)
    _update(S, sym, np.float64(logits[sym]))


@njit
def enc_skip_step(st, buf, sym, freqs, S):
    _skip_predict(S, freqs)
    _encode_symbol(st, buf, freqs, sym)
    _learn_sparse(S, sym)


def _make_kernels(stamp):
    @njit(cache=True)
    def enc_kernel(st, buf, logits, sym, freqs, S):
        _ = stamp                               # part of the cache key (module docstring)
        buf = _reserve(st, buf)
        enc_step(st, buf, logits, sym, freqs, S)
        return buf

    @njit(cache=True)
    def dec_kernel(st, data, logits, freqs, S):
        _ = stamp
        count = _dec_count(st)
        _predict(logits, S, freqs)
        s = _decode_symbol(st, data, freqs, count)
        _update(S, s, np.float64(logits[s]))
        return s

    @njit(cache=True)
    def cost_kernel(logits2d, toks, freqs, S, out):
        """Offline: predict/update over a cached sequence; out[t] = 2^24 / f(token t)."""
        _ = stamp
        for t in range(toks.shape[0]):
            y = toks[t]
            row = logits2d[t]
            _predict(row, S, freqs)
            out[t] = freqs[y]
            _update(S, y, np.float64(row[y]))

    @njit(cache=True)
    def enc_skip_kernel(st, buf, sym, freqs, S):
        _ = stamp
        buf = _reserve(st, buf)
        enc_skip_step(st, buf, sym, freqs, S)
        return buf

    @njit(cache=True)
    def dec_skip_kernel(st, data, freqs, S):
        _ = stamp
        count = _dec_count(st)
        _skip_predict(S, freqs)
        s = _decode_symbol(st, data, freqs, count)
        _learn_sparse(S, s)
        return s

    @njit(cache=True)
    def cost_skip_kernel(logits2d, toks, freqs, S, out, thr, cap, skipped):
        """Offline: as cost_kernel, with the confidence-skip rule of neural.lockstep (skip when
        _skip_conf >= thr and fewer than cap tokens wait for the LLM); skipped[t] = 1 if so."""
        _ = stamp
        run = 0
        for t in range(toks.shape[0]):
            y = toks[t]
            if thr > 0.0 and run < cap and _skip_conf(S) >= thr:
                _skip_predict(S, freqs)
                out[t] = freqs[y]
                _learn_sparse(S, y)
                skipped[t] = 1
                run += 1
            else:
                row = logits2d[t]
                _predict(row, S, freqs)
                out[t] = freqs[y]
                _update(S, y, np.float64(row[y]))
                run = 0

    @njit(cache=True)
    def skip_conf_kernel(S):
        _ = stamp
        return _skip_conf(S)

    @njit(cache=True)
    def init_kernel(S):
        """SSE nodes and table of a fresh state."""
        _ = stamp
        _apm_init(S.sse.nodes, S.sse.t)

    return (enc_kernel, dec_kernel, cost_kernel, enc_skip_kernel, dec_skip_kernel,
            cost_skip_kernel, skip_conf_kernel, init_kernel)


(enc_kernel, dec_kernel, cost_kernel, enc_skip_kernel, dec_skip_kernel, cost_skip_kernel,
 skip_conf_kernel, init_kernel) = _make_kernels(STAMP)
