"""python -m lockmgr.sim: run many seeds (or replay one) of the cluster simulation."""

import argparse
import dataclasses
import sys
import time

from . import SimConfig, replay_command, run_seed


def _knob(cfg, text):
    name, _, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if name not in fields:
        raise SystemExit(f"--set {text}: unknown knob {name!r}; knobs: {', '.join(sorted(fields))}")
    cur = getattr(cfg, name)
    try:
        v = (value.lower() in ("1", "true", "yes")) if type(cur) is bool else type(cur)(value)
    except ValueError:
        raise SystemExit(f"--set {text}: {name} takes a {type(cur).__name__}") from None
    setattr(cfg, name, v)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lockmgr.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to run (from --start)")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, help="replay this one seed")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="change a SimConfig knob")
    ap.add_argument("--trace", action="store_true", help="with --seed: print the whole trace")
    ap.add_argument("--keep-going", action="store_true", help="run every seed even after a failure")
    a = ap.parse_args(argv)
    cfg = SimConfig()
    for s in a.set:
        _knob(cfg, s)
    if a.seed is not None:
        r = run_seed(a.seed, cfg, trace=a.trace)
        if a.trace:
            from .world import World
            w = World(a.seed, cfg, trace=True)
            w.run()
            print("\n".join(w.trace))
        print(f"seed {a.seed}: {'ok' if r.ok else 'FAILED: ' + r.violation}; {r.events} events, "
              f"{r.sim_time:.3f} simulated s, trace {r.trace_hash}; {r.stats}")
        return 0 if r.ok else 1
    t0 = time.perf_counter()
    failed = []
    events = 0
    for seed in range(a.start, a.start + a.seeds):
        r = run_seed(seed, cfg)
        events += r.events
        if not r.ok:
            failed.append(seed)
            print(f"seed {seed} FAILED: {r.violation}\n  replay: {replay_command(seed, cfg)}", flush=True)
            if not a.keep_going:
                break
    dt = time.perf_counter() - t0
    n = (failed[-1] - a.start + 1) if failed and not a.keep_going else a.seeds
    print(f"{n} seeds in {dt:.2f}s: {n / dt:.1f} seeds/s, {events / dt:.0f} events/s; "
          f"{len(failed)} failed{': ' + ' '.join(map(str, failed)) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
