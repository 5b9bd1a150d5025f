"""Typed, immutable configuration and its loader."""

from .loader import interpolate, load_config, parse_config
from .model import (
    Config,
    ModelConfig,
    ObservabilityConfig,
    PassthroughConfig,
    PolicyConfig,
    ProviderConfig,
    QuotaConfig,
    QuotaPeriod,
    RateLimitConfig,
    ServerConfig,
    TargetConfig,
    TracingConfig,
    UpstreamConfig,
)

__all__ = [
    "Config",
    "ModelConfig",
    "ObservabilityConfig",
    "PassthroughConfig",
    "PolicyConfig",
    "ProviderConfig",
    "QuotaConfig",
    "QuotaPeriod",
    "RateLimitConfig",
    "ServerConfig",
    "TargetConfig",
    "TracingConfig",
    "UpstreamConfig",
    "interpolate",
    "load_config",
    "parse_config",
]
