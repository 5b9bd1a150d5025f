"""The routing table and its smooth weighted round-robin."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from sluice.config import parse_config
from sluice.routing import Router


def router(weights: list[int]) -> Router:
    targets = ", ".join(f"{{provider: p, model: m{i}, weight: {w}}}" for i, w in enumerate(weights))
    return Router(parse_config(f"""
providers: {{p: {{kind: openai, base_url: "https://api.example.com/openai"}}}}
models: {{chat: {{targets: [{targets}]}}}}
""", {}))


def test_lookup_is_exact() -> None:
    table = router([1])
    assert table.get("chat") is not None
    assert table.get("Chat") is None and table.get("chat ") is None


def test_provider_base_url_prefix_and_origin() -> None:
    provider = router([1]).providers["p"]
    assert provider.prefix == "/openai"
    assert provider.origin.key == "https://api.example.com:443"
    assert provider.origin.host_header == "api.example.com"


def test_smooth_wrr_interleaves() -> None:
    route = router([5, 1, 1]).get("chat")
    assert route is not None
    picks = [route.pick().model for _ in range(7)]
    assert picks == ["m0", "m0", "m1", "m0", "m2", "m0", "m0"]  # nginx's published sequence for 5,1,1


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6), st.integers(1, 4))
def test_each_window_honours_the_weights_exactly(weights: list[int], windows: int) -> None:
    route = router(weights).get("chat")
    assert route is not None
    counts = Counter(route.pick().model for _ in range(sum(weights) * windows))
    assert counts == {f"m{i}": w * windows for i, w in enumerate(weights)}
