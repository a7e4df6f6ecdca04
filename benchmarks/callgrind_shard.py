"""Instructions per acquire+release in the shard process (all its threads,
ZeroMQ's I/O thread included), counted by valgrind's callgrind: repeatable
where timings on the shared 2-core machine are not. The shard-side twin of
benchmarks/callgrind_client.py.

    python benchmarks/callgrind_shard.py [--clients 1]

A shard (``python -m lockmgr serve``) runs under ``valgrind --tool=callgrind``
twice, while native sync clients do 200 and then 1,000 acquire+releases
(begin + lock(X) on a fresh key + commit: a LOCK and a RELEASE round trip);
the difference of the two totals divided by 800 is printed, so start-up,
imports and shut-down cancel out. With ``--clients N`` N client processes
share the work (frames then coalesce: expect some spread).
"""

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
# how this checkout starts a shard (older checkouts: python -m lockmgr.shard), for A/B runs
SERVE = ["-m", "lockmgr", "serve"] if os.path.exists(os.path.join(HERE, "lockmgr", "__main__.py")) \
    else ["-m", "lockmgr.shard"]

import lockmgr  # noqa: E402
from lockmgr import Mode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callgrind_client import callgrind_functions, callgrind_total, print_profile  # noqa: E402


def _client(endpoint, n, cid):
    cl = lockmgr.connect([endpoint], session_ttl=60.0, request_timeout=60.0)
    for i in range(n):
        t = cl.begin()
        t.lock(("k", cid, i), Mode.X)
        t.commit()
    cl.close()


def count(n, clients, functions=False):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "callgrind.out")
        port_file = os.path.join(d, "ready")
        with open(port_file, "w") as ready:
            shard = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *SERVE,
                 "--endpoint", "tcp://127.0.0.1:0", "--data-dir", os.path.join(d, "data"), "--probe-delay-ms", "-1"],
                stdout=ready, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=HERE))
        deadline = time.monotonic() + 120
        endpoint = None
        while endpoint is None and time.monotonic() < deadline:
            with open(port_file) as f:
                line = f.readline()
            if line.startswith("READY "):
                endpoint = line.split()[1]
            else:
                time.sleep(0.1)
        if endpoint is None:
            shard.kill()
            raise RuntimeError("the shard under valgrind did not start")
        try:
            ps = [mp.Process(target=_client, args=(endpoint, n // clients, c)) for c in range(clients)]
            for p in ps:
                p.start()
            for p in ps:
                p.join(600)
        finally:
            shard.send_signal(signal.SIGTERM)
            shard.wait(120)
        return (callgrind_total(out), callgrind_functions(out)) if functions else callgrind_total(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--functions", type=int, default=0, metavar="N",
                    help="also print where the instructions go: by shared object and the N costliest functions")
    a = ap.parse_args()
    if a.functions:
        (lo, flo), (hi, fhi) = count(200, a.clients, True), count(1000, a.clients, True)
    else:
        lo, hi = count(200, a.clients), count(1000, a.clients)
    print(f"shard: {(hi - lo) / 800:,.0f} instructions per acquire+release ({a.clients} client process(es))",
          flush=True)
    if a.functions:
        print_profile(flo, fhi, 800, a.functions)


if __name__ == "__main__":
    main()
