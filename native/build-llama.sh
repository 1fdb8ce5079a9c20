#!/bin/sh
# Build and install llama-cpp-python (pinned in pyproject.toml) with one of the build profiles.
# The profile is part of an archive's backend fingerprint: logits, hence archives, are only
# guaranteed to decode on a build with the same ISA features (see native/README.md).
#   auto         : cpu-avx512 where the CPU has its features, else cpu-portable (the default)
#   cpu-avx512   : GGML_NATIVE=OFF, AVX-512 F/BW/DQ/VL + VBMI + VNNI + BF16 kernels, no AMX and no
#                  AVX-VNNI: the same kernels (fingerprint "0.3.36 x86_64 eff7") on every such CPU,
#                  Intel or AMD; the v1-v3 golden archives were made with this feature set
#   cpu-portable : GGML_NATIVE=OFF, baseline x86-64 AVX2/FMA kernels, same on every AVX2 machine
#   cpu-native   : llama.cpp default, -march=native: archives decode only on the same CPU kind,
#                  and on a VM that advertises AMX without enabling it, batches crash (SIGILL)
#   cuda         : GGML_CUDA=ON (needs nvcc); set CUDA_ARCHS, e.g. "80;86;89"
set -eu
PIP=${PIP:-pip}
VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$(dirname "$0")/../pyproject.toml")
PROFILE=$(echo "${PROFILE:-auto}" | tr -d ' ')
if [ "$PROFILE" = auto ]; then
  PROFILE=cpu-portable
  if [ -r /proc/cpuinfo ]; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    ok=1
    for f in avx512f avx512bw avx512dq avx512vl avx512vbmi avx512_vnni avx512_bf16; do
      case " $flags " in *" $f "*) ;; *) ok=0 ;; esac
    done
    [ $ok = 1 ] && PROFILE=cpu-avx512
  fi
fi
case "$PROFILE" in
  cpu-native)   ARGS="" ; CACHE="" ;;
  cpu-avx512)   ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"; CACHE="--no-cache-dir" ;;
  cpu-portable) ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"; CACHE="--no-cache-dir" ;;
  cuda)         ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-native}"; CACHE="--no-cache-dir" ;;
  *) echo "unknown PROFILE '$PROFILE' (auto | cpu-avx512 | cpu-portable | cpu-native | cuda)" >&2; exit 2 ;;
esac
echo "building llama-cpp-python==$VERSION, profile $PROFILE (this compiles llama.cpp: ~5 min on 2 cores)"
# pip's wheel cache does not key on CMAKE_ARGS: non-default profiles bypass it.
CMAKE_ARGS="$ARGS" $PIP install -q $CACHE "llama-cpp-python==$VERSION"
