"""`minigpt train --config`, the resolved run.toml, `--logger`, and what the progress display writes.

Config files are parsed in this process (through `build_parser`, as `minigpt train` does); runs whose
output is checked are real `python -m minigpt train` subprocesses with stderr captured (a pipe, not
a terminal), and one under a pseudo-terminal for the bar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from minigpt.cli import build_parser, main
from minigpt.training.history import ProgressLog
from minigpt.training.loggers import LoggerCallback, WandbLogger, make_logger, scalars
from minigpt.training.runconfig import load_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nO Romeo, Romeo!\n\n" * 40
TINY = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "1", "--sample-length", "0"]


def parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


def run_train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    for name in ("MINIGPT_DEBUG", "TQDM_DISABLE", "MINIGPT_PROGRESS_INTERVAL"):
        if name not in (env or {}):
            full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "minigpt", "train", *args], capture_output=True, text=True,
                          env=full, timeout=300)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- config files


def test_toml_and_yaml_give_the_flags_values(tmp_path):
    (tmp_path / "a.toml").write_text('batch_size = 3\nlr = 2e-3\nposition = "learned"\nresume = true\n')
    # YAML 1.1 reads 1e-3 as text; the flag's own type turns it into a number
    (tmp_path / "a.yaml").write_text("batch-size: 3\nlr: 1e-3\nposition: learned\nresume: true\n")
    for name, lr in (("a.toml", 2e-3), ("a.yaml", 1e-3)):
        args = parse("--config", str(tmp_path / name))
        assert (args.batch_size, args.lr, args.position, args.resume) == (3, lr, "learned", True)
        assert args.n_layer is None and args.logger == "csv"  # untouched flags keep their defaults


def test_flags_on_the_command_line_override_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('batch_size = 3\ndevice = "cuda"\ndtype = "bf16"\n')
    args = parse("--batch-size", "5", "--config", str(path), "--device", "auto")  # before and after --config
    assert (args.batch_size, args.device, args.dtype) == (5, "auto", "bfloat16")
    assert parse("--config", str(path)).device == "cuda"
    assert parse().batch_size is None  # the file's values do not stick to the parser


@pytest.mark.parametrize("content, words", [
    ("batch_sise = 3\n", ["unknown key 'batch_sise'", "batch_size"]),
    ("nonsense_key = 3\n", ["unknown key 'nonsense_key'", "known keys:", "max_iters"]),
    ("lr = -1\n", ["lr", "must be a number > 0"]),
    ('position = "alibi"\n', ["position must be one of", "rope"]),
    ('compile = "yes"\n', ["compile must be true or false"]),
    ("max_iters = [1, 2]\n", ["max_iters must be a number or a string"]),
    ("max_iters = \n", ["config file"]),  # not TOML
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, words):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("minigpt train: error: ")
    for w in words:
        assert w in err


def test_missing_file_and_wrong_suffix(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    for path, words in ((tmp_path / "nope.toml", "does not exist"), (tmp_path / "run.json", ".toml, .yaml")):
        with pytest.raises(SystemExit):
            main(["train", "--config", str(path)])
        assert words in capsys.readouterr().err


def test_to_toml_reads_back_the_same_values():
    values = {"s": 'quo"te \\ ü\n', "i": 3, "f": 1e-05, "g": 0.1, "b": False, "big": 3e20}
    assert tomllib.loads(to_toml(values, "a header\nline two")) == values


def test_resolved_config_is_saved_and_reruns_the_same_run(tmp_path, text_file):
    out = tmp_path / "a"
    r = run_train("--data-file", str(text_file), "--out-dir", str(out), "--epochs", "0.02",
                  "--eval-interval", "2", "--quiet", *TINY)
    assert r.returncode == 0, r.stderr
    saved = tomllib.loads((out / "run.toml").read_text())
    meta = json.loads((out / "ckpt" / "meta.json").read_text())
    assert meta["metadata"]["run_config"] == saved  # the checkpoint keeps the same settings
    # effective values, not what was typed: the preset's and the planned ones are filled in
    assert saved["max_iters"] == meta["train_config"]["max_iters"] >= 1 and "epochs" not in saved
    assert saved["n_head"] == 2 and saved["n_layer"] == 1 and "d_ff" not in saved and saved["optimizer"] == "muon"
    assert saved["warmup_iters"] == meta["train_config"]["warmup_iters"] and "resume" not in saved

    again = tmp_path / "b"
    r = run_train("--config", str(out / "run.toml"), "--out-dir", str(again))
    assert r.returncode == 0, r.stderr
    rerun = tomllib.loads((again / "run.toml").read_text())
    assert rerun == {**saved, "out_dir": str(again)}
    # the same TrainConfig and model shape (equal losses also need the model's initialisation seeded,
    # which is the trainer's business, not the config file's)
    meta2 = json.loads((again / "ckpt" / "meta.json").read_text())
    assert {**meta["train_config"], "out_dir": None} == {**meta2["train_config"], "out_dir": None}
    assert meta["model_config"] == meta2["model_config"]


def test_the_shipped_example_config_parses():
    values = load_config(ROOT / "examples" / "shakespeare.toml")
    args = parse("--config", str(ROOT / "examples" / "shakespeare.toml"))
    assert all(getattr(args, k) is not None for k in values)


# ---------------------------------------------------------------------------- loggers


class FakeWandb(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("wandb")
        self.calls: list[tuple] = []

    def init(self, project=None, config=None, dir=None, mode=None):
        self.calls.append(("init", project, dict(config or {}), dir, mode))
        return object()

    def log(self, data, step=None):
        self.calls.append(("log", dict(data), step))

    def finish(self):
        self.calls.append(("finish",))


class Event:
    def __init__(self, kind, step, rows):
        self.kind, self.step = kind, step
        self.history = types.SimpleNamespace(rows=rows)


ROWS = [
    {"step": 0, "event": "eval", "train_loss": 3.5, "val_loss": 3.6, "val_ppl": 36.6, "lr": None},
    {"step": 10, "event": "step", "train_loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0,
     "tokens_seen": 640},
    {"step": 10, "event": "completed", "val_loss": 3.6},
]


def test_wandb_logger_gets_the_history_rows(monkeypatch, tmp_path):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    callback = LoggerCallback(make_logger("wandb", tmp_path, {"lr": 1e-3}))
    callback(Event("eval", 0, ROWS[:1]))
    callback(Event("step", 10, ROWS[:2]))
    callback(Event("end", 10, ROWS))
    assert fake.calls[0] == ("init", "minigpt", {"lr": 1e-3}, str(tmp_path), "offline")
    assert fake.calls[1] == ("log", {"eval/train_loss": 3.5, "eval/val_loss": 3.6, "eval/val_ppl": 36.6}, 0)
    assert fake.calls[2] == ("log", {"train/loss": 2.0, "train/lr": 1e-3, "train/grad_norm": 0.5,
                                     "train/tokens_per_s": 900.0, "train/tokens_seen": 640.0}, 10)
    assert fake.calls[3] == ("log", {"status": "completed"}, 10)
    assert fake.calls[4] == ("finish",)


def test_a_resumed_run_does_not_log_the_loaded_rows_again():
    sent = []
    logger = types.SimpleNamespace(log_row=sent.append, close=lambda: None)
    callback = LoggerCallback(logger)
    new = {"step": 11, "event": "step", "train_loss": 1.0}
    callback(Event("step", 11, [*ROWS[:2], new]))  # rows up to step 10 came from the checkpoint
    assert sent == [new]


@pytest.mark.parametrize("name, package", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_logger_package_is_one_line(monkeypatch, tmp_path, text_file, capsys, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    if package == "tensorboard":
        monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    code = main(["train", "--data-file", str(text_file), "--out-dir", str(tmp_path), "--max-iters", "1",
                 "--logger", name, *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"--logger {name} needs the {package} package: pip install {package}" in err[0]


def test_tensorboard_logger_writes_the_scalars(tmp_path, text_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = run_train("--data-file", str(text_file), "--out-dir", str(tmp_path), "--max-iters", "20",
                  "--eval-interval", "10", "--logger", "tensorboard", *TINY)
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    history = json.loads((tmp_path / "history.json").read_text())["rows"]
    evals = [(row["step"], row["val_loss"]) for row in history if row["event"] == "eval"]
    assert [s.step for s in events.Scalars("eval/val_loss")] == [step for step, _ in evals] == [0, 10, 20]
    assert [s.value for s in events.Scalars("eval/val_loss")] == pytest.approx([v for _, v in evals])
    steps = [(row["step"], row["train_loss"]) for row in history if row["event"] == "step"]
    assert [s.step for s in events.Scalars("train/loss")] == [step for step, _ in steps] == [10, 20]
    assert [s.value for s in events.Scalars("train/loss")] == pytest.approx([v for _, v in steps])
    assert {"train/lr", "train/tokens_per_s"} <= set(events.Tags()["scalars"])


def test_wandb_offline_run_stays_on_disk(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger("minigpt-test", {"lr": 1e-3}, dir=tmp_path)
    for row in ROWS:
        logger.log_row(row)
    logger.close()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "offline mode writes the run under dir/wandb"


def test_scalars_skip_missing_values():
    assert scalars({"step": 3, "event": "eval", "train_loss": 1.0, "val_loss": None}) == {"eval/train_loss": 1.0}
    assert scalars({"step": 3, "event": "stopped"}) == {}


# ---------------------------------------------------------------------------- progress display


def test_no_carriage_returns_when_stderr_is_not_a_terminal(tmp_path, text_file):
    r = run_train("--data-file", str(text_file), "--out-dir", str(tmp_path), "--max-iters", "20",
                  "--eval-interval", "10", "--progress-interval", "0", *TINY)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\r" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.startswith("train: step ")]
    assert len(lines) == 20 and lines[-1].startswith("train: step 20/20 (100%), loss ")
    assert "step 10: train loss" in r.stdout


def test_plain_lines_come_every_interval(tmp_path, text_file):
    r = run_train("--data-file", str(text_file), "--out-dir", str(tmp_path), "--max-iters", "20",
                  "--eval-interval", "0", *TINY, env={"MINIGPT_PROGRESS_INTERVAL": "3600"})
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("train: step ")]
    assert lines == [lines[0]] and lines[0].startswith("train: step 20/20")  # only the closing line


def test_quiet_keeps_the_evaluation_lines(tmp_path, text_file):
    r = run_train("--data-file", str(text_file), "--out-dir", str(tmp_path), "--max-iters", "20",
                  "--eval-interval", "10", "--progress-interval", "0", "--quiet", *TINY)
    assert r.returncode == 0, r.stderr
    assert "train: step" not in r.stderr and "\r" not in r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines() if " val loss " in line and "train loss" in line] \
        == ["step 0", "step 10", "step 20"]


def _under_a_terminal(env: dict[str, str]) -> str:
    """What ProgressLog writes to a pseudo-terminal's stderr in a child process."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    code = ("from minigpt.training.history import ProgressLog\n"
            "p = ProgressLog(True, interval=0)\np.open(5, 0, 0)\n"
            "for _ in range(5): p.advance()\np.close()\n")
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    full.pop("TQDM_DISABLE", None) if "TQDM_DISABLE" not in env else None
    subprocess.run([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL, env=full, timeout=120,
                   check=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks).decode()


def test_a_terminal_gets_the_bar_unless_tqdm_is_disabled():
    assert "\r" in _under_a_terminal({})  # tqdm redraws its line
    plain = _under_a_terminal({"TQDM_DISABLE": "1"})
    assert "\r\n" in plain or "\n" in plain  # the terminal's own line ends
    assert plain.replace("\r\n", "\n").count("\r") == 0 and "train: step 5/5" in plain


def test_progress_log_disabled_prints_nothing(capsys):
    p = ProgressLog(False, interval=0)
    p.open(3, 0, 0)
    p.advance()
    p.say("step 1: hidden")
    p.close()
    assert capsys.readouterr() == ("", "")
