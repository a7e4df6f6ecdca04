"""The shard core's counters, named once: STATS answers every one of them, zero or
not (an operator's query or alert must not break on a key that has not moved yet).
tests/test_ops.py checks that every ``counters["..."]`` in the shard's sources is here.

The probe engine's counters are lockmgr.service.probes.COUNTERS; the lock table's
(granted, waited, escalations, ...) come from its stats() whole.
"""

CORE_COUNTERS = (
    "sessions_opened", "sessions_expired", "sessions_rebound", "waits", "timeouts", "deadlocks",
    "retries_answered", "errors", "bad_requests", "bad_frames", "foreign_refused", "peer_refused",
    "dropped_replies", "internal_errors", "pushes", "prepares", "decisions",
    "forbidden", "quota_refused",      # docs/security.md: refused for the key; over a quota
    "cache_sessions", "cache_revokes", "cache_giveups", "cache_given_up",   # lock caching (docs/service.md)
)
