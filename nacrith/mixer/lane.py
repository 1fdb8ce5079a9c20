"""LaneModel: the Python face of one lane's ensemble (state + the compiled coder steps).

Invariants: one LaneModel per lane and segment, fresh at segment start; encoder and decoder call
the same compiled kernels in the same order (encode/decode for a token with logits,
encode_skip/decode_skip for one coded without the LLM), so their states stay identical.
"""
from __future__ import annotations

import numpy as np

from .. import coder as _coder
from . import kernels as K
from .params import MixParams
from .state import new_state


class LaneModel:
    """Online model state of one lane for one segment."""

    def __init__(self, mp: MixParams, n_vocab: int, n_tokens: int, tcol=None):
        """tcol: column_table(token pieces), required when mp.col_lr (engine.column_table())."""
        if mp.col_lr and (tcol is None or tcol.shape != (3, n_vocab)):
            raise ValueError("the column bias needs the token column table of the model")
        self.S = new_state(mp, n_vocab, n_tokens, tcol)
        K.init_kernel(self.S)
        self.n_vocab = n_vocab
        self.freqs = np.empty(n_vocab, dtype=np.int64)

    def _row(self, logits) -> np.ndarray:
        logits = np.ascontiguousarray(_coder._as_logits(logits))
        if logits.shape[0] != self.n_vocab:
            raise ValueError(f"logits row has {logits.shape[0]} entries, expected {self.n_vocab}")
        return logits

    def encode(self, encoder, logits, sym: int) -> None:
        """Code sym with the ensemble distribution on encoder (coder.Encoder), then learn it."""
        encoder._check()
        logits = self._row(logits)
        sym = int(sym)
        if not 0 <= sym < self.n_vocab:
            raise ValueError(f"symbol {sym} out of range [0, {self.n_vocab})")
        encoder._buf = K.enc_kernel(encoder._st, encoder._buf, logits, sym, self.freqs, self.S)

    def decode(self, decoder, logits) -> int:
        """Decode one symbol from decoder (coder.Decoder), then learn it."""
        return int(K.dec_kernel(decoder._st, decoder._data, self._row(logits), self.freqs, self.S))

    def costs(self, logits2d, toks, skip_thr: float = 0.0, skip_cap: int = 0):
        """Offline evaluation: the frequency of each true token (bits = 24 - log2(f)); with
        skip_thr > 0 also the mask of the tokens the confidence skip would code."""
        out = np.zeros(len(toks), dtype=np.int64)
        toks = np.asarray(toks, dtype=np.int64)
        if skip_thr <= 0.0:
            K.cost_kernel(logits2d, toks, self.freqs, self.S, out)
            return out
        skipped = np.zeros(len(toks), dtype=np.int8)
        K.cost_skip_kernel(logits2d, toks, self.freqs, self.S, out, skip_thr, skip_cap, skipped)
        return out, skipped

    # ---- confidence skip (neural.lockstep): code a token without the LLM
    def skip_conf(self) -> float:
        """Match-model confidence in its prediction of the next token (0.0: no prediction)."""
        return float(K.skip_conf_kernel(self.S))

    def encode_skip(self, encoder, sym: int) -> None:
        encoder._check()
        sym = int(sym)
        if not 0 <= sym < self.n_vocab:
            raise ValueError(f"symbol {sym} out of range [0, {self.n_vocab})")
        encoder._buf = K.enc_skip_kernel(encoder._st, encoder._buf, sym, self.freqs, self.S)

    def decode_skip(self, decoder) -> int:
        return int(K.dec_skip_kernel(decoder._st, decoder._data, self.freqs, self.S))
