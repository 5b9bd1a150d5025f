"""Builds the Cython extensions in ext/ into sluice._native.

The extensions are an accelerator, not a requirement: when no C compiler is at
hand the build continues and the pure-Python twins serve (`sluice version` says
which is active).  Set SLUICE_REQUIRE_EXTENSIONS=1 to make a failed build fatal,
SLUICE_CYTHON_TRACE=1 for line tracing (profiling), SLUICE_CYTHON_ANNOTATE=1 to
write the HTML annotation next to each .pyx.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = ["_speedups", "_stats", "_logline", "_limits"]


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("sluice: Cython is not installed; using the pure-Python twins", file=sys.stderr)
        return []
    trace = os.environ.get("SLUICE_CYTHON_TRACE") == "1"
    macros = [("CYTHON_TRACE_NOGIL", "1")] if trace else []
    modules = [
        Extension(f"sluice._native.{name}", [f"ext/{name}.pyx"], define_macros=macros,
                  extra_compile_args=["-O3"])
        for name in EXTENSIONS
    ]
    return cythonize(
        modules,
        compiler_directives={"language_level": "3", "linetrace": trace},
        annotate=os.environ.get("SLUICE_CYTHON_ANNOTATE") == "1",
    )


class OptionalBuildExt(build_ext):
    """Keeps going without the extensions unless they are required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)

    @staticmethod
    def _give_up(exc):
        if os.environ.get("SLUICE_REQUIRE_EXTENSIONS") == "1":
            raise exc
        print(f"sluice: compiling the extensions failed ({exc}); using the pure-Python twins",
              file=sys.stderr)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
