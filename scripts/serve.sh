#!/usr/bin/env bash
# `make serve`: the mock upstream and the gateway on the quickstart config, in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM_PORT=${UPSTREAM_PORT:-9000}
export SLUICE_UPSTREAM=${SLUICE_UPSTREAM:-http://127.0.0.1:$UPSTREAM_PORT}
export SLUICE_PORT=${SLUICE_PORT:-8080}

.venv/bin/sluice mock-upstream --port "$UPSTREAM_PORT" &
mock=$!
trap 'kill $mock 2>/dev/null; wait $mock 2>/dev/null' EXIT INT TERM

cat <<MSG

sluice is starting on http://127.0.0.1:$SLUICE_PORT (mock upstream on $SLUICE_UPSTREAM). Try:

  curl http://127.0.0.1:$SLUICE_PORT/v1/chat/completions \\
    -H 'Authorization: Bearer sk-sluice-demo' -H 'Content-Type: application/json' \\
    -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'

  .venv/bin/python -c 'from openai import OpenAI; c = OpenAI(base_url="http://127.0.0.1:$SLUICE_PORT/v1", api_key="sk-sluice-demo"); print(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)'

Ctrl-C stops both.
MSG
.venv/bin/sluice serve --config examples/quickstart.yaml --port "$SLUICE_PORT"
