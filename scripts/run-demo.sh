#!/bin/bash
# make run: start stockaded with examples/stockaded.toml, ask both MiniLM
# tenants for embeddings, check them against the reference, print each
# tenant's resource use, and stop the daemon (SIGTERM: drain, then no jail,
# cgroup or socket left behind).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${STOCKADED:-.build/release/stockaded}
PY=.venv/bin/python3
CONFIG=examples/stockaded.toml
SOCK=.build/stockaded/api.sock
TOKEN=demo-admin-token-change-me
mkdir -p .build/stockaded
# The workers import the SDK from the venv the jails bind (make venv installs it).
"$PY" -c 'import stockade_worker' 2>/dev/null || { echo "the worker SDK is not installed in .venv: run make venv"; exit 1; }
"$BIN" --config "$CONFIG" --check
"$BIN" --config "$CONFIG" --log-level notice &
DAEMON=$!
stop() {
    if kill -0 "$DAEMON" 2>/dev/null; then kill -TERM "$DAEMON"; wait "$DAEMON" || true; fi
}
trap stop EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; kill -0 "$DAEMON" || exit 1; sleep 0.1; done
status=0
"$PY" examples/minilm/ask.py --socket "$SOCK" --token "$TOKEN" --demo search recsys || status=$?
kill -TERM "$DAEMON"
wait "$DAEMON" && rc=0 || rc=$?
trap - EXIT
echo
if [ "$rc" -ne 0 ]; then echo "stockaded exited with status $rc"; status=1; fi
if [ -e "$SOCK" ]; then echo "the API socket was left behind"; status=1; fi
left=$(find /sys/fs/cgroup -path '*/stockaded/tenant-*/jail-*' -type d 2>/dev/null | wc -l)
if [ "$left" -ne 0 ]; then echo "$left jail cgroups were left behind"; status=1; fi
echo "stockaded stopped cleanly; audit log: .build/stockaded/audit.jsonl ($(wc -l < .build/stockaded/audit.jsonl) entries)"
exit $status
