-- wrk script: POST an OpenAI chat request as JSON, with an API key as real clients send one.
-- The body comes from BENCH_BODY (bench/_harness.py's chat_request: 324 bytes, a system and a user
-- message, the issue's size); run by hand, the same request is built here from BENCH_MODEL (default
-- gpt-4o-mini), so the same script drives the upstreams directly and through sluice.
-- The key is _harness.BENCH_API_KEY, the static key of the configs that turn auth on.
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0123456789abcdef"
wrk.body = os.getenv("BENCH_BODY") or ('{"model":"' .. model .. '","messages":[{"role":"system","content":'
  .. '"You are a helpful assistant. Answer in one short sentence, in plain text, without lists or markdown."},'
  .. '{"role":"user","content":"What is the capital of France? Please answer briefly: name the city and the '
  .. 'river it lies on."}],"temperature":0.2,"max_tokens":128}')
