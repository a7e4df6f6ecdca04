"""Deadlock reports of the lock service: pure functions over the shards' answers.

Interface:
    merge_reports(per_shard) -> list[dict]    one list, oldest first, from the
                                              per-shard DEADLOCKS answers

Used by ``Client.deadlocks()`` (lockmgr.service.client.sync and .aio) and by the
``lockmgr deadlocks`` command (lockmgr.cli.probes). It imports nothing from
the package, so the clients and the CLI can both depend on it without an
import circle. A report's fields are described in docs/probes.md
("Deadlock reports").
"""

from typing import Any, Dict, Iterable, List, Union

__all__ = ["merge_reports"]

Report = Dict[str, Any]


def merge_reports(per_shard: Iterable[Union[List[Report], Exception]]) -> List[Report]:
    """One list of reports (oldest first) from per-shard DEADLOCKS answers; skips errors.

    One report per victim: a victim waiting on two shards at once can be
    confirmed on both before either's VICTIM message arrives (both abort the
    same transaction); the earliest report is kept.

    Runtime complexity: O(n log n) in the number of reports.
    """
    out: Dict[Any, Report] = {}
    for res in per_shard:
        if isinstance(res, Exception):
            continue
        for rep in res:
            old = out.get(rep["victim"])
            if old is None or rep["detected_at"] < old["detected_at"]:
                out[rep["victim"]] = rep
    return sorted(out.values(), key=lambda r: r["detected_at"])
