#!/usr/bin/env bash
# llama.cpp beside the shim (bench/serving.py): the tree vendored by llama-cpp-python 0.3.36 (PyPI's
# sdist; GitHub is not reachable here) into .llama.cpp/ (ignored), its server, llama-bench and
# llama-quantize built for these cores, and sentencepiece in .venv (convert_hf_to_gguf.py imports it).
# About 25 min on 2 idle cores.
#   bash bench/llama_cpp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
if [ ! -f .llama.cpp/CMakeLists.txt ]; then
    tmp=$(mktemp -d)
    .venv/bin/pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp"
    tar xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
    rm -rf .llama.cpp && mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" .llama.cpp && rm -rf "$tmp"
fi
cmake -S .llama.cpp -B .llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > /dev/null
cmake --build .llama.cpp/build -j"$(nproc)" --target llama-server llama-bench llama-quantize
.venv/bin/pip install -q sentencepiece
ls .llama.cpp/build/bin/llama-server
