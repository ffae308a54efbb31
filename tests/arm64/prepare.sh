#!/usr/bin/env bash
# Prepare an emulated aarch64 Python for the device runtime, cached between runs:
#   - Debian's arm64 Python 3.11 unpacked into a sysroot (run as: qemu-aarch64 -L SYSROOT SYSROOT/usr/bin/python3.11)
#   - aarch64 wheels of edgeseg's runtime dependencies (numpy, opencv-python-headless, onnxruntime, typer, rich)
#   - an ARM /proc/cpuinfo (onnxruntime parses the host's x86 one under qemu-user and crashes otherwise)
# Needs root (apt-get, dpkg --add-architecture) and the Debian and PyPI registries. Prints the cache folder.
set -euo pipefail
CACHE="${EDGESEG_ARM64_CACHE:-${HOME}/.cache/edgeseg/arm64}"
SYSROOT="$CACHE/sysroot"
WHEELS="$CACHE/site"
mkdir -p "$CACHE"
exec 3>&1 1>>"$CACHE/prepare.log" 2>&1

if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -q
    debs="$CACHE/debs"
    rm -rf "$debs" "$SYSROOT.tmp"
    mkdir -p "$debs" "$SYSROOT.tmp"
    (cd "$debs" && apt-get download \
        python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libc6:arm64 \
        zlib1g:arm64 libexpat1:arm64 libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
        libsqlite3-0:arm64 libgcc-s1:arm64 libstdc++6:arm64 libuuid1:arm64 libncursesw6:arm64 libtinfo6:arm64 \
        libreadline8:arm64 libgomp1:arm64 libcrypt1:arm64 libnsl2:arm64 libtirpc3:arm64 \
        libgssapi-krb5-2:arm64 libkrb5-3:arm64 libk5crypto3:arm64 libkrb5support0:arm64 libcom-err2:arm64 \
        libkeyutils1:arm64 libdb5.3:arm64 media-types)
    for d in "$debs"/*.deb; do dpkg -x "$d" "$SYSROOT.tmp"; done
    mv "$SYSROOT.tmp" "$SYSROOT"
fi
if ! command -v qemu-aarch64 >/dev/null; then
    apt-get install -y -q qemu-user || { apt-get update -q && apt-get install -y -q qemu-user; }
fi
if [ ! -f "$WHEELS/.complete" ]; then
    rm -rf "$WHEELS"
    python3 -m pip install --quiet --target "$WHEELS" --platform manylinux2014_aarch64 \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --python-version 3.11 \
        --implementation cp --only-binary=:all: numpy opencv-python-headless onnxruntime typer rich
    touch "$WHEELS/.complete"
fi
cat > "$CACHE/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

CPU
echo "$CACHE" >&3
