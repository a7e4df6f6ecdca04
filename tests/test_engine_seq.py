"""The client engine's sequence numbers and acks against a scripted shard: a
frame's ack (the lowest seq still pending: the shard forgets its answers below
it and refuses those seqs as stale, unanswered) must never pass a call that is
still waiting for its answer -- also when an answer put the call back among the
pending ones (a restarted shard's 'unknown session', a standby's 'not primary')."""

import threading

from lockmgr.service import wire
from lockmgr.service.client.engine import _Engine

from helpers import ScriptedShard


def _hello_reply(seq):
    return [seq, wire.OK, [7, 0, 1, 2, 0]]


def test_a_call_parked_by_unknown_session_keeps_the_ack_below_its_seq():
    fake = ScriptedShard()
    eng = fake.serve_hello(lambda: _Engine([fake.endpoint], 60.0, 2, 5.0, "seq-test"))
    results = {}
    threads = []
    try:
        def call(name, txn):
            results[name] = eng.call_many([(0, wire.TXN_NAME, [txn, name], 0)])

        threads.append(threading.Thread(target=call, args=("a", 1)))
        threads[-1].start()
        _, ack, ((_, seq_a, *_),) = fake.recv_frame()
        threads.append(threading.Thread(target=call, args=("b", 2)))
        threads[-1].start()
        _, ack, ((_, seq_b, *_),) = fake.recv_frame()
        assert ack == seq_a < seq_b                       # both pending: a is the lowest

        # the shard "restarted": a is answered 'unknown session'; b is still out there
        fake.send([[seq_a, wire.E_UNKNOWN_SESSION, "unknown session"]])
        answered = set()
        for _ in range(6):
            _, ack, reqs = fake.recv_frame()
            for typ, seq, *_ in reqs:
                if seq not in answered and seq in (seq_a, seq_b):
                    # the frame carrying a's resend may not acknowledge a itself
                    assert ack <= min(s for s in (seq_a, seq_b) if s not in answered), (ack, reqs)
                if typ == wire.HELLO:
                    fake.send([_hello_reply(seq)])
                elif seq in (seq_a, seq_b) and seq not in answered:
                    answered.add(seq)
                    fake.send([[seq, wire.OK, []]])
            if answered == {seq_a, seq_b}:
                break
        for th in threads:
            th.join(5.0)
        assert results == {"a": [[]], "b": [[]]}
    finally:
        eng.shutdown()
        fake.close()


def test_repend_keeps_the_pending_calls_in_seq_order():
    """The rule itself, on the map: whatever order calls are put back in, the
    first pending seq (the next frame's ack) is the lowest."""
    fake = ScriptedShard()
    eng = fake.serve_hello(lambda: _Engine([fake.endpoint], 60.0, 2, 5.0, "seq-test"))
    try:
        class C:
            def __init__(self, seq):
                self.seq = seq
        with eng._mu:
            pending = eng._pending[0]
            saved = dict(pending)
            pending.clear()
            for seq in (12, 13, 14):
                pending[seq] = C(seq)
            c = pending.pop(12)
            eng._repend(0, c)
            assert next(iter(pending)) == 12 and list(pending) == [12, 13, 14]
            eng._repend(0, C(11))
            assert list(pending) == [11, 12, 13, 14]
            pending.clear()
            pending.update(saved)
    finally:
        eng.shutdown()
        fake.close()


def test_a_call_sent_straight_out_is_retried_when_its_first_send_is_lost():
    """A caller that finds the sockets free sends its call in its first turn and gives
    it a retry timer only if the first poll does not answer (engine._serve): an
    unanswered first send is sent again, same seq, after the retry interval; an
    answered one leaves no timer behind."""
    fake = ScriptedShard()
    eng = fake.serve_hello(lambda: _Engine([fake.endpoint], 60.0, 2, 0.4, "retry-test"))   # retry every 0.1 s
    out = {}
    try:
        th = threading.Thread(target=lambda: out.setdefault("r", eng.call_many([(0, wire.TXN_NAME, [1, "a"], 0)])))
        th.start()
        _, _, ((typ, seq, *_),) = fake.recv_frame()      # the first send: "lost" (not answered)
        assert typ == wire.TXN_NAME
        _, _, reqs = fake.recv_frame()                   # the retry
        assert [(t, s) for t, s, *_ in reqs] == [(wire.TXN_NAME, seq)]
        fake.send([[seq, wire.OK, []]])
        th.join(5.0)
        assert out["r"] == [[]]

        th = threading.Thread(target=lambda: out.__setitem__("r2", eng.call_many([(0, wire.TXN_NAME, [2, "b"], 0)])))
        th.start()
        _, _, ((_, seq2, *_),) = fake.recv_frame()
        fake.send([[seq2, wire.OK, []]])                 # answered within the first poll
        th.join(5.0)
        assert out["r2"] == [[]]
        assert not [e for e in eng._heap if not e[2].done]      # no live timer left
    finally:
        eng.shutdown()
        fake.close()
