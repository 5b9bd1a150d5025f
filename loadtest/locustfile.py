"""A realistic traffic mix for sluice: plain and streamed chat, embeddings, model listings.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 50 -r 10 -t 60s

Models default to the quickstart's; set SLUICE_CHAT_MODEL / SLUICE_EMBEDDING_MODEL to change
them. Every request carries `Authorization: Bearer $SLUICE_LOADTEST_KEY` (default `sk-sluice-demo`,
which the examples without auth accept like any key): against a gateway with auth on, set it to a key
the gateway knows (docs/loadtest.md). A streamed answer counts as a failure unless it ends with `data: [DONE]`; its response time
is the time to the stream's end.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, between, task

CHAT_MODEL = os.environ.get("SLUICE_CHAT_MODEL", "gpt-4o-mini")
EMBEDDING_MODEL = os.environ.get("SLUICE_EMBEDDING_MODEL", "text-embedding-3-small")
API_KEY = os.environ.get("SLUICE_LOADTEST_KEY", "sk-sluice-demo")
HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
PROMPTS = ["Hello!", "Summarise the plot of Hamlet in one line.", "What is 2 + 2?",
           "Write a haiku about gateways." * 3]


def chat_body(stream: bool) -> bytes:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": random.choice(PROMPTS)}]
    body: dict[str, object] = {"model": CHAT_MODEL, "messages": messages, "max_tokens": random.choice([8, 64])}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


class GatewayUser(FastHttpUser):
    wait_time = between(0.01, 0.1)

    @task(6)
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", data=chat_body(False), headers=HEADERS,
                              name="chat", catch_response=True) as response:
            if response.status_code != 200 or not response.json().get("choices"):
                response.failure(f"status {response.status_code}")

    @task(3)
    def chat_stream(self) -> None:
        with self.client.post("/v1/chat/completions", data=chat_body(True), headers=HEADERS,
                              name="chat stream", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif not (response.content or b"").rstrip().endswith(b"data: [DONE]"):
                response.failure("the stream did not end with [DONE]")

    @task(2)
    def embeddings(self) -> None:
        body = json.dumps({"model": EMBEDDING_MODEL, "input": random.sample(PROMPTS, 2)}).encode()
        with self.client.post("/v1/embeddings", data=body, headers=HEADERS, name="embeddings",
                              catch_response=True) as response:
            if response.status_code != 200 or len(response.json()["data"]) != 2:
                response.failure(f"status {response.status_code}")

    @task(1)
    def models(self) -> None:
        self.client.get("/v1/models", headers=HEADERS, name="models")
