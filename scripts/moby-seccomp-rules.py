#!/usr/bin/env python3
"""Reads a Docker/Moby seccomp JSON profile and prints the rule list that
scripts/seccomp-compile.c turns into BPF, resolved the way Docker resolves it
for one container: x86_64 and its sub-architectures, the given capability set
(empty for --cap-drop ALL) and the running kernel's version."""
import json
import os
import sys


def kernel_version():
    rel = os.uname().release.split("-")[0].split(".")
    return tuple(int(x) for x in rel[:2])


def applies(entry, caps, arch, kver):
    inc = entry.get("includes") or {}
    exc = entry.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not all(c in caps for c in inc["caps"]):
        return False
    if inc.get("minKernel"):
        want = tuple(int(x) for x in inc["minKernel"].split(".")[:2])
        if kver < want:
            return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if exc.get("caps") and any(c in caps for c in exc["caps"]):
        return False
    return True


def main():
    path = sys.argv[1]
    caps = set(sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else set()
    prof = json.load(open(path))
    kver = kernel_version()
    out = [f"default {prof['defaultAction']} {prof.get('defaultErrnoRet', 1)}"]
    names = {"SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X32": "x32"}
    for m in prof.get("archMap", []):
        if m["architecture"] == "SCMP_ARCH_X86_64":
            for a in [m["architecture"]] + m.get("subArchitectures", []):
                out.append(f"arch {names[a]}")
    for entry in prof["syscalls"]:
        if not applies(entry, caps, "amd64", kver):
            continue
        args = ""
        for a in entry.get("args") or []:
            args += f" {a['index']} {a['op']} {a['value']} {a.get('valueTwo', 0)}"
        err = entry.get("errnoRet", 1)
        for name in entry["names"]:
            out.append(f"rule {entry['action']} {err} {name}{args}")
    print("\n".join(out))


main()
