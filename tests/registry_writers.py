"""Concurrent registry writers for tests/test_registry_production.py: a module of its own so a
spawned writer process imports only `ml.registry`, not the test module's heavier imports."""

from __future__ import annotations

from ml.registry import Registry

PROBLEM = "conversion"


def write_lines(url: str, worker: int, versions: list[str], rounds: int, start) -> None:
    """One writer: `rounds` times, move the challenger (a line) and record a ramp step."""
    registry = Registry(url)
    start.wait()
    for i in range(rounds):
        version = versions[(worker + i) % len(versions)]
        registry.assign(PROBLEM, "challenger", version, f"w{worker}-{i}", decided_by="test")
        registry.record(PROBLEM, "challenger", version, f"ramp w{worker}-{i}", stage="s1")


def count_steps(url: str, worker: int, rounds: int, start) -> None:
    """One writer: a read-decide-write of the rollout state, under the problem's lock."""
    registry = Registry(url)
    start.wait()
    for i in range(rounds):
        with registry.locked(PROBLEM):
            state = registry.rollout(PROBLEM) or {"steps": 0, "by": []}
            state["steps"] += 1
            state["by"].append(f"w{worker}-{i}")
            registry.set_rollout(PROBLEM, state)
