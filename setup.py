"""Builds the Cython extensions in ext/ into sluice._native.

The extensions are an accelerator, not a requirement: when no C compiler is at
hand the build continues and the pure-Python twins serve (`sluice version` says
which is active).  Set SLUICE_REQUIRE_EXTENSIONS=1 to make a failed build fatal,
SLUICE_NO_EXTENSIONS=1 not to build them at all (as at run time: the twins serve),
SLUICE_CYTHON_TRACE=1 for line tracing (profiling), SLUICE_CYTHON_ANNOTATE=1 to
write the HTML annotation next to each .pyx.
"""

import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = ["_context", "_speedups", "_stats", "_logline", "_limits", "_jsoncheck", "_upstream"]


def cython_include():
    """A directory in which ext/ is the package sluice._native, for Cython's include path.

    Cython finds a cimported .pxd (and each .pyx its own .pxd) by the module's full name, and a
    compiled module imports the extension types it cimports from that module at run time: the
    declarations in ext/ (ext/_context.pxd) must be found as sluice._native._context, not as a
    top-level _context.  A symbolic link to ext/ (a copy of its .pxd files where there are no links).
    """
    root = os.path.join("build", "cython-include")
    package = os.path.join(root, "sluice", "_native")
    if not os.path.islink(package):
        os.makedirs(os.path.dirname(package), exist_ok=True)
        try:
            os.symlink(os.path.relpath("ext", os.path.dirname(package)), package, target_is_directory=True)
        except OSError:  # no links here (or a copy made before)
            shutil.copytree("ext", package, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if not n.endswith(".pxd")])
    return root


def extensions():
    if os.environ.get("SLUICE_NO_EXTENSIONS") == "1":  # asked not to build (scripts/bootstrap.sh: no compiler)
        print("sluice: SLUICE_NO_EXTENSIONS=1; using the pure-Python twins", file=sys.stderr)
        return []
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
        include_path=[cython_include()],
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
