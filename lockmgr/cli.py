"""The ``lockmgr`` command.

Subcommands live in ``_cmd_*.py`` modules and register themselves with
``lockmgr._cliutil.command``; importing them here makes them available.
"""

import argparse
import sys

from ._cliutil import COMMANDS

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
from . import _cmd_embedded  # noqa: E402,F401  (registers 'embedded')
from . import _cmd_service  # noqa: E402,F401  (registers serve, cluster, locks, demo)
from . import _cmd_probes  # noqa: E402,F401  (registers deadlocks)
from . import _cmd_2pc  # noqa: E402,F401  (registers indoubt, resolve)

if __name__ == "__main__":
    sys.exit(main())
