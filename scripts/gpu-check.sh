#!/usr/bin/env bash
# refflow on the lent GPU machine, in one call: install what it lacks from carried wheels, run
# the test suite on CuPy, benchmark CuPy against torch on CUDA (zuko, nflows) and NumPy on the
# CPU at large batch, and leave logs, tables and a summary under $OUT.
#
# Usage, from the repository root:
#   OUT=/some/dir bash scripts/gpu-check.sh              # on the GPU machine
#   OUT=/some/dir bash scripts/gpu-check.sh --rehearse   # here: the same steps on the CPU
#
# The GPU machine (an NVIDIA H200) has Python 3.12, NumPy, CuPy for CUDA 13 and torch (CUDA
# 13), but no autograd, zuko or nflows, and no package index: prepare their wheels where pip
# works with `bash scripts/gpu-wheels.sh` (into .whl/, about 0.2 MB) and carry `.whl` with the
# call. This script never asks an index for anything: every pip call is --no-index.
#
# --rehearse runs every step on the CPU with the strict stand-in array of tests/strict.py in
# place of CuPy (the test suite's and the benchmark's `--backend strict`), at small sizes, so
# that CI tests the script itself where there is no GPU. The script exits non-zero when any
# step fails.
set -uo pipefail

cd "$(dirname "$0")/.."
REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then
    REHEARSE=1
elif [ -n "${1:-}" ]; then
    echo "usage: OUT=DIR bash scripts/gpu-check.sh [--rehearse]" >&2
    exit 2
fi
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.md"
SITE=$(mktemp -d /tmp/refflow-site.XXXXXX)
: >"$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME TIMEOUT LOG COMMAND...: run, record the exit status, never stop the script
    local name=$1 limit=$2 log=$3
    shift 3
    timeout "$limit" "$@" >"$log" 2>&1
    local status=$?
    [ "$status" -eq 0 ] || FAILED=1
    note "$name: exit $status ($(grep -v "^WARNING" "$log" | tail -n 1))"
}

if [ "$REHEARSE" = 1 ]; then
    BACKEND=strict
    TORCH_DEVICE=cpu
    # every registered bijection and every kernel; CI runs the whole stand-in suite already
    TESTS=(tests/test_properties.py tests/test_fast.py)
    BENCH_GPU=(--models maf realnvp --dims 2 --batches 256 --dtypes float32 --repeats 3
               --budget 1 --max-call 5)
    BENCH_CPU=(--models maf --dims 2 --batches 256 --dtypes float32 --ops grad --repeats 3
               --budget 1)
    note "# refflow GPU check: REHEARSAL on the CPU (strict stand-in in place of CuPy)"
else
    BACKEND=cupy
    TORCH_DEVICE=cuda
    TESTS=(tests)
    BENCH_GPU=(--models maf realnvp nsf --dims 16 64 --batches 65536 262144 --dtypes float32
               --repeats 5 --budget 3 --max-call 20)
    BENCH_CPU=(--models maf realnvp nsf --dims 16 64 --batches 65536 --dtypes float32
               --ops grad --repeats 3 --budget 3 --max-call 20)
    note "# refflow GPU check"
fi
note "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# -- 1. install: carried wheels and refflow itself, --no-deps, never from an index ----------
if compgen -G ".whl/*.whl" >/dev/null; then
    step "install carried wheels ($(ls .whl/*.whl | wc -l))" 120 "$OUT/install-wheels.log" \
        "$PY" -m pip install --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
else
    note "install carried wheels: none in .whl/ (using the packages already installed)"
fi
step "install refflow (--no-deps)" 120 "$OUT/install-refflow.log" \
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-compile \
    --target "$SITE" .
# the checkout first (the tests import tests.strict from it), then what was installed
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

# -- 2. what is there ------------------------------------------------------------------------
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; } \
    >"$OUT/device.log"
"$PY" - >>"$OUT/device.log" 2>&1 <<'EOF'
import platform
print("python", platform.python_version())
for name in ("numpy", "autograd", "refflow", "cupy", "torch", "zuko", "nflows"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError as exc:
        print(name, "missing:", exc)
try:
    import cupy
    print("cupy device:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
except Exception as exc:  # no CuPy, no driver, no device
    print("cupy device: none:", exc)
try:
    import torch
    print("torch cuda:", torch.cuda.is_available())
except ImportError:
    pass
EOF
sed 's/^/    /' "$OUT/device.log" >>"$SUMMARY"
"$PY" -c "import autograd, refflow" >>"$OUT/device.log" 2>&1 \
    || { FAILED=1; note "import autograd, refflow: FAILED (see device.log)"; }

# -- 3. the test suite on the device backend -------------------------------------------------
step "tests (--backend $BACKEND)" 400 "$OUT/tests.log" \
    "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider --backend "$BACKEND" \
    --ignore=tests/interop --ignore=tests/test_docs.py

# -- 4. benchmarks at large batch ------------------------------------------------------------
step "benchmark ($BACKEND vs torch on $TORCH_DEVICE)" 300 "$OUT/bench-device.log" \
    "$PY" -m benchmarks --backend "$BACKEND" --torch-device "$TORCH_DEVICE" \
    --libraries refflow zuko nflows "${BENCH_GPU[@]}" --output "$OUT/RESULTS-device.md"
# NumPy on the CPU at the same batch: the reference for "CuPy at least 10x faster"
step "benchmark (numpy on the CPU)" 240 "$OUT/bench-numpy.log" \
    "$PY" -m benchmarks --backend numpy --libraries refflow "${BENCH_CPU[@]}" \
    --output "$OUT/RESULTS-cpu-numpy.md"

for table in "$OUT/RESULTS-device.md" "$OUT/RESULTS-cpu-numpy.md"; do
    [ -f "$table" ] && { echo; cat "$table"; } >>"$SUMMARY"
done
rm -rf "$SITE"
note "logs and tables in $OUT; failed steps: $FAILED"
exit "$FAILED"
