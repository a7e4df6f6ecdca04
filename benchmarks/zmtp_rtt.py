"""Side experiment: one request/reply round trip to a pyzmq ROUTER echo server,
from a pyzmq DEALER and from a plain TCP socket speaking ZMTP 3.0 (NULL
mechanism) itself; wall time and the client process's CPU per round trip
(pyzmq's I/O thread included). Not used by lockmgr: it measures what a client
transport without ZeroMQ's I/O thread would save (benchmarks/RESULTS.md).

    python benchmarks/zmtp_rtt.py
"""

import multiprocessing as mp
import socket
import struct
import time

import zmq


def server(port_q):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    port_q.put(port)
    while True:
        fr = s.recv_multipart()
        if fr[-1] == b"stop": break
        s.send_multipart(fr)

def zmtp_connect(port):
    so = socket.create_connection(("127.0.0.1", port))
    so.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # greeting: signature, version 3.0, mechanism NULL, as-server 0, filler
    greet = b"\xff" + b"\x00"*8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00"*31
    so.sendall(greet)
    buf = b""
    while len(buf) < 64:
        buf += so.recv(64 - len(buf))
    # READY command with Socket-Type DEALER
    def prop(name, val):
        return bytes([len(name)]) + name + struct.pack(">I", len(val)) + val
    body = b"\x05READY" + prop(b"Socket-Type", b"DEALER")
    so.sendall(b"\x04" + bytes([len(body)]) + body)
    # read peer READY command
    read_frame(so)
    return so

def recvn(so, n):
    b = b""
    while len(b) < n:
        c = so.recv(n - len(b))
        if not c: raise EOFError
        b += c
    return b

def read_frame(so):
    h = recvn(so, 2)
    flags = h[0]
    if flags & 2:
        size = struct.unpack(">Q", h[1:2] + recvn(so, 7))[0]
    else:
        size = h[1]
    return flags, recvn(so, size)

def send_msg(so, data):
    if len(data) < 256:
        so.sendall(b"\x00" + bytes([len(data)]) + data)
    else:
        so.sendall(b"\x02" + struct.pack(">Q", len(data)) + data)

if __name__ == "__main__":
    q = mp.Queue(); p = mp.Process(target=server, args=(q,)); p.start(); port = q.get()
    N = 3000
    payload = b"x" * 40
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER); d.connect(f"tcp://127.0.0.1:{port}")
    so = zmtp_connect(port)
    for _ in range(3):
        t0 = time.perf_counter(); c0 = time.process_time()
        for _ in range(N):
            d.send(payload); d.recv()
        t1 = time.perf_counter(); c1 = time.process_time()
        for _ in range(N):
            send_msg(so, payload); fl, b = read_frame(so); assert b == payload
        t2 = time.perf_counter(); c2 = time.process_time()
        print(f"pyzmq DEALER rtt {(t1-t0)/N*1e6:6.1f} us (client cpu {(c1-c0)/N*1e6:5.1f} us) | "
              f"raw ZMTP rtt {(t2-t1)/N*1e6:6.1f} us (client cpu {(c2-c1)/N*1e6:5.1f} us)")
    d.send(b"stop"); p.join()
