#!/bin/bash
# make test-package: the Debian package end to end on this machine (root).
#
#   scripts/package-test.sh .build/deb/stockade_VERSION_ARCH.deb
#
# Checks the package's metadata and that its Depends cover every shared
# library the binaries load; installs it with dpkg -i; runs the installed
# stockade and stockaded; verifies the systemd units (systemd-analyze);
# starts the installed daemon the way systemd would, without systemd:
# systemd-socket-activate hands it the listening socket (LISTEN_FDS), a
# datagram socket this test owns is its NOTIFY_SOCKET (READY=1 once the
# example tenant is warm, WATCHDOG=1, STOPPING=1 on SIGTERM), and its
# standard error is the stream JOURNAL_STREAM names (priority prefixes);
# renders every man page with warnings on; loads the completions; then
# dpkg --purge and checks that nothing of the package is left.
set -euo pipefail
DEB=${1:?usage: package-test.sh PACKAGE.deb}
DEB=$(realpath "$DEB")
cd "$(dirname "$0")/.."

fail() { echo "package test: FAIL: $*" >&2; exit 1; }
step() { echo "package test: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "package test: skipped: dpkg -i needs root"
    exit 0
fi
if dpkg-query -W -f='${Status}' stockade 2>/dev/null | grep -q 'ok installed\|config-files'; then
    fail "the stockade package is already installed here; this test installs and purges it itself (dpkg --purge stockade first)"
fi
for leftover in /etc/stockade /usr/share/stockade /var/log/stockade; do
    [ ! -e "$leftover" ] || fail "$leftover exists before the package is installed; the purge check could not tell what the package left"
done
getent group stockade >/dev/null && fail "the stockade group exists before the package is installed"

T=$(mktemp -d /tmp/stockade-package-test.XXXXXX)
DAEMON=
NOTIFY_READER=
cleanup() {
    [ -n "$DAEMON" ] && kill -KILL "$DAEMON" 2>/dev/null || true
    [ -n "$NOTIFY_READER" ] && kill "$NOTIFY_READER" 2>/dev/null || true
    if dpkg-query -W -f='${Status}' stockade 2>/dev/null | grep -q 'installed\|config-files'; then
        dpkg --purge stockade >/dev/null 2>&1 || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT

# --- the package file -------------------------------------------------------
step "metadata of $(basename "$DEB")"
dpkg-deb --info "$DEB" > "$T/info"
depends=$(dpkg-deb --field "$DEB" Depends)
for need in libc6 libseccomp2 libssl3; do
    grep -qw "$need" <<<"$depends" || fail "Depends lacks $need: $depends"
done
[ "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" = /etc/stockade/stockaded.toml ] || fail "conffiles is not /etc/stockade/stockaded.toml"
dpkg-deb --contents "$DEB" | awk '{print $NF}' | sed 's|^\./|/|' > "$T/contents"
for f in /usr/bin/stockade /usr/bin/stockaded /usr/bin/stockade-runtime /usr/libexec/stockade/stockade-init /etc/stockade/stockaded.toml \
    /usr/share/stockade/deploy/containerd/stockade-runtime.toml /usr/share/stockade/deploy/kubernetes/runtimeclass.yaml \
    /usr/share/stockade/deploy/kubernetes/stockade-runtime-installer.yaml \
    /usr/share/stockade/profiles/minimal.toml /usr/share/stockade/profiles/inference-cpu.toml \
    /lib/systemd/system/stockaded.service /lib/systemd/system/stockaded.socket \
    /usr/lib/python3/dist-packages/stockade_worker/__init__.py /usr/lib/python3/dist-packages/stockade_worker/py.typed \
    /usr/share/man/man1/stockade.1.gz /usr/share/man/man8/stockaded.8.gz \
    /usr/share/man/man5/stockade-profile.5.gz /usr/share/man/man5/stockaded.toml.5.gz \
    /usr/share/bash-completion/completions/stockade /usr/share/zsh/vendor-completions/_stockade \
    /usr/share/fish/vendor_completions.d/stockade.fish; do
    grep -qx "$f" "$T/contents" || fail "the package has no $f"
done

# Every shared library the binaries need comes from a package in Depends.
dpkg-deb --extract "$DEB" "$T/root"
for b in stockade stockaded stockade-runtime; do
    file "$T/root/usr/bin/$b" | grep -q 'ELF 64-bit' || fail "/usr/bin/$b is not an ELF binary"
    readelf -d "$T/root/usr/bin/$b" > "$T/dynamic"
    ldconfig -p > "$T/ldcache"
    for lib in $(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' "$T/dynamic"); do
        path=$(awk -v l="$lib" '$1 == l && /x86-64/ && !found {print $NF; found = 1}' "$T/ldcache")
        [ -n "$path" ] || fail "/usr/bin/$b needs $lib, which this machine does not have"
        owner=$( (dpkg -S "$path" || dpkg -S "$(realpath "$path")") 2>/dev/null | sed -n '1s/:.*//p')
        [ -n "$owner" ] || fail "no package owns $path ($lib, needed by $b)"
        echo "$owner" >> "$T/needed-packages"
        grep -qw "$owner" <<<"$depends" || fail "/usr/bin/$b needs $lib from $owner, which Depends does not name: $depends"
    done
done
# And every library package in Depends is one the binaries load.
for dep in $(tr ',' '\n' <<<"$depends" | awk '{print $1}' | grep '^lib'); do
    grep -qx "$dep" "$T/needed-packages" || fail "Depends names $dep, which no installed binary loads"
done

# The worker SDK also installs with pip (python/pyproject.toml), built from
# a copy so that the build leaves nothing in the checkout.
step "the worker SDK as a wheel"
mkdir -p "$T/sdk"
cp -r python/pyproject.toml python/stockade_worker "$T/sdk/"
rm -rf "$T/sdk/stockade_worker/__pycache__"
.venv/bin/python3 -m pip wheel -q --disable-pip-version-check --no-deps "$T/sdk" -w "$T/wheel" > "$T/pip.log" 2>&1 \
    || { cat "$T/pip.log"; fail "pip cannot build the worker SDK from python/pyproject.toml"; }
/usr/bin/python3 -m zipfile -l "$T"/wheel/stockade_worker-*.whl > "$T/wheel.list" || fail "the SDK wheel cannot be read"
grep -q "stockade_worker/channel.py" "$T/wheel.list" || fail "the SDK wheel lacks stockade_worker/channel.py"
grep -q "stockade_worker/py.typed" "$T/wheel.list" || fail "the SDK wheel lacks stockade_worker/py.typed (PEP 561)"
# Its version is the one version.py states, and its major the protocol's.
sdk_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' python/stockade_worker/version.py)
protocol=$(sed -n 's/^PROTOCOL_VERSION = \([0-9]*\)$/\1/p' python/stockade_worker/version.py)
ls "$T"/wheel/stockade_worker-"$sdk_version"-*.whl >/dev/null 2>&1 || fail "the SDK wheel is not version $sdk_version: $(ls "$T/wheel")"
[ "${sdk_version%%.*}" = "$protocol" ] || fail "the SDK's major version ${sdk_version%%.*} is not the protocol version $protocol"
# A worker author's venv takes the wheel as it is (its one dependency,
# cryptography, from the system's python3-cryptography).
/usr/bin/python3 -m venv --system-site-packages "$T/worker-venv" || fail "cannot make a venv for the SDK"
"$T/worker-venv/bin/python3" -m pip install -q --disable-pip-version-check --no-index "$T"/wheel/stockade_worker-*.whl > "$T/pip-install.log" 2>&1 \
    || { cat "$T/pip-install.log"; fail "pip cannot install the SDK wheel into a venv"; }
"$T/worker-venv/bin/python3" -c 'import importlib.metadata as m, stockade_worker as s; assert m.version("stockade-worker") == s.__version__ and "/worker-venv/" in s.__file__, s.__file__' \
    || fail "the venv does not import the SDK it installed"

# --- install ------------------------------------------------------------------
step "dpkg -i"
dpkg -i "$DEB" > "$T/dpkg-install.log" 2>&1 || { cat "$T/dpkg-install.log"; fail "dpkg -i failed"; }
getent group stockade >/dev/null || fail "postinst did not create the stockade group"
[ "$(stat -c %a /etc/stockade/admin.token)" = 600 ] || fail "the admin token is not mode 0600"
[ "$(wc -c < /etc/stockade/admin.token)" -ge 33 ] || fail "the admin token is too short"

step "the installed binaries"
version=$(dpkg-deb --field "$DEB" Version)
[ "$(/usr/bin/stockade --version)" = "$version" ] || fail "stockade --version is not the package version $version"
/usr/bin/stockade lint /usr/share/stockade/profiles/*.toml > "$T/lint" 2>&1 || { cat "$T/lint"; fail "stockade lint of the shipped profiles"; }
out=$(/usr/bin/stockade run --profile /usr/share/stockade/profiles/minimal.toml -- /bin/sh -c 'echo jailed uid=$(id -u)') \
    || fail "stockade run under the installed minimal profile exited $?"
[[ $out == "jailed uid="* ]] || fail "stockade run printed: $out"
/usr/bin/stockade run --profile /usr/share/stockade/profiles/minimal.toml -- /bin/sh -c 'exit 7' && rc=0 || rc=$?
[ "$rc" -eq 7 ] || fail "stockade run did not pass the command's status through (got $rc)"
# The OCI runtime as containerd's shim calls it: a busybox bundle created,
# started, stopped and deleted by the installed binary, its PID 1 the
# installed /usr/libexec/stockade/stockade-init.
[ "$(/usr/bin/stockade-runtime --version | head -1)" = "stockade-runtime version $version" ] \
    || fail "stockade-runtime --version is not the package version $version"
/usr/bin/stockade-runtime features | /usr/bin/python3 -c 'import json, sys; d = json.load(sys.stdin); assert "ociVersionMax" in d, d' \
    || fail "stockade-runtime features is not runtime-spec's features document"
mkdir -p "$T/bundle/rootfs/bin" "$T/bundle/rootfs/proc" "$T/bundle/rootfs/dev"
cp /bin/busybox "$T/bundle/rootfs/bin/busybox"
ln -s busybox "$T/bundle/rootfs/bin/sh"
cat > "$T/bundle/config.json" <<JSON
{"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": true},
 "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "exit 0"], "cwd": "/", "env": ["PATH=/bin"]},
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}],
           "cgroupsPath": "/stockade-package-test/oci1"}}
JSON
oci() { /usr/bin/stockade-runtime --root "$T/oci-state" "$@"; }
oci create --bundle "$T/bundle" oci1 > "$T/oci.out" 2>&1 || { cat "$T/oci.out"; fail "stockade-runtime create of a busybox bundle"; }
oci state oci1 | grep -Eq '"status" ?: ?"created"' || fail "stockade-runtime state after create is not created"
oci start oci1 || fail "stockade-runtime start"
for _ in $(seq 50); do oci state oci1 | grep -Eq '"status" ?: ?"stopped"' && break; sleep 0.1; done
oci state oci1 | grep -Eq '"status" ?: ?"stopped"' || fail "the container did not run to its end"
oci delete oci1 || fail "stockade-runtime delete"
gone=$(oci state oci1 2>&1) && fail "state after delete succeeded: $gone"
grep -q "does not exist" <<<"$gone" || fail "the container is still there after delete: $gone"
rmdir /sys/fs/cgroup/*/stockade-package-test /sys/fs/cgroup/stockade-package-test 2>/dev/null || true

# The installer DaemonSet's script against a fake host root. kubectl and
# nsenter are stubs that record their calls: no cluster and no systemd
# containerd exist here. Checked: what it installs, the handler it adds,
# the node label, and that SIGTERM undoes all of it.
step "the runtime installer (deploy/installer/install.sh; kubectl and nsenter stubbed)"
/usr/bin/python3 -c 'import sys, yaml; [list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]' \
    /usr/share/stockade/deploy/kubernetes/*.yaml || fail "a shipped Kubernetes manifest is not YAML"
mkdir -p "$T/fakehost/etc/containerd" "$T/fakehost/usr/local" "$T/stubs"
printf 'version = 2\n' > "$T/fakehost/etc/containerd/config.toml"
for stub in kubectl nsenter; do printf '#!/bin/sh\necho "%s $*" >> %s/calls\n' "$stub" "$T" > "$T/stubs/$stub"; chmod +x "$T/stubs/$stub"; done
HOST="$T/fakehost" NODE_NAME=node-a PATH="$T/stubs:$PATH" sh deploy/installer/install.sh > "$T/installer.log" 2>&1 &
installer=$!
for _ in $(seq 50); do grep -q installed "$T/installer.log" && break; sleep 0.1; done
grep -q "installed on node-a" "$T/installer.log" || { cat "$T/installer.log"; fail "the installer did not finish"; }
cmp "$T/fakehost/usr/local/bin/stockade-runtime" /usr/bin/stockade-runtime || fail "the installer did not install stockade-runtime"
[ -x "$T/fakehost/usr/local/libexec/stockade/stockade-init" ] || fail "the installer did not install stockade-init beside it"
grep -q 'BinaryName = "/usr/local/bin/stockade-runtime"' "$T/fakehost/etc/containerd/conf.d/stockade-runtime.toml" || fail "the handler does not name the installed runtime"
head -1 "$T/fakehost/etc/containerd/config.toml" | grep -q 'conf.d/\*.toml' || fail "containerd's config does not import the drop-in"
grep -q "nsenter .* systemctl restart containerd" "$T/calls" && grep -q "kubectl label node node-a stockade.io/runtime=true" "$T/calls" \
    || { cat "$T/calls"; fail "the installer did not restart containerd and label the node"; }
kill -TERM "$installer"; wait "$installer" || true
[ ! -e "$T/fakehost/usr/local/bin/stockade-runtime" ] && [ ! -e "$T/fakehost/etc/containerd/conf.d/stockade-runtime.toml" ] \
    || fail "SIGTERM did not remove the runtime"
[ "$(cat "$T/fakehost/etc/containerd/config.toml")" = "version = 2" ] || fail "SIGTERM did not restore containerd's config"
grep -q "kubectl label node node-a stockade.io/runtime-" "$T/calls" || fail "SIGTERM did not remove the node label"
/usr/bin/stockaded --config /etc/stockade/stockaded.toml --check > "$T/check" 2>&1 || { cat "$T/check"; fail "stockaded --check of the shipped configuration"; }
/usr/bin/python3 -c 'import stockade_worker, sys; sys.exit(0 if stockade_worker.__file__.startswith("/usr/lib/python3/dist-packages/") else 1)' \
    || fail "python3 does not import the installed stockade_worker"

step "man pages"
for page in "1 stockade" "8 stockaded" "5 stockade-profile" "5 stockaded.toml"; do
    set -- $page
    where=$(man -w "$1" "$2") || fail "man cannot find $2($1)"
    [ "$where" = "/usr/share/man/man$1/$2.$1.gz" ] || fail "man $1 $2 found $where"
    LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 "$1" "$2" > "$T/man.out" 2> "$T/man.err" || fail "man $1 $2 exited $?"
    [ ! -s "$T/man.err" ] || { cat "$T/man.err"; fail "man $1 $2 rendered with warnings"; }
    grep -q "^NAME" "$T/man.out" || fail "man $1 $2 has no NAME section"
done

step "completions"
for b in stockade stockaded; do
    bash -c "source /usr/share/bash-completion/completions/$b && complete -p $b" > /dev/null || fail "the bash completion of $b does not load"
    grep -q "#compdef $b" /usr/share/zsh/vendor-completions/_$b || fail "the zsh completion of $b has no #compdef line"
    grep -q "^complete -c '$b'" /usr/share/fish/vendor_completions.d/$b.fish || fail "the fish completion of $b completes nothing"
done
for sub in run lint explain compile probe cgroups; do
    grep -qw "$sub" /usr/share/bash-completion/completions/stockade || fail "the bash completion lacks stockade $sub"
done

step "systemd-analyze verify"
# systemd-analyze also checks that ExecStart's binary exists and that the
# socket unit's service is there.
SYSTEMD_LOG_LEVEL=notice systemd-analyze verify /lib/systemd/system/stockaded.socket /lib/systemd/system/stockaded.service \
    > "$T/verify" 2>&1 || { cat "$T/verify"; fail "systemd-analyze verify exited $?"; }
if grep -v "^$" "$T/verify" | grep -q .; then cat "$T/verify"; fail "systemd-analyze verify complained"; fi

# --- the daemon as systemd starts it --------------------------------------------
step "socket activation and sd_notify"
sed -e "s|^socket = .*|socket = \"$T/api.sock\"|" -e "s|^audit_log = .*|audit_log = \"$T/audit.jsonl\"|" \
    /etc/stockade/stockaded.toml > "$T/stockaded.toml"
cat > "$T/notify.py" <<'EOF'
# The service manager's side of sd_notify: every datagram, one line per
# assignment, flushed as it comes.
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        for line in s.recv(4096).decode().split("\n"):
            out.write(line + "\n")
EOF
cat > "$T/ask.py" <<'EOF'
# One HTTP request over the unix socket: ask.py SOCKET TOKEN METHOD PATH [BODY]
import http.client, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(sys.argv[1])
c = Conn("localhost")
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
c.request(sys.argv[3], sys.argv[4], body=body, headers={"Authorization": "Bearer " + sys.argv[2]})
r = c.getresponse()
data = r.read()
sys.stdout.write(data.decode(errors="replace"))
sys.exit(0 if r.status == 200 else 1)
EOF
: > "$T/notify.log"
/usr/bin/python3 "$T/notify.py" "$T/notify.sock" "$T/notify.log" &
NOTIFY_READER=$!
for _ in $(seq 50); do [ -S "$T/notify.sock" ] && break; sleep 0.1; done
# The stream JOURNAL_STREAM names: the daemon's standard error.
: > "$T/daemon.log"
journal=$(stat -c '%d:%i' "$T/daemon.log")
(umask 022; exec env NOTIFY_SOCKET="$T/notify.sock" WATCHDOG_USEC=400000 JOURNAL_STREAM="$journal" \
    systemd-socket-activate --listen="$T/api.sock" -E NOTIFY_SOCKET -E WATCHDOG_USEC -E JOURNAL_STREAM \
    /usr/bin/stockaded --config "$T/stockaded.toml" 2>> "$T/daemon.log") &
DAEMON=$!
for _ in $(seq 100); do [ -S "$T/api.sock" ] && break; sleep 0.1; done
[ -S "$T/api.sock" ] || fail "systemd-socket-activate made no socket"
mode_before=$(stat -c %a "$T/api.sock")
token=$(cat /etc/stockade/admin.token)
# systemd-socket-activate starts the daemon on the first connection; the
# answer comes once the daemon is up.
/usr/bin/python3 "$T/ask.py" "$T/api.sock" "$token" GET /v1/tenants > "$T/tenants.json" || { cat "$T/daemon.log"; fail "GET /v1/tenants through the passed socket"; }
for _ in $(seq 600); do grep -qx "READY=1" "$T/notify.log" && break; kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
grep -qx "READY=1" "$T/notify.log" || { cat "$T/daemon.log"; fail "no READY=1 on NOTIFY_SOCKET within 60 s"; }
/usr/bin/python3 "$T/ask.py" "$T/api.sock" "$token" GET /v1/tenants/echo > "$T/echo.json" || fail "GET /v1/tenants/echo"
/usr/bin/python3 - "$T/echo.json" <<'EOF' || fail "READY=1 came before the echo tenant's workers were warm: $(cat "$T/echo.json")"
import json, sys
t = json.load(open(sys.argv[1]))
sys.exit(0 if t["idle"] + t["busy"] >= t["workersMin"] >= 1 else 1)
EOF
grep -q "^STATUS=echo: 1 warm" "$T/notify.log" || fail "READY=1 without the tenant status: $(cat "$T/notify.log")"
answer=$(/usr/bin/python3 "$T/ask.py" "$T/api.sock" "$token" POST /v1/tenants/echo/infer "hello from the package test") || fail "POST /v1/tenants/echo/infer: $answer"
[ "$answer" = "hello from the package test" ] || fail "the echo tenant answered: $answer"
for _ in $(seq 50); do grep -qx "WATCHDOG=1" "$T/notify.log" && break; sleep 0.1; done
grep -qx "WATCHDOG=1" "$T/notify.log" || fail "no WATCHDOG=1 within 5 s with WATCHDOG_USEC=400000"
kill -TERM "$DAEMON"
wait "$DAEMON" && rc=0 || rc=$?
DAEMON=
[ "$rc" -eq 0 ] || { cat "$T/daemon.log"; fail "stockaded exited $rc after SIGTERM"; }
sed -n '/READY=1/,$p' "$T/notify.log" | grep -qx "STOPPING=1" || fail "no STOPPING=1 after READY=1: $(cat "$T/notify.log")"
[ -S "$T/api.sock" ] || fail "stockaded removed the socket systemd passed (the .socket unit owns it)"
[ "$(stat -c %a "$T/api.sock")" = "$mode_before" ] || fail "stockaded changed the passed socket's mode ($mode_before -> $(stat -c %a "$T/api.sock")); the unit sets it"
grep -q "socket activated" "$T/daemon.log" || fail "the daemon did not log that it took the passed socket"
# The daemon's lines follow systemd-socket-activate's own ("Execing ...").
sed '1,/^Execing /d' "$T/daemon.log" > "$T/daemon-only.log"
[ -s "$T/daemon-only.log" ] || fail "the daemon logged nothing"
bad=$(grep -cv '^<[0-7]>' "$T/daemon-only.log" || true)
[ "$bad" -eq 0 ] || { cat "$T/daemon.log"; fail "$bad log lines without a syslog priority prefix while JOURNAL_STREAM names standard error"; }
grep -q '^<6>stockaded: ready' "$T/daemon.log" || fail "no info-level (<6>) ready line in the log"
kill "$NOTIFY_READER" 2>/dev/null || true
NOTIFY_READER=

# --- purge ----------------------------------------------------------------------
step "dpkg --purge"
dpkg --purge stockade > "$T/dpkg-purge.log" 2>&1 || { cat "$T/dpkg-purge.log"; fail "dpkg --purge failed"; }
dpkg-query -W -f='${Status}' stockade 2>/dev/null | grep -q 'installed\|config-files' && fail "dpkg still knows the package"
ls /var/lib/dpkg/info/stockade.* >/dev/null 2>&1 && fail "dpkg left /var/lib/dpkg/info/stockade.*"
while read -r path; do
    case "$path" in
        */) path=${path%/}; [[ $path == *stockade* ]] || continue ;;  # shared directories stay
    esac
    [ -z "$path" ] || [ ! -e "$path" ] || fail "$path is left after dpkg --purge"
done < <(dpkg-deb --contents "$DEB" | awk '{print $NF}' | sed 's|^\./|/|')
for leftover in /etc/stockade /usr/share/stockade /usr/libexec/stockade /var/log/stockade /usr/lib/python3/dist-packages/stockade_worker; do
    [ ! -e "$leftover" ] || fail "$leftover is left after dpkg --purge"
done
getent group stockade >/dev/null && fail "the stockade group is left after dpkg --purge"
step "ok"
