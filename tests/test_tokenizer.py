"""Exact tokenization with the real default model: pieces + escapes reproduce every input."""
import pytest

from nacrith import models
from nacrith.backend import Backend
from nacrith.errors import NacritError
from nacrith.tokenizer import ExactTokenizer, merge


@pytest.fixture(scope="module")
def tok():
    b = Backend(str(models.resolve(None)), ctx=256, lanes=1, threads=1, slide=64, n_keep=1)
    return ExactTokenizer(b)


def roundtrip(tok, data):
    toks, esc = tok.tokenize(data)
    assert tok.detokenize(toks, esc) == data
    assert all(len(tok.pieces[t]) > 0 for t in toks.tolist())
    return toks, esc


def test_dropped_control_bytes_are_escaped(tok):
    # SmolLM2's tokenizer silently drops these byte values.
    data = b"one\x04two\x06three\x13four\x14five\x16six\x1dseven"
    toks, esc = roundtrip(tok, data)
    assert esc == [(3, b"\x04"), (7, b"\x06"), (13, b"\x13"), (18, b"\x14"), (23, b"\x16"),
                   (27, b"\x1d")]


def test_invalid_utf8_is_escaped(tok):
    data = b"caf\xc3\xa9 ok \xff\xfe bad \xc3( end"
    toks, esc = roundtrip(tok, data)
    assert esc == [(9, b"\xff\xfe"), (16, b"\xc3")]


def test_special_token_text_is_plain_text(tok):
    data = b"a <|endoftext|> b <|im_start|>user\n<|im_end|>"
    toks, esc = roundtrip(tok, data)
    assert esc == []
    special = {tok.backend.bos, 0, 2}
    assert not special & set(toks.tolist())


def test_long_tokens_and_crlf(tok):
    data = b"x" + b" " * 100 + b"y\r\n" + b"-" * 80 + b"\r\n\tdef f():\r\n" + b" " * 64 + b"pass\r\n"
    toks, esc = roundtrip(tok, data)
    assert esc == []
    assert max(len(tok.pieces[t]) for t in toks.tolist()) > 32


def test_all_byte_values(tok):
    data = bytes(range(256)) * 3
    toks, esc = roundtrip(tok, data)
    assert sum(len(r) for _, r in esc) < len(data)


ABOVE_UNICODE = b"a\xf4\x90\x80\x80b\xf7\xbf\xbf\xbfc\xf5\x80\x80\x80"


def test_code_points_above_unicode_do_not_abort():
    # llama.cpp throws std::invalid_argument ("invalid codepoint") from its pre-tokenizer on
    # these shapes and the host process aborts; run in a child so a regression fails cleanly.
    import subprocess
    import sys
    code = ("import sys; from nacrith import models; from nacrith.backend import Backend\n"
            "from nacrith.tokenizer import ExactTokenizer\n"
            "t = ExactTokenizer(Backend(str(models.resolve(None)), ctx=256, lanes=1, threads=1,"
            " slide=64, n_keep=1))\n"
            f"d = {ABOVE_UNICODE!r}\n"
            "toks, esc = t.tokenize(d)\n"
            "assert t.detokenize(toks, esc) == d\n"
            "print(esc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-400:]
    assert r.stdout.strip() == ("[(1, b'\\xf4\\x90\\x80\\x80'), (6, b'\\xf7\\xbf\\xbf\\xbf'), "
                                "(11, b'\\xf5\\x80\\x80\\x80')]")


def test_escape_budget_gives_up(tok):
    assert tok.tokenize(b"\x04" * 100, max_escaped=10) is None


def test_merge_rejects_bad_offsets():
    assert merge(b"abcd", [(1, b"X"), (4, b"YZ")]) == b"aXbcYZd"
    with pytest.raises(NacritError):
        merge(b"ab", [(5, b"X")])
