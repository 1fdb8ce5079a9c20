"""nacrith.progress in-process, on a fake clock and a captured stream (exact renderings): the
bar over bytes (percent, bytes/s, tokens/s, time left), its estimate between segment ends, the
-r job's files, and the per-file summary line. The CLI on a pseudo-terminal: tests/test_cli.py
("progress")."""
import io

import pytest
import tqdm.std

from nacrith import progress as P


@pytest.fixture
def clock(monkeypatch):
    t = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: t[0])
    monkeypatch.setattr(P, "time", lambda: t[0])
    return t


def frames(stream: io.StringIO) -> list:
    """The renderings written so far, one per redraw."""
    return [f for f in stream.getvalue().split("\r") if f]


def test_bar_shows_percent_rates_and_time_left(clock):
    s = io.StringIO()
    bar = P.Bar("a.txt", 20000, stream=s)
    track = bar.file()
    track.segment(20000, 20000)
    clock[0] += 9                       # loading the model: not coding time
    track(1)
    assert s.getvalue() == ""           # nothing before DELAY
    for _ in range(8):
        clock[0] += 0.5
        track(10)
    got = frames(s)
    assert got[0] == ("a.txt:   0%|                                 | 38.0/20.0k "
                      "[00:00<04:22, 76.0B/s]")
    assert got[-1] == ("a.txt:   1%|3                     | 283/20.0k [00:04<04:41, 70.2B/s, "
                       "20.2 tok/s]")
    assert len(got) == 8
    track.segment_done()
    track.finish()
    bar.close()
    assert s.getvalue().endswith("\r" + " " * 80 + "\r")      # the bar is cleared at the end


def test_quick_file_draws_nothing(clock):
    s = io.StringIO()
    bar = P.Bar("a.txt", 100, stream=s)
    track = bar.file()
    track.segment(100, 100)
    track(5)
    clock[0] += 0.2
    track.segment_done()
    track.finish()
    bar.write("a.txt : 50.0% (100 => 50 bytes, a.txt.nc)")  # a -r job's summary: no bar drawn
    bar.update(100)
    bar.close()
    assert s.getvalue() == "\r\ra.txt : 50.0% (100 => 50 bytes, a.txt.nc)\n"


def test_estimate_stays_below_the_segment_end_and_is_exact_at_it(clock):
    bar = P.Bar("x", 1000, stream=io.StringIO())
    track = bar.file()
    track.segment(600, 600)                     # compress: input bytes = original bytes
    track(10)
    assert bar.count() == 35                    # 10 tokens * PRIOR bytes per token
    track(1000)
    assert bar.count() == 594                   # CAP of the segment, never past its end
    track.segment_done()
    assert bar.count() == 600
    assert bar.bytes_per_token() == 600 / 1010  # measured on the finished neural segment
    track.segment(150, 400)                     # decompress: 150 archive bytes of 400 original
    track(101)
    assert bar.count() == pytest.approx(600 + 150 * 101 * (600 / 1010) / 400)
    track.segment_done()
    track.segment(50, 50)                       # a zstd segment: no tokens, exact at its end
    assert bar.count() == 750
    track.segment_done()
    assert bar.count() == 800
    track.finish()
    assert bar.count() == 0 and bar.tqdm.n == 800   # the owner commits; the bar never goes back
    bar.update(800)
    assert bar.count() == 800 and bar.tqdm.n == 800
    bar.close()


def test_job_bar_shows_files_and_lines_never_mix_with_it(clock):
    s = io.StringIO()
    bar = P.Bar("compress", 700, stream=s, delay=0)
    bar.set_postfix_str("0/2 files")            # batch.py's calls
    track = bar.file()
    track.segment(400, 400)
    track(1)
    clock[0] += 1
    track(40)
    track.segment_done()
    track.finish()
    bar.write("d/a.txt : 22.2% (400 => 89 bytes, d/a.txt.nc)")
    bar.update(400)
    bar.set_postfix_str("1/2 files")
    clock[0] += 1
    bar.update(300)
    bar.set_postfix_str("2/2 files")
    bar.close()
    got = frames(s)
    assert got == [
        "compress:   0%|                                       | 0.00/700 [00:00<?, ?B/s]",
        "compress:  20%|##2        | 143/700 [00:01<00:03, 143B/s, 0/2 files, 41.0 tok/s]",
        " " * 80,                                   # cleared for the line, then redrawn
        "d/a.txt : 22.2% (400 => 89 bytes, d/a.txt.nc)\n",
        "compress:  57%|######2    | 400/700 [00:01<00:02, 143B/s, 0/2 files, 41.0 tok/s]",
        "compress: 100%|###########| 700/700 [00:02<00:00, 387B/s, 1/2 files, 20.5 tok/s]",
        " " * 80]


def test_summary_lines():
    assert P.summary("compress", "FILE", 2343, 20000, "FILE.nc") == \
        "FILE : 11.7% (20000 => 2343 bytes, FILE.nc)"
    assert P.summary("decompress", "FILE.nc", 2343, 20000, "FILE") == \
        "FILE.nc : 11.7% (2343 => 20000 bytes, FILE)"
    assert P.summary("compress", "empty", 13, 0, "empty.nc") == \
        "empty : - (0 => 13 bytes, empty.nc)"
