"""``make test-deps-range``: install etcdlite at both ends of its grpcio and protobuf ranges and test it there.

Each end is a fresh venv in build/deps-range/ with the test tools beside it:

* oldest: grpcio and protobuf at the oldest releases etcdlite supports (``server/deps.py``), etcdlite
  from a wheel built with CC naming no compiler, so the relay runs its Python loop (tests/test_wheel.py
  checks that wheel); then grpcio one release below the range is installed, and ``etcdlite`` must refuse
  to start in one line;
* newest: whatever pip picks within the declared ranges (their newest releases), etcdlite installed
  from the tree as a user's ``pip install`` does, with the C relay loop where a compiler is at hand.

At each end: the engine's tests (engine, KV, watch, lease, transport, HTTP gateway, the dependency
checks) in one pytest process and the client libraries' tests in another, as ``make test`` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "deps-range"
ENGINE_TESTS = ["tests/test_engine.py", "tests/test_kv.py", "tests/test_watch.py", "tests/test_lease.py",
                "tests/test_transport.py", "tests/test_http.py", "tests/test_deps.py", "tests/test_wheel.py"]
CLIENT_TESTS = ["tests/clients"]
BELOW_RANGE = "grpcio==1.82.1"  # the release before the oldest supported one
# the tree as a user's sdist would have it: no venvs, no build output, no extension built in place
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "*.so", "etcdlite-relay", "__pycache__", "*.egg-info",
                                     "*.etcd", ".pytest_cache", ".hypothesis", "test-artifacts", "bench")


def run(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                          check=check)


def venv(name: str) -> Path:
    path = OUT / name
    run(sys.executable, "-m", "venv", path)
    return path / "bin"


def versions(bin_dir: Path) -> str:
    code = "import grpc, google.protobuf; print(f'grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}')"
    return subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def wheel_without_compiler(src: Path, bin_dir: Path) -> Path:
    dist = OUT / "dist"
    run(bin_dir / "pip", "wheel", "-q", "--no-deps", "-w", dist, src, env={"CC": "/nonexistent/cc"})
    (wheel,) = dist.glob("etcdlite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    built = [n for n in names if n.endswith(".so") or n.endswith("/etcdlite-relay")]
    assert not built, f"{wheel.name} has a compiled extension though no compiler was at hand: {built}"
    assert "etcdlite/transport/relay_loop.py" in names and "etcdlite/ui/js/main.js" in names, names
    print(f"{wheel.name}: {len(names)} files, no compiled extension", flush=True)
    return wheel


def test_end(bin_dir: Path, env: dict[str, str] | None = None) -> None:
    run(bin_dir / "pytest", "-q", "-rs", "-p", "no:cacheprovider", *ENGINE_TESTS, env=env)
    run(bin_dir / "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CLIENT_TESTS,
        env={**(env or {}), "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})


def refused_below_range(bin_dir: Path) -> None:
    run(bin_dir / "pip", "install", "-q", BELOW_RANGE)
    data = OUT / "refused.etcd"
    r = subprocess.run([str(bin_dir / "etcdlite"), "--data-dir", str(data), "--listen-client-urls",
                        "http://127.0.0.1:0", "--advertise-client-urls", "http://127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "grpcio 1.82.1 is not supported" in lines[0], (r.returncode,
                                                                                                   r.stderr)
    assert not data.exists()
    print(f"below the range, etcdlite refuses: {lines[0]}", flush=True)


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    src = OUT / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    oldest_pins = subprocess.run([sys.executable, str(ROOT / "server" / "deps.py"), "oldest"], capture_output=True,
                                 text=True, check=True).stdout.split()
    report = []

    t = time.monotonic()
    old = venv("oldest")
    wheel = wheel_without_compiler(src, old)
    run(old / "pip", "install", "-q", f"{wheel}[test]", *oldest_pins)
    found = versions(old)
    assert found == ", ".join(p.replace("==", " ") for p in oldest_pins), found
    print(f"== oldest end: {found}, etcdlite from a wheel built without a compiler", flush=True)
    test_end(old, env={"ETCDLITE_WHEEL_WITHOUT_EXTENSION": "1"})
    refused_below_range(old)
    report.append(f"oldest ({found}, no C extension): passed in {time.monotonic() - t:.0f}s")

    t = time.monotonic()
    new = venv("newest")
    run(new / "pip", "install", "-q", f"{src}[test]")
    found = versions(new)
    relay = subprocess.run([str(new / "python"), "-c", "from etcdlite.transport import splice; "
                            "print(splice.relay_command(3, 'x')[0].rsplit('/', 1)[-1], splice.relay_loop_file()[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    if shutil.which(os.environ.get("CC", "cc")):  # where pip had a compiler, the C loop was built, twice
        assert relay == "etcdlite-relay _splice", relay
    print(f"== newest end: {found}, relay loop {relay}", flush=True)
    test_end(new)
    report.append(f"newest ({found}): passed in {time.monotonic() - t:.0f}s")

    print("\n".join(["deps range:", *report, f"total {time.monotonic() - started:.0f}s"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
