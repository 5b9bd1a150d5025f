-- wrk script: POST a small OpenAI chat request as JSON, with an API key as real clients send one.
-- The model name comes from BENCH_MODEL (default gpt-4o-mini), so the same
-- script drives the upstreams directly and through sluice.
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0123456789abcdef"
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hi"}]}'
