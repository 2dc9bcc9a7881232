#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (for the `device` tool, or any GPU box):
#   bash tools/gpu_check.sh [OUT_DIR]
# 1. `pytest -m cuda` on the files that hold CUDA tests (Triton kernels at real sizes, Inductor
#    launching the EDRep Triton kernels, the GPU kNN);
# 2. the GPU sections of the benchmarks (they run by themselves when CUDA is visible);
# 3. copies benchmarks/results/*.json and the logs to OUT_DIR (default: $OUT, else ./gpu_out).
# Python packages missing from the machine's image are installed from wheels under
# ./wheels when that folder exists (`pip download -d wheels ...` beforehand), else skipped.
set -u
OUT_DIR="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
log() { echo "== $*" | tee -a "$OUT_DIR/gpu_check.log"; }

log "$(date -u) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$OUT_DIR/gpu_check.log"
if [ -d wheels ]; then "$PY" -m pip install -q --no-index --find-links wheels scipy scikit-learn tqdm faiss-cpu hypothesis pytest 2>&1 | tail -2; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TGREP_QUIET=1
unset TRITON_INTERPRET

log "pytest -m cuda"
"$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_launch_op.py tests/test_softmax_norm.py \
  tests/test_shortest_paths.py tests/test_knn.py 2>&1 | tail -30 | tee "$OUT_DIR/pytest_cuda.log"

log "bench_edrep --part gpu"
timeout 300 "$PY" benchmarks/bench_edrep.py --part gpu 2>&1 | tail -30 | tee "$OUT_DIR/bench_edrep_gpu.log"
log "bench_shortest_paths (GPU section included)"
timeout 300 "$PY" benchmarks/bench_shortest_paths.py --quick 2>&1 | tail -40 | tee "$OUT_DIR/bench_shortest_paths.log"

cp benchmarks/results/*.json "$OUT_DIR/" 2>/dev/null
log "done"
