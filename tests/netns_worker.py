"""A fenced-store client for tests/test_partitions.py, run inside a network namespace.

    python netns_worker.py ENDPOINTS STORE_DIR NAME SECONDS OUT.json

Loops: begin; X on ("db", "acct", k); the same lock again (a round trip that proves
the session is alive at the shard right now); read the counter k from the store and
write it + 1 with the lock's fencing token; commit. The store (FencedStore, a file
under flock shared by every namespace) refuses a write whose token is older than the
newest it saw for that key. Every operation is logged with its outcome.
"""

import fcntl
import json
import os
import sys
import time

import lockmgr
from lockmgr import LockError, Mode, SessionExpired


class FencedStore:
    """key -> (value, newest token): a write carrying an older token is refused."""

    def __init__(self, d):
        self.path = os.path.join(d, "store.json")
        self.lock_path = os.path.join(d, "store.lock")

    def update(self, key, token, fn):
        with open(self.lock_path, "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    data = json.load(f)
            except FileNotFoundError:
                data = {}
            val, newest = data.get(key, [0, 0])
            if token < newest:
                return False, val
            data[key] = [fn(val), token]
            with open(self.path + ".tmp", "w") as f:
                json.dump(data, f)
            os.replace(self.path + ".tmp", self.path)
            return True, data[key][0]


def main():
    endpoints, store_dir, name, seconds, out = sys.argv[1:6]
    store = FencedStore(store_dir)
    log = []
    end = time.monotonic() + float(seconds)
    client = None
    i = 0
    while time.monotonic() < end:
        if client is None:
            try:
                client = lockmgr.connect(endpoints.split(","), session_ttl=1.0, request_timeout=0.5, name=name)
            except LockError as e:
                log.append([time.monotonic(), "connect", type(e).__name__])
                time.sleep(0.1)
                continue
        i += 1
        key = ("db", "acct", i % 3)
        t = None
        try:
            t = client.begin()
            tok = t.lock(key, Mode.X, timeout=1.0)
            t.lock(key, Mode.X, timeout=1.0)
            ok, val = store.update(repr(key), tok, lambda v: v + 1)
            log.append([time.monotonic(), "write" if ok else "REFUSED", repr(key), tok, val, client._eng.session])
            t.commit()
        except SessionExpired as e:
            log.append([time.monotonic(), "SessionExpired", str(e)[:80], client._eng.session])
            client.close()
            client = None
        except LockError as e:
            log.append([time.monotonic(), type(e).__name__, str(e)[:80]])
            try:
                if t is not None:
                    t.abort()
            except LockError:
                pass
    if client is not None:
        client.close()
    with open(out, "w") as f:
        json.dump(log, f)


if __name__ == "__main__":
    main()
