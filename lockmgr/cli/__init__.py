"""The ``lockmgr`` command.

Argument parsing and printing only. Subcommands live in this package's
modules (bench, embedded, serve/service, inspect, probes, twopc) and register
themselves with ``registry.command``; importing them here makes them available.

Errors are one line on stderr and a non-zero exit, never a traceback: a
subcommand raises CliError (exit 2) for bad input; a LockError, an OSError or
a ZeroMQ error is printed as ``lockmgr CMD: Kind: message`` (exit 1).
LOCKMGR_TRACEBACK=1 re-raises instead (for a bug report).
"""

import argparse
import os
import sys

from .registry import COMMANDS
from .util import CliError


def main(argv=None):
    from .._version import __version__
    parser = argparse.ArgumentParser(prog="lockmgr", description="A hierarchical, multi-mode lock manager.")
    parser.add_argument("--version", action="version", version=f"lockmgr {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        fn(p, None)
    args = parser.parse_args(argv)
    fn, _ = COMMANDS[args.cmd]
    try:
        return fn(None, args) or 0
    except CliError as e:
        print(f"lockmgr {args.cmd}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f"lockmgr {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("LOCKMGR_TRACEBACK", "") not in ("", "0"):
            raise
        from ..errors import LockError
        known = isinstance(e, (LockError, OSError)) or type(e).__module__.startswith("zmq")
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"lockmgr {args.cmd}: {type(e).__name__}: {msg}"
              + ("" if known else " (an internal error: LOCKMGR_TRACEBACK=1 shows where)"), file=sys.stderr)
        return 1


# Subcommands live in their own modules; importing them registers them.
from . import bench  # noqa: E402,F401  (registers bench)
from . import embedded  # noqa: E402,F401  (registers 'embedded')
from . import service  # noqa: E402,F401  (registers serve, cluster, demo)
from . import inspect  # noqa: E402,F401  (registers status, locks, graph)
from . import probes  # noqa: E402,F401  (registers deadlocks)
from . import twopc  # noqa: E402,F401  (registers indoubt, resolve)
from . import replica  # noqa: E402,F401  (registers replica)

if __name__ == "__main__":
    sys.exit(main())
