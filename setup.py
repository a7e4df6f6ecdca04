"""Builds the compiled lock table (csrc/locktable.c behind lockmgr/_core/_ctable.pyx)
and the shard's compiled frame helper (lockmgr/service/_cwire.pyx), the wire codec
(_codec.pyx) and direct libzmq calls (_zdirect.pyx).

Set LOCKMGR_NO_EXT=1 to install without the extension (the pure-Python
backend is then used). Without a working C compiler the build does the same,
with a warning (here, and again when lockmgr is imported): the compiled
modules are an acceleration, the pure-Python sources are complete. LOCKMGR_DEBUG=1 builds it with -O0 -g and the table's
own checks (LOCKTABLE_DEBUG); LOCKMGR_SANITIZE=1 adds AddressSanitizer and
UndefinedBehaviorSanitizer (-fsanitize=address,undefined; implies
LOCKMGR_DEBUG). A sanitized module needs libasan preloaded into Python:
.ci/run builds one apart from the main install and runs the table's tests so.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FALLBACK_WARNING = (
    "\n*** WARNING: lockmgr: could not compile the C extensions ({why}).\n"
    "*** Installing the pure-Python backend instead (it works, several times slower).\n"
    "*** For the compiled one: install a C compiler and the Python headers\n"
    "*** (Debian/Ubuntu: apt-get install build-essential python3-dev), then reinstall.\n")


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python modules when compiling fails
    (LOCKMGR_REQUIRE_C=1 makes a failure fatal, as CI wants)."""

    warned = False

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:       # the extensions compiled side by side, one per core
            self.parallel = os.cpu_count() or 1

    def _fallback(self, why):
        if os.environ.get("LOCKMGR_REQUIRE_C", "") not in ("", "0"):
            raise
        if not self.warned:
            self.warned = True
            sys.stderr.write(FALLBACK_WARNING.format(why=why))
            sys.stderr.flush()

    def run(self):
        try:
            super().run()
        except Exception as e:      # no compiler at all (DistutilsPlatformError, ...)
            self._fallback(f"{type(e).__name__}: {e}")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:      # CompileError, LinkError, a compiler that is not there
            self._fallback(f"{ext.name}: {type(e).__name__}: {e}")


def _compiled_py():
    """The modules compiled from their .py sources: lockmgr/_compiled.py's list
    (read without importing the package)."""
    import ast
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lockmgr", "_compiled.py")) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED_PY":
                return ast.literal_eval(node.value)
    raise RuntimeError("lockmgr/_compiled.py has no COMPILED_PY list")


COMPILED_PY = _compiled_py()

ext_modules = []
try:
    from Cython.Build import cythonize
except ImportError:       # (pip installs it for the build: pyproject's build-system requires it)
    if os.environ.get("LOCKMGR_NO_EXT", "") in ("", "0"):
        if os.environ.get("LOCKMGR_REQUIRE_C", "") not in ("", "0"):
            raise
        sys.stderr.write(FALLBACK_WARNING.format(why="Cython is not installed"))
    os.environ["LOCKMGR_NO_EXT"] = "1"
if os.environ.get("LOCKMGR_NO_EXT", "") in ("", "0"):

    sanitize = os.environ.get("LOCKMGR_SANITIZE", "") not in ("", "0")
    debug = sanitize or os.environ.get("LOCKMGR_DEBUG", "") not in ("", "0")
    san_flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    san_flags = san_flags if sanitize else []
    ext_modules = cythonize(
        [
            Extension(
                "lockmgr._core._ctable",
                sources=["lockmgr/_core/_ctable.pyx", "csrc/locktable.c"],
                include_dirs=["csrc"],
                define_macros=[("LOCKTABLE_DEBUG", "1" if debug else "0")],
                extra_compile_args=["-O2", "-std=c99"] + (["-O0", "-g"] if debug else []) + san_flags,
                extra_link_args=san_flags,
            ),
            # the shard's frame helper: LOCK_MANY items from the wire into the table's
            # PackedItems (it cimports them from _ctable.pxd)
            Extension(
                "lockmgr.service._cwire",
                sources=["lockmgr/service/_cwire.pyx"],
                include_dirs=["csrc"],
                extra_compile_args=["-O2", "-std=c99"] + (["-O0", "-g"] if debug else []) + san_flags,
                extra_link_args=san_flags,
            ),
            # the msgpack codec of the wire's small frames (lockmgr/service/wire.py uses it)
            Extension(
                "lockmgr.service._codec",
                sources=["lockmgr/service/_codec.pyx"],
                extra_compile_args=["-O2", "-std=c99"] + (["-O0", "-g"] if debug else []) + san_flags,
                extra_link_args=san_flags,
            ),
            # the client's hot-path helpers: the engine's lock (threading.Lock's interface
            # with C-level acquire/release) and the generators' synchronous driver
            Extension(
                "lockmgr.service.client._hot",
                sources=["lockmgr/service/client/_hot.pyx"],
                extra_compile_args=["-O2", "-std=c99"] + (["-O0", "-g"] if debug else []) + san_flags,
                extra_link_args=san_flags,
            ),
            # libzmq's poll/recv/send called directly on pyzmq's sockets (lockmgr/service/zdirect.py
            # finds the functions at run time in the libzmq pyzmq loaded: nothing to link)
            Extension(
                "lockmgr.service._zdirect",
                sources=["lockmgr/service/_zdirect.pyx"],
                extra_compile_args=["-O2", "-std=gnu99"] + (["-O0", "-g"] if debug else []) + san_flags,
                extra_link_args=san_flags,
            ),
        ],
        include_path=["."],
        nthreads=os.cpu_count() or 1,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )
    # The service's hot Python paths, compiled by Cython from their .py sources as
    # they are (one source: the .py stays the reference and runs where there is no
    # compiler), with Python's semantics kept (annotations are not C types here).
    ext_modules += cythonize(
        [
            Extension(mod, sources=[mod.replace(".", "/") + ".py"],
                      extra_compile_args=["-O2"] + (["-O0", "-g"] if debug else []) + san_flags,
                      extra_link_args=san_flags)
            for mod in COMPILED_PY
        ],
        nthreads=os.cpu_count() or 1,
        compiler_directives={"language_level": "3", "annotation_typing": False},
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
