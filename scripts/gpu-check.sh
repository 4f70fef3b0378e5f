#!/usr/bin/env bash
# refflow on a GPU machine, in one go: install with the gpu extra, run the test suite on
# CuPy, benchmark CuPy (and torch CUDA when present) at batch >= 65536 against NumPy on the
# CPU, and leave the logs and a results table under $OUT. Under 5 minutes: install about
# 30 s, tests at most 140 s, benchmarks at most 120 s.
#
# Usage, from the repository root:  OUT=/some/dir bash scripts/gpu-check.sh
#
# Machines without internet access: bring the wheels along in a `.whl/` folder at the
# repository root (cupy-cuda12x and its dependencies, plus torch/zuko/nflows for the peers
# if wanted), downloaded where pip works for the GPU machine's Python, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl cupy-cuda12x fastrlock
# and keep `.whl/` out of git (`echo /.whl/ >> .git/info/exclude`). When `.whl/` holds
# wheels they are installed with `--no-index --no-deps` into /tmp/site; otherwise pip
# installs `.[gpu]` from the index.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.md"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# -- 1. install ------------------------------------------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
    note "install: wheels from .whl/ into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >"$OUT/install.log" 2>&1 || note "install: FAILED"
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    note "install: pip install -e '.[gpu]'"
    "$PY" -m pip install -q -e '.[gpu]' >"$OUT/install.log" 2>&1 || note "install: FAILED"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# -- 2. what is there --------------------------------------------------------------------
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; } \
    >"$OUT/device.log"
"$PY" - >>"$OUT/device.log" 2>&1 <<'EOF'
import platform
print("python", platform.python_version())
for name in ("numpy", "autograd", "cupy", "torch", "zuko", "nflows"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError as exc:
        print(name, "missing:", exc)
try:
    import cupy
    print("cupy device:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
except Exception as exc:  # no driver, no device
    print("cupy device: none:", exc)
try:
    import torch
    print("torch cuda:", torch.cuda.is_available())
except ImportError:
    pass
EOF
cat "$OUT/device.log" >>"$SUMMARY"
TORCH_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

# -- 3. the test suite on CuPy (values and gradients vs the NumPy run) -------------------
REFFLOW_BACKEND=cupy timeout 140 "$PY" -m pytest tests -q --maxfail=20 --backend cupy \
    -p no:cacheprovider >"$OUT/tests.log" 2>&1
note "tests on cupy: exit $? ($(tail -n 1 "$OUT/tests.log"))"

# -- 4. benchmarks at large batch --------------------------------------------------------
PEERS=(refflow)
DEVICE=cpu
if [ "$TORCH_CUDA" = 1 ]; then
    PEERS=(refflow zuko nflows)
    DEVICE=cuda
fi
timeout 75 "$PY" -m benchmarks --backend cupy --torch-device "$DEVICE" \
    --libraries "${PEERS[@]}" --models maf realnvp --dims 16 64 --batches 65536 262144 \
    --dtypes float32 --repeats 5 --budget 2 --output "$OUT/RESULTS-gpu.md" \
    >"$OUT/bench-gpu.log" 2>&1
note "benchmark cupy: exit $?"
# NumPy on the CPU at the same batch: the reference for "CuPy at least 10x faster"
timeout 45 "$PY" -m benchmarks --backend numpy --libraries refflow --models maf realnvp \
    --dims 16 64 --batches 65536 --dtypes float32 --ops grad --repeats 3 --budget 2 \
    --output "$OUT/RESULTS-cpu-numpy.md" >"$OUT/bench-cpu.log" 2>&1
note "benchmark numpy cpu: exit $?"

for table in "$OUT/RESULTS-gpu.md" "$OUT/RESULTS-cpu-numpy.md"; do
    [ -f "$table" ] && { echo; cat "$table"; } >>"$SUMMARY"
done
echo "logs and tables in $OUT"
