"""The Kubernetes manifests under deploy/, checked without a cluster: every
document parses as YAML and names its kind; the stockaded DaemonSet's
volumes hold every path its configuration names; and the configuration in
its ConfigMap is accepted by stockaded's own loader (`stockaded --check`),
with the image's paths mapped to the files the package installs there."""
import pathlib
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
STOCKADED = REPO / ".build" / "debug" / "stockaded"

# Where the Debian package (make deb: install-files with PREFIX=/usr) puts
# each file the image's configuration names, and where it comes from here.
PACKAGE_FILES = {
    "/usr/share/stockade/profiles/": REPO / "profiles",
    "/usr/share/stockade/examples/echo_worker.py": REPO / "packaging" / "echo_worker.py",
}


def documents(name):
    return [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d is not None]


def test_every_manifest_parses_and_names_its_kind():
    files = sorted(KUBERNETES.glob("*.yaml"))
    assert "stockaded-daemonset.yaml" in [f.name for f in files]
    for f in files:
        for doc in documents(f.name):
            assert doc.get("apiVersion") and doc.get("kind"), f"{f.name}: {doc}"
            assert doc["metadata"]["name"], f"{f.name}: a {doc['kind']} without a name"


def broker():
    docs = {d["kind"]: d for d in documents("stockaded-daemonset.yaml")}
    return docs["ConfigMap"], docs["DaemonSet"]


def mounted(daemonset):
    """Container path -> the volume behind it."""
    spec = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    [container] = spec["containers"]
    return container, {m["mountPath"]: (volumes[m["name"]], m) for m in container["volumeMounts"]}


def test_the_daemonset_mounts_what_its_configuration_names():
    config_map, daemonset = broker()
    config = config_map["data"]["stockaded.toml"]
    container, mounts = mounted(daemonset)
    # The daemon reads the ConfigMap's file at the path its command names.
    config_path = container["command"][container["command"].index("--config") + 1]
    volume, mount = mounts[config_path]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert mount["subPath"] == "stockaded.toml"
    # The socket and the audit log live on the node (hostPath), the tokens
    # in a Secret; each path of the configuration lies under its mount.
    expect = {"socket": "hostPath", "audit_log": "hostPath", "token_file": "secret"}
    for key, kind in expect.items():
        line = next(l for l in config.splitlines() if l.strip().startswith(key + " ="))
        path = line.split("=", 1)[1].strip().strip('"')
        holders = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
        assert holders, f"{key} = {path}: no volume holds it"
        assert kind in mounts[holders[0]][0], f"{key} = {path}: expected a {kind} volume, got {mounts[holders[0]][0]}"
    # It builds jails (namespaces, uid maps, mounts, cgroups): privileged,
    # with no Kubernetes API token and a grace period above drain_timeout.
    assert container["securityContext"]["privileged"] is True
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    drain = next(l for l in config.splitlines() if l.startswith("drain_timeout"))
    assert int(drain.split('"')[1].rstrip("s")) < pod["terminationGracePeriodSeconds"]


@pytest.mark.skipif(not STOCKADED.is_file(), reason="needs the built stockaded (swift build)")
def test_stockaded_accepts_the_configmaps_configuration(tmp_path):
    config_map, _ = broker()
    config = config_map["data"]["stockaded.toml"]
    for image_path, here in PACKAGE_FILES.items():
        assert here.exists(), here
        config = config.replace(image_path, str(here) + ("/" if image_path.endswith("/") else ""))
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "admin.token").write_text("t" * 32 + "\n")
    (tokens / "admin.token").chmod(0o400)
    config = config.replace("/etc/stockade/tokens/", str(tokens) + "/")
    config = config.replace("/run/stockade/", str(tmp_path) + "/").replace("/var/log/stockade/", str(tmp_path) + "/")
    settings = "\n".join(l for l in config.splitlines() if not l.lstrip().startswith("#"))
    for image_path in ["/usr/share/stockade", "/etc/stockade", "/run/stockade", "/var/log/stockade"]:
        assert image_path not in settings, f"{image_path} left unmapped: {settings}"
    path = tmp_path / "stockaded.toml"
    path.write_text(config)
    ran = subprocess.run([str(STOCKADED), "--config", str(path), "--check"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 tenants, 1 clients" in ran.stdout, ran.stdout

    # The same loader refuses a broken copy, naming the key: the check can fail.
    path.write_text(config.replace('workers_min = 2', 'workers_min = "two"'))
    ran = subprocess.run([str(STOCKADED), "--config", str(path), "--check"], capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0 and "workers_min" in ran.stdout + ran.stderr, ran.stdout + ran.stderr
