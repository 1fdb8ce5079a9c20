"""LLM backend: one llama.cpp context, K sequences ("lanes"), logits for exactly the fed positions.

Invariants (the decoder can only reproduce logits from the identical sequence of calls):
- one context per (model, ctx, lanes, threads, device, swa_full); n_threads == n_threads_batch;
  flash attention off; non-unified KV so each lane owns `ctx` cells;
- swa_full (llama.cpp's own default: on) gives the sliding-window layers of a model with SWA
  (Gemma-3) a full `ctx`-cell cache; off, they get ~n_swa + n_batch cells, cells that fell out
  of the window are reused, and the logits differ (another KV layout), so the setting is part of
  the archive (key 34). A model without SWA has one plain cache either way (`self.swa_full` is
  then None: the setting does not apply and is never recorded);
- every lane starts with the BOS token at position 0; `feed` gives each listed lane its list of
  tokens at that lane's next positions, lanes in the given order, in ONE llama_decode call, and
  requests logits for the last token of each list (and nothing else); `step` is one token per lane;
- when a lane's window cannot take its tokens, `feed` first slides it natively (as often as
  needed): positions [n_keep, n_keep+slide) are removed and later positions shifted down by
  `slide` (llama_memory_seq_rm + seq_add), so the first n_keep positions (the BOS attention sink)
  are never dropped and nothing is re-evaluated. With swa_full off the slide works the same way
  (llama.cpp's llama_kv_cache_iswa applies seq_rm and seq_add to both of its caches and K-shifts
  each; llama_memory_can_shift says no only because cells the small SWA cache already dropped
  are not restored): the only cells a slide brings nearer to later queries are the n_keep
  prefix, which the SWA layers of the full-size cache mask anyway once the window is past
  n_swa, so the two modes attend to the same positions whenever ctx - slide >= n_swa + n_keep
  + group (with the default slide, every ctx >= 768); either way encoder and decoder make the same
  calls, so the result is deterministic;
- native threads (model load, decode) start with SIGINT/SIGTERM/SIGHUP blocked (_signals.py);
- `reset` clears all lanes; encoder and decoder call it before every segment.
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
import threading

import numpy as np

from ._signals import blocked
from .errors import BadOption, ModelUnavailable, NacritError

_initialised = False
_log_cb = None
_init_lock = threading.Lock()       # llama_backend_init once, even if threads race to load


# A 4-byte UTF-8 shape whose code point is above U+10FFFF (lead F4 with 90..BF, or F5..F7):
# llama.cpp's pre-tokenizer decodes it without complaint, then throws std::invalid_argument
# ("invalid codepoint") from C++ code that cannot propagate it, and the process aborts.
_ABOVE_UNICODE = re.compile(rb"(?:\xf4[\x90-\xbf]|[\xf5-\xf7][\x80-\xbf])[\x80-\xbf]{2}")


def llama_tokenize(L, vocab, text: bytes) -> np.ndarray:
    """llama_tokenize that never aborts the process: the lead byte of every code point above
    U+10FFFF is replaced by 0xF8 (never a valid lead, so llama.cpp maps that one byte to U+FFFD).
    The tokens are a proposal only: ExactTokenizer accepts a token only where its piece equals
    the real input bytes, so the replaced byte is escaped and nothing is lost."""
    text = _ABOVE_UNICODE.sub(lambda m: b"\xf8" + m.group()[1:], text)
    cap = len(text) + 16
    while True:
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, text, len(text), arr, cap, False, False)
        if n >= 0:
            return np.frombuffer(arr, dtype=np.int32, count=n).copy()
        cap = -n


def _llama():
    global _initialised, _log_cb
    try:
        with blocked():
            import llama_cpp as L
    except ImportError as e:  # pragma: no cover - install problem
        raise ModelUnavailable(f"llama-cpp-python is not installed ({e})") from None
    with _init_lock:
        if not _initialised:
            _log_cb = L.llama_log_callback(lambda level, text, user: None)  # keep a reference
            L.llama_log_set(_log_cb, ctypes.c_void_p())
            with blocked():
                L.llama_backend_init()
            _initialised = True
    return L


# ggml features, in a fixed order: the fingerprint stores them as a bit mask (compact, since it
# is in every neural archive). Features not listed are appended by name. Never reorder; append.
FEATURES = ["SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2", "AVX512",
            "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "LLAMAFILE", "OPENMP",
            "REPACK", "NEON", "ARM_FMA", "FP16_VA", "MATMUL_INT8", "SVE", "DOTPROD", "SME",
            "KLEIDIAI", "RISCV_V", "VSX", "WASM_SIMD"]


def fingerprint() -> str:
    """Backend profile: what must match for logits to be bit-identical.

    Form: "<llama-cpp-python version> <machine> <feature mask hex>[ <other feature>...]"."""
    L = _llama()
    info = L.llama_print_system_info().decode("utf-8", "replace")
    mask, extra = 0, []
    for part in info.replace("|", "\n").splitlines():
        if "=" not in part:
            continue
        k, _, v = part.rpartition(":")[2].partition("=")
        k, v = k.strip(), v.strip()
        if k in FEATURES and v == "1":
            mask |= 1 << FEATURES.index(k)
        elif v not in ("0", ""):
            extra.append(k if v == "1" else f"{k}={v}")
    return " ".join([L.__version__, platform.machine(), f"{mask:x}", *extra])[:255]


def describe_difference(theirs: str, ours: str) -> str:
    """Human-readable difference between two fingerprints."""
    def parse(fp):
        parts = fp.split(" ")
        if len(parts) < 3:
            return fp, "", set()
        try:
            mask = int(parts[2], 16)
        except ValueError:
            mask = 0
        feats = {f for i, f in enumerate(FEATURES) if mask >> i & 1} | set(parts[3:])
        return parts[0], parts[1], feats
    (v1, m1, f1), (v2, m2, f2) = parse(theirs), parse(ours)
    diffs = []
    if v1 != v2:
        diffs.append(f"llama-cpp-python {v1} vs {v2} here")
    if m1 != m2:
        diffs.append(f"machine {m1} vs {m2} here")
    if f1 - f2:
        diffs.append("features missing here: " + " ".join(sorted(f1 - f2)))
    if f2 - f1:
        diffs.append("extra features here: " + " ".join(sorted(f2 - f1)))
    return "; ".join(diffs) or "fingerprints differ"


class Backend:
    def __init__(self, path: str, *, ctx: int, lanes: int, threads: int, slide: int, n_keep: int,
                 n_gpu_layers: int = 0, main_gpu: int = 0, batch: int = 512, group: int = 1,
                 swa_full: bool = True):
        L = self.L = _llama()
        if not 1 <= n_keep < ctx or not 1 <= slide <= ctx - n_keep:
            raise BadOption(f"bad window settings (ctx={ctx}, slide={slide}, n_keep={n_keep})")
        self.ctx, self.lanes, self.threads = ctx, lanes, threads
        self.slide, self.n_keep = slide, n_keep
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        mp.main_gpu = main_gpu
        with blocked():     # native threads started here or in decode never take our signals
            self.model = L.llama_model_load_from_file(os.fsencode(path), mp)
        if not self.model:
            raise ModelUnavailable(f"{path}: cannot load model (not a GGUF file?)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        bos = L.llama_vocab_bos(self.vocab)
        self.bos = bos if bos >= 0 else L.llama_vocab_eos(self.vocab)
        self.n_swa = L.llama_model_n_swa(self.model)
        self.swa_full = bool(swa_full) if self.n_swa > 0 else None
        cp = L.llama_context_default_params()
        self.n_batch = max(batch, lanes * group)      # group: most tokens fed to a lane at once
        cp.n_ctx = ctx * lanes
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = lanes
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.kv_unified = False
        cp.swa_full = bool(swa_full)
        cp.embeddings = False
        cp.no_perf = True
        with blocked():
            self.lctx = L.llama_init_from_model(self.model, cp)
        if not self.lctx:
            raise NacritError("cannot create llama.cpp context")
        if L.llama_n_ctx_seq(self.lctx) != ctx:
            raise BadOption(f"context size {ctx} not supported (llama.cpp gives "
                              f"{L.llama_n_ctx_seq(self.lctx)} per lane); use a multiple of 256")
        self.mem = L.llama_get_memory(self.lctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        b = self.batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        self._logit = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        self._nseq[:] = 1
        self.pos = np.zeros(lanes, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self.L.llama_memory_clear(self.mem, True)
        self.pos[:] = 0

    def _slide(self, lane: int) -> None:
        L, k, s = self.L, self.n_keep, self.slide
        if not L.llama_memory_seq_rm(self.mem, lane, k, k + s):
            raise NacritError("llama.cpp refused to slide the KV window")
        L.llama_memory_seq_add(self.mem, lane, k + s, -1, -s)
        self.pos[lane] -= s

    def step(self, lanes, tokens) -> np.ndarray:
        """Feed tokens[i] to lanes[i] (one llama_decode); return logits, shape (len(lanes), n_vocab).

        The returned array is a view into llama.cpp's buffer, valid until the next call."""
        return self.feed(lanes, [[t] for t in tokens])

    def feed(self, lanes, groups) -> np.ndarray:
        """Feed the token list groups[i] to lanes[i], all in ONE llama_decode, with logits for
        the last token of each group only; return them, shape (len(lanes), n_vocab).

        A lane whose window cannot take its group first slides (as often as needed); a group
        never exceeds ctx - n_keep tokens. One token per lane is `step`."""
        n = 0
        b = self.batch
        for lane, toks in zip(lanes, groups):
            m = len(toks)
            if not 1 <= m <= self.ctx - self.n_keep or n + m > self.n_batch:
                raise NacritError(f"batch of {m} tokens for lane {lane} does not fit")
            while self.pos[lane] + m > self.ctx:
                self._slide(lane)
            for j in range(m):
                self._tok[n] = toks[j]
                self._pos[n] = self.pos[lane]
                b.seq_id[n][0] = lane
                self._logit[n] = 1 if j == m - 1 else 0
                self.pos[lane] += 1
                n += 1
        b.n_tokens = n
        with blocked():
            rc = self.L.llama_decode(self.lctx, b)
        if rc != 0:
            raise NacritError(f"llama_decode failed (code {rc})")
        ptr = self.L.llama_get_logits(self.lctx)
        return np.ctypeslib.as_array(ptr, shape=(len(lanes), self.n_vocab))

    def piece(self, token: int) -> bytes:
        """Bytes of one token, rendered with llama_token_to_piece (never truncated)."""
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, size, 0, True)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def tokenize(self, text: bytes) -> np.ndarray:
        """Model tokenizer, special-token text parsed as plain text, no BOS/EOS added."""
        return llama_tokenize(self.L, self.vocab, text)

    def close(self) -> None:
        L = self.L
        if getattr(self, "batch", None) is not None:
            L.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "lctx", None):
            L.llama_free(self.lctx)
            self.lctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
