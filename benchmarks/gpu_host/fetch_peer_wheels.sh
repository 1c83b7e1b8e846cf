#!/usr/bin/env bash
# Download the wheels the GPU peers of `framepool bench peers` (Ray Serve, Triton through
# PyTriton) need on an offline GPU host, pack them into one tar and split it into parts
# that each travel in one device call: .peers-parts/part-01, part-02, ..., SHA256SUMS
# (of the tar and of each part) and MANIFEST (the wheel list). Run it where pip reaches
# an index, after fetch_wheels.sh (what .whl/ carries is left out here). The wheels are
# for CPython 3.12 on manylinux x86-64, pinned to the versions installed in VENV_PY's venv
# (the one the peers bench runs in here). On the host: run.sh stash (each part's call),
# then run.sh peers. docs/gpu-host.md says what travels, what is left out and why.
#
#   bash benchmarks/gpu_host/fetch_peer_wheels.sh
#
# Env: VENV_PY (default /tmp/tvenv/bin/python if there, else .venv/bin/python),
#      PART_MIB (56: the largest part), MAX_CALL_MIB (62: tree + what one call carries),
#      PY_VERSION (3.12; 3.11 makes a set for a trial run here, not for the host),
#      DEST (.peers-parts).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [[ -z "${VENV_PY:-}" ]]; then
    VENV_PY="$ROOT/.venv/bin/python"
    [[ -x /tmp/tvenv/bin/python ]] && VENV_PY=/tmp/tvenv/bin/python
fi
PART_MIB="${PART_MIB:-56}"
MAX_CALL_MIB="${MAX_CALL_MIB:-62}"
PY_VERSION="${PY_VERSION:-3.12}"
DEST="${DEST:-$ROOT/.peers-parts}"
CP="cp${PY_VERSION/./}"

fail() { echo "fetch_peer_wheels.sh: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
size() { stat -c %s "$1"; }

[[ -x "$VENV_PY" ]] || fail "no interpreter at $VENV_PY (set VENV_PY to the peers' venv)"
for name in ray nvidia-pytriton; do
    "$VENV_PY" -c 'import sys, importlib.metadata as m; m.version(sys.argv[1])' "$name" 2>/dev/null \
        || fail "$name is not installed in $VENV_PY: cannot pin it (pip install -e '.[bench]' there)"
done
shopt -s nullglob
whl=(.whl/*.whl)
shopt -u nullglob
((${#whl[@]})) || fail "no .whl/*.whl: run fetch_wheels.sh first (what .whl/ carries is left out here)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/wheels"

# ------------------------------------------------------------------ what travels
"$VENV_PY" -m benchmarks.gpu_host.peer_wheels --python-version "$PY_VERSION" --whl-dir .whl \
    >"$WORK/plan.tsv" || fail "could not work out the closure in $VENV_PY"
mapfile -t PINS < <(awk -F'\t' '$1 == "carry" { print $2 }' "$WORK/plan.tsv")
((${#PINS[@]})) || fail "nothing to carry?"
echo "pinned from $VENV_PY: $(grep -E '^carry	(ray|nvidia-pytriton|tritonclient|numpy)==' "$WORK/plan.tsv" \
    | cut -f2 | tr '\n' ' ')"

PLATFORMS=()
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
    manylinux_2_17 manylinux2014 manylinux2010 manylinux1; do
    PLATFORMS+=(--platform "${p}_x86_64")
done
download() {  # download PIN...
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}" -d "$WORK/wheels" "$@"
}
echo "fetching ${#PINS[@]} wheels"
if ! download "${PINS[@]}" 2>"$WORK/pip.err"; then
    for pin in "${PINS[@]}"; do  # which one
        download "$pin" 2>/dev/null || fail "no $CP manylinux x86_64 (or pure-Python) wheel for $pin"
    done
    cat "$WORK/pip.err" >&2
    fail "pip download failed"
fi

# exactly one wheel per pin, each installable on CPython $PY_VERSION, x86-64 Linux
count="$(find "$WORK/wheels" -maxdepth 1 -type f -name '*.whl' | wc -l)"
[[ "$count" -eq "${#PINS[@]}" ]] || fail "$count wheels for ${#PINS[@]} pins"
glibc=2.5
glibc_who=-
for w in "$WORK/wheels"/*.whl; do
    tags="$(basename "$w" .whl | cut -d- -f3-)"  # python-abi-platform
    case "$tags" in
        py3-none-any | py2.py3-none-any) continue ;;
        "$CP-$CP-"*manylinux*x86_64* | cp3*-abi3-*manylinux*x86_64* | py3-none-*manylinux*x86_64* \
            | py2.py3-none-*manylinux*x86_64*) ;;
        *) fail "$(basename "$w"): tags $tags do not fit CPython $PY_VERSION on manylinux x86_64" ;;
    esac
    # the oldest glibc among its platform tags; the host needs the largest such
    need="$(tr '.' '\n' <<<"${tags#*-*-}" | sed -E 's/^manylinux1_.*/2.5/; s/^manylinux2010_.*/2.12/;
        s/^manylinux2014_.*/2.17/; s/^manylinux_([0-9]+)_([0-9]+)_.*/\1.\2/' | sort -V | head -1)"
    if [[ "$(printf '%s\n%s\n' "$glibc" "$need" | sort -V | tail -1)" != "$glibc" ]]; then
        glibc="$need"
        glibc_who="$(basename "$w" | cut -d- -f1-2)"
    fi
done

# ------------------------------------------------------------------ the tar and its parts
rm -rf "$DEST"
mkdir -p "$DEST"
find "$WORK/wheels" -maxdepth 1 -name "*.whl" -printf "%f\n" | LC_ALL=C sort >"$WORK/list"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$WORK/peers.tar" \
    -C "$WORK/wheels" -T "$WORK/list"
split -b "${PART_MIB}M" -d -a 2 --numeric-suffixes=1 "$WORK/peers.tar" "$DEST/part-"
parts=("$DEST"/part-*)
tar_b="$(size "$WORK/peers.tar")"
tar_sum="$(sha256sum "$WORK/peers.tar" | cut -d' ' -f1)"
{
    echo "$tar_sum  peers.tar"
    (cd "$DEST" && sha256sum part-*)
} >"$DEST/SHA256SUMS"
{
    echo "# framepool bench peers: ${count} wheels for CPython $PY_VERSION, manylinux x86-64" \
        "(glibc >= $glibc: $glibc_who), pinned from $VENV_PY"
    echo "# peers.tar: $tar_b bytes, ${#parts[@]} parts of at most $PART_MIB MiB" \
        "(benchmarks/gpu_host/fetch_peer_wheels.sh)"
    while read -r f; do printf '%10d  %s\n' "$(size "$WORK/wheels/$f")" "$f"; done <"$WORK/list"
} >"$DEST/MANIFEST"

# ------------------------------------------------------------------ what to tell
echo
echo "left out (docs/gpu-host.md):"
awk -F'\t' '$1 == "leave" { printf "  %-26s %-12s %s\n", $2, $3, $4 }' "$WORK/plan.tsv"
echo
echo "carried:"
while read -r f; do
    printf '%8.1f KiB  %s\n' "$(awk -v b="$(size "$WORK/wheels/$f")" 'BEGIN { print b / 1024 }')" "$f"
done <"$WORK/list" | sort -rn
wheels_b="$(du -cb "$WORK/wheels"/*.whl | tail -1 | cut -f1)"
whl_b="$(du -cb .whl/*.whl | tail -1 | cut -f1)"
tree_b="$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
    | tail -1 | cut -f1)"
small_b=$(($(size "$DEST/SHA256SUMS") + $(size "$DEST/MANIFEST")))
max_b=$((MAX_CALL_MIB * 1048576))
echo
echo "wheels: $count files, $(mib "$wheels_b") MiB; peers.tar $(mib "$tar_b") MiB in ${#parts[@]}" \
    "parts ($(for p in "${parts[@]}"; do printf '%s %s MiB, ' "${p##*/}" "$(mib "$(size "$p")")"; done)sha256" \
    "${tar_sum:0:16}...); the host needs glibc >= $glibc ($glibc_who)"
echo "a call carries the tree ($(mib "$tree_b") MiB) + what it names; at most $MAX_CALL_MIB MiB here" \
    "(the device tool's limit: 64 MiB); .whl is $(mib "$whl_b") MiB"
for p in "${parts[@]}"; do
    b=$((tree_b + $(size "$p") + small_b))
    ((b <= max_b)) || fail "OVER BUDGET: tree + ${p##*/} $(mib "$b") MiB > $MAX_CALL_MIB MiB (lower PART_MIB)"
done

# the device-tool calls: one per part (stash), back to back within the ~30 s the machine
# stays warm; the last part goes with .whl and `peers` where the three fit in one call
last="${parts[-1]##*/}"
last_with_whl=$((tree_b + whl_b + $(size "${parts[-1]}") + small_b))
echo
echo "device-tool calls, in a row (the machine keeps /tmp for ~30 s between calls):"
n=0
for p in "${parts[@]}"; do
    n=$((n + 1))
    name="${p##*/}"
    if [[ "$name" == "$last" ]] && ((last_with_whl <= max_b)); then
        echo "  $n. carry: [\".whl\", \".peers-parts/$name\", \".peers-parts/SHA256SUMS\"," \
            "\".peers-parts/MANIFEST\"], timeout_s: 600," \
            "command: bash benchmarks/gpu_host/run.sh stash peers" \
            "   (tree + .whl + $name: $(mib "$last_with_whl") MiB)"
    else
        echo "  $n. carry: [\".peers-parts/$name\", \".peers-parts/SHA256SUMS\"," \
            "\".peers-parts/MANIFEST\"], timeout_s: 120, command: bash benchmarks/gpu_host/run.sh stash" \
            "   ($(mib $((tree_b + $(size "$p") + small_b))) MiB)"
    fi
done
if ((last_with_whl > max_b)); then
    echo "  $((n + 1)). carry: [\".whl\"], timeout_s: 600, command: bash benchmarks/gpu_host/run.sh peers" \
        "   (tree + .whl + $last would be $(mib "$last_with_whl") MiB: too much for one call)"
fi
[[ "$PY_VERSION" == 3.12 ]] || echo "NOTE: PY_VERSION=$PY_VERSION: these wheels are for a trial here, not for the host"
echo "ok: $DEST"
