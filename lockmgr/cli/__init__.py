"""The ``lockmgr`` command.

Argument parsing and printing only. Subcommands live in this package's
modules (embedded, serve/service, probes, twopc) and register themselves with
``registry.command``; importing them here makes them available.
"""

import argparse
import sys

from .registry import COMMANDS

def main(argv=None):
    parser = argparse.ArgumentParser(prog="lockmgr", description="A hierarchical, multi-mode lock manager.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        fn(p, None)
    args = parser.parse_args(argv)
    fn, _ = COMMANDS[args.cmd]
    return fn(None, args) or 0


# Subcommands live in their own modules; importing them registers them.
from . import embedded  # noqa: E402,F401  (registers 'embedded')
from . import service  # noqa: E402,F401  (registers serve, cluster, locks, demo)
from . import probes  # noqa: E402,F401  (registers deadlocks)
from . import twopc  # noqa: E402,F401  (registers indoubt, resolve)

if __name__ == "__main__":
    sys.exit(main())
