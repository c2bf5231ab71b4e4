"""The HTTP server: every endpoint, validation, streaming, batching, queue limit, cache, API key, disconnects.

A real uvicorn serves a tiny random GPT on 127.0.0.1 (a free port) in a thread. Generated text is
compared with minigpt.generation.generate run directly on the same model: the server must not change
a single token, whether a request ran alone, in a batch, or came from the cache.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'minigpt-course[serve]')")
import httpx  # noqa: E402
import torch  # noqa: E402
from _serve_helpers import slow_model, tiny_model, wait_until  # noqa: E402

from minigpt.generation import generate  # noqa: E402
from minigpt.serve import ServeSettings, add_cli, create_app, load_for_serving, settings_from_args  # noqa: E402
from minigpt.serve.background import ThreadServer  # noqa: E402
from minigpt.serve.cache import LRUCache  # noqa: E402

TIMEOUT = 60.0  # generous: CI machines can be slow; nothing here should take more than a second or two


def reference(model, tok, prompt: str, n: int, **kw) -> str:
    """What the library itself generates for this prompt (the independent reference)."""
    idx = torch.tensor([tok.encode(prompt)])
    out = generate(model, idx, n, **kw)
    return tok.decode(out[0, idx.size(1) :])


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """Parse a text/event-stream body into (event, data) pairs; the stream must end with data: [DONE]."""
    events, event, done = [], "message", False
    for line in response.iter_lines():
        assert not (done and line), f"data after [DONE]: {line!r}"
        if line.startswith("event: "):
            event = line[7:]
        elif line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            events.append((event, json.loads(line[6:])))
            event = "message"
    assert done, "the stream did not end with data: [DONE]"
    return events


@pytest.fixture(scope="module")
def served():
    model, tok = tiny_model()
    app = create_app(model, tok, ServeSettings(max_new_tokens_limit=32, max_body_bytes=2048, cache_size=16))
    with ThreadServer(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client, app, model, tok


def metric(app, name: str, labels: dict | None = None) -> float:
    return app.state.metrics.value(name, labels)


# --- endpoints -----------------------------------------------------------------------------------------
def test_healthz_model_page_and_metrics(served):
    client, app, model, tok = served
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["parameters"] == sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert info["vocab"] == tok.chars and info["vocab_size"] == tok.vocab_size
    assert info["config"]["block_size"] == model.config.block_size == info["block_size"]
    assert info["limits"]["max_new_tokens"] == 32
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<textarea" in page.text and "/v1/generate" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no CDN
    body = client.get("/metrics")
    assert body.headers["content-type"].startswith("text/plain")
    for name in ("minigpt_requests_total", "minigpt_errors_total", "minigpt_tokens_generated_total",
                 "minigpt_request_latency_seconds_bucket", "minigpt_queue_depth", "minigpt_cache_hit_rate"):
        assert name in body.text or name.removesuffix("_bucket") in body.text, name
    assert metric(app, "minigpt_requests_total", {"endpoint": "/v1/model"}) >= 1


def test_greedy_generation_matches_library(served):
    client, app, model, tok = served
    before = metric(app, "minigpt_tokens_generated_total")
    r = client.post("/v1/generate", json={"prompt": "to be or", "greedy": True, "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == reference(model, tok, "to be or", 12, greedy=True)
    assert (body["prompt_tokens"], body["completion_tokens"], body["finish_reason"]) == (8, 12, "length")
    assert metric(app, "minigpt_tokens_generated_total") - before == 12


def test_seeded_sampling_matches_library_and_is_reproducible(served):
    client, _, model, tok = served
    req = {"prompt": "hello", "temperature": 0.9, "top_k": 10, "top_p": 0.9, "seed": 1234, "max_new_tokens": 10}
    a = client.post("/v1/generate", json=req).json()
    assert a["text"] == reference(model, tok, "hello", 10, temperature=0.9, top_k=10, top_p=0.9, seed=1234)
    other = client.post("/v1/generate", json={**req, "seed": 99}).json()["text"]
    assert other == reference(model, tok, "hello", 10, temperature=0.9, top_k=10, top_p=0.9, seed=99)


def test_stop_string_ends_generation(served):
    client, _, model, tok = served
    full = reference(model, tok, "what", 20, greedy=True)
    stop = full[5:7]  # a string the model is known to produce
    r = client.post("/v1/generate", json={"prompt": "what", "greedy": True, "max_new_tokens": 20, "stop": [stop]})
    body = r.json()
    assert body["finish_reason"] == "stop"
    assert body["text"] == full[: full.index(stop) + len(stop)]


def test_prompt_longer_than_block_is_cropped_like_the_library(served):
    client, _, model, tok = served
    prompt = "the quick brown fox jumps over the lazy dog"  # 43 > block_size 24
    body = client.post("/v1/generate", json={"prompt": prompt, "greedy": True, "max_new_tokens": 5}).json()
    assert body["prompt_truncated"] is True and body["prompt_tokens"] == len(prompt)
    assert body["text"] == reference(model, tok, prompt, 5, greedy=True)


# --- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "status", "needles"),
    [
        ({"prompt": "hi", "temperature": 0}, 422, ["temperature", "> 0", "greedy"]),
        ({"prompt": "hi", "temperature": -1.5}, 422, ["temperature", "> 0"]),
        ({"prompt": "hi", "top_p": 1.5}, 422, ["top_p", "(0, 1]"]),
        ({"prompt": "hi", "top_p": 0}, 422, ["top_p", "(0, 1]"]),
        ({"prompt": "hi", "top_k": 0}, 422, ["top_k", ">= 1"]),
        ({"prompt": "hi", "max_new_tokens": 33}, 422, ["max_new_tokens", "limit of 32"]),
        ({"prompt": "hi", "max_new_tokens": 0}, 422, ["max_new_tokens", ">= 1"]),
        ({"prompt": "Hi \u20ac!"}, 422, ["prompt", "'H'", "'\u20ac'", "2 character(s)"]),
        ({"prompt": ""}, 422, ["prompt", "empty"]),
        ({"prompt": "hi", "temp": 0.5}, 422, ["temp", "unknown field", "temperature"]),
        ({"prompt": "hi", "max_new_tokens": "many"}, 422, ["max_new_tokens"]),
        ({"max_new_tokens": 3}, 422, ["prompt", "required"]),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 422, ["stop", "at most 4"]),
        (["not", "an", "object"], 400, ["JSON object"]),
    ],
)
def test_bad_requests_get_a_message_that_says_what_to_fix(served, payload, status, needles):
    client, app, _, _ = served
    before = metric(app, "minigpt_errors_total", {"endpoint": "/v1/generate", "status": str(status)})
    r = client.post("/v1/generate", json=payload)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for needle in needles:
        assert needle in message, (needle, message)
    assert metric(app, "minigpt_errors_total", {"endpoint": "/v1/generate", "status": str(status)}) == before + 1
    assert client.get("/healthz").status_code == 200  # the server survived


def test_invalid_json_and_oversized_bodies(served):
    client, _, _, _ = served
    r = client.post("/v1/generate", content=b"{prompt: 'hi'", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = json.dumps({"prompt": "a" * 5000}).encode()
    r = client.post("/v1/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 2048" in r.json()["error"]

    def chunks():  # no Content-Length: the limit must hold while reading the stream too
        for _ in range(10):
            yield b" " * 500

    r = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "2048" in r.json()["error"]
    assert client.get("/healthz").status_code == 200


# --- streaming -----------------------------------------------------------------------------------------
def test_streaming_sends_tokens_one_by_one(served):
    client, _, model, tok = served
    req = {"prompt": "so", "greedy": True, "max_new_tokens": 9, "stream": True}
    with client.stream("POST", "/v1/generate", json=req) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    tokens = [d for e, d in events if e == "message"]
    done = [d for e, d in events if e == "done"]
    assert len(tokens) == 9 and len(done) == 1 and events[-1][0] == "done"
    assert "".join(t["token"] for t in tokens) == reference(model, tok, "so", 9, greedy=True) == done[0]["text"]
    assert [t["id"] for t in tokens] == tok.encode(done[0]["text"])
    assert done[0]["completion_tokens"] == 9 and done[0]["tokens_per_s"] > 0


def test_streaming_validation_error_is_plain_json(served):
    client, _, _, _ = served
    r = client.post("/v1/generate", json={"prompt": "so", "stream": True, "top_p": 7})
    assert r.status_code == 422 and "top_p" in r.json()["error"]


# --- cache ---------------------------------------------------------------------------------------------
def test_deterministic_requests_are_cached_random_ones_are_not(served):
    client, app, model, tok = served
    hits0, misses0 = metric(app, "minigpt_cache_hits_total"), metric(app, "minigpt_cache_misses_total")
    req = {"prompt": "cache me", "greedy": True, "max_new_tokens": 6}
    first, second = client.post("/v1/generate", json=req).json(), client.post("/v1/generate", json=req).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["text"] == second["text"] == reference(model, tok, "cache me", 6, greedy=True)
    with client.stream("POST", "/v1/generate", json={**req, "stream": True}) as r:  # a hit can stream too
        events = sse_events(r)
    assert "".join(d["token"] for e, d in events if e == "message") == first["text"]
    assert events[-1][1]["cached"] is True
    assert metric(app, "minigpt_cache_hits_total") - hits0 == 2
    assert metric(app, "minigpt_cache_misses_total") - misses0 == 1
    engine = app.state.engine
    assert metric(app, "minigpt_cache_hit_rate") == pytest.approx(engine.cache.hits / (engine.cache.hits
                                                                                     + engine.cache.misses))
    sampled = {"prompt": "cache me", "temperature": 1.0, "max_new_tokens": 6}  # no seed: must not be cached
    assert not any(client.post("/v1/generate", json=sampled).json()["cached"] for _ in range(2))
    assert metric(app, "minigpt_cache_hits_total") - hits0 == 2


def test_lru_cache_evicts_least_recently_used():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)  # evicts b
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    assert (c.hits, c.misses) == (3, 1) and c.hit_rate == 0.75
    off = LRUCache(0)
    off.put("a", 1)
    assert off.get("a") is None and len(off) == 0


# --- batching and the queue ----------------------------------------------------------------------------
def test_batched_requests_give_the_same_tokens_as_single_ones():
    model, tok = tiny_model(seed=1)
    app = create_app(model, tok, ServeSettings(max_new_tokens_limit=32, cache_size=0, max_batch_size=8))
    engine = app.state.engine
    reqs = [  # same prompt length (5), different settings and lengths: one batch
        {"prompt": "abcde", "greedy": True, "max_new_tokens": 10},
        {"prompt": "hello", "greedy": True, "max_new_tokens": 4},
        {"prompt": "xyz!?", "temperature": 0.8, "top_k": 5, "seed": 7, "max_new_tokens": 12},
        {"prompt": "hello", "temperature": 1.3, "top_p": 0.8, "seed": 8, "max_new_tokens": 9},
        {"prompt": "different length", "greedy": True, "max_new_tokens": 6},  # its own batch
    ]
    with ThreadServer(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        engine.pause()
        with ThreadPoolExecutor(len(reqs)) as pool:
            futures = [pool.submit(client.post, "/v1/generate", json=r) for r in reqs]
            wait_until(lambda: engine.queue_depth == len(reqs), what="all requests queued")
            assert metric(app, "minigpt_queue_depth") == len(reqs)
            engine.resume()
            bodies = [f.result().json() for f in futures]
    for r, body in zip(reqs, bodies):
        kw = {k: v for k, v in r.items() if k not in ("prompt", "max_new_tokens")}
        assert body["text"] == reference(model, tok, r["prompt"], r["max_new_tokens"], **kw), r
        assert body["completion_tokens"] == r["max_new_tokens"]
    assert metric(app, "minigpt_batch_size_count") == 2  # two decoding runs ...
    assert metric(app, "minigpt_batch_size_sum") == 5  # ... of 4 rows and 1 row
    assert metric(app, "minigpt_queue_depth") == 0 and metric(app, "minigpt_active_requests") == 0


def test_no_batching_decodes_one_request_at_a_time():
    model, tok = tiny_model()
    app = create_app(model, tok, ServeSettings(max_batch_size=1, cache_size=0))
    engine = app.state.engine
    with ThreadServer(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        engine.pause()
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client.post, "/v1/generate", json={"prompt": "abc", "greedy": True,
                                                                       "max_new_tokens": 3}) for _ in range(3)]
            wait_until(lambda: engine.queue_depth == 3, what="3 queued")
            engine.resume()
            assert all(f.result().status_code == 200 for f in futures)
    assert metric(app, "minigpt_batch_size_count") == 3 and metric(app, "minigpt_batch_size_sum") == 3


def test_full_queue_answers_503_and_recovers():
    model, tok = tiny_model()
    app = create_app(model, tok, ServeSettings(max_queue=2, cache_size=0))
    engine = app.state.engine
    req = {"prompt": "abc", "greedy": True, "max_new_tokens": 3}
    with ThreadServer(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        engine.pause()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(client.post, "/v1/generate", json=req) for _ in range(2)]
            wait_until(lambda: engine.queue_depth == 2, what="queue full")
            r = client.post("/v1/generate", json=req)
            assert r.status_code == 503 and "busy" in r.json()["error"] and r.headers["retry-after"] == "1"
            assert metric(app, "minigpt_rejected_total") == 1
            assert metric(app, "minigpt_errors_total", {"endpoint": "/v1/generate", "status": "503"}) == 1
            engine.resume()
            assert [f.result().status_code for f in futures] == [200, 200]
        assert client.post("/v1/generate", json=req).status_code == 200  # room again
    assert metric(app, "minigpt_queue_depth") == 0


# --- disconnects ---------------------------------------------------------------------------------------
def test_client_disconnect_mid_stream_frees_the_slot():
    model, tok = slow_model()  # 20 ms per step: 64 tokens would take ~1.3 s
    app = create_app(model, tok, ServeSettings(max_new_tokens_limit=64, cache_size=0))
    with ThreadServer(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        req = {"prompt": "abc", "temperature": 1.0, "max_new_tokens": 64, "stream": True}
        with client.stream("POST", "/v1/generate", json=req) as r:
            lines = r.iter_lines()
            got = 0
            while got < 3:  # read three tokens, then hang up
                if next(lines).startswith("data: "):
                    got += 1
            assert metric(app, "minigpt_active_requests") == 1
        wait_until(lambda: metric(app, "minigpt_cancelled_total") == 1, what="the stream to be cancelled")
        wait_until(lambda: metric(app, "minigpt_active_requests") == 0, what="the slot to be freed")
        assert metric(app, "minigpt_tokens_generated_total") < 64  # decoding stopped early
        assert metric(app, "minigpt_queue_depth") == 0
        # the worker is free for the next request
        r = client.post("/v1/generate", json={"prompt": "abc", "greedy": True, "max_new_tokens": 2})
        assert r.status_code == 200 and r.json()["completion_tokens"] == 2


def test_client_that_leaves_while_queued_is_removed_from_the_queue():
    model, tok = tiny_model()
    app = create_app(model, tok, ServeSettings(cache_size=0))
    engine = app.state.engine
    with ThreadServer(app) as url:
        engine.pause()
        with httpx.Client(base_url=url, timeout=0.5) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                impatient.post("/v1/generate", json={"prompt": "abc", "greedy": True, "max_new_tokens": 3})
        wait_until(lambda: engine.queue_depth == 0, what="the abandoned request to leave the queue")
        assert metric(app, "minigpt_cancelled_total") == 1 and metric(app, "minigpt_queue_depth") == 0
        engine.resume()


# --- API key -------------------------------------------------------------------------------------------
def test_api_key_is_required_everywhere_but_healthz():
    model, tok = tiny_model()
    app = create_app(model, tok, ServeSettings(api_key="s3cret"))
    with ThreadServer(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        assert client.get("/healthz").status_code == 200
        for method, path in (("GET", "/v1/model"), ("GET", "/metrics"), ("GET", "/"), ("POST", "/v1/generate")):
            r = client.request(method, path, json={"prompt": "a", "max_new_tokens": 1})
            assert r.status_code == 401 and "API key" in r.json()["error"], path
            r = client.request(method, path, headers={"X-API-Key": "wrong"})
            assert r.status_code == 401, path
        assert "Basic" in client.get("/").headers["www-authenticate"]  # lets a browser ask for it
        ok = {"prompt": "a", "greedy": True, "max_new_tokens": 1}
        assert client.post("/v1/generate", json=ok, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/", auth=("anyone", "s3cret")).status_code == 200
        assert client.get("/metrics", auth=("anyone", "nope")).status_code == 401


# --- CLI and checkpoints -------------------------------------------------------------------------------
def test_cli_defaults_to_loopback_and_reads_the_key_from_the_environment(monkeypatch):
    import argparse

    parser = argparse.ArgumentParser(prog="minigpt")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--checkpoint", "out/best"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)
    assert callable(args.func)
    monkeypatch.delenv("MINIGPT_API_KEY", raising=False)
    assert settings_from_args(args).api_key is None
    monkeypatch.setenv("MINIGPT_API_KEY", "from-env")
    assert settings_from_args(args).api_key == "from-env"
    flagged = parser.parse_args(["serve", "--checkpoint", "x", "--api-key", "flag", "--no-batching", "--no-cache"])
    s = settings_from_args(flagged)
    assert (s.api_key, s.max_batch_size, s.cache_size) == ("flag", 1, 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve"])  # --checkpoint is required


def test_load_for_serving_round_trips_a_checkpoint(tmp_path):
    from minigpt.checkpoint import save_checkpoint

    model, tok = tiny_model()
    save_checkpoint(tmp_path / "ck", model, tokenizer=tok)
    loaded, tok2, info = load_for_serving(tmp_path / "ck")
    assert tok2.chars == tok.chars and info["model_class"] == "GPT"
    idx = torch.tensor([tok.encode("hello")])
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0])
    save_checkpoint(tmp_path / "notok", model)
    with pytest.raises(ValueError, match="no tokenizer"):
        load_for_serving(tmp_path / "notok")


def test_settings_reject_nonsense():
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="api_key is empty"):
        ServeSettings(api_key="")
    with pytest.raises(ValueError, match="batch_wait_ms"):
        ServeSettings(batch_wait_ms=float("nan"))
