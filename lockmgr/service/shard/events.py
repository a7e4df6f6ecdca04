"""One log line per notable event of a shard, through the standard logging module
(logger ``lockmgr.shard``), hooked around the sans-IO core without changing it.

Interface:
    install(shard)      log session expiry, deadlock victims, 2PC decisions (in-doubt
                        resolution) as they happen, and lock escalations once a second

The core's methods are wrapped on the instance (its class is untouched): the
hooks cost nothing on the lock/unlock path, which none of them is on. Each line
carries the ids needed to follow the event: the shard, the session (hex) and
its client name, the transaction, the gtrid, the deadlock report's id.
"""

import logging
from typing import Any

__all__ = ["install", "logger"]

logger = logging.getLogger("lockmgr.shard")


def install(shard: Any) -> None:
    core = shard.core
    idx = shard.index
    end_session = core._end_session

    def _end_session(sess: Any, why: str) -> None:
        n = sum(1 for t in sess.txns.values() if t.wait is not None or t.state == "active")
        end_session(sess, why)
        level = logging.DEBUG if why == "was closed" else logging.WARNING
        if logger.isEnabledFor(level):
            logger.log(level, "shard %d: session %#x (%s) %s; %d transaction(s) aborted", idx, sess.id, sess.name,
                       why, n)
    core._end_session = _end_session

    probes = core.probes
    report = probes._report

    def _report(victim: int, rows: Any, kind: str, t_found: Any = None) -> Any:
        rep = report(victim, rows, kind, t_found)
        sessions = {r["txn"]: r.get("session") for r in rows}
        sid = sessions.get(victim)
        logger.warning("shard %d: deadlock %s (%s): victim transaction %d%s aborted; cycle %s", idx, rep["id"], kind,
                       victim, f" (client {sid})" if sid else "", rep["cycle"])
        return rep
    probes._report = _report

    twophase = core.twophase
    decide = twophase.decide

    def _decide(t: Any, commit: bool, sess: Any, seq: Any) -> Any:
        logger.info("shard %d: in-doubt transaction %s (txn %d) resolved: %s", idx, t.gtrid, t.id,
                    "commit" if commit else "abort")
        return decide(t, commit, sess, seq)
    twophase.decide = _decide

    last = {"esc": core.table.stats()["escalations"]}

    def tick() -> None:
        esc = core.table.stats()["escalations"]
        if esc != last["esc"]:
            logger.info("shard %d: %d lock escalation(s) in the last second (%d in all)", idx, esc - last["esc"], esc)
            last["esc"] = esc
    _chain_tick(shard, tick)


def _chain_tick(shard: Any, fn: Any) -> None:
    """Add ``fn`` to the shard's once-a-second ``on_tick``."""
    prev = shard.on_tick

    def both() -> None:
        if prev is not None:
            prev()
        fn()
    shard.on_tick = both
