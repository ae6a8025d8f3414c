"""The worker SDK as an installed package: the venv imports the copy pip
installed from python/ (never the source directory on sys.path), that copy
is the current source, it is typed, and its version is the protocol's."""
import importlib.metadata
import pathlib
import re

import stockade_worker

REPO = pathlib.Path(__file__).resolve().parents[2]
SOURCE = REPO / "python" / "stockade_worker"
INSTALLED = pathlib.Path(stockade_worker.__file__).resolve().parent


def test_the_sdk_is_imported_from_site_packages_not_from_the_checkout():
    assert INSTALLED != SOURCE.resolve()
    assert "site-packages" in INSTALLED.parts or "dist-packages" in INSTALLED.parts, INSTALLED


def test_the_installed_copy_is_the_current_source():
    names = sorted(p.name for p in SOURCE.iterdir() if p.suffix == ".py" or p.name == "py.typed")
    assert names == sorted(p.name for p in INSTALLED.iterdir() if p.suffix == ".py" or p.name == "py.typed")
    for name in names:
        assert (INSTALLED / name).read_bytes() == (SOURCE / name).read_bytes(), \
            f"the venv's stockade_worker/{name} is stale: run `make venv`"


def test_the_package_is_typed():
    assert (INSTALLED / "py.typed").is_file()


def test_the_version_is_the_distribution_version_and_its_major_is_the_protocol():
    assert importlib.metadata.version("stockade-worker") == stockade_worker.__version__
    major = int(stockade_worker.__version__.split(".")[0])
    assert major == stockade_worker.PROTOCOL_VERSION


def test_the_protocol_version_is_the_one_the_launcher_and_the_spec_speak():
    swift = (REPO / "Sources" / "StockadeChannel" / "ChannelParameters.swift").read_text()
    launcher = re.search(r"static let version: UInt8 = (\d+)", swift)
    assert launcher, "ChannelParameters.swift no longer states its version"
    assert int(launcher.group(1)) == stockade_worker.PROTOCOL_VERSION
    title = (REPO / "docs" / "PROTOCOL.md").read_text().splitlines()[0]
    assert title == f"# The Stockade channel, version {stockade_worker.PROTOCOL_VERSION}"
    from stockade_worker.channel import AGENT
    assert AGENT == b"stockade-python/%d" % stockade_worker.PROTOCOL_VERSION


def test_params_of_another_protocol_version_are_refused():
    from stockade_worker.channel import ChannelViolation, parse_params
    for version in (0, stockade_worker.PROTOCOL_VERSION + 1, 255):
        blob = b"STKCHAN1" + bytes([version]) + bytes(200)
        try:
            parse_params(blob)
        except ChannelViolation as e:
            assert "version" in str(e)
        else:
            raise AssertionError(f"params version {version} accepted")
