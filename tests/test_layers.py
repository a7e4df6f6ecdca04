"""The package's rooms import only downward (docs/design.md, "Layers").

Every ``import`` in lockmgr/ -- at module level or inside a function -- is
checked against the table below: a module may import its own room and the
rooms below it, never a room above or beside it (the embedded manager and
the service are siblings: neither imports the other). Inside the service the
same holds between its parts."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lockmgr")

# (module prefix, room, rank): the longest matching prefix decides; a module may
# import modules of a lower rank, or of its own room
ROOMS = [
    ("lockmgr.errors", "base", 0), ("lockmgr.modes", "base", 0), ("lockmgr.paths", "base", 0),
    ("lockmgr.rules", "base", 0), ("lockmgr._version", "base", 0),
    ("lockmgr._core", "table", 1),
    ("lockmgr.wal", "log", 2),
    ("lockmgr.embedded", "embedded", 3),
    ("lockmgr.service.wire", "service.wire", 3), ("lockmgr.service.routing", "service.wire", 3),
    ("lockmgr.service._cwire", "service.wire", 3), ("lockmgr.service._codec", "service.wire", 3),
    ("lockmgr.service._zdirect", "service.wire", 3), ("lockmgr.service.zdirect", "service.wire", 3),
    ("lockmgr.service.reports", "service.wire", 3), ("lockmgr.service.shard.timers", "service.wire", 3),
    ("lockmgr.service.shard.counters", "service.wire", 3),
    ("lockmgr.service.probes", "service.probes", 4),
    ("lockmgr.service.shard.core", "service.core", 5), ("lockmgr.service.shard.twophase", "service.core", 5),
    ("lockmgr.service.shard.reclaim", "service.core", 5),
    ("lockmgr.service.shard.quotas", "service.core", 5), ("lockmgr.service.shard.pages", "service.core", 5),
    ("lockmgr.service.shard.watches", "service.core", 5),
    ("lockmgr.service.shard.access", "service.core", 5),
    ("lockmgr.service.security", "service.wire", 3),
    ("lockmgr.service.admin", "service.admin", 6),
    ("lockmgr.service.shard.server", "service.server", 7), ("lockmgr.service.shard", "service.server", 7),
    ("lockmgr.service.client", "service.client", 7),
    ("lockmgr.service.cluster", "service.cluster", 8), ("lockmgr.service.repcluster", "service.cluster", 8),
    ("lockmgr.service.etcd", "service.wire", 3), ("lockmgr.service.replication", "service.probes", 4),
    ("lockmgr.service.replica", "service.replica", 8),
    ("lockmgr.service.metrics", "service.server", 7),
    ("lockmgr.bench", "bench", 8), ("lockmgr.sim", "sim", 8),
    ("lockmgr.service", "service", 3),
    ("lockmgr.cli", "cli", 9),
    ("lockmgr.aio", "api", 10),
    ("lockmgr.__main__", "api", 10), ("lockmgr", "api", 10),
]
# siblings of equal or lower rank that still must not import each other
FORBIDDEN = {("embedded", "service"), ("service", "embedded")}


def room(mod):
    best = None
    for prefix, name, rank in ROOMS:
        if mod == prefix or mod.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, name, rank)
    return best


def modules():
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                pkg = rel[-1] == "__init__"
                if pkg:
                    rel = rel[:-1]
                yield path, ".".join(rel), pkg


def imports(path, mod, pkg):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("lockmgr"):
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("lockmgr"):
                target = node.module
            else:
                continue
            for a in node.names:       # "from . import wire": the name may be a module
                sub = f"{target}.{a.name}"
                yield node.lineno, sub if os.path.exists(os.path.join(os.path.dirname(ROOT), *sub.split(".")) + ".py") \
                    or os.path.isdir(os.path.join(os.path.dirname(ROOT), *sub.split("."))) else target


def test_every_module_has_a_room():
    missing = [mod for _, mod, _ in modules() if room(mod) is None]
    assert missing == []


def test_imports_go_only_downward():
    bad = []
    for path, mod, pkg in modules():
        src = room(mod)
        for line, target in imports(path, mod, pkg):
            dst = room(target)
            if dst is None or dst[1] == src[1]:
                continue
            if dst[2] >= src[2] or (src[1].split(".")[0], dst[1].split(".")[0]) in FORBIDDEN:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line}: {mod} ({src[1]}) imports {target} ({dst[1]})")
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("mod,target,ok", [
    ("lockmgr.embedded.manager", "lockmgr.service.wire", False),
    ("lockmgr.service.shard.core", "lockmgr.embedded.manager", False),
    ("lockmgr.service.wire", "lockmgr.service.client.sync", False),
    ("lockmgr.service.client.sync", "lockmgr.service.wire", True),
    ("lockmgr.rules", "lockmgr._core", False),
    ("lockmgr.cli.serve", "lockmgr.service.shard.server", True),
])
def test_the_rule_itself(mod, target, ok):
    src, dst = room(mod), room(target)
    allowed = dst[1] == src[1] or (dst[2] < src[2] and (src[1].split(".")[0], dst[1].split(".")[0]) not in FORBIDDEN)
    assert allowed is ok
