"""Continuous batching (nacrith/hub.py) on the CPU engine and the tiny model: segments coded at
once through one shared backend give exactly the payloads each gives alone; lanes come back when
a coder ends, also when it fails. The same through the device engine under the CUDA simulator:
test_device.py (scripts/gpu_check.py --sim); through worker processes: test_scale.py."""
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))

from gpu_check import byte_tokenizer  # noqa: E402

from nacrith import hub, neural  # noqa: E402
from nacrith.errors import NacritError  # noqa: E402
from nacrith.mixer import DEFAULTS as MIX, column_table  # noqa: E402
from nacrith.portable.backend import PortableBackend  # noqa: E402
from nacrith.portable.tiny import write_tiny_llama  # noqa: E402

WIN = dict(ctx=16, slide=4, n_keep=2, threads=1)         # slides within a few dozen tokens
TEXT = (b"The quick brown fox jumps over the lazy dog; \r\n\x00\xff caf\xc3\xa9. " * 8)
LANES = [1, 2, 1, 3, 1, 2]
TEXTS = [TEXT[3 * i:3 * i + 20 + 31 * i] for i in range(len(LANES))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("hub") / "tiny.gguf", n_vocab=320,
                                n_ff=64))


def _engine(path, lanes):
    b = PortableBackend(path, lanes=lanes, group=MIX.skip_cap + 1, **WIN)
    t = byte_tokenizer(b)
    return SimpleNamespace(backend=b, tokenizer=t, column_table=column_table(t.pieces),
                           params={"lanes": lanes})


@pytest.fixture(scope="module")
def alone(tiny):
    """Each text coded by an engine of its own (the ensemble: catch-up groups of many tokens)."""
    return [neural.encode_segment(_engine(tiny, k), t, k, len(t), mix=MIX)
            for t, k in zip(TEXTS, LANES)]


def _at_once(fn, n, stagger=0.01):
    out, errs = [None] * n, [None] * n

    def run(i):
        time.sleep(stagger * i)
        try:
            out[i] = fn(i)
        except BaseException as e:      # noqa: BLE001
            errs[i] = e
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out, errs


def test_coders_at_once_equal_each_alone_and_give_their_lanes_back(tiny, alone):
    """6 coders of 1-3 lanes on a backend of 5 lanes (some wait for lanes), started at different
    times: every payload equals the text coded alone, the feeds were shared (fewer backend feeds
    than the coders' own), every lane is free at the end; then all decode at once."""
    h = hub.Hub(_engine(tiny, 5))
    own = []

    def enc(i):
        e = h.engine_for(LANES[i])
        assert (e.backend.lanes, e.params["lanes"], e.tokenizer) == \
            (LANES[i], LANES[i], h.engine.tokenizer)
        calls = []
        feed = e.backend.feed
        e.backend.feed = lambda lanes, groups: calls.append(1) or feed(lanes, groups)
        r = neural.encode_segment(e, TEXTS[i], LANES[i], len(TEXTS[i]), mix=MIX)
        own.append(len(calls))
        return r
    got, errs = _at_once(enc, len(TEXTS))
    assert errs == [None] * len(TEXTS)
    assert got == alone
    assert h.batches < sum(own) and max(own) <= h.batches
    assert (sorted(h.free), h.stepping, h.pending) == ([0, 1, 2, 3, 4], 0, [])
    back, errs = _at_once(lambda i: neural.decode_lanes(h.engine_for(LANES[i]), alone[i],
                                                        mix=MIX), len(TEXTS))
    assert errs == [None] * len(TEXTS)
    assert back == TEXTS


def test_a_failing_coder_gives_its_lanes_back_and_the_others_finish(tiny, alone):
    """A coder whose coding raises (here: its mixer, on its 5th token) ends with that error; its
    lanes come back at once, so the others neither wait for it nor change a bit."""
    h = hub.Hub(_engine(tiny, 4))

    def enc(i):
        e = h.engine_for(LANES[i])
        if i == 1:
            real, n = e.backend.feed, []

            def feed(lanes, groups):
                n.append(1)
                if len(n) == 5:
                    raise RuntimeError("mixer failed")
                return real(lanes, groups)
            e.backend.feed = feed
        return neural.encode_segment(e, TEXTS[i], LANES[i], len(TEXTS[i]), mix=MIX)
    got, errs = _at_once(enc, 4)
    assert [type(e).__name__ if e else None for e in errs] == [None, "RuntimeError", None, None]
    assert [got[i] for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]
    assert (sorted(h.free), h.stepping) == ([0, 1, 2, 3], 0)


def test_a_failed_shared_feed_reaches_its_coders_and_the_hub_goes_on(tiny, alone):
    """A backend failure is raised in every coder of that batch (a clear error, never a hang or
    wrong logits); later coders are served as before."""
    h = hub.Hub(_engine(tiny, 3))
    real = h.backend.feed

    def feed(lanes, groups):
        if len(lanes) == 3:                 # the first batch of all three coders
            h.backend.feed = real
            raise NacritError("device failed")
        return real(lanes, groups)
    h.backend.feed = feed
    ready = threading.Barrier(3, timeout=30)

    def enc(i):                             # all three step before any feeds: one first batch
        e = h.engine_for(1)
        reset = e.backend.reset
        e.backend.reset = lambda: (reset(), ready.wait())
        return neural.encode_segment(e, TEXTS[i], 1, len(TEXTS[i]), mix=MIX)
    got, errs = _at_once(enc, 3, stagger=0)
    assert [str(e) for e in errs if e is not None] == ["device failed"] * 3
    assert (sorted(h.free), h.stepping) == ([0, 1, 2], 0)
    e = h.engine_for(2)
    assert neural.encode_segment(e, TEXTS[1], 2, len(TEXTS[1]), mix=MIX) == alone[1]


def test_a_view_resets_only_its_own_lanes(tiny):
    """reset(lanes) empties those lanes' windows and no other (PortableBackend; DeviceBackend
    shares the code path under the simulator)."""
    b = PortableBackend(tiny, lanes=3, **WIN)
    b.feed([0, 1, 2], [[0, 5], [0], [0, 7, 9]])
    b.reset(np.array([0, 2]))
    assert b.pos.tolist() == [0, 1, 0]
    b.reset()
    assert b.pos.tolist() == [0, 0, 0]
