"""bench/speedrun.py: the rules it enforces (whole validation split, clock-driven schedule) and a smoke run."""

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
speedrun = pytest.importorskip("speedrun")


def test_full_val_loss_predicts_every_token_after_the_first_once():
    from minigpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    val = torch.randint(0, 11, (30,))  # 29 predictions: windows of 8, 8, 8 and a tail of 5
    expected = []
    for s in range(0, 29, 8):
        x, y = val[s:min(s + 8, 29)], val[s + 1:min(s + 9, 30)]
        logits, _ = model(x[None])
        expected.append(torch.nn.functional.cross_entropy(logits[0], y, reduction="sum"))
    got = speedrun.full_val_loss(model, val, 8, batch=2)
    assert math.isclose(got, float(sum(expected)) / 29, rel_tol=1e-5)


def test_schedule_runs_on_progress_and_the_window_grows():
    from minigpt.presets import get_preset

    tcfg = get_preset("shakespeare-cpu").train_config(warmup_iters=10)  # linear decay to 0
    assert speedrun.lr_at_progress(tcfg, 0, 0.0) == pytest.approx(tcfg.lr / 11)
    assert speedrun.lr_at_progress(tcfg, 50, 0.5) == pytest.approx(tcfg.lr / 2, rel=1e-3)
    assert speedrun.lr_at_progress(tcfg, 99, 0.9999) < 1e-5
    wsd = [speedrun.lr_at_progress(tcfg, 50, p, cooldown=0.4) for p in (0.3, 0.6, 0.8, 1.0)]
    assert wsd == pytest.approx([tcfg.lr, tcfg.lr, tcfg.lr / 2, 0.0])
    lengths = [speedrun.seq_len_at(128, p, 0.5) for p in (0.0, 0.25, 0.5, 0.9)]
    assert lengths[0] == 32 and lengths[1] == 80 and lengths[2:] == [128, 128]
    assert speedrun.seq_len_at(128, 0.0, 0.0) == 128


def test_quick_smoke_run_prints_a_records_row(tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "speedrun.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    row = [ln for ln in out.stdout.splitlines() if ln.startswith("| 20")]
    assert len(row) == 1 and "seed 1337" in row[0] and "1 threads" in row[0] and "bench/speedrun.py --quick" in row[0]
    assert time.perf_counter() - t0 < 120
