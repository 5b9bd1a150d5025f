"""Model routing: public model name → deployments → the one that serves a request (docs/routing.md)."""

from .breaker import Breaker
from .deployment import Deployment
from .health_check import HealthChecker
from .table import ModelRoute, Router, affinity_draw, sticky_affinity

__all__ = ["Breaker", "Deployment", "HealthChecker", "ModelRoute", "Router", "affinity_draw", "sticky_affinity"]
