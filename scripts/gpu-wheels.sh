#!/usr/bin/env bash
# Prepare, on a machine with a package index, the wheels that scripts/gpu-check.sh carries to
# the lent GPU machine. That machine has Python 3.12, NumPy, CuPy for CUDA 13 and torch, but no
# autograd, zuko or nflows, and reaches no package index; everything it lacks travels in
# `.whl/` with the working tree (64 MiB in all; these wheels are about 0.2 MB).
#
# Usage, from the repository root:  bash scripts/gpu-wheels.sh   (then `carry: [".whl"]`)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
# pure-Python wheels, for the device's Python 3.12
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    autograd==1.9.1 zuko==1.6.0
# nflows is published as a source distribution only: build its (pure-Python) wheel here
python3 -m pip wheel --no-deps -w .whl nflows==0.14
ls -l .whl
du -sh .whl
