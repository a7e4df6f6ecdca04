"""``lockmgr bench``: workloads against the embedded manager, a local cluster or given
shards, and the same workloads against Redis locks and PostgreSQL advisory locks.

Modules: workloads (the transaction plans), systems (lockmgr and its peers, each
driven the way its users drive it), servers (throwaway redis-server / PostgreSQL
and server CPU from /proc), runner (clients as threads, asyncio tasks or
processes; the measurements), report (table, JSON, plot). The command is
lockmgr/cli/bench.py; benchmarks/bench_service.py reuses servers and systems.
"""
