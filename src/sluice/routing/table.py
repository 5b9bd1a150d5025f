"""The routing table: each public model name maps to weighted targets.

Targets are picked by smooth weighted round-robin (nginx's algorithm): over
any window of sum(weights) picks each target is chosen exactly ``weight``
times, interleaved rather than in runs.  Richer strategies (least in-flight,
latency-aware, sticky...) plug in here with the resilience work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config
from ..providers import Provider, build_provider

__all__ = ["ModelRoute", "Router", "Target"]


@dataclass(slots=True)
class Target:
    provider: Provider
    model: str  # the upstream's name for the model
    weight: int
    current: int = 0  # smooth WRR state


@dataclass(slots=True)
class ModelRoute:
    name: str
    targets: list[Target]
    total_weight: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_weight = sum(t.weight for t in self.targets)

    def pick(self) -> Target:
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        best = targets[0]
        for target in targets:
            target.current += target.weight
            if target.current > best.current:
                best = target
        best.current -= self.total_weight
        return best


class Router:
    """Built once per config snapshot; lookups are one dict access."""

    def __init__(self, config: Config) -> None:
        self.providers = {name: build_provider(name, p) for name, p in config.providers.items()}
        self.models = {
            name: ModelRoute(name, [Target(self.providers[t.provider], t.model, t.weight) for t in m.targets])
            for name, m in config.models.items()
        }

    def get(self, model: str) -> ModelRoute | None:
        return self.models.get(model)
