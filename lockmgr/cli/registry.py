"""Registry of ``lockmgr`` subcommands (kept apart from cli.py so that
``python -m lockmgr`` and the console script share one registry)."""

from typing import Any, Callable, Dict, Tuple

COMMANDS: Dict[str, Tuple[Callable[..., Any], str]] = {}


def command(name, help):
    """Register ``fn(parser, args)``: called once with a parser to configure
    (args None), then with the parsed args (parser None) to run."""
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return deco
