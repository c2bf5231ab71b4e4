"""Adversarial cases of issue 13: seeds that seed, exact resume from any interrupt, damaged
checkpoints, numbers at the edges, output folders, grading limits.

Tiny models in fresh processes (a run is 1-2 s); the whole file stays well under 3 minutes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 60
TINY = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "2", "--quiet"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MINIGPT_DEBUG", None)
    return env


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minigpt", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "ckpt" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k] - b[k]).abs().max().item():.3g}"


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with a message naming `words`, and never a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


# ---------------------------------------------------------------------------- 1. seeds that seed


@pytest.mark.parametrize("model", [["--model-type", "transformer"], ["--model-type", "mlp", "--n-layer", "1"]],
                         ids=["gpt", "mlp"])
def test_same_seed_same_run_in_fresh_processes(tmp_path: Path, text_file: Path, model: list[str]):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = cli("train", "--data-file", str(text_file), "--out-dir", str(out), "--max-iters", "30",
                   "--eval-interval", "10", "--sample-length", "40", "--seed", "7", *TINY, *model)
        assert proc.returncode == 0, proc.stderr
        history = json.loads((out / "history.json").read_text())
        sample = proc.stdout.split("--- sample")[1].split("---\n")[0]
        runs.append((weights(out), history["rows"], sample))
    assert_same_weights(runs[0][0], runs[1][0])
    strip = [[{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in rows]
             for _, rows, _ in runs]
    assert strip[0] == strip[1]  # losses, lr, grad norms
    assert runs[0][2] == runs[1][2]  # the sample printed at the end
    other = tmp_path / "c"
    proc = cli("train", "--data-file", str(text_file), "--out-dir", str(other), "--max-iters", "30",
               "--eval-interval", "10", "--sample-length", "0", "--seed", "8", *TINY, *model)
    assert proc.returncode == 0
    assert not all(torch.equal(v, weights(other)[k]) for k, v in runs[0][0].items())  # the seed matters


_TRAIN_SCRIPT = """
import sys, torch
from minigpt.model import GPT, GPTConfig
from minigpt.baselines import BigramLM
from minigpt.train import train, lm_batches
torch.manual_seed(3)
gpt = sys.argv[1] == "gpt"
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)) if gpt else BigramLM(11)
data = torch.randint(0, 11, (2000,), generator=torch.Generator().manual_seed(0))
h = train(model, lm_batches(data[:1800], data[1800:], 8, 4), max_iters=20, eval_interval=5, eval_iters=2,
          out_dir=None, progress=False, device="cpu", seed=5)
print(repr([p.sum().item() for p in model.parameters()]), repr([r.get("train_loss") for r in h.rows]))
"""


@pytest.mark.parametrize("kind", ["gpt", "bigram"])
def test_train_function_is_reproducible_in_fresh_processes(kind: str):
    outs = [subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, kind], capture_output=True, text=True,
                           env=_env(), timeout=120) for _ in range(2)]
    assert outs[0].returncode == 0, outs[0].stderr
    assert outs[0].stdout == outs[1].stdout


# ---------------------------------------------------------------------------- 2. exact resume


def _train_args(text_file: Path, out: Path) -> list[str]:
    return ["train", "--data-file", str(text_file), "--out-dir", str(out), "--max-iters", "400",
            "--eval-interval", "100", "--sample-length", "0", "--seed", "3", *TINY]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, text_file: Path) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = cli(*_train_args(text_file, out))
    assert proc.returncode == 0, proc.stderr
    return weights(out)


def _interrupt(text_file: Path, out: Path, signals: list[int], delay: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", *_train_args(text_file, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    for line in proc.stdout:  # printed just before fit() starts
        if line.startswith("device:"):
            break
    time.sleep(delay)
    for i, sig in enumerate(signals):
        if proc.poll() is None:
            proc.send_signal(sig)
        if i + 1 < len(signals):
            time.sleep(0.005)
    proc.wait(timeout=60)
    return proc


@pytest.mark.parametrize("trial", range(5))
def test_resume_after_any_interrupt_equals_the_straight_run(tmp_path: Path, text_file: Path, straight_run, trial):
    rng = random.Random(trial)
    signals = [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT], [signal.SIGKILL],
               [signal.SIGTERM, signal.SIGINT]][trial]
    out = tmp_path / "run"
    proc = _interrupt(text_file, out, signals, rng.uniform(0.05, 0.8))
    if proc.returncode != 0:  # the run may have finished before the signal came
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[signals[0]]
        assert proc.returncode == expected, proc.stderr.read() if proc.stderr else ""
    if signals[0] != signal.SIGKILL:  # saved at the step boundary after the signal
        assert json.loads((out / "ckpt" / "meta.json").read_text())["step"] <= 400
    resumed = cli(*_train_args(text_file, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(weights(out), straight_run)


def test_resume_keeps_the_plan_and_refuses_another_config(tmp_path: Path, text_file: Path):
    out = tmp_path / "run"
    common = ["train", "--data-file", str(text_file), "--out-dir", str(out), "--sample-length", "0", *TINY]
    assert cli(*common, "--max-iters", "30", "--warmup-iters", "5", "--schedule", "linear",
               "--eval-interval", "0").returncode == 0
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    # resumed without flags: the saved plan, not the preset's
    again = cli("train", "--data-file", str(text_file), "--out-dir", str(out), "--resume", "--quiet",
                "--device", "cpu", "--sample-length", "0")
    assert again.returncode == 0, again.stderr
    meta2 = json.loads((out / "ckpt" / "meta.json").read_text())
    for key in ("max_iters", "warmup_iters", "schedule", "batch_size", "lr", "optimizer"):
        assert meta2["train_config"][key] == meta["train_config"][key], key
    one_line_error(cli(*common, "--resume", "--n-layer", "2"), "--n-layer 2", "checkpoint")
    one_line_error(cli(*common, "--resume", "--batch-size", "8"), "batch_size", "--batch-size")
    one_line_error(cli(*common, "--resume", "--optimizer", "muon" if meta["train_config"]["optimizer"] == "adamw"
                       else "adamw"), "optimizer")
    one_line_error(cli(*common, "--max-iters", "5"), "already holds a run", "--overwrite")
    assert cli(*common, "--max-iters", "5", "--eval-interval", "0", "--overwrite").returncode == 0
    assert json.loads((out / "ckpt" / "meta.json").read_text())["step"] == 5


def test_max_time_run_resumes_with_its_planned_steps(tmp_path: Path, text_file: Path):
    out = tmp_path / "timed"
    common = ["train", "--data-file", str(text_file), "--out-dir", str(out), "--sample-length", "0",
              "--eval-interval", "0", *TINY]
    first = subprocess.Popen([sys.executable, "-m", "minigpt", *common, "--max-time", "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("device:"):
            break
    time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) in (0, 130)
    planned = json.loads((out / "ckpt" / "meta.json").read_text())["train_config"]
    resumed = cli(*common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    assert meta["train_config"]["max_iters"] == planned["max_iters"]
    assert meta["train_config"]["max_time_s"] == 3
