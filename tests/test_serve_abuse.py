"""The server under abuse: abandoned requests, half-sent requests, connection floods, hostile bodies,
numbers at the edges, bad options and models that cannot generate. Traffic stays on 127.0.0.1 and
every wait is bounded.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'minigpt-course[serve]')")
import httpx  # noqa: E402
import torch  # noqa: E402
from _serve_helpers import CHAT_ALPHABET, slow_model, tiny_model, wait_until  # noqa: E402

from minigpt import CharTokenizer  # noqa: E402
from minigpt.checkpoint import save_checkpoint  # noqa: E402
from minigpt.cli import main as cli_main  # noqa: E402
from minigpt.generation import sample_next  # noqa: E402
from minigpt.serve import ServeSettings, create_app  # noqa: E402
from minigpt.serve.background import ThreadServer  # noqa: E402
from minigpt.serve.core import RateLimitedLog  # noqa: E402
from minigpt.serve.engine import Sampling, sample_row  # noqa: E402

TIMEOUT = 30.0


def metric(app, name: str, labels: dict | None = None) -> float:
    return app.state.metrics.value(name, labels)


def server_errors(app) -> float:
    """All 5xx answers other than the deliberate 503s."""
    text = app.state.metrics.render()[0].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("minigpt_errors_total{") and 'status="5' in line and 'status="503"' not in line)


class Records(logging.Handler):
    """Collect what the server logs (uvicorn's loggers do not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        for name in ("uvicorn", "uvicorn.error", "minigpt"):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in ("uvicorn", "uvicorn.error", "minigpt"):
            logging.getLogger(name).removeHandler(self)


def raw_exchange(port: int, data: bytes, wait: float = 5.0) -> tuple[float, bytes]:
    """Send raw bytes, read until the server closes; (seconds it took, what came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        start = time.monotonic()
        if data:
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return time.monotonic() - start, out


@pytest.fixture(scope="module")
def slow_server():
    model, tok = slow_model(alphabet=CHAT_ALPHABET)  # 20 ms a token: a 400-token answer takes 8 s
    settings = ServeSettings(max_new_tokens_limit=400, cache_size=0, read_timeout_s=0.5, max_body_bytes=8192)
    app = create_app(model, tok, settings)
    with Records() as logs, ThreadServer(app) as url:
        yield url, app, logs


# --- abandoned requests --------------------------------------------------------------------------------
def _leave_plain(url: str, path: str, body: dict) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + path, json=body, timeout=0.3)


def _leave_stream(url: str, path: str, body: dict) -> None:
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("POST", url + path, json=body) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass  # one event arrived: the job is running; now hang up


@pytest.mark.parametrize(
    ("path", "body", "leave"),
    [
        ("/v1/generate", {"prompt": "ab", "max_new_tokens": 400}, _leave_plain),
        ("/v1/generate", {"prompt": "ab", "max_new_tokens": 400, "stream": True}, _leave_stream),
        ("/v1/completions", {"prompt": "ab", "max_tokens": 400}, _leave_plain),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
                                  "stream": True}, _leave_stream),
    ],
    ids=["generate", "generate-stream", "completions", "chat-stream"],
)
def test_abandoned_requests_are_cancelled_within_a_second(slow_server, path, body, leave):
    url, app, _ = slow_server
    cancelled = metric(app, "minigpt_cancelled_total")
    tokens = metric(app, "minigpt_tokens_generated_total")
    leave(url, path, body)
    left = time.monotonic()
    wait_until(lambda: metric(app, "minigpt_cancelled_total") > cancelled, timeout=5, what="the job to be cancelled")
    wait_until(lambda: app.state.engine.active == 0, timeout=5, what="the worker to be free")
    assert time.monotonic() - left < 1.0
    assert metric(app, "minigpt_tokens_generated_total") - tokens < 100  # far from the 400 asked for
    assert server_errors(app) == 0


def test_shutdown_with_requests_in_flight_is_quick_and_quiet():
    model, tok = slow_model()
    app = create_app(model, tok, ServeSettings(max_new_tokens_limit=400, cache_size=0))
    with Records() as logs:
        server = ThreadServer(app)
        with ThreadPoolExecutor(2) as pool:
            url = server.__enter__()
            futures = [pool.submit(httpx.post, url + "/v1/generate", json={"prompt": "ab", "max_new_tokens": 400,
                                                                            "stream": stream}, timeout=TIMEOUT)
                       for stream in (False, True)]
            engine = app.state.engine
            wait_until(lambda: engine.active >= 1 and engine.active + engine.queue_depth == 2, timeout=10,
                       what="both requests decoding or queued")
            start = time.monotonic()
            server.__exit__(None, None, None)
            took = time.monotonic() - start
            answers = [f.result() for f in futures]
    assert took < 3.0
    assert answers[0].status_code == 503 and "shutting down" in answers[0].json()["error"]
    assert "shutting down" in answers[1].text  # the stream's last event says why it ended
    assert not [r for r in logs.records if r.exc_info or r.levelno >= logging.ERROR]


# --- slow and half-sent requests -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [b"", b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n",
     b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pr"],
    ids=["nothing", "half-headers", "half-body"],
)
def test_half_sent_requests_are_timed_out(slow_server, data):
    url, app, _ = slow_server
    seconds, answer = raw_exchange(int(url.rsplit(":", 1)[1]), data)
    assert answer.startswith(b"HTTP/1.1 408") and 0.4 < seconds < 3.0, (seconds, answer)
    assert server_errors(app) == 0


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"\x00\x01NOT HTTP\r\n\r\n", b"400"),
     (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
      + b"9" * 5000 + b"\r\n\r\n", b"400"),
     (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000, b"400")],
    ids=["garbage", "5000-digit-content-length", "endless-header"],
)
def test_malformed_http_is_a_400(slow_server, data, status):
    url, app, _ = slow_server
    _, answer = raw_exchange(int(url.rsplit(":", 1)[1]), data)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert httpx.get(url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_connection_cap_answers_503_and_recovers():
    model, tok = tiny_model()
    app = create_app(model, tok, ServeSettings(max_connections=3, read_timeout_s=10))
    with ThreadServer(app) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:  # once the server has accepted the three, a fourth connection's request is refused
            wait_until(lambda: httpx.get(url + "/healthz", timeout=TIMEOUT).status_code == 503, timeout=5,
                       what="the connection cap to apply")
        finally:
            for s in idle:
                s.close()
        wait_until(lambda: httpx.get(url + "/healthz", timeout=TIMEOUT).status_code == 200, timeout=5,
                   what="room after the idle connections left")


def test_disconnect_flood_is_neither_500s_nor_tracebacks(slow_server):
    url, app, logs = slow_server
    port = int(url.rsplit(":", 1)[1])
    body = b'{"prompt": "ab", "max_new_tokens": 50}'
    full = (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
    half = full[: -len(body) // 2]

    def hit_and_run(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(full if i % 2 else half)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset

    before = len(logs.records)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hit_and_run, range(200)))
    wait_until(lambda: app.state.engine.active == 0 and app.state.engine.queue_depth == 0, timeout=20,
               what="the abandoned jobs to be dropped")
    new = logs.records[before:]
    assert not [r for r in new if r.exc_info], [r.getMessage() for r in new if r.exc_info][:1]
    assert len(new) <= 3, [r.getMessage() for r in new]
    assert server_errors(app) == 0
    assert httpx.get(url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_rate_limited_log_counts_what_it_does_not_print(caplog):
    log = RateLimitedLog("things happened", every=60)
    with caplog.at_level(logging.WARNING, logger="minigpt.serve"):
        for _ in range(1000):
            log()
    assert log.count == 1000 and len(caplog.records) == 1 and "1 things happened" in caplog.records[0].getMessage()


# --- hostile bodies and numbers at the edges -----------------------------------------------------------
GEN, COMP, CHAT = "/v1/generate", "/v1/completions", "/v1/chat/completions"
JSON = "application/json"


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        (GEN, '{"prompt": "ab", "max_new_tokens": ' + "9" * 5000 + "}", JSON, 400),
        (COMP, '{"prompt": "ab", "max_tokens": ' + "9" * 5000 + "}", JSON, 400),
        (GEN, '{"prompt": "ab", "max_new_tokens": 99999999999999999999}', JSON, 422),
        (GEN, "[" * 2000 + "]" * 2000, JSON, 400),
        (GEN, '{"prompt": ' + "[" * 100 + "]" * 100 + "}", JSON, 400),
        (GEN, b'{"prompt": "\xff\xfe"}', JSON, 400),
        (GEN, '{"prompt": "ab", "temperature": 1e-300, "max_new_tokens": 4}', JSON, 200),
        (GEN, '{"prompt": "ab", "top_p": 1e-300, "max_new_tokens": 4}', JSON, 200),
        (GEN, '{"prompt": "ab", "temperature": 5e-324, "top_p": 5e-324, "top_k": 1, "max_new_tokens": 4}', JSON, 200),
        (COMP, '{"prompt": "ab", "temperature": 1e-300, "top_p": 1e-300, "max_tokens": 4}', JSON, 200),
        (CHAT, '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-300, "max_tokens": 4}',
         JSON, 200),
        (GEN, '{"prompt": "ab", "temperature": NaN}', JSON, 422),
        (GEN, '{"prompt": "ab", "temperature": Infinity}', JSON, 422),
        (GEN, '{"prompt": "ab", "top_p": NaN}', JSON, 422),
        (COMP, '{"prompt": "ab", "temperature": NaN}', JSON, 400),
        (COMP, '{"prompt": "ab", "top_p": -Infinity}', JSON, 400),
        (GEN, '{"prompt": "ab", "seed": 1e400}', JSON, 422),
        (GEN, '{"prompt": "ab", "seed": 36893488147419103232}', JSON, 422),
        (GEN, '{"prompt": "ab"}', "text/plain", 415),
        (GEN, '{"prompt": "ab"}', "application/x-www-form-urlencoded", 415),
        (GEN, '{"prompt": "ab"}', None, 415),
        (CHAT, '{"messages": []}', "text/plain;charset=utf-8", 415),
        (GEN, '{"prompt": "ab", "max_new_tokens": 2}', "application/json; charset=utf-8", 200),
        (GEN, '{"prompt": "ab", "stop": [""]}', JSON, 422),
        (CHAT, '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', JSON, 400),
        (COMP, '{"prompt": [1, 2, 999999]}', JSON, 400),
        (COMP, '{"prompt": []}', JSON, 400),
        (GEN, "x" * 9000, JSON, 413),
    ],
)
def test_hostile_bodies_get_4xx_never_500(slow_server, path, body, content_type, status):
    url, app, _ = slow_server
    headers = {"content-type": content_type} if content_type else {}
    content = body.encode() if isinstance(body, str) else body
    r = httpx.post(url + path, content=content, headers=headers, timeout=TIMEOUT)
    assert r.status_code == status, r.text[:300]
    assert "error" in r.json() or status == 200
    assert server_errors(app) == 0


def test_sampling_is_finite_at_the_edges():
    logits = torch.tensor([[3.0, 1e4, -1e4, 9999.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    for t, p in [(1e-300, None), (5e-324, 1e-300), (1.0, 1e-300), (1e-30, 0.5), (100.0, 5e-324)]:
        tok = sample_row(logits, Sampling(temperature=t, top_p=p), g)
        assert tok.item() == 1 or (t == 100.0 and p is None), (t, p)  # the limit: the most likely token
    ordinary = Sampling(temperature=0.8, top_k=3, top_p=0.9)
    a = sample_row(logits / 1e3, ordinary, torch.Generator().manual_seed(5))
    b = sample_next(logits / 1e3, temperature=0.8, top_k=3, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item()  # ordinary settings draw exactly what the library draws


# --- what the server says about itself -----------------------------------------------------------------
def test_model_info_shows_no_absolute_path(tmp_path):
    from minigpt.serve import load_for_serving

    model, tok = tiny_model()
    save_checkpoint(tmp_path / "runs" / "best", model, tokenizer=tok)
    model, tok, info = load_for_serving(tmp_path / "runs" / "best")
    app = create_app(model, tok, ServeSettings(), checkpoint_info=info)
    with ThreadServer(app) as url:
        text = httpx.get(url + "/v1/model", timeout=TIMEOUT).text
    assert str(tmp_path) not in text and '"path":"best"' in text


def _seq2seq():
    from minigpt.seq2seq import Transformer, TransformerConfig

    tok = CharTokenizer.from_text("abc")
    return Transformer(TransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_model=16,
                                         n_head=2, d_ff=32, max_len=16)), tok


def _nan_gpt():
    model, tok = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    return model, tok


@pytest.mark.parametrize("make", [_seq2seq, _nan_gpt], ids=["seq2seq", "nan-weights"])
def test_healthz_reflects_a_model_that_cannot_generate(make):
    model, tok = make()
    with ThreadServer(create_app(model, tok, ServeSettings())) as url:
        health = httpx.get(url + "/healthz", timeout=TIMEOUT)
        assert health.status_code == 503 and health.json()["status"] == "error", health.text
        assert "cannot continue a text" in health.json()["problem"] or "non-finite" in health.json()["problem"]
        r = httpx.post(url + "/v1/generate", json={"prompt": "ab"}, timeout=TIMEOUT)
        assert r.status_code == 503 and "cannot generate" in r.json()["error"]
        r = httpx.post(url + "/v1/completions", json={"prompt": "ab"}, timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"


# --- options -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-ck")
    model, tok = tiny_model()
    save_checkpoint(root / "gpt", model, tokenizer=tok)
    s2s, s2s_tok = _seq2seq()
    save_checkpoint(root / "s2s", s2s, tokenizer=s2s_tok)
    return root


BAD_OPTIONS = [
    (["--port", "99999"], "--port"),
    (["--port", "-1"], "--port"),
    (["--port", "http"], "--port"),
    (["--threads", "-2"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--batch-wait-ms", "nan"], "--batch-wait-ms"),
    (["--batch-wait-ms", "inf"], "--batch-wait-ms"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
    (["--max-queue", "9" * 5000], "--max-queue"),
    (["--max-new-tokens-limit", "0"], "--max-new-tokens-limit"),
    (["--max-body-bytes", "1e9"], "--max-body-bytes"),
    (["--read-timeout", "0"], "--read-timeout"),
    (["--keep-alive", "nan"], "--keep-alive"),
    (["--max-connections", "0"], "--max-connections"),
    (["--cache-size", "-5"], "--cache-size"),
    (["--max-batch-size", "100000"], "--max-batch-size"),
    (["--log-level", "loud"], "--log-level"),
    (["--api-key", ""], "--api-key"),
    (["--api-key", " key"], "--api-key"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:7"], "--device"),
]


@pytest.mark.parametrize(("flags", "name"), BAD_OPTIONS, ids=[" ".join(f)[:30] for f, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_and_exit_2(checkpoints, capsys, monkeypatch, flags, name):
    if flags[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    monkeypatch.delenv("MINIGPT_API_KEY", raising=False)
    try:
        code = cli_main(["serve", "--checkpoint", str(checkpoints / "gpt"), *flags])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in err, err


def test_cuda_without_cuda_is_one_line(checkpoints, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli_main(["serve", "--checkpoint", str(checkpoints / "gpt"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "CUDA is not available" in err[0]


def test_empty_api_key_in_the_environment_is_refused(checkpoints, capsys, monkeypatch):
    monkeypatch.setenv("MINIGPT_API_KEY", "")
    assert cli_main(["serve", "--checkpoint", str(checkpoints / "gpt")]) == 2
    assert "MINIGPT_API_KEY is empty" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "words"), [("s2s", "cannot continue a text"), ("missing", "no checkpoint")])
def test_a_checkpoint_that_cannot_generate_is_refused_at_start(checkpoints, capsys, name, words):
    assert cli_main(["serve", "--checkpoint", str(checkpoints / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint" in err[0] and words in err[0], err


def test_a_busy_port_is_one_line(checkpoints, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--checkpoint", str(checkpoints / "gpt"), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen" in err[0] and "--port" in err[0], err


def test_option_error_from_a_real_process(checkpoints):
    r = subprocess.run([sys.executable, "-m", "minigpt", "serve", "--checkpoint", str(checkpoints / "gpt"),
                        "--batch-wait-ms", "nan"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--batch-wait-ms" in r.stderr, r.stderr
