"""The routing table: each public model name maps to weighted targets.

Targets are picked by smooth weighted round-robin (nginx's algorithm): over
any window of sum(weights) picks each target is chosen exactly ``weight``
times, interleaved rather than in runs.  Richer strategies (least in-flight,
latency-aware, sticky...) plug in here with the resilience work.

Each target has capabilities (its config's, else its provider kind's).  A
request that needs some (vision, tools, streaming...) is spread over the
targets that have them; when every target of a model has every capability (an
OpenAI-only model), the check is skipped altogether.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config, TargetConfig
from ..providers import CAPABILITIES, Provider, build_provider

__all__ = ["ModelRoute", "Router", "Target"]


@dataclass(slots=True)
class Target:
    provider: Provider
    model: str  # the upstream's name for the model
    weight: int
    capabilities: frozenset[str] = CAPABILITIES
    current: int = 0  # smooth WRR state


@dataclass(slots=True)
class ModelRoute:
    name: str
    targets: list[Target]
    total_weight: int = field(init=False)
    common: frozenset[str] = field(init=False)  # what every target can do

    def __post_init__(self) -> None:
        self.total_weight = sum(t.weight for t in self.targets)
        self.common = frozenset.intersection(*(t.capabilities for t in self.targets))

    @property
    def complete(self) -> bool:
        """Every target can do everything: no request needs a capability check."""
        return self.common == CAPABILITIES

    def pick(self) -> Target:
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        return _smooth_pick(targets, self.total_weight)

    def pick_for(self, needs: frozenset[str]) -> Target | None:
        """A target that has every capability in ``needs``; None when no target has them."""
        if needs <= self.common:
            return self.pick()
        able = [t for t in self.targets if needs <= t.capabilities]
        if not able:
            return None
        return able[0] if len(able) == 1 else _smooth_pick(able, sum(t.weight for t in able))

    def missing(self, needs: frozenset[str]) -> frozenset[str]:
        """What no single target can do, of ``needs`` (the capabilities to name in a refusal)."""
        return min((needs - t.capabilities for t in self.targets), key=len)


def _smooth_pick(targets: list[Target], total_weight: int) -> Target:
    best = targets[0]
    for target in targets:
        target.current += target.weight
        if target.current > best.current:
            best = target
    best.current -= total_weight
    return best


class Router:
    """Built once per config snapshot; lookups are one dict access."""

    def __init__(self, config: Config) -> None:
        self.providers = {name: build_provider(name, p) for name, p in config.providers.items()}
        self.models = {
            name: ModelRoute(name, [self._target(t) for t in m.targets]) for name, m in config.models.items()
        }

    def _target(self, config: TargetConfig) -> Target:
        provider = self.providers[config.provider]
        capabilities = config.capabilities or provider.config.capabilities
        return Target(provider, config.model, config.weight,
                      frozenset(capabilities) if capabilities is not None else provider.capabilities)

    def get(self, model: str) -> ModelRoute | None:
        return self.models.get(model)
