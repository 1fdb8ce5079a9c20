"""Library API: threads, atomic file helpers, typed options and results, error classes."""
import io
import os
import threading

import pytest

import nacrith
from nacrith import api, engine

from helpers import corpus


@pytest.fixture(scope="module")
def texts():
    """Four different short texts (a few hundred bytes each)."""
    return [corpus("alice29.txt")[2000:2400], corpus("xargs.1")[2000:2400],
            corpus("fields.c")[:450], corpus("alice29.txt")[9000:9500]]


def run_threads(fn, items):
    """fn(item) in one thread per item, started together; results (or exceptions) in order."""
    out = [None] * len(items)
    go = threading.Barrier(len(items))

    def body(i):
        go.wait()
        try:
            out[i] = fn(items[i])
        except BaseException as e:      # noqa: BLE001 - reported by the assertion below
            out[i] = e
    ts = [threading.Thread(target=body, args=(i,)) for i in range(len(items))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    assert not any(t.is_alive() for t in ts)
    return out


# ---------------------------------------------------------------- threads
def test_four_threads_compress_and_decompress_at_once(texts):
    """4 threads x different texts, the same settings (so the same engine key): every archive
    equals the one-thread archive and decodes to its exact bytes, also 4 at once."""
    single = [nacrith.compress(t, threads=1) for t in texts]
    assert all(nacrith.info(io.BytesIO(b))["segments"][0]["method"] == "neural" for b in single)
    blobs = run_threads(lambda t: nacrith.compress(t, threads=1), texts)
    assert blobs == single
    back = run_threads(nacrith.decompress, single)
    assert back == texts
    both = run_threads(lambda it: nacrith.decompress(nacrith.compress(it, threads=1)), texts)
    assert both == texts


def test_engine_pool_leases_one_engine_per_thread_and_bounds_idle():
    """Unit test of nacrith.engine with stand-in engines: no two threads ever hold the same
    engine, a held engine is never dropped, at most max_idle idle ones are kept."""
    pool = engine.EnginePool(max_idle=2)
    made, held, lock = [], set(), threading.Lock()
    errors = []

    def load():
        e = object()
        made.append(e)
        return e

    def body(key):
        for _ in range(50):
            with pool.scope():
                e = pool.get(key, load)
                with lock:
                    if id(e) in held:
                        errors.append("shared")
                    held.add(id(e))
                assert pool.get(key, load) is e         # same thread, same key: same engine
                with lock:
                    held.discard(id(e))
    ts = [threading.Thread(target=body, args=(k % 2,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert len(pool.idle) <= 2 and pool.held() is None
    with pool.scope():
        a = pool.get("a", load)
        b = pool.get("b", load)     # another key: "a" goes back to idle first
        assert a is not b and pool.held() is b
        assert any(e is a for _, e in pool.idle)
