#!/usr/bin/env bash
# `make serve`: the mock upstream and the gateway on the quickstart config, in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM_PORT=${UPSTREAM_PORT:-9000}
export SLUICE_UPSTREAM=${SLUICE_UPSTREAM:-http://127.0.0.1:$UPSTREAM_PORT}
export SLUICE_PORT=${SLUICE_PORT:-8080}

echo "sluice: starting the mock upstream on $SLUICE_UPSTREAM"
.venv/bin/sluice mock-upstream --port "$UPSTREAM_PORT" &
mock=$!
trap 'kill $mock 2>/dev/null; wait $mock 2>/dev/null' EXIT INT TERM

# The openai SDK is a dev dependency, not the gateway's: the second example says how to get it.
cat <<MSG
sluice: starting $(.venv/bin/sluice version) on http://127.0.0.1:$SLUICE_PORT. Try:

  curl http://127.0.0.1:$SLUICE_PORT/v1/chat/completions \\
    -H 'Authorization: Bearer sk-sluice-demo' -H 'Content-Type: application/json' \\
    -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'

  .venv/bin/pip install openai   # the SDK, if .venv has not got it (make test installs it)
  .venv/bin/python -c 'from openai import OpenAI; c = OpenAI(base_url="http://127.0.0.1:$SLUICE_PORT/v1", api_key="sk-sluice-demo"); print(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)'

Ctrl-C stops both.
MSG
.venv/bin/sluice serve --config examples/quickstart.yaml --port "$SLUICE_PORT"
