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
    assert math.isclose(got, float(sum(expected).detach()) / 29, rel_tol=1e-5)


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


def test_attn_dropout_knob_drops_attention_weights_only():
    from minigpt.model import GPTConfig

    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    model = speedrun.build_model(cfg, {"attn_dropout": 0.0})
    assert [b.attn.dropout for b in model.transformer.h] == [0.0, 0.0]
    assert all(m.p == 0.1 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # residual branches keep it
    # no knob: the model's own dropout everywhere
    assert [b.attn.dropout for b in speedrun.build_model(cfg, {}).transformer.h] == [0.1, 0.1]
    # with dropout off everywhere, two training-mode passes agree: nothing random is left
    off = speedrun.build_model(GPTConfig(**{**cfg.to_dict(), "dropout": 0.0}), {"attn_dropout": 0.0})
    x = torch.randint(0, 11, (2, 16))
    assert torch.equal(off(x)[0], off(x)[0])
    with pytest.raises(ValueError, match="attn_dropout"):
        speedrun.build_model(cfg, {"attn_dropout": 1.5})


def test_train_loss_is_the_windowed_loss_on_the_end_of_the_training_split():
    from minigpt.tokenizer import CharTokenizer

    text = "to be or not to be, that is the question. " * 40
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train, val = ids[:1400], ids[1400:]
    recipe = speedrun.Recipe("speedrun-cpu", {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16},
                             {"batch_size": 2, "warmup_iters": 1})
    res = speedrun.train_run(recipe, (train, val, tok), seed=0, steps=4, eval_steps=2, train_loss=True,
                             verbose=False)
    assert [e["step"] for e in res["evals"]] == [2, 4]
    assert all("train_loss" in e and math.isfinite(e["train_loss"]) for e in res["evals"])
    plain = speedrun.train_run(recipe, (train, val, tok), seed=0, steps=4, eval_steps=2, verbose=False)
    assert "train_loss" not in plain["evals"][0]
    assert [e["val_loss"] for e in plain["evals"]] == [e["val_loss"] for e in res["evals"]]  # measuring changes nothing


@pytest.mark.parametrize("amx, avx512_bf16, expected",
                         [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_matmul_probe_reads_both_of_torchs_probes(monkeypatch, amx, avx512_bf16, expected):
    from _common import cpu_has_bf16_matmul, machine_info

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert cpu_has_bf16_matmul() is expected
    assert machine_info()["cpu_bf16_matmul"] is expected


def test_bf16_matmul_probe_says_false_when_torch_drops_its_private_probes(monkeypatch):
    from _common import cpu_has_bf16_matmul

    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert cpu_has_bf16_matmul() is False


def test_bf16_on_a_cpu_without_bf16_units_prints_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(speedrun, "cpu_has_bf16_matmul", lambda: False)
    monkeypatch.setattr(speedrun, "shakespeare_ids", lambda: (_ for _ in ()).throw(SystemExit(0)))
    monkeypatch.setattr(sys, "argv", ["speedrun.py", "--quick", "--train-arg", "dtype=bfloat16"])
    with pytest.raises(SystemExit):
        speedrun.main()
    assert "no bf16 matrix units" in capsys.readouterr().out
