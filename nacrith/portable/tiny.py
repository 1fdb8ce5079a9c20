"""Tiny random GGUFs for tests and the CUDA simulator: a llama (Q4_1 blocks, Q8_0 tied
embedding) and a gemma3 (the matrix types of Gemma-3-270M Q4_K_M, sliding-window layers).

Written with gguf.GGUFWriter / gguf.quants, so it exercises the same loader as a real model."""
from __future__ import annotations

import numpy as np


def write_tiny_llama(path, *, seed=0, n_layer=2, d=64, n_head=2, n_kv=1, n_ff=128, n_vocab=512,
                     arch="llama", head_type=None, words=None):
    """A tiny random llama GGUF (BPE vocabulary "t1" ... and 256 byte-like pieces); words (a
    list of str): the 256 single bytes (GPT-2's byte-to-unicode mapping) and these pieces instead
    (the byte coder's tests: every byte is a token, pieces overlap)."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    rng = np.random.default_rng(seed)
    w = _writer(path, arch, n_layer, d, n_ff, n_head, n_kv)
    hd = d // n_head
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    toks = ["<|endoftext|>"] + [f"t{i}" for i in range(1, n_vocab - 256)] + \
           [chr(0x100 + i) if i < 33 else chr(i) for i in range(256)]
    if words is not None:
        from .vocab import _gpt2_unicode_to_byte
        to_u = {b: u for u, b in _gpt2_unicode_to_byte().items()}
        toks = (["<|endoftext|>"] + [to_u[b] for b in range(256)]
                + ["".join(to_u[b] for b in wd.encode()) for wd in words])
        toks += [f"t{i}" for i in range(len(toks), n_vocab)]
    w.add_token_list(toks[:n_vocab])
    w.add_token_types([3] + [1] * (n_vocab - 1))
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)

    def mat(name, rows, cols, qt=Q.Q4_1, scale=0.2):
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)

    def vec(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, d, Q.Q8_0, 1.0)
    if head_type is not None:
        mat("output.weight", n_vocab, d, head_type, 0.3)
    vec("output_norm.weight", d)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", d)
        vec(p + "ffn_norm.weight", d)
        mat(p + "attn_q.weight", d, d)
        mat(p + "attn_k.weight", n_kv * hd, d)
        mat(p + "attn_v.weight", n_kv * hd, d)
        mat(p + "attn_output.weight", d, d)
        mat(p + "ffn_gate.weight", n_ff, d)
        mat(p + "ffn_up.weight", n_ff, d)
        mat(p + "ffn_down.weight", d, n_ff)
    return _finish(w, path)


def _f16(a):
    return np.asarray(a, np.float16).view(np.uint8).reshape(*np.shape(a), 2)


def _kquant_blocks(rng, rows, cols, qt):
    """Random but valid Q4_K / Q6_K bytes [rows, cols/256 * block] (gguf cannot quantise them):
    small positive fp16 scales, random packed scales and codes."""
    from gguf import GGMLQuantizationType as Q
    n = cols // 256
    if qt == Q.Q4_K:
        b = rng.integers(0, 256, (rows, n, 144), dtype=np.uint8)
        b[:, :, 0:2] = _f16(rng.uniform(0.004, 0.006, (rows, n)))
        b[:, :, 2:4] = _f16(rng.uniform(0.002, 0.004, (rows, n)))
        return b.reshape(rows, n * 144)
    b = rng.integers(0, 256, (rows, n, 210), dtype=np.uint8)
    b[:, :, 192:208] = rng.integers(-40, 40, (rows, n, 16)).astype(np.int8).view(np.uint8)
    b[:, :, 208:210] = _f16(rng.uniform(0.0003, 0.0005, (rows, n)))
    return b.reshape(rows, n * 210)


def write_tiny_gemma(path, *, seed=0, n_layer=3, d=64, n_head=4, n_kv=2, hd=64, n_ff=256,
                     n_vocab=512, window=8, pattern=3, words=None):
    """A tiny random gemma3 GGUF with every matrix type of Gemma-3-270M's Q4_K_M file: Q5_0 and
    Q8_0 (q/k/v, gate/up, embedding), Q4_K and Q6_K (attention output, feed-forward down:
    per-layer kinds differ), query/key norms, post norms, a sliding window of `window`
    positions on every layer but each `pattern`-th; n_head * hd != d. words (a list of str): an
    SPM vocabulary of the 256 byte tokens "<0xXX>" and these pieces ("\u2581" a space) instead
    of "t3" ... (the byte coder's tests: every byte is a token, pieces overlap)."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    rng = np.random.default_rng(seed)
    w = _writer(path, "gemma3", n_layer, d, n_ff, n_head, n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(window)
    w.add_sliding_window_pattern(pattern)
    w.add_tokenizer_model("llama")
    toks = ["<pad>", "<eos>", "<bos>"] + [f"t{i}" for i in range(3, n_vocab)]
    types = [3, 3, 3] + [1] * (n_vocab - 3)
    if words is not None:
        toks = ["<pad>", "<eos>", "<bos>"] + [f"<0x{b:02X}>" for b in range(256)] + list(words)
        types = [3, 3, 3] + [6] * 256 + [1] * len(words)
        toks += [f"t{i}" for i in range(len(toks), n_vocab)]
        types += [1] * (n_vocab - len(types))
    w.add_token_list(toks[:n_vocab])
    w.add_token_types(types[:n_vocab])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)

    def mat(name, rows, cols, qt, scale=0.2):
        if qt in (Q.Q4_K, Q.Q6_K):
            w.add_tensor(name, _kquant_blocks(rng, rows, cols, qt), raw_dtype=qt)
            return
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)

    def vec(name, n, base=1.0):
        w.add_tensor(name, (base + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, d, Q.Q8_0, 0.05)
    vec("output_norm.weight", d)
    nq = n_head * hd
    for i in range(n_layer):
        p = f"blk.{i}."
        for nm in ("attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"):
            vec(p + nm + ".weight", d)
        vec(p + "attn_q_norm.weight", hd)
        vec(p + "attn_k_norm.weight", hd)
        mat(p + "attn_q.weight", nq, d, Q.Q5_0)
        mat(p + "attn_k.weight", n_kv * hd, d, Q.Q5_0)
        mat(p + "attn_v.weight", n_kv * hd, d, Q.Q8_0 if i % 2 else Q.Q5_0)
        mat(p + "attn_output.weight", d, nq, Q.Q4_K if nq % 256 == 0 else Q.Q5_0)
        mat(p + "ffn_gate.weight", n_ff, d, Q.Q5_0)
        mat(p + "ffn_up.weight", n_ff, d, Q.Q5_0)
        mat(p + "ffn_down.weight", d, n_ff, Q.Q6_K if i % 2 else Q.Q4_K)
    return _finish(w, path)


def _writer(path, arch, n_layer, d, n_ff, n_head, n_kv):
    """A GGUFWriter with the shape keys both tiny models share."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(d)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    return w


def _finish(w, path):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
