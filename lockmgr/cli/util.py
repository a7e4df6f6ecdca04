"""What the ``lockmgr`` subcommands share: the one-line error, endpoints (argument or
LOCKMGR_ENDPOINTS), human tables.

Interface:
    CliError(msg)                 raised by a subcommand: ``lockmgr CMD: msg`` on stderr, exit 2
    add_endpoints(parser)         the optional ENDPOINTS argument (default: $LOCKMGR_ENDPOINTS)
    endpoints(args) -> [str]      validated (CliError naming the problem)
    table(headers, rows) -> str   a plain text table
    curve_from_env() -> dict      connect()'s CURVE options from LOCKMGR_CURVE_SECRET_FILE and
                                  LOCKMGR_CURVE_SERVER_KEY ({} if unset; docs/security.md)
"""

import os
from typing import Any, Iterable, List, Sequence

__all__ = ["CliError", "add_endpoints", "endpoints", "table", "ENV_ENDPOINTS", "curve_from_env"]


def curve_from_env():
    """``{curve_secret_file, curve_server_key}`` for lockmgr.connect from the environment
    (the inspection commands' admin.request reads the same variables), or {}."""
    sec = os.environ.get("LOCKMGR_CURVE_SECRET_FILE")
    srv = os.environ.get("LOCKMGR_CURVE_SERVER_KEY")
    if not sec and not srv:
        return {}
    return {"curve_secret_file": sec, "curve_server_key": srv.split(",") if srv and "," in srv else srv}

ENV_ENDPOINTS = "LOCKMGR_ENDPOINTS"


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status ``status``."""

    def __init__(self, msg: str, status: int = 2) -> None:
        super().__init__(msg)
        self.status = status


def add_endpoints(p: Any) -> None:
    p.add_argument("endpoints", nargs="?", default=None,
                   help=f"comma-separated shard endpoints, in shard order (default: ${ENV_ENDPOINTS})")


def endpoints(args: Any) -> List[str]:
    from ..errors import InvalidRequest
    from ..service.routing import parse_endpoints
    raw = args.endpoints or os.environ.get(ENV_ENDPOINTS, "")
    if not raw.strip():
        raise CliError(f"no endpoints: give them as an argument (tcp://127.0.0.1:7400,...) or in ${ENV_ENDPOINTS}")
    try:
        return list(parse_endpoints(raw))
    except InvalidRequest as e:
        raise CliError(str(e)) from None


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = list(rows)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(out)
