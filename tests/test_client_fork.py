"""A client used in a forked child raises ClientForked at once (sync and
asyncio), and the parent's session is left alone (docs/service.md,
"Clients and fork()")."""

import asyncio
import os
import select
import time

import pytest

import lockmgr
from lockmgr import ClientForked, Mode
from lockmgr.service.cluster import LocalCluster

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    with LocalCluster(1, data_dir=str(tmp_path_factory.mktemp("fork"))) as cl:
        yield cl


def _in_child(fn, timeout=20.0):
    """Run ``fn`` in a forked child; -> the line it wrote (bounded in time; the child is reaped by pid)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: never returns into pytest
        code = 0
        try:
            msg = fn()
        except BaseException as e:                # noqa: BLE001 - reported to the parent
            msg, code = f"child raised {type(e).__name__}: {e}", 1
        os.write(w, msg.encode()[:4000] + b"\n")
        os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            os.kill(pid, 9)
            raise AssertionError(f"the forked child did not answer within {timeout} s (it hangs)")
        out = os.read(r, 8192).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return out.strip()


def _expect_forked(call):
    t0 = time.monotonic()
    try:
        call()
    except ClientForked as e:
        took = time.monotonic() - t0
        return f"ClientForked after {took:.3f}s: {e}"
    return "no error"


def test_sync_client_in_forked_child_raises_at_once(one_shard):
    with one_shard.connect(request_timeout=1.0) as c:
        t = c.begin()
        t.lock(("db", "fork", 1), Mode.X)

        def child():
            out = [_expect_forked(lambda: c.begin().lock(("db", "fork", 2), Mode.S)),
                   _expect_forked(t.commit),
                   _expect_forked(c.indoubt)]
            c.close()                              # silent: the parent's session is not closed
            return " | ".join(out)

        out = _in_child(child)
        assert out.count("ClientForked after 0.0") == 3, out
        assert "forked child" in out
        # the parent's session and transaction are untouched by the child
        t.lock(("db", "fork", 3), Mode.X)
        t.commit()
        with one_shard.connect() as other:
            u = other.begin()
            u.lock(("db", "fork", 1), Mode.X, nowait=True)
            u.commit()


def test_asyncio_client_in_forked_child_raises_at_once(one_shard):
    async def parent_side():
        async with await lockmgr.aio.connect(one_shard.endpoints, request_timeout=1.0) as c:
            t = c.begin()
            await t.lock(("db", "afork", 1), Mode.X)

            def child():
                async def go():
                    t0 = time.monotonic()
                    try:
                        u = c.begin()
                        await u.lock(("db", "afork", 2), Mode.S)
                    except ClientForked as e:
                        return f"ClientForked after {time.monotonic() - t0:.3f}s: {e}"
                    return "no error"
                return asyncio.run(go())

            out = _in_child(child)
            await t.commit()
            return out

    out = asyncio.run(parent_side())
    assert out.startswith("ClientForked after 0.0"), out
