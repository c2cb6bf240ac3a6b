"""The grpcio and protobuf releases etcdlite is tested with, and the check that refuses others at start.

pyproject.toml declares the same ranges (tests/test_deps.py holds the two together) and
``make test-deps-range`` runs the tests at both ends of each. Why the ends are where they are:

* grpcio >= 1.82.2: older cores read an oversized message whole before refusing it (grpc/grpc#43012),
  so twelve 50 MiB requests cost the server ~250 MiB instead of nothing; 1.83.0 still has that bug
  (1.83.1 has the fix). Below 1.63.0 core also words the refusal differently from grpc-go.
* grpcio < 1.86: the engine drives grpcio's private ``cygrpc`` API, which may change in any minor
  release; patch releases of a tested minor are taken as tested (CI's newest end picks them up).
* protobuf >= 4.25.0: the stubs in ``pb/`` (``make proto``: protoc 26.1) carry no runtime-version
  check and load on 4.25 to 7.x; before 4.25 the descriptors lack what rpc.py and the gateway read
  (``MethodDescriptor.client_streaming``; ``message_factory.GetMessageClass`` before 4.22).
  protobuf's API is stable within a major, so the range ends below the next major.

``python server/deps.py oldest`` prints the oldest end as pip requirements, for the Makefile.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

Version = tuple[int, ...]


@dataclass(frozen=True)
class Supported:
    """A distribution's supported releases: ``oldest`` <= v < ``below``, without ``excluded``."""

    distribution: str
    oldest: Version
    below: Version
    excluded: frozenset[Version] = field(default_factory=frozenset)

    def requirement(self) -> str:
        """The PEP 508 requirement, as pyproject.toml spells it."""
        parts = [f">={_text(self.oldest)}"]
        parts += [f"!={_text(v)}" for v in sorted(self.excluded)]
        parts.append(f"<{_text(self.below)}")
        return self.distribution + ",".join(parts)

    def accepts(self, version: str) -> bool:
        v = parse(version)
        return self.oldest <= v < self.below and v not in self.excluded

    def refusal(self, version: str) -> str:
        newest = _text((*self.below[:-1], self.below[-1] - 1)) + ".x"  # below 1.86: 1.85.x; below 8: 7.x
        but = "".join(f", except {_text(v)}" for v in sorted(self.excluded))
        return (f"{self.distribution} {version} is not supported (tested: {_text(self.oldest)} to {newest}{but}); "
                f'install "{self.requirement()}"')


GRPCIO = Supported("grpcio", oldest=(1, 82, 2), below=(1, 86), excluded=frozenset({(1, 83, 0)}))
PROTOBUF = Supported("protobuf", oldest=(4, 25, 0), below=(8,))
SUPPORTED = (GRPCIO, PROTOBUF)


def parse(version: str) -> Version:
    """The release numbers of a version string ("1.85.3", "1.86.0rc1" -> (1, 85, 3), (1, 86, 0))."""
    match = re.match(r"\d+(\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(n) for n in match.group().split("."))


def _text(version: Version) -> str:
    return ".".join(str(n) for n in version)


def installed() -> dict[str, str]:
    """The versions of grpcio and protobuf this interpreter imports (importing neither's C core API)."""
    import grpc
    from google import protobuf

    return {"grpcio": grpc.__version__, "protobuf": protobuf.__version__}


def problem(versions: dict[str, str] | None = None) -> str | None:
    """One line saying what is outside the supported ranges (None: all is supported).

    Past the version check, the generated stubs must load: a protobuf that refuses them is named too.
    """
    versions = installed() if versions is None else versions
    refusals = [s.refusal(versions[s.distribution]) for s in SUPPORTED if not s.accepts(versions[s.distribution])]
    if refusals:
        return "etcdlite: " + "; ".join(refusals)
    try:
        from .pb.etcdserverpb import rpc_pb2  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises, the line names it
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (f"etcdlite: protobuf {versions['protobuf']} cannot load etcdlite's stubs ({first}); "
                f'install "{PROTOBUF.requirement()}"')
    return None


if __name__ == "__main__":
    if sys.argv[1:] == ["oldest"]:
        print(" ".join(f"{s.distribution}=={_text(s.oldest)}" for s in SUPPORTED))
    else:
        sys.exit("usage: python server/deps.py oldest")
