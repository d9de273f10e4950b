#!/usr/bin/env bash
# GPU checks of the selective-scan kernels (Triton, mamba-ssm) and the TensorRT path on a machine with an NVIDIA GPU.
#
# Usage, from anywhere (it works in the repository root):
#   bash scripts/gpu_check.sh                            # results in ./gpu_results/
#   OUT=/tmp/res WHEELS=/path/to/wheels bash scripts/gpu_check.sh
#   TRT_WHEELS=.whl bash scripts/gpu_check.sh            # with local tensorrt wheels
#
# Environment:
#   OUT         folder for logs and JSON (default: gpu_results)
#   WHEELS      optional folder of wheels (e.g. mamba_ssm, causal_conv1d) installed offline with
#               pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
#   TRT_WHEELS  optional folder of TensorRT wheels (tensorrt, tensorrt_cu12 or _cu13, its _libs and _bindings:
#               pip cannot fetch the _libs from NVIDIA's index offline), installed with --no-index --no-deps
#               into TRT_SITE (default /tmp/trt_site), which is put on PYTHONPATH
#   BENCH_TRT_ARGS extra arguments for benchmarks/bench_trt.py (default: --precision fp16 --lengths 1024 8192)
#   PYTHON      interpreter to use (default: python3); it needs torch, triton, pytest, numpy,
#               pyyaml, pluggy, safetensors
#   BENCH_ARGS  extra arguments for benchmarks/bench_scan_gpu.py (e.g. "--quick" or "--tune")
#
# Steps: nvidia-smi; python/torch/triton versions; whether tensorrt and mamba_ssm import;
# install this repo (pip install --no-deps --no-build-isolation -e ., or, when pip may not
# install, a PYTHONPATH shim mapping core/, plugins/... to hybrid_mllm.*); pytest -m gpu;
# the other tests of tests/test_scan_triton.py and tests/test_ssd_triton.py (Mamba-2's SSD) with
# compiled kernels on CUDA (TRITON_INTERPRET unset), and the SSD plugin's kernel wrapper; the
# benchmark; when tensorrt imports: tests/test_trt*.py and the gpu tests of tests/test_mamba2_export.py
# (engines built and checked against PyTorch) and benchmarks/bench_trt.py (engine vs PyTorch eager,
# prefill and decode, ratios).
# Each step has a time limit (without TensorRT the whole script stays well under 10 minutes on an H100;
# the two TensorRT steps may add up to 14 more);
# a failing step is logged and the next one still runs; the exit status is 1 if any failed.
# Files: gpu_check.log (everything), <step>.log, pytest_*.xml, bench_scan.json, summary.txt.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
unset TRITON_INTERPRET  # compiled kernels only
exec > >(tee "$OUT/gpu_check.log") 2>&1

FAILED=()
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

section() { printf '\n===== %s =====\n' "$*"; }

# step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log, record the status.
step() {
    local name="$1" limit="$2"
    shift 2
    section "$name: $*"
    local start=$SECONDS rc
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 0 ]; then
        echo "$name: ok ($((SECONDS - start)) s)" | tee -a "$SUMMARY"
    else
        [ "$rc" -eq 124 ] && echo "$name: TIMED OUT after $limit s"
        echo "$name: FAILED (exit $rc, $((SECONDS - start)) s)" | tee -a "$SUMMARY"
        FAILED+=("$name")
    fi
}

section "nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"

section "versions"
"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
for name in ("tensorrt", "mamba_ssm"):
    try:
        module = __import__(name)
        print(f"{name}: imports, version {getattr(module, '__version__', '?')}")
    except Exception as e:
        print(f"{name}: does not import ({type(e).__name__}: {e})")
EOF

if [ -n "${WHEELS:-}" ]; then
    step install_wheels 300 "$PY" -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
if [ -n "${TRT_WHEELS:-}" ]; then
    TRT_SITE="${TRT_SITE:-/tmp/trt_site}"
    step install_tensorrt 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$TRT_SITE" "$TRT_WHEELS"/*.whl
    export PYTHONPATH="$TRT_SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

section "install hybrid-mllm from $REPO"
if "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/pip_install.log" 2>&1 \
        && "$PY" -c "import hybrid_mllm.plugins.mixers" 2>/dev/null; then
    echo "pip install -e . : ok"
else
    echo "pip install -e . failed (see pip_install.log): using a PYTHONPATH shim"
    # The package maps top-level folders into the hybrid_mllm namespace (see pyproject.toml).
    SHIM="$(mktemp -d)/site"
    mkdir -p "$SHIM/hybrid_mllm"
    for dir in core plugins runtime export train convert testing; do
        [ -d "$REPO/$dir" ] && ln -s "$REPO/$dir" "$SHIM/hybrid_mllm/$dir"
    done
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import hybrid_mllm.core, os, sys; p = os.path.realpath(hybrid_mllm.core.__file__); \
print('hybrid_mllm.core from', p); sys.exit(0 if p.startswith(os.path.realpath('$REPO')) else 1)" \
    || { echo "hybrid_mllm does not import from $REPO"; exit 1; }

# (tests/test_trt.py and tests/test_mamba2_export.py have their own steps below: engine builds take longer)
step pytest_gpu 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider --ignore tests/test_trt.py --ignore tests/test_mamba2_export.py \
    --junitxml "$OUT/pytest_gpu.xml"
# The rest of the Triton tests, compiled on CUDA (its gpu-marked tests ran in the step above).
step pytest_scan_triton 170 "$PY" -m pytest tests/test_scan_triton.py -m "not gpu" -q -p no:cacheprovider \
    --junitxml "$OUT/pytest_scan_triton.xml"
# The SSD (Mamba-2) Triton kernel compiled on CUDA against the reference (values, gradients, the contract
# cases; its gpu-marked tests, long sequences and mamba-ssm's mamba_chunk_scan_combined parity when
# mamba_ssm imports, ran in pytest_gpu), and the SSDScan plugin's kernel wrapper compiled.
step pytest_ssd_triton 240 "$PY" -m pytest tests/test_ssd_triton.py -m "not gpu" -q -p no:cacheprovider \
    --junitxml "$OUT/pytest_ssd_triton.xml"
step pytest_ssd_plugin 240 "$PY" -m pytest tests/test_mamba2_export.py -q -p no:cacheprovider \
    -k "wrapper or aot or geometry" --junitxml "$OUT/pytest_ssd_plugin.xml"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
step bench_scan 210 "$PY" benchmarks/bench_scan_gpu.py --json "$OUT/bench_scan.json" ${BENCH_ARGS:-}
# Hybrid vs attention-only twin prefill at 8k / 32k / 100k tokens (bf16).
step bench_prefill 180 "$PY" benchmarks/bench_prefill_gpu.py --json "$OUT/bench_prefill.json"

if "$PY" -c "import tensorrt" 2>/dev/null; then
    step pytest_trt 420 "$PY" -m pytest tests/test_trt.py tests/test_trt_plugins.py -q -p no:cacheprovider --junitxml "$OUT/pytest_trt.xml"
    # Mamba-2 engines (hybrid::SSDScan plugin, AOT and JIT) against PyTorch.
    step pytest_trt_mamba2 420 "$PY" -m pytest tests/test_mamba2_export.py -m gpu -q -p no:cacheprovider \
        --junitxml "$OUT/pytest_trt_mamba2.xml"
    # shellcheck disable=SC2086  # BENCH_TRT_ARGS is a list of arguments
    step bench_trt 420 "$PY" benchmarks/bench_trt.py --json "$OUT/bench_trt.json" \
        ${BENCH_TRT_ARGS:---precision fp16 --lengths 1024 8192}
else
    echo "tensorrt does not import: TensorRT steps skipped (pass TRT_WHEELS=DIR to install local wheels)" \
        | tee -a "$SUMMARY"
fi

section "summary"
cat "$SUMMARY"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "failed: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
