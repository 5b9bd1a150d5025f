"""Draws docs/architecture.svg: the request path, from the route table the gateway really builds.

    .venv/bin/python docs/draw_architecture.py          # rewrites docs/architecture.svg
    .venv/bin/python docs/draw_architecture.py --check  # exit 1 if the committed picture is out of date

The stages are not hand-drawn: the gateway is built in-process (as `sluice routes` does) from
examples/auth.yaml with tracing switched on, so that every optional stage is in the picture, and
each route's ``Pipeline.stages`` is drawn in order.  A stage's colour is the package that defines it
(its layer), a rounded corner on the right marks a response step (``on_response``), a dashed border
a stage wrapped in ``Traced``.  The SVG is written by hand (no Graphviz, no font metrics: monospace
text), so the output is byte-for-byte reproducible; tests/unit/test_layers.py fails when the
committed picture differs from what this script draws now.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "architecture.svg"
CONFIG = ROOT / "examples" / "auth.yaml"
TRACING = "\nobservability:\n  tracing: {enabled: true, endpoint: 'http://127.0.0.1:4318/v1/traces'}\n"

# The layer (package) of each stage's class, and its colour.
COLOURS = {
    "observability": "#fde2b8",
    "pipeline": "#cfe3fb",
    "routing": "#d5f0d0",
    "resilience": "#e8dcf6",
    "server": "#f3d0d6",
    "providers": "#d3eef0",
    "upstream": "#e3e6ea",
    "other": "#eeeeee",
}
# The columns: (title, subtitle, how to find the route's pipeline in the table).
COLUMNS: list[tuple[str, str, str]] = [
    ("POST /v1/chat/completions", "also /v1/completions, /v1/embeddings,|/v1/messages, /v1/messages/count_tokens",
     "POST /v1/chat/completions"),
    ("GET /v1/models", "answered by the gateway:|auth + RBAC, no admission", "GET /v1/models"),
    ("/admin/...", "operator traffic: auth + RBAC,|never throttled by callers' limits", "GET /admin/keys"),
    ("passthrough", "/v1/files/..., /v1/audio/..., ...|relayed as they are", "* /v1/files"),
    ("GET /health/*, /metrics", "open: orchestrators and|Prometheus carry no key", "GET /health/ready"),
    ("any other path", "/v1/models/{id}, /admin/.../{id},|else 404 (405: the path's methods)", "* other"),
]

CHAR_W = 7.0  # monospace 11.5px, roughly
COL_W, GAP_X, LEFT = 196, 16, 24
BOX_H, GAP_Y = 30, 12
CHAIN_H = 124  # the box of the upstream stage, opened up


def build_table(workdir: str) -> Any:
    """The gateway's RouteTable for examples/auth.yaml with tracing on (built, then closed)."""
    from sluice.config import parse_config
    from sluice.server.app import create_gateway

    env = {"SLUICE_ADMIN_KEY": "sk-admin-" + "x" * 24, "SLUICE_DB": os.path.join(workdir, "sluice.db")}
    config = parse_config(CONFIG.read_text() + TRACING, env)
    before = os.environ.get("SLUICE_METRICS_DIR")
    os.environ["SLUICE_METRICS_DIR"] = workdir  # the gateway's metrics files, thrown away
    try:
        async def build() -> Any:
            gateway = create_gateway(config)
            try:
                return gateway.routes
            finally:
                await gateway.close()

        return asyncio.run(build())
    finally:
        if before is None:
            os.environ.pop("SLUICE_METRICS_DIR", None)
        else:
            os.environ["SLUICE_METRICS_DIR"] = before


def pick(table: Any, key: str) -> Any:
    if key == "* other":
        return table.unknown["openai"]
    if key.startswith("* "):
        return table.families[key[2:]]
    method, path = key.split(" ", 1)
    return table.exact[path][method]


def layer(stage: Any) -> str:
    inner = getattr(stage, "inner", stage)  # Traced: the wrapped stage's
    package = type(inner).__module__.split(".")[1]
    return package if package in COLOURS else "other"


def text(x: float, y: float, value: str, size: float = 11.5, anchor: str = "start", weight: str = "normal",
         fill: str = "#222") -> str:
    return (f'<text x="{x:g}" y="{y:g}" font-size="{size:g}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}">{escape(value)}</text>')


def arrow(x1: float, y1: float, x2: float, y2: float, colour: str = "#555", dashed: bool = False) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return (f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{colour}" stroke-width="1.4"{dash} '
            f'marker-end="url(#head)"/>')


def draw(table: Any, attempts_chain: list[tuple[str, str]]) -> str:
    columns = [(title, subtitle, pick(table, key)) for title, subtitle, key in COLUMNS]
    rows = max(len(p.stages) for _, _, p in columns)
    width = LEFT * 2 + len(columns) * COL_W + (len(columns) - 1) * GAP_X
    top = 118  # below the server band
    stages_top = top + 52
    stages_bottom = stages_top + rows * (BOX_H + GAP_Y) + 24  # + finish
    chain_top = stages_bottom + 40
    legend_top = chain_top + CHAIN_H + 12
    height = legend_top + 64
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace">',
        '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        text(LEFT, 26, "sluice: the request path (examples/auth.yaml with tracing on, as `sluice routes` prints it)",
             14, weight="bold"),
    ]
    # The server band: how a request reaches its route's pipeline.
    band = ["client", "Granian (Rust)", "server/rsgi.py | asgi.py: an Exchange",
            "Gateway.handle: request id, RequestContext", "RouteTable.resolve(path, method)"]
    bx, by, bh = LEFT, 44, 30
    spacing = 14
    widths = [len(label) * CHAR_W + 18 for label in band]
    scale = min(1.0, (width - 2 * LEFT - spacing * (len(band) - 1)) / sum(widths))
    for i, (label, w) in enumerate(zip(band, widths, strict=True)):
        w *= scale
        fill = "#f3d0d6" if i >= 2 else "#eeeeee"
        out.append(f'<rect x="{bx:g}" y="{by}" width="{w:g}" height="{bh}" rx="4" fill="{fill}" stroke="#999"/>')
        out.append(text(bx + w / 2, by + 19, label, 11, "middle"))
        if i < len(band) - 1:
            out.append(arrow(bx + w + 1, by + bh / 2, bx + w + spacing - 1, by + bh / 2))
        bx += w + spacing
    out.append(text(LEFT, 96, "each route's Pipeline (server/routes.py: build_routes, once per config):"
                    " on_request in order, then finish, then on_response in reverse for the stages that ran", 11,
                    fill="#444"))
    # The columns.
    for c, (title, subtitle, pipeline) in enumerate(columns):
        x = LEFT + c * (COL_W + GAP_X)
        out.append(text(x + COL_W / 2, top + 8, title, 12, "middle", "bold"))
        for i, line in enumerate(subtitle.split("|")):
            out.append(text(x + COL_W / 2, top + 24 + 13 * i, line, 9.5, "middle", fill="#555"))
        out.append(arrow(x + COL_W / 2, top + 36 + 3, x + COL_W / 2, stages_top - 2))
        y = stages_top
        for n, stage in enumerate(pipeline.stages):
            colour = COLOURS[layer(stage)]
            dashed = ' stroke-dasharray="5 3"' if type(stage).__name__ == "Traced" else ""
            box_w = COL_W - 26
            out.append(f'<rect x="{x:g}" y="{y}" width="{box_w}" height="{BOX_H}" rx="4" fill="{colour}" '
                       f'stroke="#777"{dashed}/>')
            label = stage.name if len(stage.name) * CHAR_W < box_w - 10 else stage.name[: int((box_w - 10) / CHAR_W)]
            out.append(text(x + box_w / 2, y + 19, label, 11.5, "middle"))
            if stage.on_response is not None:  # a response step: drawn as the way back on the right
                out.append(f'<path d="M{x + box_w + 2:g},{y + 6} h8 a6,6 0 0 1 6,6 v6 a6,6 0 0 1 -6,6 h-8" '
                           'fill="none" stroke="#b5651d" stroke-width="1.6" marker-end="url(#head)"/>')
            if n < len(pipeline.stages) - 1:
                out.append(arrow(x + box_w / 2, y + BOX_H + 1, x + box_w / 2, y + BOX_H + GAP_Y - 1))
            y += BOX_H + GAP_Y
    # The first column's way back: finish, then the response steps in reverse.
    x0 = LEFT + COL_W - 26
    first_stages = columns[0][2].stages
    last_y = stages_top + (len(first_stages) - 1) * (BOX_H + GAP_Y)
    fy = last_y + BOX_H + 8
    out.append(f'<rect x="{LEFT + 20}" y="{fy}" width="{COL_W - 66}" height="20" rx="10" fill="#fff" '
               'stroke="#b5651d"/>')
    out.append(text(LEFT + 20 + (COL_W - 66) / 2, fy + 14, "finish (ctx)", 10.5, "middle", fill="#b5651d"))
    out.append(f'<path d="M{LEFT + COL_W - 46},{fy + 10} H{x0 + 21} V{stages_top + 4}" fill="none" '
               'stroke="#b5651d" stroke-width="1.2" stroke-dasharray="4 3" marker-end="url(#head)"/>')
    out.append(text(x0 + 31, stages_top + 150, "on_response, in reverse", 10, "middle", fill="#b5651d")
               .replace("<text ", f'<text transform="rotate(-90 {x0 + 31:g} {stages_top + 150})" '))
    # The upstream stage of the model routes, opened up.
    out.append(f'<rect x="{LEFT - 8}" y="{chain_top - 22}" width="{width - 2 * LEFT + 16}" height="{CHAIN_H}" '
               'rx="6" fill="none" stroke="#bbb" stroke-dasharray="3 3"/>')
    out.append(text(LEFT, chain_top - 6, "the upstream stage of a model route (server/endpoints.py: ModelCall, "
                    "MessagesCall), opened up: one call, its attempts", 11, fill="#444"))
    x = LEFT
    cy = chain_top + 8
    boxes: list[tuple[float, float]] = []
    for i, (label, package) in enumerate(attempts_chain[:-1]):
        w = len(label) * CHAR_W * 0.92 + 14
        boxes.append((x, w))
        fill = COLOURS.get(package, COLOURS["other"])
        out.append(f'<rect x="{x:g}" y="{cy}" width="{w:g}" height="{BOX_H}" rx="4" fill="{fill}" stroke="#777"/>')
        out.append(text(x + w / 2, cy + 19, label, 10.5, "middle"))
        if i < len(attempts_chain) - 2:
            out.append(arrow(x + w + 1, cy + BOX_H / 2, x + w + 21, cy + BOX_H / 2))
        x += w + 22
    # The planner, which the attempt loop asks where the next attempt goes.
    label, package = attempts_chain[-1]
    px, py, pw = LEFT, cy + BOX_H + 26, len(label) * CHAR_W + 16
    out.append(f'<rect x="{px}" y="{py}" width="{pw:g}" height="{BOX_H}" rx="4" fill="{COLOURS[package]}" '
               'stroke="#777"/>')
    out.append(text(px + pw / 2, py + 19, label, 11, "middle"))
    ax = LEFT + boxes[0][1] / 2
    out.append(arrow(ax, cy + BOX_H + 2, ax, py - 2).replace("/>", ' marker-start="url(#head)"/>'))
    out.append(text(px + pw + 14, py + 13, "after a FailedAttempt (an attempt that failed before a byte reached the "
                    "caller): another", 10, fill="#555"))
    out.append(text(px + pw + 14, py + 26, "deployment, a fallback model, the same one after its Retry-After, or "
                    "give up (deadline, budget)", 10, fill="#555"))
    # The legend.
    lx, ly = LEFT, legend_top
    out.append(text(lx, ly, "layer (package) of the code:", 11, weight="bold"))
    lx += 200
    for package, colour in COLOURS.items():
        if package == "other":
            continue
        out.append(f'<rect x="{lx}" y="{ly - 12}" width="16" height="16" rx="3" fill="{colour}" stroke="#777"/>')
        out.append(text(lx + 22, ly + 1, package + "/", 11))
        lx += 40 + len(package) * CHAR_W + 16
    ly += 26
    lx = LEFT
    out.append(f'<path d="M{lx},{ly - 10} h8 a6,6 0 0 1 6,6 v2 a6,6 0 0 1 -6,6 h-8" fill="none" stroke="#b5651d" '
               'stroke-width="1.6" marker-end="url(#head)"/>')
    out.append(text(lx + 24, ly + 1, "has a response step (on_response)", 11))
    lx += 320
    out.append(f'<rect x="{lx}" y="{ly - 12}" width="30" height="16" rx="3" fill="#fff" stroke="#777" '
               'stroke-dasharray="5 3"/>')
    out.append(text(lx + 38, ly + 1, "Traced: a span of its own on sampled requests (only when tracing is on)", 11))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def attempts_chain(table: Any) -> list[tuple[str, str]]:
    """What is behind a model route's upstream stage, named from the objects themselves: the attempt loop, the
    sender of one attempt, the provider adapter, the HTTP client; last, the planner the loop asks."""
    from sluice.providers import Provider
    from sluice.upstream import UpstreamClient

    attempts = pick(table, "POST /v1/chat/completions").stages[-1].attempts
    parts = [(type(attempts), "serve"), (type(attempts.sender), "attempt"), (Provider, "prepare / answer"),
             (UpstreamClient, "request"), (type(attempts.planner), "retry_target / another")]
    chain = []
    for cls, verb in parts:
        module = cls.__module__
        path = module.removeprefix("sluice.").replace(".", "/") + ".py"
        chain.append((f"{cls.__name__}.{verb} ({path})", module.split(".")[1]))
    return chain


def render() -> str:
    with tempfile.TemporaryDirectory(prefix="sluice-draw-") as workdir:
        table = build_table(workdir)
    return draw(table, attempts_chain(table))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/architecture.svg is out of date")
    args = parser.parse_args()
    svg = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != svg:
            print(f"{OUT.relative_to(ROOT)} is out of date: run {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(svg)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
