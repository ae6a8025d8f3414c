#!/bin/bash
# The GPU profile on a real NVIDIA host. Run as root from the repository root
# of a copy that carries a release build (`make release probe` on a build
# machine: .build/release/stockade, .build/stockade-probe); the host needs no
# Swift toolchain and no package registry, only the NVIDIA driver, python3
# with PyTorch (CUDA) and libseccomp.so.2, libcap.so.2, libssl.so.3.
#
# Usage: scripts/gpu-check.sh [check|learn]
#   check (default): a 4096x4096 float32 matmul on the GPU inside a jail from
#     profiles/inference-gpu.toml, compared with the CPU result; checks from
#     inside that only the granted GPU is visible and /dev/nvidia-uvm-tools is
#     not; runs the probe battery under the GPU profile; times the matmul
#     jailed and unjailed. Exits non-zero on any failed check.
#   learn: the same matmul with the seccomp default action "log": prints every
#     system call the profile would have refused (read from the kernel log),
#     to confirm or correct the profile's [seccomp] allow list.
#
# Environment: STOCKADE (default .build/release/stockade), STOCKADE_PROBE
# (default .build/stockade-probe), PROFILE (default profiles/inference-gpu.toml),
# PYTHON (default python3), ITERATIONS (default 20).
set -uo pipefail

MODE=${1:-check}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STOCKADE=${STOCKADE:-$ROOT/.build/release/stockade}
PROBE=${STOCKADE_PROBE:-$ROOT/.build/stockade-probe}
PROFILE=${PROFILE:-$ROOT/profiles/inference-gpu.toml}
PYTHON=${PYTHON:-python3}
ITERATIONS=${ITERATIONS:-20}
WORK=$(mktemp -d /tmp/stockade-gpu-check.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
FAILED=0

say() { printf '%s\n' "gpu-check: $*"; }
fail() { printf '%s\n' "gpu-check: FAIL: $*"; FAILED=1; }
die() { printf '%s\n' "gpu-check: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (the device allowlist is a cgroup device program, which needs CAP_BPF/CAP_SYS_ADMIN)"
[ -x "$STOCKADE" ] || die "$STOCKADE missing: build it with 'make release' on a build machine and copy .build/release/stockade here"
[ -e /dev/nvidiactl ] || die "no NVIDIA GPU here: /dev/nvidiactl missing"
PYBIN=$(command -v "$PYTHON") || die "$PYTHON not found"
PYBIN=$(readlink -f "$PYBIN")

# Where this host's Python and PyTorch live: the jail binds /usr only, so
# anything outside it (a /opt prefix, /usr/local on a split /usr, root's
# ~/.local) is bound read-only at the same path.
read -r TORCH_FILE PY_PREFIX PY_BASE < <("$PYBIN" -c 'import torch, sys; print(torch.__file__, sys.prefix, sys.base_prefix)') \
	|| die "$PYBIN cannot import torch"
TORCH_SITE=$(dirname "$(dirname "$TORCH_FILE")")
say "python $PYBIN, prefix $PY_PREFIX, torch in $TORCH_SITE"
BINDS=()
for p in "$TORCH_SITE" "$PY_PREFIX" "$PY_BASE" "$(dirname "$PYBIN")" \
	$("$PYBIN" -c 'import site, sys; print(" ".join(p for p in sys.path if p))'); do
	p=$(readlink -f "$p" 2>/dev/null) || continue
	[ -e "$p" ] || continue
	case "$p" in /usr|/usr/*) continue ;; esac
	case " ${BINDS[*]:-} " in *" --ro-bind $p "*) continue ;; esac
	BINDS+=(--ro-bind "$p")
done
[ ${#BINDS[@]} -gt 0 ] && say "extra binds: ${BINDS[*]}"

# The workload: one script, run jailed and unjailed. It prints one JSON line.
cat > "$WORK/matmul.py" <<'PY'
import json, os, sys, time
import torch

n = 4096
iterations = int(os.environ.get("ITERATIONS", "20"))
report = {"jailed": os.environ.get("STOCKADE_JAILED") == "1"}
report["cuda_available"] = torch.cuda.is_available()
if not report["cuda_available"]:
    print(json.dumps(report)); sys.exit(3)
report["device_count"] = torch.cuda.device_count()
report["device_name"] = torch.cuda.get_device_name(0)
report["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
report["dev_nvidia"] = sorted(e for e in os.listdir("/dev") if e.startswith("nvidia"))
report["uvm_tools_visible"] = os.path.exists("/dev/nvidia-uvm-tools")
gpus_dir = "/proc/driver/nvidia/gpus"
def shown(entry):
    # A GPU the jail was not given is masked: an empty, unreadable directory.
    try:
        return bool(os.listdir(os.path.join(gpus_dir, entry)))
    except OSError:
        return False
try:
    report["proc_gpus"] = sorted(e for e in os.listdir(gpus_dir) if shown(e))
except OSError as e:
    report["proc_gpus"] = "unreadable: %s" % e

torch.backends.cuda.matmul.allow_tf32 = False
g = torch.Generator().manual_seed(1234)
a = torch.randn(n, n, generator=g, dtype=torch.float32)
b = torch.randn(n, n, generator=g, dtype=torch.float32)
cpu = a @ b
da, db = a.cuda(), b.cuda()
gpu = (da @ db).cpu()
err = ((gpu - cpu).norm() / cpu.norm()).item()
report["relative_error"] = err
report["match"] = err < 1e-4
torch.cuda.synchronize()
for _ in range(3):
    da @ db
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(iterations):
    da @ db
torch.cuda.synchronize()
report["matmul_ms"] = (time.perf_counter() - t0) * 1000 / iterations
print(json.dumps(report))
PY
chmod 644 "$WORK/matmul.py"

jailed() {
	# The script's directory is bound read-only at /check.
	"$STOCKADE" run -p "$1" "${BINDS[@]}" --ro-bind "$WORK:/check" --setenv STOCKADE_JAILED=1 \
		--setenv ITERATIONS="$ITERATIONS" -- "$PYBIN" /check/matmul.py
}

json_field() { "$PYBIN" -c 'import json, sys; r = json.loads(sys.argv[1]); v = r.get(sys.argv[2]); print(json.dumps(v) if not isinstance(v, str) else v)' "$1" "$2"; }

if [ "$MODE" = learn ]; then
	# The profile with default = "log": every call it would refuse is allowed
	# and logged by the kernel (audit type 1326, or "audit: ... syscall=N").
	sed -E 's/^default = .*/default = "log"/' "$PROFILE" > "$WORK/learn.toml"
	grep -q '^default = "log"' "$WORK/learn.toml" || die "$PROFILE has no [seccomp] default line to replace"
	sysctl -q kernel.seccomp.actions_logged 2>/dev/null | grep -q log || say "note: kernel.seccomp.actions_logged lacks 'log'; nothing will be logged"
	START=$(dmesg | wc -l)
	jailed "$WORK/learn.toml" || fail "the matmul failed under the log action"
	sleep 1
	dmesg | tail -n +"$((START + 1))" | grep -E 'type=1326|audit.*syscall=' > "$WORK/audit.txt" || true
	if [ -s "$WORK/audit.txt" ]; then
		say "system calls the profile would have refused (count, name, number):"
		"$PYBIN" - "$WORK/audit.txt" <<'PY'
import collections, ctypes, re, sys
try:
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    libc = ctypes.CDLL(None)
    def name(n):
        p = lib.seccomp_syscall_resolve_num_arch(0, n)
        if not p:
            return "?"
        s = ctypes.string_at(p).decode()
        libc.free(ctypes.c_void_p(p))
        return s
except OSError:
    def name(n):
        return "?"
counts = collections.Counter()
for line in open(sys.argv[1]):
    m = re.search(r"syscall=(\d+)", line)
    if m:
        counts[int(m.group(1))] += 1
for nr, c in counts.most_common():
    print("  %6d  %-24s %d" % (c, name(nr), nr))
PY
		say "add the ones the CUDA driver needs to [seccomp] allow in $PROFILE, each with its reason"
	else
		say "nothing was logged: the profile's allow list covers the matmul (or the log was rate-limited: check 'dmesg' and kernel.printk_ratelimit)"
	fi
	exit $FAILED
fi

say "1. matmul in a jail from $(basename "$PROFILE")"
JAILED=$(jailed "$PROFILE" 2>"$WORK/jailed.err" | tail -1)
if [ -z "$JAILED" ]; then
	cat "$WORK/jailed.err"
	fail "the jailed matmul printed nothing"
else
	say "jailed: $JAILED"
	[ "$(json_field "$JAILED" match)" = true ] || fail "GPU result differs from the CPU result (relative error $(json_field "$JAILED" relative_error))"
	[ "$(json_field "$JAILED" device_count)" = 1 ] || fail "the jail sees $(json_field "$JAILED" device_count) GPUs, not 1"
	[ "$(json_field "$JAILED" uvm_tools_visible)" = false ] || fail "/dev/nvidia-uvm-tools is visible in the jail"
	NODES=$(json_field "$JAILED" dev_nvidia)
	GPU_NODES=$("$PYBIN" -c 'import json, re, sys; print(len([n for n in json.loads(sys.argv[1]) if re.fullmatch(r"nvidia\d+", n)]))' "$NODES")
	[ "$GPU_NODES" = 1 ] || fail "the jail has $GPU_NODES /dev/nvidia<N> nodes: $NODES"
	PROC_GPUS=$(json_field "$JAILED" proc_gpus)
	"$PYBIN" -c 'import json, sys; v = json.loads(sys.argv[1]); sys.exit(0 if isinstance(v, list) and len(v) == 1 else 1)' "$PROC_GPUS" \
		|| fail "/proc/driver/nvidia/gpus shows $PROC_GPUS (expected exactly the granted GPU)"
fi

say "2. a GPU node the profile does not grant is refused by the kernel"
HOST_GPUS=$(ls /dev | grep -cE '^nvidia[0-9]+$')
OTHER=$(ls /dev | grep -E '^nvidia[0-9]+$' | sort -V | sed -n 2p)
if [ -n "$OTHER" ]; then
	OUT=$("$STOCKADE" run -p "$PROFILE" -- /bin/sh -c "test -e /dev/$OTHER && echo present || echo absent" 2>&1)
	[ "$OUT" = absent ] || fail "/dev/$OTHER is in the jail: $OUT"
else
	say "   (one GPU on this host: nothing more to check)"
fi
# uvm-tools exists on the host; its number must be refused even if a node appeared.
[ -e /dev/nvidia-uvm-tools ] && say "   host has /dev/nvidia-uvm-tools; the jail did not (step 1)"

say "3. the probe battery under the GPU profile"
if [ -x "$PROBE" ]; then
	GRANTED=$(echo "$NODES" | tr -d '[]" ' )
	if "$STOCKADE" probe -p "$PROFILE" --probe-binary "$PROBE" ${GRANTED:+--expect-devices "$GRANTED"} > "$WORK/probe.txt" 2>&1; then
		say "probe battery: all passed ($(grep -c . "$WORK/probe.txt") lines)"
	else
		cat "$WORK/probe.txt"
		fail "the probe battery found a problem under the GPU profile"
	fi
else
	fail "$PROBE missing: build it with 'make probe' and copy it here"
fi

say "4. the same matmul unjailed"
UNJAILED=$(ITERATIONS=$ITERATIONS "$PYBIN" "$WORK/matmul.py" | tail -1)
say "unjailed: $UNJAILED"
if [ -n "$JAILED" ] && [ -n "$UNJAILED" ]; then
	J=$(json_field "$JAILED" matmul_ms)
	U=$(json_field "$UNJAILED" matmul_ms)
	say "$(printf 'matmul 4096x4096 fp32: jailed %.3f ms, unjailed %.3f ms, ratio %.3f (%d iterations, %d GPUs on host)' \
		"$J" "$U" "$("$PYBIN" -c "print($J / $U)")" "$ITERATIONS" "$HOST_GPUS")"
fi

[ $FAILED = 0 ] && say "all checks passed" || say "some checks FAILED"
exit $FAILED
