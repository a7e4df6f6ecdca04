"""What ``lockmgr bench`` prints and writes: the table, the ratios, the JSON and the plot.

Interface:
    table(results) -> str           one row per run
    ratios(results) -> [str]        lockmgr against each peer, per workload and client count
    to_json(meta, results) -> dict  the --json document (schema: docs/operations.md)
    plot(results, path)             --plot: needs matplotlib (the ``plot`` extra)
"""

from typing import Any, Dict, List, Optional

__all__ = ["table", "ratios", "to_json", "plot", "JSON_FIELDS"]

# the fields every result of the --json document has (tests/test_bench.py checks them)
JSON_FIELDS = ("system", "describe", "workload", "clients", "model", "duration", "ops", "ops_per_s", "attempts",
               "latency_ms", "waits", "timeouts", "not_available", "deadlocks", "escalations", "server_cpu_s",
               "server_cpu_us_per_op", "timeline", "latency_histogram")


def _f(v: Optional[float], fmt: str = "{:,.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(results: List[Dict[str, Any]]) -> str:
    headers = ("system", "workload", "clients", "txn/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "waits",
               "timeouts", "deadlocks", "escalations", "server CPU/op")
    rows = []
    for r in results:
        lat = r["latency_ms"]
        cpu = r["server_cpu_us_per_op"]
        rows.append((r["system"], r["workload"], r["clients"], f"{r['ops_per_s']:,.0f}", _f(lat["p50"]),
                     _f(lat["p95"]), _f(lat["p99"]), _f(lat["max"]), _f(r["waits"], "{:,}"),
                     f"{r['timeouts'] + r['not_available']:,}", f"{r['deadlocks']:,}", _f(r["escalations"], "{:,}"),
                     "-" if cpu is None else f"{cpu:,.1f} us"))
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    left = {0, 1}
    def fmt(row: Any) -> str:
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


def _cpu(x: Dict[str, Any]) -> str:
    return "-" if x["server_cpu_us_per_op"] is None else f"{x['server_cpu_us_per_op']:,.1f} us"


def ratios(results: List[Dict[str, Any]]) -> List[str]:
    """'lockmgr/redis' lines: throughput ratio and each one's server CPU per op."""
    out = []
    by = {(r["system"], r["workload"], r["clients"]): r for r in results}
    for (system, wl, n), r in by.items():
        if system == "lockmgr":
            continue
        lm = by.get(("lockmgr", wl, n))
        if lm is None or not r["ops_per_s"]:
            continue
        out.append(f"{wl}, {n} client(s): lockmgr/{system} throughput {lm['ops_per_s'] / r['ops_per_s']:.2f}x "
                   f"({lm['ops_per_s']:,.0f} vs {r['ops_per_s']:,.0f} txn/s); server CPU per txn: "
                   f"lockmgr {_cpu(lm)}, {system} {_cpu(r)}")
    return out


def to_json(meta: Dict[str, Any], results: List[Dict[str, Any]]) -> Dict[str, Any]:
    return dict(meta, results=results, ratios=ratios(results))


def plot(results: List[Dict[str, Any]], path: str) -> None:
    """Throughput over time and the latency distribution of every run; with
    several client counts, throughput against clients too."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = len({r["clients"] for r in results}) > 1
    ncol = 3 if sweep else 2
    fig, axes = plt.subplots(1, ncol, figsize=(6 * ncol, 4.5))
    ax_t, ax_l = axes[0], axes[1]
    many = len(results) > 8
    for r in results:
        if many and r["clients"] != max(x["clients"] for x in results if x["system"] == r["system"]):
            continue        # the time and latency panels show the largest client count of a sweep
        label = f"{r['system']} {r['workload']} c={r['clients']}"
        if r["timeline"]:
            ax_t.plot([t for t, _ in r["timeline"]], [v for _, v in r["timeline"]], label=label)
        h = r["latency_histogram"]
        if h:
            total = sum(c for _, c in h)
            acc = 0
            xs, ys = [], []
            for ub, c in h:
                acc += c
                xs.append(ub)
                ys.append(acc / total)
            ax_l.step(xs, ys, where="post", label=label)
    ax_t.set(title="throughput over time", xlabel="seconds", ylabel="transactions/s")
    ax_l.set(title="latency distribution (CDF)", xlabel="ms (log)", ylabel="fraction of transactions")
    ax_l.set_xscale("log")
    for ax in (ax_t, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if sweep:
        ax_c = axes[2]
        series: Dict[Any, List[Any]] = {}
        for r in results:
            series.setdefault((r["system"], r["workload"]), []).append((r["clients"], r["ops_per_s"]))
        for (system, wl), pts in series.items():
            pts.sort()
            ax_c.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=f"{system} {wl}")
        ax_c.set(title="throughput against clients", xlabel="clients (log2)", ylabel="transactions/s")
        ax_c.set_xscale("log", base=2)
        ax_c.grid(alpha=0.3)
        ax_c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
