#!/usr/bin/env bash
# Runs the escape-probe battery (.build/stockade-probe) under every sandbox we
# compare against and writes docs/COMPARISON.md (probe x sandbox).
#
#   scripts/compare.sh                 # all sandboxes found on this machine
#   STOCKADE=path/to/stockade scripts/compare.sh
#   COMPARE_ONLY="bwrap firejail" scripts/compare.sh
#   COMPARE_NOTE="text" scripts/compare.sh   # a remark printed at the top
#
# Sandboxes: `stockade run` with each profile in profiles/, bubblewrap (as
# root and, where unprivileged user namespaces allow, as nobody) with the
# Docker/Moby default seccomp profile compiled to BPF, firejail, and no
# sandbox at all (the baseline; every probe is harmless unconfined).
#
# Every run gets the same hostile caller: fd 7 open on the host's "/" (a
# leaked directory fd is the runc CVE-2024-21626 class), an abstract unix
# socket bound on the host that must not be reachable from inside, 8 inotify
# instances held by root, and the probe is told the caller's session keyring
# and the host ids in use (probes 45, 47, 49).
# Needs root, bubblewrap, firejail, libseccomp-dev and python3 (Makefile deps).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROBE=${PROBE:-$ROOT/.build/stockade-probe}
MOBY=${MOBY:-$ROOT/profiles/moby-seccomp-default.json}
OUT=${OUT:-$ROOT/docs/COMPARISON.md}
ONLY=${COMPARE_ONLY:-}

if [ -z "${STOCKADE:-}" ]; then
    for c in "$ROOT/.build/release/stockade" "$ROOT/.build/debug/stockade"; do
        if [ -x "$c" ]; then STOCKADE=$c; break; fi
    done
fi

die() { echo "compare.sh: $*" >&2; exit 1; }
[ -x "$PROBE" ] || die "no probe binary at $PROBE (run: make probe)"
[ "$(id -u)" = 0 ] || die "run as root (bubblewrap and firejail are compared as root and as nobody)"
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# A world-readable copy of the probe, so that an unprivileged sandbox can run it.
WORK=$(mktemp -d /tmp/stockade-compare.XXXXXX)
chmod 755 "$WORK"
cp "$PROBE" "$WORK/stockade-probe"
chmod 755 "$WORK/stockade-probe"
RESULTS=$WORK/results
mkdir -p "$RESULTS"
CANARY_PID=
cleanup() {
    [ -n "$CANARY_PID" ] && kill "$CANARY_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The host-side canary: an abstract unix socket no jail may reach, held by a
# root process that also holds 8 inotify instances (a jail charged to host
# root runs out of its own that much sooner: probe 49).
CANARY="stockade-probe-canary-$$"
CALLER_INOTIFY=8
python3 -c '
import ctypes, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + sys.argv[1]); s.listen(16)
libc = ctypes.CDLL(None, use_errno=True)
held = [libc.inotify_init1(0o2000000) for _ in range(int(sys.argv[2]))]
while True: time.sleep(3600)
' "$CANARY" "$CALLER_INOTIFY" &
CANARY_PID=$!
sleep 0.3
# The caller's session keyring (probe 45): keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0).
CALLER_KEYRING=$(python3 -c 'import ctypes; print(ctypes.CDLL(None).syscall(250, 0, -3, 0))')
# Host ids in use (probe 47): /etc/passwd, /etc/group, /etc/subuid, /etc/subgid
# and 0; $1 is an id left out (a rootless caller is its own uid by design).
reserved_ids() {
    python3 - "$1" <<'PY'
import sys
skip = int(sys.argv[1]) if sys.argv[1] else -1
r = [(0, 0)]
for f in ("/etc/passwd", "/etc/group"):
    for line in open(f):
        p = line.split(":")
        if len(p) > 2 and p[2].isdigit() and int(p[2]) != skip:
            r.append((int(p[2]), int(p[2])))
for f in ("/etc/subuid", "/etc/subgid"):
    try:
        for line in open(f):
            p = line.strip().split(":")
            if len(p) == 3 and p[1].isdigit() and p[2].isdigit() and int(p[2]) > 0:
                r.append((int(p[1]), int(p[1]) + int(p[2]) - 1))
    except OSError:
        pass
m = []
for a, b in sorted(r):
    if m and a <= m[-1][1] + 1:
        m[-1] = (m[-1][0], max(m[-1][1], b))
    else:
        m.append((a, b))
out = ""
for a, b in m:
    item = str(a) if a == b else "%d-%d" % (a, b)
    if len(out) + len(item) + 1 > 4000:  # the probe's buffer
        break
    out += ("," if out else "") + item
print(out)
PY
}
PROBE_ARGS=(--json --abstract "$CANARY" --caller-keyring "$CALLER_KEYRING" --caller-inotify "$CALLER_INOTIFY"
            --reserved-ids "$(reserved_ids "")")
PROBE_ARGS_NOBODY=(--json --abstract "$CANARY" --caller-keyring "$CALLER_KEYRING" --caller-inotify "$CALLER_INOTIFY"
                   --reserved-ids "$(reserved_ids 65534)")

# The Docker default profile as bubblewrap wants it: compiled BPF on an fd.
BPF=$WORK/moby.bpf
cc -O2 -o "$WORK/seccomp-compile" scripts/seccomp-compile.c -lseccomp
python3 scripts/moby-seccomp-rules.py "$MOBY" "" | "$WORK/seccomp-compile" > "$BPF" 2> "$WORK/seccomp-compile.log" \
    || die "compiling $MOBY failed: $(cat "$WORK/seccomp-compile.log")"
chmod 644 "$BPF"

ORDER=()
run_one() { # name description command...
    local name=$1 desc=$2
    shift 2
    echo "== $name: $desc" >&2
    ORDER+=("$name")
    printf '%s\n' "$desc" > "$RESULTS/$name.desc"
    # fd 7: the leaked host directory. stdin: /dev/null.
    # Every other fd of this script is closed first: the caller is clean
    # except for what is planted on purpose.
    ( cd /
      for fd in $(ls /proc/$BASHPID/fd); do
          if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
      done
      if [ -n "${SECCOMP_FD9:-}" ]; then exec 9<"$SECCOMP_FD9"; fi
      exec 7</ && exec "$@" </dev/null ) > "$RESULTS/$name.json" 2> "$RESULTS/$name.err" || true
    if ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$RESULTS/$name.json" 2>/dev/null; then
        echo "   no results; stderr follows" >&2
        tail -5 "$RESULTS/$name.err" >&2
    fi
}

BWRAP_FS=(--ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64
          --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp
          --ro-bind "$WORK/stockade-probe" /stockade-probe)
BWRAP=(bwrap --unshare-all --new-session --die-with-parent --cap-drop ALL)

if wanted stockade; then
    if [ -n "${STOCKADE:-}" ]; then
        for prof in profiles/*.toml; do
            p=$(basename "$prof" .toml)
            run_one "stockade-$p" "\`stockade run --profile profiles/$p.toml\` (as root)" \
                "$STOCKADE" run --profile "$ROOT/$prof" --ro-bind "$WORK/stockade-probe:/stockade-probe" \
                -- /stockade-probe "${PROBE_ARGS[@]}"
        done
        # The same launcher unprivileged (rootless: a user namespace of its own).
        cp "$STOCKADE" "$WORK/stockade"
        # Every jail's PID 1 lives beside the launcher.
        if [ -x "$(dirname "$STOCKADE")/stockade-init" ]; then
            cp "$(dirname "$STOCKADE")/stockade-init" "$WORK/stockade-init"
            chmod 755 "$WORK/stockade-init"
        fi
        cp profiles/minimal.toml "$WORK/minimal.toml"
        chmod 755 "$WORK/stockade"
        chmod 644 "$WORK/minimal.toml"
        run_one stockade-minimal-nobody "the same \`stockade run --profile profiles/minimal.toml\` as uid 65534 (setpriv), rootless" \
            setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$WORK/stockade" run --profile "$WORK/minimal.toml" --ro-bind "$WORK/stockade-probe:/stockade-probe" \
            -- /stockade-probe "${PROBE_ARGS_NOBODY[@]}"
    else
        echo "compare.sh: no stockade binary (make release, or set STOCKADE); Stockade columns skipped" >&2
    fi
fi
if wanted bwrap && command -v bwrap >/dev/null; then
    export SECCOMP_FD9=$BPF # bwrap reads the compiled filter from fd 9
    run_one bwrap-root "\`bwrap --unshare-all --new-session --die-with-parent --cap-drop ALL --seccomp FD\` (Docker default profile), as root" \
        "${BWRAP[@]}" --seccomp 9 "${BWRAP_FS[@]}" /stockade-probe "${PROBE_ARGS[@]}"
    run_one bwrap-nobody "the same bwrap command as uid 65534 (setpriv), unprivileged user namespace" \
        setpriv --reuid=65534 --regid=65534 --clear-groups \
        "${BWRAP[@]}" --seccomp 9 "${BWRAP_FS[@]}" /stockade-probe "${PROBE_ARGS_NOBODY[@]}"
    unset SECCOMP_FD9
fi
if wanted firejail && command -v firejail >/dev/null; then
    run_one firejail "\`firejail --noprofile --seccomp --caps.drop=all --nonewprivs --net=none --private\`, as root" \
        firejail --quiet --noprofile --seccomp --caps.drop=all --nonewprivs --net=none --private \
        "$WORK/stockade-probe" "${PROBE_ARGS[@]}"
fi
if wanted none; then
    run_one none "no sandbox: root on the host (the baseline)" "$WORK/stockade-probe" "${PROBE_ARGS[@]}"
fi

mkdir -p "$(dirname "$OUT")"
# The commit the sandboxes were built from; "-dirty" when sources differ
# (the page itself does not count).
COMPARE_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)
if [ -n "$COMPARE_COMMIT" ] && ! git -C "$ROOT" diff --quiet HEAD -- . ':!docs/COMPARISON.md'; then
    COMPARE_COMMIT="$COMPARE_COMMIT-dirty"
fi
export COMPARE_COMMIT COMPARE_NOTE=${COMPARE_NOTE:-}
python3 scripts/compare-table.py "$RESULTS" "${ORDER[@]}" > "$OUT"
echo "wrote $OUT" >&2
