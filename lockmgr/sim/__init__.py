"""A deterministic simulation of a whole lockmgr cluster (FoundationDB /
TigerBeetle style): the real shard cores and the clients' real transaction
logic in one process, on a simulated network and clocks, driven by a seed,
with faults injected and invariants checked after every event.

Interface:
    run_seed(seed, cfg=None, trace=False) -> SimResult
    SimConfig, SimResult, World, Violation, replay_command
    python -m lockmgr.sim --seeds N [--start S] [--set knob=value ...]
    python -m lockmgr.sim --seed S --trace        replay one seed, print its trace

Design, the fault model and the invariants: docs/simulation.md.
"""

from .invariants import Violation
from .world import SimConfig, SimResult, World, replay_command, run_seed

__all__ = ["run_seed", "SimConfig", "SimResult", "World", "Violation", "replay_command"]
