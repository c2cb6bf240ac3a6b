"""docker/: no Docker engine runs here, so the image's pieces are checked outside Docker.

The compose file is validated structurally, and the Dockerfile's entrypoint,
environment and HEALTHCHECK command are run as the container would run them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from etcdlite.process import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_non_root_with_entrypoint_and_healthcheck():
    ins = dockerfile_instructions()
    words = [w for w, _ in ins]
    assert words[0] == "FROM"
    user = [rest for w, rest in ins if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["etcdlite"]
    assert "VOLUME" in words and "HEALTHCHECK" in words
    for w, rest in ins:
        if w in ("COPY", "ADD") and not rest.startswith("--from="):  # --from: another stage's files
            for src in rest.split()[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), f"{w} {src}: missing from the repository"


def healthcheck_command() -> list[str]:
    rest = dict(dockerfile_instructions())["HEALTHCHECK"]
    m = re.search(r"CMD\s+(\[.*\])", rest)
    assert m, rest
    return json.loads(m.group(1))


def test_compose_file_is_valid():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    etcd = services["etcd"]
    assert (COMPOSE.parent / etcd["build"]["context"] / etcd["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert etcd["healthcheck"]["test"][0] == "CMD"
    assert etcd["healthcheck"]["test"][1:] == healthcheck_command()
    assert services["app"]["depends_on"]["etcd"]["condition"] == "service_healthy"
    for volume in etcd.get("volumes", []):
        name = volume.split(":")[0]
        assert name in doc.get("volumes", {}), f"volume {name} is not declared"


def image_env(port: int, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for w, rest in dockerfile_instructions():
        if w == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    env["ETCD_DATA_DIR"] = str(data_dir)
    env["ETCD_LISTEN_CLIENT_URLS"] = f"http://127.0.0.1:{port}"
    return env


def test_entrypoint_with_image_env_serves_and_healthcheck_passes(tmp_path):
    port = free_port()
    env = image_env(port, tmp_path / "data")
    # the entrypoint with no arguments: configuration from ETCD_* only, as in the container
    proc = subprocess.Popen([sys.executable, "-m", "etcdlite"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    health = [sys.executable if c == "python" else c for c in healthcheck_command()]
    health[-1] = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(health, capture_output=True, text=True)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "is healthy: successfully committed proposal" in r.stdout
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    r = subprocess.run(health, capture_output=True, text=True)
    assert r.returncode == 1
    assert "is unhealthy" in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["--max-txn-ops", "x"], "invalid value"),
    (["--no-such-flag"], "flag provided but not defined: -no-such-flag"),  # Go's flag package, as etcd
])
def test_bad_flag_is_one_clear_line_and_nonzero(argv, message):
    r = subprocess.run([sys.executable, "-m", "etcdlite", *argv], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_fails_fast(tmp_path):
    port = free_port()
    first = subprocess.Popen([sys.executable, "-m", "etcdlite", "--data-dir", str(tmp_path / "a"),
                              "--listen-client-urls", f"http://127.0.0.1:{port}"],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while "ready to serve" not in (line := first.stderr.readline()):
            assert time.monotonic() < deadline and line, "first server did not start"
        r = subprocess.run([sys.executable, "-m", "etcdlite", "--data-dir", str(tmp_path / "b"),
                            "--listen-client-urls", f"http://127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode != 0
        assert "address already in use" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        first.terminate()
        first.wait(10)


def test_the_build_stage_builds_the_relay_program(tmp_path: Path) -> None:
    """The image's build stage, outside Docker: only what it COPYs, then its `pip wheel`; the wheel
    carries the C relay program (setup.py builds it; a build stage without setup.py silently fell back to
    an interpreter in the relay process)."""
    import shutil
    import zipfile

    if shutil.which("cc") is None:
        pytest.skip("no C compiler here (the image's build stage installs gcc)")
    ins = dockerfile_instructions()
    first_stage = ins[:[w for w, _ in ins].index("FROM", 1)]
    for w, rest in first_stage:
        if w == "COPY":
            *sources, dest = rest.split()
            for src in sources:
                target = tmp_path / "src" / dest / (Path(src).name if dest.endswith("/") else "")
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.so", "etcdlite-relay"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, target)
    # with build isolation, as the image's `pip wheel` (a venv's own setuptools may predate pyproject's ext-modules)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(tmp_path / "src")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("etcdlite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "etcdlite/transport/etcdlite-relay" in names, names
