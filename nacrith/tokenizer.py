"""Exact tokenization: bytes -> (tokens, escapes) such that pieces + escapes == bytes, always.

The model tokenizer is not a bijection (SmolLM2 drops 0x04, 0x06, 0x13, ...; invalid UTF-8 turns
into U+FFFD). So nothing it returns is trusted: a token is accepted only if its
llama_token_to_piece bytes equal the next input bytes, and every byte not covered by accepted
tokens becomes an *escape* (raw bytes at an original offset), coded outside the LLM stream.

Invariants:
- detokenize(tokens, escapes) == input, checked before the result is returned;
- every accepted token has a non-empty piece, so len(tokens) <= len(input);
- special-token text (``<|endoftext|>``) is tokenized as plain text (parse_special=False);
- escapes are sorted, non-adjacent runs: (offset in the original, raw bytes).
"""
from __future__ import annotations

import numpy as np

from .errors import NacritError

CHUNK = 8192          # re-tokenization after an escape only reaches the end of this chunk


class ExactTokenizer:
    def __init__(self, backend):
        self.backend = backend
        self.pieces = [backend.piece(t) for t in range(backend.n_vocab)]

    # ------------------------------------------------------------ encode side
    def tokenize(self, data: bytes, max_escaped: int | None = None):
        """Return (tokens int32[], escapes [(offset, bytes)]), or None when more than
        `max_escaped` bytes would need escaping (the caller then uses the fallback)."""
        data = bytes(data)
        toks = self.backend.tokenize(data)
        if self._matches(toks, data, 0) == len(data):
            return toks, []
        out: list[np.ndarray] = []
        escapes: list[list] = []
        n_esc = 0
        for a, b in _chunks(data):
            cur = a
            while cur < b:
                toks = self.backend.tokenize(data[cur:b])
                good, end, bad = self._accept(toks, data, cur, b)
                out.append(good)
                if bad is None:
                    break
                # bytes end..bad-1 are fine on their own; byte `bad` is not representable
                if bad > end:
                    sub = self.backend.tokenize(data[end:bad])
                    if self._matches(sub, data, end) == bad:
                        out.append(sub)
                    else:
                        _add_escape(escapes, end, data[end:bad])
                        n_esc += bad - end
                _add_escape(escapes, bad, data[bad:bad + 1])
                n_esc += 1
                if max_escaped is not None and n_esc > max_escaped:
                    return None
                cur = bad + 1
        tokens = np.concatenate(out) if out else np.zeros(0, np.int32)
        escapes = [(o, bytes(r)) for o, r in escapes]
        if self.detokenize(tokens, escapes) != data:  # pragma: no cover - invariant guard
            raise NacritError("internal error: exact tokenization failed to verify")
        return tokens, escapes

    def _matches(self, toks, data: bytes, start: int) -> int:
        """End offset of the input covered exactly by `toks` from `start` (stops at first miss)."""
        off = start
        for t in toks:
            p = self.pieces[t]
            if not p or not data.startswith(p, off):
                break
            off += len(p)
        return off

    def _accept(self, toks, data: bytes, start: int, stop: int):
        """Longest prefix of toks that reproduces data[start:...] within stop.

        Returns (accepted tokens, end offset, first unreproducible byte offset or None)."""
        off, k = start, 0
        for t in toks:
            p = self.pieces[t]
            if not p or off + len(p) > stop or not data.startswith(p, off):
                break
            off += len(p)
            k += 1
        if k == len(toks) and off == stop:
            return toks, off, None
        # locate the first differing byte between the remaining pieces and the data
        rest = b"".join(self.pieces[t] for t in toks[k:])
        m = off
        for i in range(min(len(rest), stop - off)):
            if rest[i] != data[off + i]:
                break
            m += 1
        if m >= stop:
            m = stop - 1
        return toks[:k], off, m

    # ------------------------------------------------------------ decode side
    def detokenize(self, tokens, escapes) -> bytes:
        pieces = self.pieces
        stream = b"".join([pieces[t] for t in tokens.tolist()]) if len(tokens) else b""
        return merge(stream, escapes)


def merge(stream: bytes, escapes) -> bytes:
    """Re-insert escaped runs into the piece stream at their original offsets."""
    if not escapes:
        return stream
    out = bytearray()
    pos = 0
    for off, raw in escapes:
        take = off - len(out)
        if take < 0 or pos + take > len(stream):
            raise NacritError("corrupt escape table (offset out of range)")
        out += stream[pos:pos + take]
        pos += take
        out += raw
    out += stream[pos:]
    return bytes(out)


def _add_escape(escapes: list, off: int, raw: bytes) -> None:
    if escapes and escapes[-1][0] + len(escapes[-1][1]) == off:
        escapes[-1][1] += raw
    else:
        escapes.append([off, bytearray(raw)])


def _chunks(data: bytes):
    """Cut points near CHUNK bytes, after a newline followed by a non-space byte when possible."""
    n, a = len(data), 0
    while a < n:
        b = min(n, a + CHUNK)
        if b < n:
            cut = data.rfind(b"\n", a + CHUNK // 2, b)
            while cut != -1 and cut + 1 < n and data[cut + 1] in b" \t\r\n":
                cut = data.rfind(b"\n", a + CHUNK // 2, cut)
            if cut != -1:
                b = cut + 1
        yield a, b
        a = b
