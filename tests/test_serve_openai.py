"""The OpenAI-compatible API, driven by the official ``openai`` client against a real ``minigpt serve``.

The server is the command line itself (a child process on 127.0.0.1) serving a tiny random GPT saved
in a temporary folder; expected texts come from minigpt.generation run directly on the same weights.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'minigpt-course[serve]')")
openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai)")
import httpx  # noqa: E402
import torch  # noqa: E402
from _serve_helpers import CHAT_ALPHABET, tiny_model  # noqa: E402

from minigpt.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from minigpt.generation import generate  # noqa: E402
from minigpt.serve import ServeSettings, create_app  # noqa: E402
from minigpt.serve.background import ServerProcess, ThreadServer  # noqa: E402
from minigpt.serve.openai_api import CHAT_STOP, ChatMessage, VisibleText, chat_prompt  # noqa: E402

TIMEOUT = 30.0
MODEL_ID = "tiny-chat"  # the checkpoint folder's name is the model id


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck") / MODEL_ID
    model, tok = tiny_model(seed=3, block_size=64, alphabet=CHAT_ALPHABET)
    save_checkpoint(folder, model, tokenizer=tok)
    loaded, info = load_checkpoint(folder)
    proc = ServerProcess(folder, extra_args=["--max-new-tokens-limit", "48"])
    with proc:
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="not-needed", max_retries=0, timeout=TIMEOUT)
        yield proc, client, loaded.eval(), info.tokenizer


def reference(model, tok, prompt: str, n: int, **kw) -> str:
    idx = torch.tensor([tok.encode(prompt)])
    return tok.decode(generate(model, idx, n, **kw)[0, idx.size(1) :])


def sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


# --- start-up and models ---------------------------------------------------------------------------------
def test_server_prints_its_url_once(server):
    proc, *_ = server
    lines = [line for line in proc.log().splitlines() if "listening on" in line]
    assert lines == [f"minigpt serve: listening on {proc.url}/ (model {MODEL_ID})"]


def test_models_list_and_retrieve(server):
    _, client, _, _ = server
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID] and models.data[0].object == "model"
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found" and MODEL_ID in e.value.body["message"]


# --- completions -----------------------------------------------------------------------------------------
def test_completion_greedy_matches_library_with_usage(server):
    _, client, model, tok = server
    r = client.completions.create(model=MODEL_ID, prompt="To be or", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL_ID
    assert r.choices[0].text == reference(model, tok, "To be or", 12, greedy=True)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (8, 12, 20)


def test_completion_default_max_tokens_is_16_and_echo(server):
    _, client, model, tok = server
    r = client.completions.create(model=MODEL_ID, prompt="abc", temperature=0, echo=True)
    assert r.usage.completion_tokens == 16
    assert r.choices[0].text == "abc" + reference(model, tok, "abc", 16, greedy=True)


def test_completion_seeded_sampling_matches_library(server):
    _, client, model, tok = server
    kw = {"temperature": 0.9, "top_p": 0.8}
    r = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=10, seed=42, **kw)
    assert r.choices[0].text == reference(model, tok, "Hello", 10, seed=42, **kw)
    again = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=10, seed=42, **kw)
    assert again.choices[0].text == r.choices[0].text


def test_completion_stops_before_the_stop_string(server):
    _, client, model, tok = server
    full = reference(model, tok, "what", 30, greedy=True)
    stop = full[6:8]
    r = client.completions.create(model=MODEL_ID, prompt="what", max_tokens=30, temperature=0, stop=[stop, "QQQ"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[: full.index(stop)]  # OpenAI: the stop string is not returned
    single = client.completions.create(model=MODEL_ID, prompt="what", max_tokens=30, temperature=0, stop=stop)
    assert single.choices[0].text == r.choices[0].text


def test_completion_stream_equals_plain_answer_and_ends_with_done(server):
    proc, client, model, tok = server
    chunks = list(client.completions.create(model=MODEL_ID, prompt="so", max_tokens=9, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference(model, tok, "so", 9, greedy=True)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    with httpx.stream("POST", proc.url + "/v1/completions", timeout=TIMEOUT,
                      json={"model": MODEL_ID, "prompt": "so", "max_tokens": 3, "stream": True}) as r:
        data = sse_data(r)
    assert data[-1] == "[DONE]" and all(json.loads(d)["object"] == "text_completion" for d in data[:-1])


def test_completion_accepts_token_ids(server):
    _, client, model, tok = server
    ids = tok.encode("hello")
    r = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=5, temperature=0)
    assert r.choices[0].text == reference(model, tok, "hello", 5, greedy=True)


# --- chat ------------------------------------------------------------------------------------------------
def test_chat_uses_the_documented_template(server):
    _, client, model, tok = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=20, temperature=0)
    prompt = "System: Be brief.\nUser: Hi there\nAssistant:"
    expected = reference(model, tok, prompt, 20, greedy=True)
    if CHAT_STOP in expected:  # the model began the user's next turn: the reply ends there
        expected = expected[: expected.index(CHAT_STOP)]
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == expected.lstrip()
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens <= 20


def test_chat_stream_gives_the_same_reply(server):
    _, client, _, _ = server
    messages = [{"role": "user", "content": "Say something"}]
    plain = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=15, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=15, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_template_and_stop_holdback_units():
    prompt = chat_prompt([ChatMessage(role="developer", content="Rules"),
                          ChatMessage(role="user", content=[{"type": "text", "text": "Hi"}]),
                          ChatMessage(role="assistant", content="Hello"), ChatMessage(role="user", content="Bye")])
    assert prompt == "System: Rules\nUser: Hi\nAssistant: Hello\nUser: Bye\nAssistant:"
    v = VisibleText(("\nUser:", "END"), lstrip=True)
    shown = [v.feed(d) for d in (" ", " Fine", "\n", "Us", "e")]
    assert shown == ["", "Fine", "", "", ""]  # "\nUse" may become the stop: held back
    assert v.feed("ful") == "\nUseful"  # it did not: released at once
    assert v.feed(" E") + v.feed("N") + v.feed("D") == " "
    assert v.finish() == "" and v.text == "Fine\nUseful "
    w = VisibleText(("ab",))
    assert w.feed("xa") == "x" and w.finish() == "a"  # no stop reached: the tail is text
    u = VisibleText(("ab", "b"))
    assert u.feed("x") == "x" and u.feed("yabz") == "y" and u.finish() == ""  # one token held a whole stop


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"n": 2}, "n", "one choice"),
        ({"temperature": 2.5}, "temperature", "[0, 2]"),
        ({"top_p": 1.5}, "top_p", "[0, 1]"),
        ({"max_tokens": 49}, "max_tokens", "limit of 48"),
        ({"max_tokens": 0}, "max_tokens", ">= 1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"presence_penalty": 1.0}, "presence_penalty", "not supported"),
        ({"logprobs": 2}, "logprobs", "not supported"),
        ({"seed": -1}, "seed", "[0, 2**63)"),
        ({"extra_body": {"foo": 1}}, "foo", "Unrecognized request argument"),
        ({"prompt": "Hi \u20ac"}, "prompt", "'\u20ac'"),
    ],
)
def test_completion_errors_are_openai_shaped_400s(server, kwargs, param, words):
    _, client, _, _ = server
    args = {"model": MODEL_ID, "prompt": "hi", **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**args)
    body = e.value.body
    assert e.value.status_code == 400 and set(body) == {"message", "type", "param", "code"}, body
    assert body["type"] == "invalid_request_error" and body["param"] == param and words in body["message"], body


def test_chat_errors(server):
    proc, client, _, _ = server
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="role 'tool'"):
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "tool", "content": "x",
                                                                 "tool_call_id": "1"}])
    with pytest.raises(openai.BadRequestError, match="at least one message"):
        client.chat.completions.create(model=MODEL_ID, messages=[])
    r = httpx.post(proc.url + "/v1/chat/completions", timeout=TIMEOUT, content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(proc.url + "/v1/completions", timeout=TIMEOUT, content=b'{"prompt": "hi"}',
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.get(proc.url + "/v1/nothing-here", timeout=TIMEOUT)
    assert r.status_code == 404 and "error" in r.json()


def test_chat_template_needs_its_characters():
    model, tok = tiny_model()  # lowercase only: no "U" for "User:"
    with ThreadServer(create_app(model, tok, ServeSettings())) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.BadRequestError, match=re.escape("chat template")):
            client.chat.completions.create(model="minigpt", messages=[{"role": "user", "content": "hi"}])
        assert client.completions.create(model="minigpt", prompt="hi", max_tokens=2).usage.completion_tokens == 2


def test_api_key_with_the_openai_client():
    model, tok = tiny_model()
    with ThreadServer(create_app(model, tok, ServeSettings(api_key="s3cret"))) as url:
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.models.list()
        assert e.value.body["code"] == "invalid_api_key"
        right = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0, timeout=TIMEOUT)
        assert right.completions.create(model="minigpt", prompt="ab", max_tokens=3).usage.total_tokens == 5
