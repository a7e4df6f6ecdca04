"""A ZeroMQ fault-injecting proxy for tests: drops, duplicates and delays
(so reorders) frames between clients and one shard, from a seeded PRNG.

Clients connect to ``proxy.endpoint`` as if it were the shard. For each
client (routing id) the proxy opens its own DEALER to the shard, so the
shard still sees one peer per client. Runs in a thread owning its sockets;
``stop()`` joins it. Binds 127.0.0.1 only.
"""

import heapq
import itertools
import random
import threading
import time

import zmq


class FaultProxy:
    def __init__(self, shard_endpoint, *, seed, drop=0.0, dup=0.0, delay=0.0, max_delay=0.03):
        self.shard = shard_endpoint
        self.rnd = random.Random(seed)
        self.drop, self.dup, self.delay, self.max_delay = drop, dup, delay, max_delay
        self.counts = {"forwarded": 0, "dropped": 0, "duplicated": 0, "delayed": 0}
        self._ctx = zmq.Context()
        self._front = self._ctx.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        self._front.bind("tcp://127.0.0.1:0")
        self.endpoint = self._front.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()

    def _fault(self, send, frames, later, tick):
        r = self.rnd.random()
        if r < self.drop:
            self.counts["dropped"] += 1
            return
        copies = 2 if self.rnd.random() < self.dup else 1
        if copies == 2:
            self.counts["duplicated"] += 1
        for _ in range(copies):
            if self.rnd.random() < self.delay:
                self.counts["delayed"] += 1
                due = time.monotonic() + self.rnd.random() * self.max_delay
                heapq.heappush(later, (due, next(tick), send, frames))
            else:
                send(frames)
                self.counts["forwarded"] += 1

    def _run(self):
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        backs = {}      # client id -> DEALER to the shard
        owner = {}      # DEALER -> client id
        later = []
        tick = itertools.count()
        front = self._front
        while not self._stop.is_set():
            timeout = 10
            if later:
                timeout = max(0, min(timeout, int((later[0][0] - time.monotonic()) * 1000)))
            for sock, _ in poller.poll(timeout):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if sock is front:
                        cid, body = frames[0], frames[1:]
                        back = backs.get(cid)
                        if back is None:
                            back = self._ctx.socket(zmq.DEALER)
                            back.setsockopt(zmq.LINGER, 0)
                            back.connect(self.shard)
                            backs[cid] = back
                            owner[back] = cid
                            poller.register(back, zmq.POLLIN)
                        self._fault(back.send_multipart, body, later, tick)
                    else:
                        cid = owner[sock]
                        self._fault(front.send_multipart, [cid] + frames, later, tick)
            now = time.monotonic()
            while later and later[0][0] <= now:
                _, _, send, frames = heapq.heappop(later)
                send(frames)
                self.counts["forwarded"] += 1
        for b in backs.values():
            b.close(0)
        front.close(0)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self._ctx.term()
