#!/bin/bash
# The profile checks `make test` runs (make test-profiles):
#  1. `stockade fuzz` offline with a fixed seed and a bounded number of
#     mutants (FUZZ_PROFILE_RUNS, FUZZ_PROFILE_SEED): the regression corpus,
#     then mutants checked against the reference and the metamorphic rules.
#  2. `stockade diff` of each shipped profile against its version in
#     PROFILE_BASE (default HEAD, the last committed version); a profile
#     that widens fails unless ALLOW_WIDEN=1 (then the report is printed
#     and the step passes). Without git or history the step says so and
#     is skipped.
set -u
STOCKADE=${STOCKADE:-.build/debug/stockade}
RUNS=${FUZZ_PROFILE_RUNS:-20}
SEED=${FUZZ_PROFILE_SEED:-1}
BASE=${PROFILE_BASE:-HEAD}
status=0

echo "== stockade fuzz --runs $RUNS --seed $SEED"
"$STOCKADE" fuzz --runs "$RUNS" --seed "$SEED" || status=1

echo "== stockade diff: profiles/*.toml against $BASE"
if ! command -v git >/dev/null 2>&1; then
    echo "git is not installed: profile diff skipped"
elif ! git rev-parse --verify --quiet "$BASE^{commit}" >/dev/null; then
    echo "no commit $BASE here (not a git checkout, or no history): profile diff skipped"
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # The whole directory, so that relative imports resolve as they did.
    git archive "$BASE" profiles | tar -x -C "$tmp"
    chmod -R go-w "$tmp"  # profiles writable by others are refused
    for p in profiles/*.toml; do
        old="$tmp/$p"
        if [ ! -f "$old" ]; then
            echo "$p: new since $BASE, nothing to compare"
            continue
        fi
        out=$("$STOCKADE" diff "$old" "$p" 2>&1); rc=$?
        echo "$p: ${out##*$'\n'}"
        if [ $rc -eq 1 ]; then
            echo "$out" | sed 's/^/    /'
            if [ "${ALLOW_WIDEN:-0}" = 1 ]; then echo "    (ALLOW_WIDEN=1: accepted)"; else status=1; fi
        elif [ $rc -ne 0 ]; then
            echo "$out" | sed 's/^/    /'
            status=1
        fi
    done
fi
exit $status
