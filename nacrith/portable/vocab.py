"""Token pieces from the GGUF vocabulary, without llama.cpp.

Invariant: piece(t) == llama.cpp's llama_token_to_piece(t, special=True, lstrip=0) for every
token t (tested against llama.cpp over the whole vocabulary of the default model):
- CONTROL / UNKNOWN / USER_DEFINED tokens render their text as stored;
- NORMAL tokens: BPE ("gpt2") vocabularies undo the GPT-2 byte-to-unicode mapping per code
  point (a code point outside the mapping renders as "[UNK_BYTE_0x<hex>" + text + "]", like
  llama.cpp); SPM ("llama") vocabularies replace U+2581 by a space;
- BYTE tokens (SPM "<0xXX>") render that byte; UNUSED and anything else render nothing.
"""
from __future__ import annotations

from ..errors import NacritError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _gpt2_unicode_to_byte() -> dict:
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_U2B = _gpt2_unicode_to_byte()


def _bpe_decode(raw: bytes) -> bytes:
    text = raw.decode("utf-8", "replace")
    out = bytearray()
    for ch in text:
        b = _U2B.get(ch)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + raw + b"]"
    return bytes(out)


def _spm_byte(raw: bytes):
    t = raw.decode("utf-8", "replace")
    if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        try:
            return bytes([int(t[3:5], 16)])
        except ValueError:
            return None
    return None


def build_pieces(texts: list, types: list, model: str) -> list:
    """texts: raw token bytes; types: GGUF token types (or empty: all NORMAL); model: tokenizer
    model name ("gpt2" or "llama")."""
    if model not in ("gpt2", "llama"):
        raise NacritError(f"portable engine: tokenizer model '{model}' is not supported "
                          "(gpt2 / llama only)")
    if types and len(types) != len(texts):
        raise NacritError("portable engine: token type table has the wrong length")
    out = []
    for i, raw in enumerate(texts):
        ty = int(types[i]) if types else NORMAL
        if ty in (CONTROL, UNKNOWN, USER_DEFINED):
            out.append(bytes(raw))
        elif ty == NORMAL:
            out.append(_bpe_decode(raw) if model == "gpt2"
                       else bytes(raw).replace("\u2581".encode(), b" "))
        elif ty == BYTE and model == "llama":
            out.append(_spm_byte(raw) or b"")
        else:
            out.append(b"")
    return out
