"""Ensemble mixer: online token n-gram model, match model and log-space bias head, blended with
the LLM distribution and quantized to 24-bit frequencies, all in Numba and deterministic.

Invariants (part of the bitstream format; formats/FORMAT.md "Ensemble mixer" is the spec):
- one ``LaneModel`` per lane and segment, created fresh (all tables zero) at segment start; its
  state changes only in ``_update`` (ensemble.py), after the token has been coded, identically in encoder and
  decoder (both call the same compiled ``_predict`` / ``_update``);
- every float that reaches the coder is computed with IEEE basic operations in a fixed order,
  without fastmath; exp is cdf._exp_nonpos (hand-written), no log is ever taken;
- every hyperparameter comes from the model frame (``MixParams.from_params``): an absent key
  means the component is off, so version-1 archives decode as "LLM only".

Per token (one fused kernel call):
1. LLM + bias head: x_i = tau * l_i + b_i (the pending bias step of the previous token is applied
   in the same pass), q = softmax(x) with the deterministic exp;
2. sparse models: n-gram orders 1..N (hashed buckets of SLOTS or ngram_slots (token, count)
   slots with a check tag; with slot_lr each slot also learns a log-space bias) and the match
   model each give a few candidate tokens with probability c and an escape mass e that is
   spread like q, i.e. P_k(i) = c_k(i) + e_k q_i (the LLM itself is k = 0 with e_0 = 1);
3. mixer: P = sum_k w_k P_k = A q + sparse extras, with w = floor + (1 - K floor) softmax(z_set)
   and the weight set selected by (highest n-gram order that hit, match-length bucket, LLM top
   probability bucket); z is trained by online gradient descent on -log P(y); with mix2 a second
   set, selected by the agreement of the LLM argmax with the top n-gram / match candidates, is
   averaged in (each set trained on its own mixture);
4. boost (boost_lr > 0): a log-linear correction of the candidates, P'_c ∝ P_c exp(sum_k beta_k
   c_k(c) + slot biases), beta per weight set, trained on -log P'(y); the normaliser only
   involves the candidates, so it is O(candidates);
5. SSE (apm_lr > 0): the probability of the top token is refined by an interpolated adaptive
   table (context: hit order, match bucket, agreement flags), the others rescaled;
6. quantize: f_i = 1 + floor(P_i (2^24 - V)), the remainder to the largest f (first index), so
   every f_i >= 1 and the total is exactly 2^24.

Vocabulary-sized work per token: one pass (bias step + x), a max, the exp, one or two 8-way sums,
the quantization, and the coder's cumulative sum / symbol search: ~0.15 ms for V = 49152 on an
idle core here (scripts/ablation.py prints it).  The n-gram, match, mixer, slot-bias and SSE work
is O(orders x slots).

Package layout (imports only go down): lane (LaneModel) and device (LaneBatch: the same steps
for many lanes on a CUDA device, a thread per lane, or for preset 5 a block of threads per lane
splitting _predict's row passes) -> kernels (the stamped, cached entry points) -> ensemble
(predict / update) -> sparse (n-gram, match, skip) -> state (named-tuple state, Config) ->
params (MixParams, PRESETS, constants).

Presets (PRESETS, model-frame key mix_preset) are frozen; fields without a model-frame key
(ngram_slots, slot_lr, mix2, apm_lr, apm_w, bias_g0, col_lr, isum) come only from the preset, and
0 means the preset-1 behaviour, so preset-1 archives decode exactly as before.

Preset 5 (isum, version-9 archives) is preset 4 whose vocabulary-wide sums are exact: their terms
are rounded to a fixed binary grid first (ensemble._grid), so every partial sum is an exact
double and the sums have the same bits in any order or split over threads or a device's blocks;
every other vocabulary pass is element-wise, a maximum, a first index or an integer sum.
"""

from .lane import LaneModel
from .params import (COL_NB, DEFAULTS, FRAC_SCALE, LR_SCALE, MAX_ORDER, MAX_SKIP_CAP, PRESETS,
                     MixParams)
from .ensemble import _col_bucket
from .state import State, column_table

__all__ = ["COL_NB", "DEFAULTS", "FRAC_SCALE", "LR_SCALE", "MAX_ORDER", "MAX_SKIP_CAP", "PRESETS",
           "LaneModel", "MixParams", "State", "_col_bucket", "column_table"]
