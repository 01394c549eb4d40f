"""`lora-ens-rs serve`: the OpenAI client against the server, parity with `generate` and `infer`,
every bad request answered 4xx (the server healthy after), and the faults: a client leaving
mid-stream, a full queue, SIGTERM under load.

Each server runs on 127.0.0.1 with an ephemeral port, started through the console script (so the
Python entry point's signal handling is what is tested).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")


class Server:
    """A `lora-ens-rs serve` process and its address."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [SCRIPT, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        deadline = time.monotonic() + 120
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            if not line:
                pytest.fail(f"the server exited: {''.join(self.stderr)}")
            self.stderr.append(line)
            found = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                break
            assert time.monotonic() < deadline, "the server did not start"
        # Keep reading stderr so the pipe never fills.
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        self.url = f"http://{self.host}:{self.port}"
        self.clients: dict[str, Any] = {}

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def client(self, api_key: str = "unused") -> Any:
        """An OpenAI client of this server (one per key, closed by `stop`)."""
        if api_key not in self.clients:
            self.clients[api_key] = openai.OpenAI(
                base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60
            )
        return self.clients[api_key]

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        """(status, headers, parsed JSON or text) of one request."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, hdrs, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        text = raw.decode()
        try:
            return status, hdrs, json.loads(text)
        except json.JSONDecodeError:
            return status, hdrs, text

    def metric(self, name: str) -> float:
        _, _, text = self.request("GET", "/metrics")
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def healthy(self) -> bool:
        status, _, body = self.request("GET", "/health")
        return status == 200 and body["status"] == "ok"

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        for c in self.clients.values():
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@pytest.fixture(scope="module")
def model_args(tiny_dir: Path, tiny_ensemble: Path) -> list[str]:
    return ["--model", str(tiny_dir / "tiny-q8_0.gguf"), "--adapters", str(tiny_ensemble)]


@pytest.fixture(scope="module")
def server(model_args: list[str]) -> Iterator[Server]:
    s = Server(*model_args, "--max-body-bytes", "65536", "--max-tokens", "64")
    yield s
    assert s.stop() == 0, "".join(s.stderr)


def cli(*args: str) -> str:
    out = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def check_uncertainty(u: dict[str, list[Any]], n: int) -> None:
    """The extension: parallel lists of one entry per generated token."""
    keys = ["tokens", "token_ids", "prob", "entropy", "expected_entropy", "mutual_information"]
    assert sorted(u) == sorted(keys)
    assert all(len(u[k]) == n for k in keys)
    for h, eh, mi, p in zip(
        u["entropy"], u["expected_entropy"], u["mutual_information"], u["prob"], strict=True
    ):
        assert mi >= 0 and 0 < p <= 1
        assert h == pytest.approx(eh + mi, abs=1e-4)


# -------------------------------------------------------------------------------------------
# The OpenAI client


def test_models_lists_the_ensemble(server: Server, tiny_dir: Path) -> None:
    import hashlib

    models = server.client().models.list().data
    assert [m.id for m in models] == ["ensemble"]
    extra = models[0].model_extra
    assert extra["members"] == ["m0", "m1", "m2"] and extra["n_members"] == 3
    gguf = tiny_dir / "tiny-q8_0.gguf"
    assert extra["base_model"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()


def test_completion_equals_generate(server: Server, model_args: list[str]) -> None:
    flags = ["--temperature", "0.7", "--top-p", "0.9", "--seed", "5"]
    want = cli("generate", *model_args, "--max-new-tokens", "12", *flags, "Once upon a time")
    r = server.client().completions.create(
        model="ensemble",
        prompt="Once upon a time",
        max_tokens=12,
        temperature=0.7,
        top_p=0.9,
        seed=5,
    )
    choice = r.choices[0]
    assert choice.text + "\n" == want
    assert r.usage.completion_tokens == len(choice.model_extra["uncertainty"]["tokens"])
    check_uncertainty(choice.model_extra["uncertainty"], r.usage.completion_tokens)
    assert choice.finish_reason in ("stop", "length")


def test_chat_equals_generate_chat(server: Server, model_args: list[str]) -> None:
    want = cli("generate", *model_args, "--chat", "--max-new-tokens", "10", "Hi there")
    r = server.client().chat.completions.create(
        model="ensemble",
        messages=[{"role": "user", "content": "Hi there"}],
        max_tokens=10,
        temperature=0,
    )
    assert r.choices[0].message.content + "\n" == want
    assert r.choices[0].message.role == "assistant"
    check_uncertainty(r.choices[0].model_extra["uncertainty"], r.usage.completion_tokens)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_stream_adds_up_to_the_whole_answer(server: Server, api: str) -> None:
    client = server.client()
    args: dict[str, Any] = {"model": "ensemble", "max_tokens": 16, "temperature": 0.8, "seed": 9}
    if api == "chat":
        args["messages"] = [{"role": "user", "content": "Tell me a story"}]
        full = client.chat.completions.create(**args)
        want, want_u = full.choices[0].message.content, full.choices[0].model_extra["uncertainty"]
        chunks = list(
            client.chat.completions.create(
                **args, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    else:
        args["prompt"] = "Tell me a story"
        full = client.completions.create(**args)
        want, want_u = full.choices[0].text, full.choices[0].model_extra["uncertainty"]
        chunks = list(client.completions.create(**args, stream=True))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == full.choices[0].finish_reason
    # One chunk per generated token (and one more for the end-of-sequence token), each with
    # its token's uncertainty: together the non-streamed answer's.
    streamed = [c.choices[0].model_extra["uncertainty"] for c in with_choices]
    assert all(len(u["tokens"]) <= 1 for u in streamed)
    for key in want_u:
        assert [x for u in streamed for x in u[key]] == want_u[key]


def test_chat_logprobs_are_the_mixtures(server: Server) -> None:
    r = server.client().chat.completions.create(
        model="ensemble",
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    u = r.choices[0].model_extra["uncertainty"]
    assert [c.token for c in content] == u["tokens"]
    for c, p in zip(content, u["prob"], strict=True):
        assert c.logprob == pytest.approx(math.log(p), abs=1e-5)
        tops = [t.logprob for t in c.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert c.logprob == pytest.approx(tops[0], abs=1e-6)  # greedy: the top token


def test_completion_logprobs_and_stop(server: Server) -> None:
    client = server.client()
    base = client.completions.create(
        model="ensemble", prompt="The sun", max_tokens=12, temperature=0, logprobs=2
    )
    lp = base.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    text = base.choices[0].text
    stop = text.strip()[:1]
    if stop:
        cut = client.completions.create(
            model="ensemble", prompt="The sun", max_tokens=12, temperature=0, stop=[stop]
        )
        assert cut.choices[0].text == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


# -------------------------------------------------------------------------------------------
# Scoring


QUESTIONS = [
    {"id": "q1", "question": "Ice is", "choices": ["cold", "hot"], "answer": 0},
    {"id": "q2", "question": "The sky is", "choices": ["blue", "green", "red"], "answer": "A"},
    {"id": "q3", "question": "Two plus two is", "choices": ["three", "four"]},
]


def test_score_records_equal_infer(server: Server, model_args: list[str], tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    runs = [("", []), ("?scoring=labels&members=true", ["--scoring", "labels", "--members"])]
    wants = []
    for query, flags in runs:
        lines = cli("infer", str(path), *model_args, "-q", *flags).splitlines()
        want = [json.loads(line) for line in lines]
        status, _, got = server.request("POST", "/v1/score" + query, QUESTIONS)
        assert status == 200, got
        assert got == want
        wants.append(want)
    # One question in, one record out.
    status, _, one = server.request("POST", "/v1/score", QUESTIONS[0])
    assert status == 200
    assert one.keys() == wants[0][0].keys()
    assert one["id"] == "q1" and one["prediction"] == wants[0][0]["prediction"]
    assert one["probs"] == pytest.approx(wants[0][0]["probs"], abs=1e-5)


def test_concurrent_scores_are_batched_and_unchanged(server: Server) -> None:
    """Requests that wait together are scored in one engine call; each gets its own records."""
    _, _, alone = server.request("POST", "/v1/score", QUESTIONS)
    results: list[Any] = [None] * 12

    def one(i: int) -> None:
        results[i] = server.request("POST", "/v1/score", [QUESTIONS[i % 3]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (status, _, records) in enumerate(results):
        assert status == 200
        want = alone[i % 3]
        assert records[0]["id"] == want["id"]
        assert records[0]["probs"] == pytest.approx(want["probs"], abs=1e-5)


# -------------------------------------------------------------------------------------------
# Bad requests


BAD = [
    ("/v1/completions", b"{not json", 400, "body"),
    ("/v1/completions", b"[1, 2]", 400, "body"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"model": "ensemble"}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 65}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": "word " * 600}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x" * 70000}, 413, "body"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": 3}]},
        400,
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    ("/v1/score", {"question": "x"}, 400, "body"),
    ("/v1/score", [{"question": "x", "choices": ["a"]}, 7], 400, "body[1]"),
    ("/v1/score", {"question": "x", "choices": "ab"}, 400, "body"),
    ("/v1/score", {"question": "x " * 600, "choices": ["a", "b"]}, 400, "body"),
    ("/v1/score?scoring=vibes", QUESTIONS[0], 400, "scoring"),
    ("/v1/score?batch=3", QUESTIONS[0], 400, "batch"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD)
def test_a_bad_request_gets_a_4xx_naming_the_field(
    server: Server, path: str, body: Any, status: int, param: str
) -> None:
    got, _, answer = server.request("POST", path, body)
    assert got == status, answer
    assert answer["error"]["param"] == param, answer
    assert answer["error"]["message"]
    assert server.healthy()


def test_unknown_routes_and_methods_get_json_errors(server: Server) -> None:
    assert server.request("GET", "/v1/nothing")[0] == 404
    status, _, body = server.request("GET", "/v1/completions")
    assert status == 405 and "error" in body
    assert server.healthy()


def test_the_openai_client_sees_the_errors(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="ensemble", prompt="x", max_tokens=10_000)


def test_metrics_count_requests_and_tokens(server: Server) -> None:
    server.client().completions.create(model="ensemble", prompt="Hi", max_tokens=3, temperature=0)
    _, headers, text = server.request("GET", "/metrics")
    assert headers["content-type"].startswith("text/plain")
    assert re.search(r'lora_ens_requests_total\{route="/v1/completions",status="200"\} \d+', text)
    assert re.search(r'lora_ens_requests_total\{route="/v1/completions",status="400"\} \d+', text)
    assert 'lora_ens_request_duration_seconds_bucket{route="/v1/completions",le="+Inf"}' in text
    assert server.metric("lora_ens_tokens_generated_total") >= 3
    assert server.metric("lora_ens_members") == 3
    assert server.metric("lora_ens_queue_depth") == 0


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_an_api_key_is_required_when_set(model_args: list[str], given: str) -> None:
    if given == "flag":
        s = Server(*model_args, "--api-key", "s3cret", env={"LORA_ENS_RS_API_KEY": "other"})
    else:
        s = Server(*model_args, env={"LORA_ENS_RS_API_KEY": "s3cret"})
    try:
        assert s.request("GET", "/v1/models")[0] == 401
        wrong = {"Authorization": "Bearer s3cret-not"}
        assert s.request("GET", "/v1/models", headers=wrong)[0] == 401
        body = {"prompt": "x", "max_tokens": 1}
        status, headers, answer = s.request("POST", "/v1/completions", body)
        assert status == 401 and answer["error"]["type"] == "authentication_error"
        assert headers["WWW-Authenticate"] == "Bearer"
        assert s.healthy()  # /health needs no key
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        r = s.client("s3cret").completions.create(model="ensemble", prompt="x", max_tokens=2)
        assert r.usage.completion_tokens <= 2
    finally:
        assert s.stop() == 0


# -------------------------------------------------------------------------------------------
# Faults


def open_stream(s: Server, max_tokens: int, prompt: str = "Once") -> tuple[Any, Any]:
    """A streaming completion on its own connection: (connection, response)."""
    conn = http.client.HTTPConnection(s.host, s.port, timeout=60)
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def read_events(resp: Any, n: int | None = None) -> list[str]:
    """Read `n` data events (all, to `[DONE]`, when None)."""
    events: list[str] = []
    while n is None or len(events) < n:
        line = resp.readline().decode()
        if not line:
            break
        if line.startswith("data: "):
            events.append(line[6:].strip())
            if events[-1] == "[DONE]":
                break
    return events


def wait_for(cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_client_leaving_mid_stream_frees_its_slot(model_args: list[str]) -> None:
    s = Server(
        *model_args, "--max-generations", "1", "--step-delay-ms", "20", "--max-tokens", "400"
    )
    try:
        conn, resp = open_stream(s, 400)
        assert len(read_events(resp, 2)) == 2
        assert s.metric("lora_ens_active_generations") == 1
        conn.close()  # the client goes away after two tokens
        wait_for(lambda: s.metric("lora_ens_active_generations") == 0, timeout=5)
        # Far fewer than 400 tokens were generated: the generation stopped.
        assert s.metric("lora_ens_tokens_generated_total") < 200
        # The only slot serves the next request.
        r = s.client().completions.create(model="ensemble", prompt="Hi", max_tokens=3)
        assert r.usage.completion_tokens <= 3
    finally:
        assert s.stop() == 0


def test_a_full_queue_answers_429_with_retry_after(model_args: list[str]) -> None:
    limits = ["--max-generations", "1", "--max-queue", "1", "--max-tokens", "400"]
    s = Server(*model_args, *limits, "--step-delay-ms", "20")
    try:
        running, r1 = open_stream(s, 100)
        read_events(r1, 1)  # decoding: the slot is taken
        queued, r2 = open_stream(s, 5)  # waits in the queue
        wait_for(lambda: s.metric("lora_ens_queue_depth") == 1)
        status, headers, body = s.request("POST", "/v1/completions", {"prompt": "x"})
        assert status == 429, body
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            s.client().completions.create(model="ensemble", prompt="x", max_tokens=1)
        # Both admitted requests finish normally.
        assert read_events(r1)[-1] == "[DONE]"
        assert read_events(r2)[-1] == "[DONE]"
        running.close()
        queued.close()
        assert s.metric("lora_ens_rejected_total") == 2
        assert s.healthy()
    finally:
        assert s.stop() == 0


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(model_args: list[str]) -> None:
    s = Server(*model_args, "--max-generations", "2", "--step-delay-ms", "20")
    streams = [open_stream(s, 30, prompt) for prompt in ("One", "Two", "Three", "Four")]
    for _, resp in streams[:2]:
        read_events(resp, 1)  # two decoding, two queued
    scored: list[Any] = []
    scorer = threading.Thread(
        target=lambda: scored.append(s.request("POST", "/v1/score", QUESTIONS))
    )
    scorer.start()
    time.sleep(0.2)
    s.proc.send_signal(signal.SIGTERM)
    for conn, resp in streams:
        events = read_events(resp)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        conn.close()
    scorer.join()
    assert scored[0][0] == 200
    assert s.proc.wait(timeout=60) == 0
    assert s.stop() == 0
    assert any("stopped" in line for line in s.stderr)
    with pytest.raises(OSError):
        http.client.HTTPConnection(s.host, s.port, timeout=5).request("GET", "/health")
