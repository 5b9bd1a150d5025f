"""The routing table and its smooth weighted round-robin."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from sluice.config import parse_config
from sluice.routing import Deployment, ModelRoute, Router


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


def pick(route: ModelRoute, needs: frozenset[str] = frozenset()) -> Deployment:
    chosen = route.choose(needs, now=0.0)
    assert chosen is not None
    return chosen


def test_smooth_wrr_interleaves() -> None:
    route = router([5, 1, 1]).get("chat")
    assert route is not None
    picks = [pick(route).model for _ in range(7)]
    assert picks == ["m0", "m0", "m1", "m0", "m2", "m0", "m0"]  # nginx's published sequence for 5,1,1


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6), st.integers(1, 4))
def test_each_window_honours_the_weights_exactly(weights: list[int], windows: int) -> None:
    route = router(weights).get("chat")
    assert route is not None
    counts = Counter(pick(route).model for _ in range(sum(weights) * windows))
    assert counts == {f"m{i}": w * windows for i, w in enumerate(weights)}


def mixed() -> Router:
    return Router(parse_config("""
providers:
  oai: {kind: openai, base_url: "https://api.openai.com"}
  ant: {kind: anthropic, base_url: "https://api.anthropic.com"}
  text-only: {kind: openai, base_url: "https://llm.internal", capabilities: [chat, streaming]}
models:
  mixed:
    targets:
      - {provider: ant, model: claude, weight: 3}
      - {provider: oai, model: gpt, weight: 1}
  plain: {targets: [{provider: text-only, model: small}, {provider: oai, model: gpt, capabilities: [chat]}]}
  openai-only: {targets: [{provider: oai, model: gpt}]}
""", {}))


def test_capabilities_come_from_the_kind_the_provider_or_the_target() -> None:
    table = mixed()
    assert table.get("openai-only").complete  # type: ignore[union-attr]
    mixed_route, plain = table.get("mixed"), table.get("plain")
    assert mixed_route is not None and plain is not None and not mixed_route.complete
    assert {t.model: t.capabilities for t in plain.targets} == {"small": {"chat", "streaming"}, "gpt": {"chat"}}
    assert "embeddings" not in mixed_route.targets[0].capabilities  # anthropic's kind has none


def test_requests_go_to_targets_that_can_serve_them() -> None:
    route = mixed().get("mixed")
    assert route is not None
    chats = Counter(pick(route, frozenset({"chat", "vision"})).model for _ in range(8))
    assert chats == {"claude": 6, "gpt": 2}  # both can: the weights hold
    assert {pick(route, frozenset({"embeddings"})).model for _ in range(5)} == {"gpt"}
    plain = mixed().get("plain")
    assert plain is not None and plain.choose(frozenset({"chat", "vision"}), now=0.0) is None
    assert plain.missing(frozenset({"chat", "vision", "streaming"})) == {"vision"}
