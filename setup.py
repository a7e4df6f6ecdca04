"""Builds the compiled lock table: csrc/locktable.c behind lockmgr/_core/_ctable.pyx.

Set LOCKMGR_NO_EXT=1 to install without the extension (the pure-Python
backend is then used).
"""
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("LOCKMGR_NO_EXT", "") in ("", "0"):
    from Cython.Build import cythonize

    debug = os.environ.get("LOCKMGR_DEBUG", "") not in ("", "0")
    ext_modules = cythonize(
        [
            Extension(
                "lockmgr._core._ctable",
                sources=["lockmgr/_core/_ctable.pyx", "csrc/locktable.c"],
                include_dirs=["csrc"],
                define_macros=[("LOCKTABLE_DEBUG", "1" if debug else "0")],
                extra_compile_args=["-O2", "-std=c99"] + (["-O0", "-g"] if debug else []),
            )
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
