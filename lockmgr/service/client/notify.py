"""Telling user code about a session: its states, and the thread that calls
the listeners.

Interface:
    SessionState            CONNECTED, SUSPENDED, LOST, RECONNECTED (a str enum)
    Dispatcher(name)        one daemon thread that runs queued callables in order
        .put(fn, *args)     queue a call (never blocks; starts the thread on first use)
        .stop(timeout)      run what is queued, then end the thread (not from inside it)

The client engine decides the states under its lock (engine.py,
``_set_state_locked``) and never runs user code there: it queues the calls
here, and this thread makes them, one at a time, in the order the engine
queued them. docs/service.md ("Session states and listeners").
"""

import enum
import logging
import queue
import threading
from typing import Optional

__all__ = ["SessionState", "Dispatcher"]

_log = logging.getLogger("lockmgr.client")


class SessionState(str, enum.Enum):
    """What a session listener is told (``Client.add_listener``).

    * ``CONNECTED``: a session is open on every shard (a new one after LOST).
    * ``SUSPENDED``: some shard has not answered for half the lease (or it
      restarted and the session's locks are being reclaimed there): the lease
      is running out. Locks are still held; stop starting irreversible work.
    * ``RECONNECTED``: after SUSPENDED, every shard answers again within the
      lease (reclaims done): the same session, every lock still held.
    * ``LOST``: the session expired; every lock of it is gone. Its
      transactions raise SessionExpired; the client opens a new session for
      new ones (CONNECTED follows once it is open).
    """

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    RECONNECTED = "RECONNECTED"
    LOST = "LOST"

    def __str__(self) -> str:
        return self.value


_STOP = object()


class Dispatcher:
    """Runs callables queued by the engine (listeners, ``on_lost`` callbacks) on
    its own daemon thread, in order; an exception in one is logged."""

    def __init__(self, name: str = "lockmgr-client-notify") -> None:
        self._q: "queue.SimpleQueue" = queue.SimpleQueue()
        self._name = name
        self._thread: "Optional[threading.Thread]" = None
        self._mu = threading.Lock()
        self._stopped = False

    def put(self, fn, *args) -> None:
        with self._mu:
            if self._stopped:
                return
            if self._thread is None:
                th = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread = th
                th.start()
        self._q.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                _log.exception("lockmgr client: a listener or on_lost callback failed (%r)", fn)

    def stop(self, timeout: float = 5.0) -> None:
        with self._mu:
            self._stopped = True
            th = self._thread
        if th is None:
            return
        self._q.put(_STOP)
        if th is not threading.current_thread():
            th.join(timeout)

    @property
    def thread(self):
        return self._thread
