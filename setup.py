"""Everything is in pyproject.toml; this file only adds the relay program to the build.

Where a C compiler is at hand, ``server/transport/_splice.c`` is built twice: as the optional extension
module pyproject.toml declares, and as the program ``etcdlite-relay`` beside it in the package (the relay
process of the client port then holds no interpreter: ~1 MiB instead of ~10; see transport/splice.py).
Without a compiler neither is built and the relay runs relay_loop.py.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

RELAY_SOURCE = "server/transport/_splice.c"
RELAY_PROGRAM = "etcdlite-relay"


class BuildExtWithRelayProgram(build_ext):
    def run(self) -> None:
        super().run()
        try:
            self._build_relay_program()
        except Exception as exc:  # noqa: BLE001 - optional, as the extension is
            print(f"warning: {RELAY_PROGRAM} not built ({exc}); the relay process will run an interpreter")

    def _build_relay_program(self) -> None:
        if self.compiler is None or isinstance(self.compiler, str):
            raise RuntimeError("no C compiler")
        out_dir = os.path.dirname(self.get_ext_fullpath("etcdlite.transport._splice"))
        objects = self.compiler.compile([RELAY_SOURCE], output_dir=os.path.join(self.build_temp, "program"),
                                        macros=[("RELAY_PROGRAM", "1")], extra_postargs=["-O2"])
        self.compiler.link_executable(objects, RELAY_PROGRAM, output_dir=out_dir)


setup(cmdclass={"build_ext": BuildExtWithRelayProgram})
