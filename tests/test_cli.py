"""The `minigpt` command line, driven the way a student drives it: in a subprocess.

One tiny model is trained once per module (1 layer, width 16, 30 steps on a small text file);
generation is checked against a greedy decoder written here from the model's logits alone, so
the CLI's output is compared with something it did not compute itself.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import load_checkpoint
from minigpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 40
TINY = ["--device", "cpu", "--n_layer", "1", "--n-head", "2", "--n_embd", "16", "--block_size", "16",
        "--batch_size", "4", "--eval-iters", "2", "--quiet"]


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("MINIGPT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "minigpt", *args], input=stdin, capture_output=True, text=True,
        cwd=cwd, env=env, timeout=180,
    )


def greedy_reference(folder: Path, prompt: str, n: int) -> str:
    """Greedy decoding from the raw logits, without minigpt.generation."""
    model, info = load_checkpoint(folder)
    tok = info.tokenizer
    idx = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -model.config.block_size :])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tok.decode(idx[0].tolist())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    (work / "text.txt").write_text(TEXT, encoding="utf-8")
    out = work / "out"
    r = run_cli("train", "--data_file", str(work / "text.txt"), "--out_dir", str(out), "--max_iters", "30",
                "--eval_interval", "15", "--lr", "3e-3", "--sample-length", "20", *TINY)
    assert r.returncode == 0, r.stderr
    assert "--- sample" in r.stdout and "stopped (completed) after 30 steps" in r.stdout
    return out


def test_train_writes_checkpoint_with_the_flags(trained: Path):
    meta = json.loads((trained / "ckpt" / "meta.json").read_text())
    cfg = meta["model_config"]
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["block_size"]) == (1, 2, 16, 16)
    assert cfg["vocab_size"] == len(set(TEXT))  # the char tokenizer of the given file
    assert meta["step"] == 30 and meta["train_config"]["lr"] == 3e-3 and meta["train_config"]["batch_size"] == 4
    assert meta["tokenizer"]["class"] == "CharTokenizer"
    assert (trained / "best" / "meta.json").is_file() and (trained / "history.csv").is_file()


def test_generate_greedy_matches_reference(trained: Path):
    r = run_cli("generate", "--checkpoint", str(trained), "--prompt", "All:", "--length", "25", "--greedy")
    assert r.returncode == 0, r.stderr
    assert "best" in r.stderr  # an out dir resolves to its best/ weights
    assert r.stdout == greedy_reference(trained / "best", "All:", 25) + "\n"


def test_generate_seeded_stream_and_prompts_file(trained: Path, tmp_path: Path, capsys):
    args = ["generate", "--checkpoint", str(trained), "--length", "30", "--seed", "7", "--top-k", "5",
            "--prompt", "Speak"]
    streamed = run_cli(*args, "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert plain.startswith("Speak") and len(plain) == len("Speak") + 30 + 1
    assert streamed.stdout == plain  # same seed, same tokens, printed as they come

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First\n\nAll:\nYou are\n", encoding="utf-8")  # the blank line is skipped
    assert main(["generate", "--checkpoint", str(trained), "--prompts_file", str(prompts), "--length", "10",
                 "--greedy"]) == 0
    blocks = capsys.readouterr().out.split("=== prompt ")[1:]
    assert len(blocks) == 3
    for block, prompt in zip(blocks, ["First", "All:", "You are"]):
        body = block.split(" ===\n", 1)[1]
        assert body == greedy_reference(trained / "best", prompt, 10) + "\n"


def test_interactive_commands_through_stdin(trained: Path):
    script = "temp 0.8\ntopk 40\ntopp 0.9\nlength 12\ntemp 0\ngreedy on\nAll:\nquit\nFirst\n"
    r = run_cli("generate", "--checkpoint", str(trained), "--interactive", stdin=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ok: temp 0.8," in out and "topk 40" in out and "topp 0.9" in out and "length 12" in out
    assert "error: temperature must be > 0" in out  # a bad value is reported, the session goes on
    assert greedy_reference(trained / "best", "All:", 12) in out
    assert "First" + greedy_reference(trained / "best", "First", 12)[5:] not in out  # nothing after quit


def test_interactive_ends_on_eof(trained: Path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("length 5\ngreedy on\nAll:\n"))
    assert main(["generate", "--checkpoint", str(trained), "--interactive"]) == 0
    assert greedy_reference(trained / "best", "All:", 5) in capsys.readouterr().out


def test_bad_values_exit_2_without_traceback(trained: Path):
    r = run_cli("generate", "--checkpoint", str(trained / "missing"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "looked for" in r.stderr and "minigpt train" in r.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--temperature", "-0.5"], "Use --greedy"),
        (["--top-k", "0"], "top_k must be an integer >= 1"),
        (["--length", "ten"], "expected a whole number"),
        (["--prompt", "Zé🙂ra"], "'Z', 'é', '🙂'"),  # every unknown character is listed
        (["--prompt", "a", "--interactive"], "only one of"),
    ],
)
def test_generate_bad_values(trained: Path, capsys, argv, message):
    try:
        code = main(["generate", "--checkpoint", str(trained), *argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_train_bad_values(tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    base = ["train", "--data-file", str(text), "--out-dir", str(tmp_path / "o"), "--quiet"]
    assert main([*base, "--n-embd", "10", "--n-head", "3"]) == 2
    assert "not divisible by n_head=3" in capsys.readouterr().err
    assert main([*base, "--block-size", str(len(TEXT))]) == 2
    assert "Use more text or a smaller block_size" in capsys.readouterr().err
    assert main(["train", "--data-file", str(tmp_path / "nope.txt")]) == 2
    assert "text file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--lr", "0"])
    assert e.value.code == 2 and "--lr: must be a number > 0" in capsys.readouterr().err


def test_epochs_become_iterations_and_baselines_train(tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "mlp"
    code = main(["train", "--data-file", str(text), "--out-dir", str(out), "--model-type", "mlp",
                 "--epochs", "0.5", "--batch-size", "8", "--block-size", "32", "--eval-interval", "0",
                 "--sample-length", "0", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    n_train = int(len(TEXT) * 0.9)
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    assert meta["model_class"] == "MLPLM" and meta["step"] == math.ceil(0.5 * n_train / (8 * 32))


def test_help_lists_examples_and_presets(capsys):
    for argv in (["--help"], ["train", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "nanogpt-cpu" in out and "--interactive" in out
    assert "--num_epochs" not in out  # aliases are accepted but not advertised


def test_max_time_plans_the_schedule_from_measured_speed(tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "timed"
    code = main(["train", "--data-file", str(text), "--out-dir", str(out), "--max-time", "2", "--eval-interval",
                 "0", "--sample-length", "0", *TINY])
    printed = capsys.readouterr().out
    assert code == 0
    planned = int(printed.split("so ")[1].split(" steps fit")[0])
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    assert meta["train_config"]["max_iters"] == planned and meta["train_config"]["max_time_s"] == 2
    assert meta["train_config"]["lr_decay_iters"] is None  # the decay ends at the planned last step


def test_optimizer_and_position_flags_and_resume_keeps_the_optimizer(tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "adamw"
    common = ["train", "--data-file", str(text), "--out-dir", str(out), "--eval-interval", "2",
              "--sample-length", "0", *TINY]
    assert main([*common, "--max-iters", "4", "--optimizer", "adamw", "--position", "learned"]) == 0
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    assert meta["train_config"]["optimizer"] == "adamw" and meta["model_config"]["position"] == "learned"
    # the default preset trains with Muon, but a resumed run must keep the optimizer its state belongs to
    assert main([*common, "--max-iters", "6", "--resume"]) == 0
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["train_config"]["optimizer"] == "adamw"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--optimizer", "sgd"])
    assert exc.value.code == 2 and "invalid choice: 'sgd'" in capsys.readouterr().err


def test_every_flag_accepts_underscores_by_one_rule():
    from minigpt.cli import _dashed, build_parser

    argv = ["train", "--batch_size", "4", "--out_dir=runs/a_b", "--max_iters", "3", "--", "--x_y"]
    assert _dashed(argv) == ["train", "--batch-size", "4", "--out-dir=runs/a_b", "--max-iters", "3", "--", "--x_y"]
    args = build_parser().parse_args(_dashed(argv[:-2]))
    assert (args.batch_size, args.out_dir, args.max_iters) == (4, "runs/a_b", 3)
    with pytest.raises(SystemExit):  # other words for a flag are gone: one spelling, dashes or underscores
        build_parser().parse_args(["train", "--learning-rate", "1e-3"])
