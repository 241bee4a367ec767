"""A small OpenAI-compatible server for tests (test-only): streamed `/v1/completions` with
vLLM's `token_ids` / `prompt_token_ids` chunk fields and a `usage` chunk, `/v1/models`,
`/health`, and a Prometheus `/metrics` whose `vllm:num_requests_running` is the number of
requests being streamed right now.

Every request's body, its server-side start/end and the time each token chunk was sent
(`chunk_s`) are recorded (`FakeServer.requests`), and
the most requests in flight at once (`max_in_flight`), so tests can check what the load
generator sent and how it paced it. It listens on 127.0.0.1 only, with bounds (`MAX_TOKENS`
per request, `SOCKET_TIMEOUT_S` per connection). Token i (from 0) is made at `token_delay_s` x (i + 1)
after the request arrived (an absolute schedule, so chunking does not shift it). Options:

- `status`: answer every completion with that HTTP status;
- `ids=False`: a server without vLLM's extensions: text chunks, exact count only in `usage`;
  per-chunk `usage` is still sent when the request asks for `continuous_usage_stats`
  (unless `usage_stats=False`);
- `tokens_per_chunk`: K tokens per chunk, sent when the last of them is made;
- `empty_text_at`: token positions whose text is empty (a special token the detokenizer
  strips), each alone in its chunk;
- `burst=True`: a starved server: every token is made on schedule but all chunks go out
  back to back once the last one is made;
- `stop_at`: stop after that many tokens with finish_reason "length" whatever was asked (a
  context limit), for the prompts whose first id is a key (or every prompt when an int);
- `eos_at`: the model "produces EOS" as that token (1-based) for the prompts whose first id
  is a key: the output ends there with finish_reason "stop" unless the request asks for
  `ignore_eos` or a `min_tokens` beyond it (as vLLM does).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Bounds: tokens per request, and seconds a connection may stay silent.
MAX_TOKENS = 4096
SOCKET_TIMEOUT_S = 30.0


class FakeServer:
    def __init__(self, token_delay_s: float = 0.002, status: int = 200, ids: bool = True,
                 tokens_per_chunk: int = 1, model: str = "fake-model",
                 empty_text_at: tuple[int, ...] = (), burst: bool = False,
                 stop_at: int | dict[int, int] | None = None, usage_stats: bool = True,
                 eos_at: dict[int, int] | None = None) -> None:
        self.eos_at = eos_at or {}
        self.token_delay_s = token_delay_s
        self.empty_text_at = set(empty_text_at)
        self.burst = burst
        self.stop_at = stop_at
        self.usage_stats = usage_stats
        self.status = status
        self.ids = ids
        self.tokens_per_chunk = tokens_per_chunk
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def output_length(self, body: dict[str, Any]) -> int:
        """Tokens this server returns for a request body."""
        n = int(body.get("min_tokens") or body["max_tokens"])
        eos = self.eos_at.get(body["prompt"][0])
        if eos is not None and not body.get("ignore_eos") \
                and eos >= int(body.get("min_tokens") or 0):
            n = min(n, eos)
        stop = self.stop_at
        if isinstance(stop, dict):
            stop = stop.get(body["prompt"][0])
        return n if stop is None else min(n, stop)

    def finish_reason(self, body: dict[str, Any], n: int) -> str:
        eos = self.eos_at.get(body["prompt"][0])
        at_eos = eos == n and not body.get("ignore_eos") and n < int(body["max_tokens"])
        return "stop" if at_eos else "length"

    def requests_by_prompt(self, prompts: list[list[int]]) -> list[dict[str, Any]]:
        """The recorded request for each prompt, in the order of `prompts`."""
        by_prompt = {tuple(r["body"]["prompt"]): r for r in self.requests}
        return [by_prompt[tuple(p)] for p in prompts]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = SOCKET_TIMEOUT_S  # a client that stops reading cannot hold a thread

            def setup(self) -> None:
                super().setup()
                # As uvicorn does: without it, Nagle's algorithm holds a small chunk until the
                # client's delayed ACK of the previous one (up to 200 ms on Linux).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str, content_type: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # http.server's naming
                if self.path == "/health":
                    self._send(200, "")
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": server.model}]}))
                elif self.path == "/metrics":
                    self._send(200, "# HELP vllm:num_requests_running running\n"
                               f'vllm:num_requests_running{{engine="0"}} {server.in_flight}.0\n'
                               f'vllm:kv_cache_usage_perc{{engine="0"}} {server.in_flight / 10}\n',
                               "text/plain")
                else:
                    self._send(404, "{}")

            def _chunk(self, payload: dict[str, Any] | str) -> None:
                line = payload if isinstance(payload, str) else json.dumps(payload)
                data = f"data: {line}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                entry = {"body": body, "start_s": time.perf_counter(), "chunk_s": [],
                         "authorization": self.headers.get("Authorization")}
                with server._lock:
                    server.requests.append(entry)
                if server.output_length(body) > MAX_TOKENS:
                    self._send(400, json.dumps({"error": {"message": f"over {MAX_TOKENS} tokens"}}))
                    return
                if server.status != 200:
                    self._send(server.status, json.dumps({"error": {"message": "injected"}}))
                    return
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    n = server.output_length(body)
                    prompt = body["prompt"]
                    options = body.get("stream_options") or {}
                    per_chunk_usage = server.usage_stats and options.get("continuous_usage_stats")
                    start = entry["start_s"]
                    pending: list[dict[str, Any]] = []
                    sent = 0
                    while sent < n:
                        k = 1 if sent in server.empty_text_at else min(server.tokens_per_chunk, n - sent)
                        k = next((j for j in range(1, k) if sent + j in server.empty_text_at), k)
                        delay = start + server.token_delay_s * (sent + k) - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        text = "" if sent in server.empty_text_at else "x" * k
                        choice: dict[str, Any] = {"index": 0, "text": text,
                                                  "finish_reason": server.finish_reason(body, n)
                                                  if sent + k == n else None}
                        if server.ids and body.get("return_token_ids"):
                            choice["token_ids"] = [(prompt[0] + sent + j) % 97 for j in range(k)]
                            if sent == 0:
                                choice["prompt_token_ids"] = prompt
                        event: dict[str, Any] = {"id": "c", "object": "text_completion",
                                                 "choices": [choice]}
                        if per_chunk_usage:
                            event["usage"] = {"prompt_tokens": len(prompt),
                                              "completion_tokens": sent + k}
                        pending.append(event)
                        if not server.burst:
                            entry["chunk_s"].append(time.perf_counter())  # just before sending
                            self._chunk(pending.pop())
                        sent += k
                    for event in pending:
                        entry["chunk_s"].append(time.perf_counter())
                        self._chunk(event)
                    if options.get("include_usage"):
                        self._chunk({"id": "c", "choices": [], "usage": {
                            "prompt_tokens": len(prompt), "completion_tokens": n,
                            "total_tokens": len(prompt) + n}})
                    self._chunk("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                finally:
                    with server._lock:
                        server.in_flight -= 1
                    entry["end_s"] = time.perf_counter()

        return Handler
