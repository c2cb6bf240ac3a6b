"""grpcio and protobuf: declared as ranges beside an application's own, refused outside them at start.

``make test-deps-range`` runs the engine's tests at both ends of each range; these tests hold the
declaration (pyproject.toml) and the start-time check (etcdlite.deps) to the same ranges.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from etcdlite import deps

ROOT = Path(__file__).resolve().parent.parent


def declared() -> dict[str, str]:
    """pyproject.toml's runtime requirements by distribution name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None
        out[name.group().lower()] = requirement.replace(" ", "")
    return out


@pytest.mark.parametrize("supported", deps.SUPPORTED, ids=lambda s: s.distribution)
def test_pyproject_declares_the_tested_range_not_a_pin(supported: deps.Supported) -> None:
    requirement = declared()[supported.distribution]
    assert "==" not in requirement, f"{requirement}: an exact pin breaks installs beside other versions"
    assert requirement == supported.requirement()


def test_this_environment_is_supported() -> None:
    assert deps.problem() is None, deps.problem()


@pytest.mark.parametrize(("supported", "version"), [
    *((deps.GRPCIO, v) for v in ("1.82.2", "1.83.1", "1.84.0", "1.85.1", "1.85.9")),
    *((deps.PROTOBUF, v) for v in ("4.25.0", "4.25.9", "5.26.1", "5.29.6", "6.30.2", "6.33.6", "7.36.2", "7.99.0")),
])
def test_versions_in_range_are_accepted(supported: deps.Supported, version: str) -> None:
    assert supported.accepts(version)
    assert deps.problem({**deps.installed(), supported.distribution: version}) is None


@pytest.mark.parametrize(("grpcio", "protobuf", "line"), [
    ("1.82.1", "7.36.2", 'etcdlite: grpcio 1.82.1 is not supported (tested: 1.82.2 to 1.85.x, except 1.83.0); '
                         'install "grpcio>=1.82.2,!=1.83.0,<1.86"'),
    ("1.83.0", "7.36.2", 'etcdlite: grpcio 1.83.0 is not supported (tested: 1.82.2 to 1.85.x, except 1.83.0); '
                         'install "grpcio>=1.82.2,!=1.83.0,<1.86"'),
    ("1.86.0rc1", "7.36.2", 'etcdlite: grpcio 1.86.0rc1 is not supported (tested: 1.82.2 to 1.85.x, except '
                            '1.83.0); install "grpcio>=1.82.2,!=1.83.0,<1.86"'),
    ("1.85.3", "4.24.4", 'etcdlite: protobuf 4.24.4 is not supported (tested: 4.25.0 to 7.x); '
                         'install "protobuf>=4.25.0,<8"'),
    ("1.85.3", "8.0.0", 'etcdlite: protobuf 8.0.0 is not supported (tested: 4.25.0 to 7.x); '
                        'install "protobuf>=4.25.0,<8"'),
    ("1.60.0", "3.20.3", 'etcdlite: grpcio 1.60.0 is not supported (tested: 1.82.2 to 1.85.x, except 1.83.0); '
                         'install "grpcio>=1.82.2,!=1.83.0,<1.86"; protobuf 3.20.3 is not supported (tested: '
                         '4.25.0 to 7.x); install "protobuf>=4.25.0,<8"'),
])
def test_versions_outside_are_named_in_one_line(grpcio: str, protobuf: str, line: str) -> None:
    assert deps.problem({"grpcio": grpcio, "protobuf": protobuf}) == line


# what `python -m etcdlite` runs, with grpcio claiming another version: the check must come first
_FAKED = """
import sys, grpc
grpc.__version__ = sys.argv[1]
from etcdlite.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_etcdlite_refuses_to_start_on_an_unsupported_grpcio(tmp_path: Path) -> None:
    from harness import free_port

    url = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-c", _FAKED, "1.81.0", "--data-dir", str(tmp_path / "d"),
                        "--listen-client-urls", url, "--advertise-client-urls", url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == ('etcdlite: grpcio 1.81.0 is not supported (tested: 1.82.2 to 1.85.x, except 1.83.0); '
                        'install "grpcio>=1.82.2,!=1.83.0,<1.86"\n')
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_the_engine_is_not_imported_before_the_check() -> None:
    """An incompatible grpcio may fail as soon as the engine touches its core API: the check must run first."""
    r = subprocess.run([sys.executable, "-c", "import sys, etcdlite.cli; "
                        "print(sorted(m for m in sys.modules if m.startswith(('grpc', 'etcdlite.transport'))))"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_stubs_that_do_not_load_are_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A protobuf inside the range that still refuses the stubs: one line naming it, not a traceback."""
    import builtins

    real_import = builtins.__import__

    def refusing(name: str, *args: object, **kw: object) -> object:
        if name.endswith("etcdserverpb") or name.endswith("rpc_pb2"):
            raise ImportError("Detected incompatible Protobuf Gencode/Runtime versions\nmore detail")
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", refusing)
    assert deps.problem({"grpcio": "1.85.3", "protobuf": "7.36.2"}) == (
        "etcdlite: protobuf 7.36.2 cannot load etcdlite's stubs (Detected incompatible Protobuf Gencode/Runtime "
        'versions); install "protobuf>=4.25.0,<8"')


def test_oldest_end_printed_for_the_makefile() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "server" / "deps.py"), "oldest"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["grpcio==1.82.2", "protobuf==4.25.0"]
