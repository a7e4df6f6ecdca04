"""Builds the compiled lock table (csrc/locktable.c behind lockmgr/_core/_ctable.pyx)
and the shard's compiled frame helper (lockmgr/service/_cwire.pyx).

Set LOCKMGR_NO_EXT=1 to install without the extension (the pure-Python
backend is then used). LOCKMGR_DEBUG=1 builds it with -O0 -g and the table's
own checks (LOCKTABLE_DEBUG); LOCKMGR_SANITIZE=1 adds AddressSanitizer and
UndefinedBehaviorSanitizer (-fsanitize=address,undefined; implies
LOCKMGR_DEBUG). A sanitized module needs libasan preloaded into Python:
.ci/run builds one apart from the main install and runs the table's tests so.
"""
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("LOCKMGR_NO_EXT", "") in ("", "0"):
    from Cython.Build import cythonize

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
        ],
        include_path=["."],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
