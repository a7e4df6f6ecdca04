"""The client's hot-path helpers (lockmgr/service/client/hot.py): the compiled
Mutex behaves as threading.Lock, and the compiled drive as ops' Python loop."""

import threading

import pytest

from lockmgr._core import BACKEND
from lockmgr.service.client import hot, ops

LOCKS = [threading.Lock] + ([hot.Mutex] if hot.Mutex is not threading.Lock else [])


@pytest.mark.parametrize("make", LOCKS)
def test_mutex_as_threading_lock(make):
    m = make()
    assert not m.locked()
    assert m.acquire() is True
    assert m.locked()
    assert m.acquire(False) is False
    assert m.acquire(timeout=0.01) is False
    assert m.acquire(blocking=True, timeout=0) is False
    with pytest.raises(ValueError):
        m.acquire(False, 1.0)
    with pytest.raises(ValueError):
        m.acquire(timeout=-2)
    m.release()
    assert not m.locked()
    with pytest.raises(RuntimeError):
        m.release()
    with m:
        assert m.locked()
    assert not m.locked()


@pytest.mark.parametrize("make", LOCKS)
def test_mutex_blocks_and_hands_over_between_threads(make):
    m = make()
    m.acquire()
    got = threading.Event()

    def other():
        with m:                 # waits (with the GIL released) until the main thread lets go
            got.set()

    t = threading.Thread(target=other)
    t.start()
    assert not got.wait(0.05)   # still held
    m.release()
    assert got.wait(10)
    t.join(10)
    assert not m.locked()


@pytest.mark.parametrize("make", LOCKS)
def test_mutex_under_a_condition(make):
    cv = threading.Condition(make())
    box = []

    def producer():
        with cv:
            box.append(1)
            cv.notify_all()

    with cv:
        t = threading.Thread(target=producer)
        t.start()
        assert cv.wait_for(lambda: box, timeout=10)
    t.join(10)
    with pytest.raises(RuntimeError):
        cv.notify()             # not owned


class _Eng(hot.EngineBase):
    """call_many stand-in: answers each batch with the calls' shard numbers doubled
    (a Python subclass of EngineBase, as the simulation's engine is: the compiled
    drive calls its call_many through the C-level method, which finds the override)."""

    def __init__(self):
        self.batches = []

    def call_many(self, specs):
        self.batches.append(specs)
        return [s * 2 for s, *_ in specs]


def _gen(n, fail=False):
    total = 0
    for k in range(n):
        res = yield [(k, 0, [], 0.0), (k + 1, 0, [], 0.0)]
        total += sum(res)
    if fail:
        raise KeyError("boom")
    return total


def _python_drive(eng, gen):
    saved, ops._cdrive = ops._cdrive, None
    try:
        return ops._drive(eng, gen)
    finally:
        ops._cdrive = saved


@pytest.mark.parametrize("n", [0, 1, 5])
def test_drive_returns_what_the_python_loop_returns(n):
    drives = [_python_drive] + ([hot.drive] if hot.drive is not None else [])
    outs = []
    for d in drives:
        eng = _Eng()
        outs.append((d(eng, _gen(n)), eng.batches))
    assert outs[0][0] == sum(2 * (2 * k + 1) for k in range(n))
    assert all(o == outs[0] for o in outs)


def test_drive_raises_what_the_generator_raises():
    drives = [_python_drive] + ([hot.drive] if hot.drive is not None else [])
    for d in drives:
        with pytest.raises(KeyError, match="boom"):
            d(_Eng(), _gen(3, fail=True))


def test_compiled_helpers_are_used_with_the_compiled_backend():
    if BACKEND == "c":
        assert hot.Mutex is not threading.Lock and hot.drive is not None
        assert ops._cdrive is hot.drive
    else:
        assert hot.Mutex is threading.Lock and hot.drive is None


def test_engine_base_methods_must_be_overridden():
    base = hot.EngineBase()
    for name, args in [("call_many", ([],)), ("check_session", ()), ("lease_over", ()), ("post", (0, 1, [])),
                       ("post_quiet", (0, 1, [])), ("recorded", ()), ("txn_lost", (None, None)),
                       ("forget_txn", (None,))]:
        with pytest.raises(NotImplementedError, match=name):
            getattr(base, name)(*args)


def test_engines_derive_from_engine_base():
    # ops reads the engine's fields and calls its methods at C level (ops.pxd): both
    # engines that drive the transaction logic must be EngineBase subclasses
    from lockmgr.service.client.engine import _Engine
    from lockmgr.sim.client import SimEngine
    assert issubclass(_Engine, hot.EngineBase) and issubclass(SimEngine, hot.EngineBase)
    if BACKEND == "c":
        with pytest.raises(TypeError, match="EngineBase"):
            hot.drive(_NotAnEngine(), _gen(1))


class _NotAnEngine:
    def call_many(self, specs):
        return [None for _ in specs]
