"""Round trip between two idle processes over DEALER -> ROUTER sockets in both
directions (the shape of shard-to-shard messages), over loopback TCP and over
unix sockets (ipc://), with a 2 ms pause between pings as in a detection.

    python benchmarks/peer_pingpong.py [--n 500]
"""

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

import zmq


def node(name, transport, my_q, peer_q, n, tmp):
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    if transport == "tcp":
        port = r.bind_to_random_port("tcp://127.0.0.1")
        my_q.put(f"tcp://127.0.0.1:{port}")
    else:
        ep = f"ipc://{os.path.join(tmp, name + '.ipc')}"
        r.bind(ep)
        my_q.put(ep)
    d = ctx.socket(zmq.DEALER)
    d.connect(peer_q.get())
    time.sleep(0.3)
    if name == "A":
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            d.send(b"ping")
            r.poll(5000)
            r.recv_multipart()
            lat.append((time.perf_counter() - t0) * 1e6)
            time.sleep(0.002)
        lat.sort()
        print(f"{transport}: round trip p50 {lat[len(lat) // 2]:.0f} us, p90 {lat[int(len(lat) * 0.9)]:.0f} us",
              flush=True)
    else:
        for _ in range(n):
            r.poll(5000)
            r.recv_multipart()
            d.send(b"pong")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("tcp", "ipc", "tcp", "ipc"):
            qa, qb = mp.Queue(), mp.Queue()
            pa = mp.Process(target=node, args=("A", transport, qa, qb, a.n, tmp))
            pb = mp.Process(target=node, args=("B", transport, qb, qa, a.n, tmp))
            pa.start()
            pb.start()
            pa.join()
            pb.join()


if __name__ == "__main__":
    sys.exit(main())
