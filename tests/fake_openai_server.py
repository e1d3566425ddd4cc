"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions`` from a thread
(``ThreadingHTTPServer``, one thread per request, so concurrent clients overlap), with:

* scripted replies: ``reply(body) -> Reply`` decides the text, the top log-probabilities
  and the token counts; ``TemplateJudge`` plays a judge that recovers the pairs from any
  prompt built from the given templates and prefers the output with the higher ``<<q=N>>``
  tag (untagged: more "GOOD", then longer), answering in the format its parser reads;
* a fixed ``latency`` per call;
* injected faults, consumed one per call from ``faults`` (a deque): ``"429"`` (with a
  Retry-After header), ``"500"``, ``"401"`` (an error message echoing the key it was sent),
  ``"timeout"`` (sleeps ``hang`` seconds before answering),
  ``"garbage"`` (a well-formed reply whose text is nonsense), ``"truncated"`` (a 200 whose
  JSON body is cut in half); and ``fail_after``: once that many calls succeeded, every call
  returns 500 (a server that goes down mid-run).

Counters (``calls``, ``ok_calls``, ``requests``) are kept server-side, so tests can prove
that a cached rerun made zero HTTP calls.

What ``afarm check`` (``afarm.annotators.preflight``) meets:

* ``models``: None (default) serves any model name and has no ``GET /v1/models`` route (404), as
  before; a set of names is listed by ``GET /v1/models`` (unless ``models_route`` is False, then that
  route is a 404) and a request for any other model gets OpenAI's 404 ``model_not_found``;
* ``hang_models``: requests for these models sleep ``hang`` seconds first; ``hang_listing``: so does
  ``GET /v1/models``;
* ``required_key``: when set, ``GET /v1/models`` and the check's requests sent with another key get
  OpenAI's 401, whose message echoes the key it was sent;
* the check's one-token request (``PROBE_PROMPT``) is answered "ok" by the server itself and recorded
  in ``probes`` (model names), not in ``calls`` / ``requests``, and consumes no ``faults``: a
  preflight run before a test's judging leaves that test's scripted faults and counters as they were.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from afarm.annotators.preflight import PROBE_PROMPT


@dataclass
class Reply:
    content: str
    top_logprobs: list[list[tuple[str, float]]] | None = None  # one list per generated token
    prompt_tokens: int | None = None  # None: number of whitespace-separated words of the prompt
    completion_tokens: int | None = None  # None: number of words of the content (at least 1)


def prompt_text(body: dict) -> str:
    """The prompt of a request: the joined message contents, or the plain prompt."""
    if "messages" in body:
        return "\n".join(m.get("content") or "" for m in body["messages"])
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else "\n".join(prompt)


_TAG = re.compile(r"<<q=(-?\d+)>>")
_PLACEHOLDER = re.compile(r"\{(instruction|output_1|output_2)\}")


def quality(output: str) -> tuple[int, int]:
    """The fake judge's taste: the ``<<q=N>>`` tag if any, else the number of "GOOD"; then length."""
    tag = _TAG.search(output)
    return (int(tag.group(1)) if tag else output.count("GOOD"), len(output))


def _as_sent(template: str) -> str:
    """The template as ``prompt_text`` will see it: ChatML blocks become their joined contents."""
    template = template.strip()
    if not template.startswith("<|im_start|>"):
        return template
    contents = []
    for block in template.split("<|im_start|>")[1:]:
        contents.append(block.partition("\n")[2].split("<|im_end|>", 1)[0].strip())
    return "\n".join(contents)


class TemplateJudge:
    """A fake judge that knows the prompt templates: it matches the request against each
    template (as a regular expression with one group per placeholder), so it recovers every
    pair of a batch exactly, padding included, and answers in the format that template's
    parser reads. It prefers the output of higher ``quality``; ties go to output_1."""

    def __init__(self, template_paths: list[str | Path]):
        self.patterns = []
        for path in template_paths:
            skeleton = _as_sent(Path(path).read_text(encoding="utf-8"))
            names = _PLACEHOLDER.findall(skeleton)
            pieces = _PLACEHOLDER.split(skeleton)[::2]
            regex = "(.*?)".join(re.escape(piece) for piece in pieces)
            self.patterns.append((re.compile(regex, re.S), names))

    def pairs(self, body: dict) -> list[tuple[str, str]]:
        text = prompt_text(body).strip()
        for pattern, names in self.patterns:
            match = pattern.fullmatch(text)
            if match:
                values: dict[str, list[str]] = {"output_1": [], "output_2": []}
                for name, value in zip(names, match.groups()):
                    if name in values:
                        values[name].append(value)
                return list(zip(values["output_1"], values["output_2"]))
        raise ValueError("the fake judge knows no template matching this prompt")

    def __call__(self, body: dict) -> Reply:
        text = prompt_text(body)
        firsts = [quality(o1) >= quality(o2) for o1, o2 in self.pairs(body)]
        if '"model_identifier": "m"' in text:  # weighted_alpaca_eval_gpt4_turbo: one token, read by logprobs
            top = [("m", -0.1), ("M", -2.4)] if firsts[0] else [("M", -0.1), ("m", -2.4)]
            return Reply(top[0][0], top_logprobs=[top])
        if '"model": "model_1"' in text:  # alpaca_eval_gpt4: a ranking
            first = 1 if firsts[0] else 2
            return Reply(f"[{{'model': 'model_1', 'rank': {first}}}, {{'model': 'model_2', 'rank': {3 - first}}}]")
        if '"Output (a) is better than Output (b)"' in text:  # chain-of-thought JSON prompts
            blocks = ['{\n"Concise explanation": "fake",\n"Output (a) is better than Output (b)": %s\n}'
                      % ("true" if f else "false") for f in firsts]
            return Reply("\n\n".join(blocks))
        if "prompt" in body:  # text-davinci-003 prompts: "(a)" / "(b)"
            if "\nOutput (a): " in text:  # the v0 prompt ends with "Best output:" and expects " (a)"
                return Reply(" (a)" if firsts[0] else " (b)")
            return Reply("".join("\n(a)" if f else "\n(b)" for f in firsts))
        return Reply("\n\n".join("Output (a)" if f else "Output (b)" for f in firsts))


def bundle_templates(shared_data: str | Path) -> list[Path]:
    """All prompt templates of the bundle's evaluator configs."""
    root = Path(shared_data) / "alpaca_eval/src/alpaca_eval/evaluators_configs"
    return sorted(root.glob("*/*.txt"))


class FakeOpenAIServer:
    def __init__(self, reply: Callable[[dict], Reply], latency: float = 0.0, models: set[str] | None = None,
                 models_route: bool = True):
        self.reply = reply
        self.latency = latency
        self.models = models  # None: any model, no GET /v1/models; else the served names (see the module docstring)
        self.models_route = models_route
        self.hang_models: set[str] = set()
        self.hang_listing = False
        self.probes: list[str] = []  # models asked by afarm check's one-token request
        self.required_key: str | None = None
        self.faults: collections.deque[str] = collections.deque()
        self.fail_after: int | None = None
        self.retry_after = "0.05"  # seconds, sent with every 429
        self.hang = 2.0  # seconds a "timeout" fault sleeps (set it above the client's timeout)
        self.calls = 0
        self.ok_calls = 0
        self.requests: list[dict] = []  # bodies of all requests, in arrival order
        self.headers: list[dict] = []  # their headers (to check the key is sent, never echoed)
        self.usage: list[dict] = []  # usage reported in each successful reply
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._handle_get(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # many concurrent clients: the default backlog of 5 refuses them
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counters(self) -> None:
        with self._lock:
            self.calls = self.ok_calls = 0
            self.requests.clear()
            self.headers.clear()
            self.usage.clear()

    # ------------------------------------------------------------ requests
    def _no_route(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        self._send(handler, 404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})

    def _unknown_model(self, handler: BaseHTTPRequestHandler, model: str) -> None:
        self._send(handler, 404, {"error": {"message": f"The model `{model}` does not exist or you do not have access to it.",
                                            "type": "invalid_request_error", "param": None, "code": "model_not_found"}})

    def _refused_key(self, handler: BaseHTTPRequestHandler) -> bool:
        """Answer 401 (echoing the key it was sent, as OpenAI does) when ``required_key`` is set and not sent."""
        sent = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.required_key is None or sent == self.required_key:
            return False
        self._send(handler, 401, {"error": {"message": f"Incorrect API key provided: {sent}",
                                            "type": "invalid_request_error", "code": "invalid_api_key"}})
        return True

    def _handle_get(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.rstrip("/")
        if self._refused_key(handler):
            return None
        if path != "/v1/models" or self.models is None or not self.models_route:
            return self._no_route(handler, path)
        if self.hang_listing:
            time.sleep(self.hang)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in sorted(self.models)]
        self._send(handler, 200, {"object": "list", "data": data})

    def _handle_probe(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        model = body.get("model", "")
        with self._lock:
            self.probes.append(model)
        if self._refused_key(handler):
            return None
        if self.models is not None and model not in self.models:
            return self._unknown_model(handler, model)
        if model in self.hang_models:
            time.sleep(self.hang)
        self._send(handler, 200, self._payload(body, Reply("ok"), "messages" in body))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        body = json.loads(handler.rfile.read(length) or b"{}")
        path = handler.path.rstrip("/")
        if path in ("/v1/chat/completions", "/v1/completions") and prompt_text(body) == PROBE_PROMPT:
            return self._handle_probe(handler, body)
        with self._lock:
            self.calls += 1
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in handler.headers.items()})
            fault = self.faults.popleft() if self.faults else None
            if fault is None and self.fail_after is not None and self.ok_calls >= self.fail_after:
                fault = "500"
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return self._no_route(handler, path)
        if self.models is not None and body.get("model") not in self.models:
            return self._unknown_model(handler, str(body.get("model")))
        if body.get("model") in self.hang_models:
            time.sleep(self.hang)
        if fault == "429":
            return self._send(handler, 429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
                              {"Retry-After": self.retry_after})
        if fault == "401":  # like OpenAI's "Incorrect API key provided: sk-...": echoes the key it got
            sent = handler.headers.get("Authorization", "").removeprefix("Bearer ")
            return self._send(handler, 401, {"error": {"message": f"Incorrect API key provided: {sent}",
                                                       "type": "invalid_request_error"}})
        if fault == "500":
            return self._send(handler, 500, {"error": {"message": "The server had an error", "type": "server_error"}})
        if fault == "timeout":
            time.sleep(self.hang)
        if self.latency:
            time.sleep(self.latency)
        chat = path == "/v1/chat/completions"
        reply = Reply("Honestly both answers are lovely; I like turtles.") if fault == "garbage" else self.reply(body)
        payload = self._payload(body, reply, chat)
        if fault == "truncated":
            raw = json.dumps(payload).encode()
            return self._send_raw(handler, 200, raw[: len(raw) // 2])
        with self._lock:
            self.ok_calls += 1
            self.usage.append(payload["usage"])
        self._send(handler, 200, payload)

    @staticmethod
    def _payload(body: dict, reply: Reply, chat: bool) -> dict:
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else len(prompt_text(body).split())
        completion_tokens = (
            reply.completion_tokens if reply.completion_tokens is not None else max(1, len(reply.content.split()))
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        logprobs = None
        if reply.top_logprobs is not None:
            if chat:
                logprobs = {
                    "content": [
                        {
                            "token": top[0][0],
                            "logprob": top[0][1],
                            "bytes": None,
                            "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top],
                        }
                        for top in reply.top_logprobs
                    ]
                }
            else:
                logprobs = {
                    "tokens": [top[0][0] for top in reply.top_logprobs],
                    "token_logprobs": [top[0][1] for top in reply.top_logprobs],
                    "top_logprobs": [dict(top) for top in reply.top_logprobs],
                    "text_offset": [0] * len(reply.top_logprobs),
                }
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": reply.content, "finish_reason": "stop", "logprobs": logprobs}
            kind = "text_completion"
        return {
            "id": "fake-1",
            "object": kind,
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": usage,
        }

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        FakeOpenAIServer._send_raw(handler, status, json.dumps(payload).encode(), headers)

    @staticmethod
    def _send_raw(handler: BaseHTTPRequestHandler, status: int, raw: bytes, headers: dict | None = None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(raw)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass
