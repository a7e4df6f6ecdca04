#!/usr/bin/env python3
"""Bank transfers across a sharded key-value store, each one a 2PC transaction
taking row X locks through lockmgr. Coordinators can be SIGKILLed mid-protocol
and restarted; they finish their in-doubt transactions through recover().

    python examples/bank/bank.py demo --seconds 10 --faults      (everything below, checked)

Pieces (each also a subcommand):
  * the store: KV shards are directories ``kv{k}/``; account ``a`` lives in
    ``kv{a % K}/acct{a}`` as "balance token". A participant's prepared writes
    are ``kv{k}/pending/{gtrid}`` (fsynced); applying them rewrites the account
    files atomically (only with a fencing token >= the stored one), then removes
    the pending file.
  * ``coordinator``: recovers first, then loops: lock the two rows X (sorted
    order) -> read -> write pending files on each KV shard (vote) ->
    Transaction.prepare() on the lock service -> append "gtrid" to its decision
    log, fsync (the commit point) -> apply on each KV shard -> commit the locks.
    It kills itself (SIGKILL) at a chosen step when told to.
  * recovery (``recover``): for each of the coordinator's gtrids that the lock
    service has in doubt or that has pending files: decided -> apply
    everywhere, then resolve(commit); not decided -> drop the pending files,
    resolve(abort) (presumed abort). Applying without holding the locks is
    never needed: a decided transaction was prepared, so its locks are kept
    until resolve, and resolve comes after the apply.
  * ``check``: S locks on every KV table (waits for in-flight transfers),
    sums the balances; the total must never change.
"""

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # run from a checkout

import lockmgr  # noqa: E402
from lockmgr import InvalidRequest, LockError, Mode  # noqa: E402

STEPS = ("locked", "kv-prepared-1", "kv-prepared", "prepared", "decided", "applied-1", "applied")


# ------------------------------------------------------------------ the store

def _fsync_write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, root):
        self.root = root
        with open(os.path.join(root, "meta.json")) as f:
            meta = json.load(f)
        self.k, self.n = meta["shards"], meta["accounts"]

    @staticmethod
    def init(root, shards, accounts, balance):
        os.makedirs(root, exist_ok=True)
        for k in range(shards):
            os.makedirs(os.path.join(root, f"kv{k}", "pending"), exist_ok=True)
        for a in range(accounts):
            _fsync_write(os.path.join(root, f"kv{a % shards}", f"acct{a}"), f"{balance} 0")
        _fsync_write(os.path.join(root, "meta.json"), json.dumps({"shards": shards, "accounts": accounts,
                                                                   "total": shards and accounts * balance}))

    def shard(self, a):
        return a % self.k

    def row(self, a):
        return ("bank", f"kv{self.shard(a)}", a)

    def read(self, a):
        with open(os.path.join(self.root, f"kv{self.shard(a)}", f"acct{a}")) as f:
            bal, tok = f.read().split()
        return int(bal), int(tok)

    def prepare(self, k, gtrid, writes):     # the participant's vote: durable intent
        _fsync_write(os.path.join(self.root, f"kv{k}", "pending", gtrid), json.dumps(writes))

    def apply(self, k, gtrid):
        p = os.path.join(self.root, f"kv{k}", "pending", gtrid)
        try:
            with open(p) as f:
                writes = json.load(f)
        except FileNotFoundError:
            return False                     # applied already (idempotent)
        for a, (bal, tok) in writes.items():
            _, old_tok = self.read(int(a))
            if tok < old_tok:
                raise RuntimeError(f"stale fencing token {tok} < {old_tok} for account {a}")
            _fsync_write(os.path.join(self.root, f"kv{k}", f"acct{a}"), f"{bal} {tok}")
        os.remove(p)
        return True

    def drop(self, k, gtrid):
        try:
            os.remove(os.path.join(self.root, f"kv{k}", "pending", gtrid))
        except FileNotFoundError:
            pass

    def pending(self, prefix=""):
        out = {}
        for k in range(self.k):
            for p in glob.glob(os.path.join(self.root, f"kv{k}", "pending", prefix + "*")):
                if not p.endswith(".tmp"):
                    out.setdefault(os.path.basename(p), []).append(k)
        return out

    def total(self):
        return sum(self.read(a)[0] for a in range(self.n))


# ------------------------------------------------------------ the coordinator

class Coordinator:
    def __init__(self, endpoints, root, cid, ttl=2.0):
        self.store = Store(root)
        self.endpoints = endpoints
        self.cid = cid
        self.ttl = ttl
        self.log_path = os.path.join(root, f"decisions-{cid}.log")
        self.client = None
        self.connect()

    def connect(self):
        if self.client is not None:
            self.client.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client = lockmgr.connect(self.endpoints, session_ttl=self.ttl, request_timeout=1.0,
                                              name=f"bank-{self.cid}")
                return
            except LockError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def decided(self):
        try:
            with open(self.log_path) as f:
                return {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            return set()

    def log_decision(self, gtrid):
        with open(self.log_path, "a") as f:
            f.write(gtrid + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _retry(self, fn):
        """Run a lock-service call until it succeeds (a shard may be restarting)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return fn()
            except InvalidRequest:
                raise
            except LockError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                if self.client.expired:
                    self.connect()

    def recover(self):
        """Finish every transaction of this coordinator left by an earlier incarnation."""
        prefix = self.cid + "."
        decided = self.decided()
        indoubt = set(g for g in self._retry(lambda: self.client.recover()) if g.startswith(prefix))
        pending = self.store.pending(prefix)
        done = {"committed": 0, "aborted": 0}
        for g in sorted(indoubt | set(pending)):
            commit = g in decided
            for k in pending.get(g, []):
                self.store.apply(k, g) if commit else self.store.drop(k, g)
            if g in indoubt:
                try:
                    self._retry(lambda: self.client.resolve(g, commit))
                except InvalidRequest:
                    pass                     # resolved meanwhile
            done["committed" if commit else "aborted"] += 1
        return done

    def transfer(self, rnd, gtrid, crash_at=None):
        st = self.store

        def step(name):
            if name == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)

        a, b = rnd.sample(range(st.n), 2)
        amount = rnd.randint(1, 30)
        t = self.client.begin(gtrid=gtrid)
        wrote = []
        try:
            toks = {}
            for acct in sorted((a, b), key=lambda x: (st.shard(x), x)):
                toks[acct] = t.lock(st.row(acct), Mode.X, timeout=2.0)
            (ba, _), (bb, _) = st.read(a), st.read(b)
            if ba < amount:
                t.abort()
                return "skipped"
            step("locked")
            writes = {}
            for acct, bal in ((a, ba - amount), (b, bb + amount)):
                writes.setdefault(st.shard(acct), {})[str(acct)] = [bal, toks[acct]]
            for i, (k, w) in enumerate(sorted(writes.items())):
                st.prepare(k, gtrid, w)
                wrote.append(k)
                if i == 0:
                    step("kv-prepared-1")
            step("kv-prepared")
            t.prepare()
            step("prepared")
        except LockError:
            for k in wrote:
                st.drop(k, gtrid)
            t.abort()
            return "aborted"
        self.log_decision(gtrid)             # the commit point
        step("decided")
        for i, k in enumerate(sorted(writes)):
            st.apply(k, gtrid)
            if i == 0:
                step("applied-1")
        step("applied")
        try:
            t.commit()
        except LockError:
            try:
                self._retry(lambda: self.client.resolve(gtrid, True))
            except InvalidRequest:
                pass
        return "committed"

    def run(self, seconds, seed, crash_after=None, crash_step=None, report=None):
        """Transfers for ``seconds``; ``report(outcome)`` is called after each one (so
        that a coordinator killed mid-run has reported what it finished)."""
        rnd = random.Random(seed)
        inc = f"{time.time_ns():x}"
        counts = {"committed": 0, "aborted": 0, "skipped": 0}
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            crash = crash_step if crash_after is not None and n == crash_after else None
            try:
                outcome = self.transfer(rnd, f"{self.cid}.{inc}.{n}", crash)
            except LockError:
                outcome = "aborted"
                if self.client.expired:
                    self.connect()
            counts[outcome] += 1
            if report is not None:
                report(outcome)
        return counts


def check(endpoints, root, timeout=5.0, patience=60.0):
    """A consistent total: S on every KV table (waits for in-flight transfers).

    Gives up (LockError) after ``patience`` seconds: a killed coordinator's
    in-doubt transfer keeps its X locks until that coordinator restarts and
    recovers, so a check made meanwhile cannot finish."""
    st = Store(root)
    with lockmgr.connect(endpoints, request_timeout=2.0) as c:
        deadline = time.monotonic() + patience
        while True:
            t = c.begin()
            try:
                for k in range(st.k):
                    t.lock(("bank", f"kv{k}"), Mode.S, timeout=timeout)
                total = st.total()
                t.commit()
                return total
            except LockError:
                t.abort()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# ----------------------------------------------------------------- the demo

def demo(args):
    import tempfile

    from lockmgr import LocalCluster
    rnd = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="lockmgr-bank-")
    kv = os.path.join(root, "kv")
    Store.init(kv, args.kv_shards, args.accounts, 100)
    expected = args.accounts * 100
    ok = True
    with LocalCluster(3, data_dir=os.path.join(root, "locks")) as cluster:
        eps = ",".join(cluster.endpoints)
        print(f"lock service: {eps}; store: {kv} ({args.kv_shards} KV shards, {args.accounts} accounts, "
              f"total {expected})")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(HERE)))
        procs = {}
        crashes = 0
        stats = {"committed": 0, "aborted": 0, "skipped": 0, "recovered_commit": 0, "recovered_abort": 0}

        def spawn(cid, seconds):
            cmd = [sys.executable, os.path.abspath(__file__), "coordinator", eps, kv, cid,
                   "--seconds", f"{seconds:.2f}", "--seed", str(rnd.randrange(1 << 30))]
            if args.faults:
                cmd += ["--crash-after", str(rnd.randint(3, 40)), "--crash-step", rnd.choice(STEPS)]
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)

        end = time.monotonic() + args.seconds
        shard_killed = not args.faults
        for c in range(args.coordinators):
            procs[f"c{c}"] = spawn(f"c{c}", args.seconds)
        checks = 0
        skipped_checks = 0
        def kill_shard():
            cluster.kill(1)                  # a lock shard dies mid-run (prepared locks survive)
            time.sleep(0.2)
            cluster.restart(1)
            print("  lock shard 1 SIGKILLed and restarted")
            return True

        while time.monotonic() < end:
            time.sleep(0.2)
            if not shard_killed and time.monotonic() > end - args.seconds / 2:
                shard_killed = kill_shard()
            for cid, p in list(procs.items()):
                if p.poll() is None:
                    continue
                out = p.stdout.read()
                p.stdout.close()
                for line in out.splitlines():
                    if line.startswith("RESULT "):
                        for key, v in json.loads(line[7:]).items():
                            stats[key] = stats.get(key, 0) + v
                if p.returncode == -signal.SIGKILL:
                    crashes += 1
                left = end - time.monotonic()
                if left > 0.3:
                    procs[cid] = spawn(cid, left)      # restart: it recovers first
                else:
                    del procs[cid]
            if args.faults and rnd.random() < 0.3:
                # Opportunistic: this loop is also what restarts killed
                # coordinators, so it must not wait here for their recovery.
                try:
                    total = check(eps, kv, timeout=1.0, patience=2.0)
                except LockError:
                    skipped_checks += 1
                else:
                    checks += 1
                    if total != expected:
                        print(f"  CHECK FAILED: total {total} != {expected}")
                        ok = False
        if not shard_killed:                 # a slow machine: the loop overran; still mid-run
            shard_killed = kill_shard()
        for p in procs.values():
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            crashes += p.returncode == -signal.SIGKILL
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    for key, v in json.loads(line[7:]).items():
                        stats[key] = stats.get(key, 0) + v
        # The killed incarnations' sessions end after their TTL; then a final
        # recovery per coordinator finishes whatever is still in doubt.
        time.sleep(2.5)
        for c in range(args.coordinators):
            co = Coordinator(eps, kv, f"c{c}")
            r = co.recover()
            stats["recovered_commit"] += r["committed"]
            stats["recovered_abort"] += r["aborted"]
            co.client.close()
        with lockmgr.connect(eps) as cl:
            left = cl.recover()
        pend = Store(kv).pending()
        total = check(eps, kv)
        checks += 1
        print(f"  coordinators killed mid-protocol: {crashes}; consistency checks: {checks}"
              f" (+{skipped_checks} skipped while a coordinator recovered)")
        print(f"  transfers: {stats}")
        print(f"  in doubt at the end: {len(left)}; pending KV writes: {len(pend)}; total {total} "
              f"(expected {expected})")
        ok = ok and total == expected and not left and not pend
        if args.faults and crashes == 0:
            print("  (no coordinator crash happened: increase --seconds)")
    if ok and not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    print("OK: total balance conserved" if ok else f"FAILED (data kept in {root})")
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="start a lock cluster, run coordinators with faults, check the total")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--coordinators", type=int, default=2)
    p.add_argument("--kv-shards", type=int, default=3)
    p.add_argument("--accounts", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", action="store_true", help="kill coordinators mid-protocol and a lock shard")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p = sub.add_parser("init", help="create a store")
    p.add_argument("kv")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--accounts", type=int, default=60)
    p.add_argument("--balance", type=int, default=100)
    p = sub.add_parser("coordinator", help="recover, then run transfers")
    p.add_argument("endpoints")
    p.add_argument("kv")
    p.add_argument("cid")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--crash-after", type=int, default=None, help="SIGKILL itself during transfer N")
    p.add_argument("--crash-step", choices=STEPS, default="prepared")
    p = sub.add_parser("recover", help="finish a coordinator's in-doubt transactions")
    p.add_argument("endpoints")
    p.add_argument("kv")
    p.add_argument("cid")
    p = sub.add_parser("check", help="print the total balance (consistent)")
    p.add_argument("endpoints")
    p.add_argument("kv")
    args = ap.parse_args(argv)
    if args.cmd == "demo":
        return demo(args)
    if args.cmd == "init":
        Store.init(args.kv, args.shards, args.accounts, args.balance)
        return 0
    if args.cmd == "check":
        print(check(args.endpoints, args.kv))
        return 0
    co = Coordinator(args.endpoints, args.kv, args.cid)
    r = co.recover()
    if args.cmd == "recover":
        print(r)
        return 0
    print("RESULT " + json.dumps({"recovered_commit": r["committed"], "recovered_abort": r["aborted"]}),
          flush=True)
    # one line per transfer: the parent's tally then includes a coordinator killed mid-run
    co.run(args.seconds, args.seed, args.crash_after, args.crash_step,
           report=lambda outcome: print("RESULT " + json.dumps({outcome: 1}), flush=True))
    co.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
