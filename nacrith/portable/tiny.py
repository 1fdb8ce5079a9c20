"""A tiny random llama GGUF (Q4_1 blocks, Q8_0 tied embedding), for tests and the CUDA simulator.

Written with gguf.GGUFWriter / gguf.quants, so it exercises the same loader as a real model."""
from __future__ import annotations

import numpy as np


def write_tiny_llama(path, *, seed=0, n_layer=2, d=64, n_head=2, n_kv=1, n_ff=128, n_vocab=512,
                     arch="llama", head_type=None):
    import gguf
    from gguf import GGMLQuantizationType as Q
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    hd = d // n_head
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(d)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    toks = ["<|endoftext|>"] + [f"t{i}" for i in range(1, n_vocab - 256)] + \
           [chr(0x100 + i) if i < 33 else chr(i) for i in range(256)]
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
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
