"""The transport floor: how many round trips per second two kinds of
zero-work echo server give N client processes on this machine, next to the
lock services' acquire+release figures (benchmarks/RESULTS.md).

    python benchmarks/transport_floor.py [--clients 1,8] [--seconds 3]

* ``pyzmq``: a ROUTER that sends every message straight back (the
  latency benchmark's echo server), DEALER clients doing send + recv: the
  cheapest possible exchange over the transport lockmgr uses.
* ``tcp``: a one-thread epoll server in Python echoing over plain TCP
  sockets (TCP_NODELAY), clients doing sendall + recv: the cheapest
  exchange Python can make at all, with no framing, no msgpack, no lock table.

An acquire+release is two round trips for lockmgr, Redis and PostgreSQL
alike, so half of each figure bounds what any server of that kind could do
for that workload here. Every server binds 127.0.0.1 on a free port and is
stopped by the script.
"""

import argparse
import multiprocessing as mp
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_service import _echo_server, free_port  # noqa: E402

MSG = b"x" * 40


def _tcp_server(port, ready):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    sel = selectors.EpollSelector()
    sel.register(ls, selectors.EVENT_READ)
    ready.set()
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ls:
                c, _ = ls.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(c, selectors.EVENT_READ)
                continue
            d = s.recv(65536)
            if not d:
                sel.unregister(s)
                s.close()
                continue
            s.sendall(d)


def _tcp_client(port, seconds, q):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        s.sendall(MSG)
        s.recv(65536)
        n += 1
    s.close()
    q.put(n / seconds)


def _zmq_client(port, seconds, q):
    import zmq
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(f"tcp://127.0.0.1:{port}")
    n = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        d.send(MSG)
        d.recv()
        n += 1
    d.close(0)
    ctx.term()
    q.put(n / seconds)


def run(kind, clients, seconds):
    port = free_port()
    ready = mp.Event()
    server = _tcp_server if kind == "tcp" else _echo_server
    sp = mp.Process(target=server, args=(port, ready), daemon=True)
    sp.start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"{kind} echo server did not start")
        q = mp.Queue()
        client = _tcp_client if kind == "tcp" else _zmq_client
        ps = [mp.Process(target=client, args=(port, seconds, q)) for _ in range(clients)]
        for p in ps:
            p.start()
        total = sum(q.get(timeout=seconds + 30) for _ in ps)
        for p in ps:
            p.join(10)
        return total
    finally:
        sp.terminate()
        sp.join(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; zero-work echo servers on 127.0.0.1")
    print(f"  {'transport':10} {'clients':>7} {'round trips/s':>14} {'= acquire+release/s at most':>28}")
    for n in (int(x) for x in args.clients.split(",")):
        for kind in ("pyzmq", "tcp"):
            r = run(kind, n, args.seconds)
            print(f"  {kind:10} {n:>7} {r:>14,.0f} {r / 2:>28,.0f}", flush=True)


if __name__ == "__main__":
    main()
