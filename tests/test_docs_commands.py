"""Every `minigpt ...` command line in the code blocks of README.md and QUICK_REFERENCE.md runs and exits 0.

Each document runs in its own temporary folder laid out like a checkout (`notebooks` and `examples` links,
`my_text.txt`, `prompts.txt`) where `minigpt train` has been run once (so `out/` exists, as the
quick reference assumes); its commands then run in document order (README's train lines make the
`out/demo` that its later lines read), through `minigpt.cli.main` in this process. What is changed so the
whole set takes seconds, and nothing else:

- training: a tiny model (1 layer, width 16, block 16), 2 steps (4 with --resume), `--device cpu`,
  `--overwrite` unless resuming (the examples share one out-dir), and
  tiny Shakespeare replaced by a small Shakespeare-like text (the suite never downloads);
- generation: at most 20 new tokens; `--interactive` reads "quit" from stdin;
- serving: `--port 0`; the command loads and probes the model, builds the app and binds the port, and
  the server's endless loop is replaced by a no-op (tests/test_serve*.py serve requests for real).

Skipped, with the reason printed: `torchrun` (several processes; tests/test_distributed.py covers it),
anything that needs the Hugging Face hub, and `export` / `serve` when their extra is not installed.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from minigpt import data as D
from minigpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "QUICK_REFERENCE.md")
TEXT = "".join(
    f"ROMEO:\nBut soft, what light through yonder {w} breaks?\n\nJULIET:\nO {w}, {w}! wherefore art thou?\n\n"
    for w in ("window", "Romeo", "east", "sun", "moon", "Verona")
) * 30
TINY_TRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
              "--eval-iters", "1", "--eval-interval", "1", "--sample-length", "5", "--quiet"]
MAX_NEW_TOKENS = 20
SKIP = {  # first word(s) -> why the command is not executed
    "torchrun": "starts several processes; tests/test_distributed.py covers distributed training",
}
NEEDS_EXTRA = {"export": "transformers", "serve": "fastapi"}  # subcommand -> module of the extra it needs
NEEDS_HUB = re.compile(r"--model(-name)?\s+(gpt2|distilgpt2)|from_pretrained")


def doc_commands(name: str) -> list[str]:
    """The `minigpt ...` lines inside fenced code blocks of a document (comments and `\\` joins handled)."""
    commands, in_block, pending = [], False, ""
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.removeprefix("$ ")
        for prefix in ("python -m minigpt ", ".venv/bin/minigpt ", "torchrun "):
            if line.startswith(prefix) and prefix != "torchrun ":
                line = "minigpt " + line[len(prefix):]
        if line.startswith(("minigpt ", "torchrun ")):
            commands.append(line)
    return commands


def _set(argv: list[str], flag: str, value: str | None) -> list[str]:
    """argv with `flag value` (a switch when value is None), replacing the value already given."""
    if flag in argv:
        argv = list(argv)
        if value is not None:
            argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag] if value is None else [*argv, flag, value]


def adapt(argv: list[str]) -> tuple[list[str], str | None]:
    """The argv to run (small sizes) and the stdin to feed, for one documented command."""
    stdin = None
    if argv[0] == "train" and "--help" not in argv:
        argv = [a for a in argv if a != "--compile"]
        argv = _set(argv, "--device", "cpu")
        argv = _set(argv, "--max-iters", "4" if "--resume" in argv else "2")
        if "--max-time" in argv:
            argv = _set(argv, "--max-time", "30")
        if "--epochs" in argv:
            i = argv.index("--epochs")
            argv = argv[:i] + argv[i + 2:]
        if "--resume" not in argv:  # the examples share out/: each starts a fresh run there
            argv = _set(argv, "--overwrite", None)
        argv = [*argv, *TINY_TRAIN]
    elif argv[0] == "generate" and "--help" not in argv:
        if "--length" in argv:
            argv = _set(argv, "--length", str(min(int(argv[argv.index("--length") + 1]), MAX_NEW_TOKENS)))
        else:
            argv = [*argv, "--length", str(MAX_NEW_TOKENS)]
        if "--interactive" in argv:
            stdin = "ROMEO:\nlength 5\nquit\n"
    elif argv[0] == "serve" and "--help" not in argv:
        argv = _set(argv, "--port", "0")  # any free port: the server is built and bound, then not run
    return argv, stdin


def _no_serving(monkeypatch) -> list:
    """Let `minigpt serve` load the checkpoint, probe the model, build the app and bind its port, then
    return at once instead of serving forever; the returned list records that the server was started."""
    import uvicorn

    started: list = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.append(sockets))
    return started


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks", target_is_directory=True)
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    (tmp_path / "my_text.txt").write_text(TEXT[: len(TEXT) // 2], encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("ROMEO:\nJULIET:\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "load_shakespeare", lambda cache_dir=None: TEXT)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("MINIGPT_DEBUG", raising=False)
    return tmp_path


def run(argv: list[str], stdin: str | None, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: --help exits 0, a bad flag exits 2
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out[-1500:] + out.err[-1500:]


def test_the_docs_hold_the_commands_this_test_expects():
    """Guards the parser: if it found nothing, every other check here would pass vacuously."""
    words = {shlex.split(c, comments=True)[1] for name in DOCS for c in doc_commands(name)}
    assert {"train", "generate", "analyze-attention", "serve", "course"} <= words, words


@pytest.mark.parametrize("name", DOCS)
def test_every_documented_command_exits_0(name, workspace, monkeypatch, capsys):
    code, out = run(adapt(["train"])[0], None, monkeypatch, capsys)  # the starting state: `minigpt train`
    assert code == 0, f"set-up `minigpt train` exited {code}:\n{out}"
    ran, skipped = [], []
    for line in doc_commands(name):
        argv = shlex.split(line, comments=True)
        reason = SKIP.get(argv[0]) or SKIP.get(argv[1])
        if NEEDS_HUB.search(line):
            reason = "needs the Hugging Face hub"
        extra = NEEDS_EXTRA.get(argv[1])
        if extra and importlib.util.find_spec(extra) is None:
            reason = f"needs {extra}, which is not installed"
        if reason:
            skipped.append(f"{line}  [{reason}]")
            continue
        args, stdin = adapt(argv[1:])
        started = _no_serving(monkeypatch) if argv[1] == "serve" and "--help" not in args else None
        code, out = run(args, stdin, monkeypatch, capsys)
        assert code == 0, f"{name}: `{line}` (run as `minigpt {shlex.join(args)}`) exited {code}:\n{out}"
        assert started is None or started, f"{name}: `{line}` returned without starting the server"
        ran.append(line)
    print(f"{name}: ran {len(ran)}, skipped:", *skipped, sep="\n  ")  # shown with -s
    assert ran
