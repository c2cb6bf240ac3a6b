"""Generate the Python stubs in server/pb from etcd's vendored protos.

etcd's protos import gogoproto, google.api annotations and the openapiv2
options, which only drive Go and gateway code generation.  They change nothing
on the wire, so they are stripped here instead of vendoring three more proto
trees.  Imports of ``etcd/...`` are rewritten to ``etcdlite/pb/...`` so the
generated modules import each other from inside the ``etcdlite`` package.

Usage: python protos/gen.py server/pb
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent

# source path under protos/  ->  path under the generated package root
PROTOS = {
    "etcd/api/mvccpb/kv.proto": "etcdlite/pb/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto": "etcdlite/pb/authpb/auth.proto",
    "etcd/api/versionpb/version.proto": "etcdlite/pb/versionpb/version.proto",
    "etcd/api/etcdserverpb/rpc.proto": "etcdlite/pb/etcdserverpb/rpc.proto",
    "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto": "etcdlite/pb/v3lockpb/v3lock.proto",
    "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto": (
        "etcdlite/pb/v3electionpb/v3election.proto"
    ),
}
WITH_SERVICES = {"rpc.proto", "v3lock.proto", "v3election.proto"}
STRIPPED_IMPORT = re.compile(r'^import "(gogoproto|google/api|protoc-gen-openapiv2)/[^"]*";\n', re.M)
STRIPPED_OPTION = re.compile(r"^\s*option \((gogoproto|google\.api|grpc\.gateway)\.[\w.]*\)\s*=", re.M)


def _drop_statement(text: str, start: int) -> str:
    """Remove the option statement starting at ``start`` up to its ``;``."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == ";" and depth == 0:
            end = i + 1
            if end < len(text) and text[end] == "\n":
                end += 1
            return text[:start] + text[end:]
        i += 1
    raise ValueError("unterminated option statement")


def strip(text: str) -> str:
    text = STRIPPED_IMPORT.sub("", text)
    while (m := STRIPPED_OPTION.search(text)) is not None:
        text = _drop_statement(text, m.start())
    for src, dst in PROTOS.items():
        text = text.replace(f'import "{src}";', f'import "{dst}";')
    # an rpc whose only option was stripped keeps an empty body: "{\n  }"
    text = re.sub(r"\{\s*\}", "{}", text)
    return text


def main(pkg_dir: str) -> None:
    pkg = Path(pkg_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src_root = Path(tmp) / "src"
        out = Path(tmp) / "out"
        out.mkdir()
        for src, dst in PROTOS.items():
            target = src_root / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(strip((HERE / src).read_text()))
        proto_include = Path(protoc.__file__).parent / "_proto"
        for dst in PROTOS.values():
            args = ["protoc", f"-I{src_root}", f"-I{proto_include}", f"--python_out={out}", f"--pyi_out={out}"]
            if Path(dst).name in WITH_SERVICES:
                args.append(f"--grpc_python_out={out}")
            if protoc.main([*args, str(src_root / dst)]) != 0:
                raise SystemExit(f"protoc failed on {dst}")
        generated = out / "etcdlite" / "pb"
        for d in [generated, *(p for p in generated.rglob("*") if p.is_dir())]:
            (d / "__init__.py").touch()
        if pkg.exists():
            shutil.rmtree(pkg)
        shutil.copytree(generated, pkg)


if __name__ == "__main__":
    main(sys.argv[1])
