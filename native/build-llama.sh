#!/bin/sh
# Build and install llama-cpp-python (pinned in pyproject.toml) with one of the build profiles.
# The profile is part of an archive's backend fingerprint: logits, hence archives, are only
# guaranteed to decode on a build with the same ISA features (see native/README.md).
#   cpu-native   : llama.cpp default, -march=native (fastest on this machine; the default)
#   cpu-portable : GGML_NATIVE=OFF, baseline x86-64 AVX2/FMA kernels, same on every AVX2 machine
#   cuda         : GGML_CUDA=ON (needs nvcc); set CUDA_ARCHS, e.g. "80;86;89"
set -eu
PIP=${PIP:-pip}
VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$(dirname "$0")/../pyproject.toml")
PROFILE=$(echo "${PROFILE:-cpu-native}" | tr -d ' ')
case "$PROFILE" in
  cpu-native)   ARGS="" ; CACHE="" ;;
  cpu-portable) ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"; CACHE="--no-cache-dir" ;;
  cuda)         ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-native}"; CACHE="--no-cache-dir" ;;
  *) echo "unknown PROFILE '$PROFILE' (cpu-native | cpu-portable | cuda)" >&2; exit 2 ;;
esac
echo "building llama-cpp-python==$VERSION, profile $PROFILE (this compiles llama.cpp: ~5 min on 2 cores)"
# pip's wheel cache does not key on CMAKE_ARGS: non-default profiles bypass it.
CMAKE_ARGS="$ARGS" $PIP install -q $CACHE "llama-cpp-python==$VERSION"
