"""Trainer: schedules against torch's schedulers, one step against a hand-written AdamW loop,
accumulation, stopping rules, the NaN guard, Ctrl-C, history files, and exact resume."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import (
    VOCAB,
    TinyConfig,
    TinyLM,
    TinySeq2Seq,
    fixed_batch,
    lm_data,
    quiet,
    tiny_gpt,
)

from minigpt.checkpoint import latest_checkpoint, load_checkpoint, load_train_state
from minigpt.schedule import lr_at
from minigpt.train import History, TrainConfig, Trainer, TrainingDiverged, configure_optimizer, train

HELPER = Path(__file__).with_name("_train_helpers.py")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core box OpenMP barriers cost ~10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------------------- schedules


def _torch_schedule(scheduler_cls, steps, **kwargs):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler_cls(opt, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_torch_cosine_annealing_after_warmup():
    lr, min_lr, warmup, decay = 1.0, 0.1, 10, 60
    ours = [lr_at(s, lr=lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=decay) for s in range(warmup, decay)]
    ref = _torch_schedule(torch.optim.lr_scheduler.CosineAnnealingLR, decay - warmup, T_max=decay - warmup,
                          eta_min=min_lr)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert lr_at(decay + 5, lr=lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=decay) == min_lr


def test_linear_matches_torch_linear_lr_and_warmup_is_hand_computed():
    lr, min_lr, warmup, decay = 2.0, 0.5, 4, 20
    ours = [lr_at(s, lr=lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=decay, schedule="linear")
            for s in range(warmup, decay)]
    ref = _torch_schedule(torch.optim.lr_scheduler.LinearLR, decay - warmup, start_factor=1.0,
                          end_factor=min_lr / lr, total_iters=decay - warmup)
    assert [lr * r for r in ref] == pytest.approx(ours, abs=1e-9)
    # warmup: lr * (step + 1) / (warmup + 1) -> 0.4, 0.8, 1.2, 1.6, then the peak
    warm = [lr_at(s, lr=lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=decay) for s in range(5)]
    assert warm == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])
    assert lr_at(999, lr=lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=decay, schedule="constant") == lr
    with pytest.raises(ValueError, match="cosine"):
        lr_at(0, lr=1, min_lr=0, warmup_iters=0, decay_iters=1, schedule="exp")


@pytest.mark.parametrize("bad, match", [
    (dict(schedule="step"), "schedule"), (dict(dtype="fp8"), "dtype"), (dict(lr=0), "lr"),
    (dict(max_iters=0), "max_iters"), (dict(min_lr=1.0, lr=0.1), "min_lr"),
    (dict(early_stopping_patience=2, eval_interval=0), "early stopping"),
])
def test_train_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


# ---------------------------------------------------------------------------- one step


def test_optimizer_groups_decay_matrices_only_and_count_tied_weight_once():
    model = tiny_gpt()
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert any(p is model.transformer.wte.weight for p in decay["params"])  # tied with lm_head, once


def test_one_step_equals_hand_written_adamw_loop():
    # reference: the textbook loop with torch's own AdamW, clipping and the scheduled lr
    x, y = fixed_batch()
    cfg = quiet(max_iters=1, eval_interval=0, grad_clip=0.05, weight_decay=0.1, warmup_iters=3)
    ref = tiny_gpt(seed=3)
    ours = tiny_gpt(seed=3)
    params = list(ref.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=cfg.lr / 4, betas=(cfg.beta1, cfg.beta2))  # warmup step 0: lr * 1/4
    _, loss = ref(x, y)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, 0.05)
    opt.step()
    history = Trainer(ours, lambda split, g: (x, y), cfg).fit()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    row = history.steps[0]
    assert row["train_loss"] == pytest.approx(loss.item()) and row["grad_norm"] == pytest.approx(norm.item())
    assert row["lr"] == pytest.approx(cfg.lr / 4) and row["tokens_seen"] == y.numel()


def test_grad_accumulation_equals_one_big_batch():
    x, y = fixed_batch(batch_size=8)
    halves = iter([(x[:4], y[:4]), (x[4:], y[4:])] * 3)
    big, small = tiny_gpt(seed=1), tiny_gpt(seed=1)
    Trainer(big, lambda s, g: (x, y), quiet(max_iters=3, eval_interval=0)).fit()
    Trainer(small, lambda s, g: next(halves), quiet(max_iters=3, eval_interval=0, grad_accum=2)).fit()
    start = tiny_gpt(seed=1)
    for a, b in zip(big.parameters(), small.parameters()):
        # the key bias has an analytically zero gradient (softmax ignores a shift shared by all keys):
        # its rounding noise differs between the two summation orders and Adam turns it into ~1e-6
        # steps, while real updates here are ~1e-3 (checked below)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    moved = max((a - c).abs().max().item() for a, c in zip(big.parameters(), start.parameters()))
    assert moved > 1e-3


# ---------------------------------------------------------------------------- training runs


def test_gpt_learns_and_history_is_written(tmp_path):
    model = tiny_gpt()
    cfg = quiet(max_iters=60, eval_interval=20, eval_iters=4, log_interval=10, out_dir=str(tmp_path), lr=1e-2)
    history = Trainer(model, lm_data(), cfg).fit()
    assert history.status == "completed"
    evals = history.evals
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert evals[0]["val_loss"] == pytest.approx(math.log(VOCAB), abs=0.15)  # init: ~uniform
    # the stream is 90% deterministic: optimal loss ~ 0.1*ln(11) + H(0.9..) ~ 0.5, far below ln(11) = 2.4
    assert evals[-1]["val_loss"] < 1.2
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    assert history.best_val_loss == min(r["val_loss"] for r in evals)
    assert [r["step"] for r in history.steps] == [10, 20, 30, 40, 50, 60]
    assert history.steps[-1]["tokens_seen"] == 60 * 4 * 8
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["status"] == "completed" and len(saved["rows"]) == len(history)
    csv_lines = (tmp_path / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,event,train_loss,val_loss") and len(csv_lines) == len(history) + 1
    assert (tmp_path / "best" / "model.safetensors").exists() and latest_checkpoint(tmp_path) == tmp_path / "ckpt"
    _, info = load_checkpoint(tmp_path / "best")
    assert info.step == history.best_step and info.best_val_loss == pytest.approx(history.best_val_loss)
    assert info.train_config["max_iters"] == 60


def test_evaluation_uses_the_same_batches_every_time():
    trainer = Trainer(TinyLM(TinyConfig()), lm_data(), quiet())
    a, b = trainer.evaluate(), trainer.evaluate()
    assert a == b and set(a) == {"train", "val"}
    # an independent estimate from fresh random batches lands near it (same untrained model)
    g = torch.Generator().manual_seed(99)
    get_batch = lm_data()
    with torch.no_grad():
        ref = torch.stack([trainer.model(*get_batch("val", g))[1] for _ in range(50)]).mean().item()
    assert a["val"] == pytest.approx(ref, abs=0.1)


def test_seq2seq_batch_of_three_tensors_trains():
    # encoder-decoder batches are (src, tgt_in, targets): the trainer calls model(*batch)
    def get_batch(split, g):
        src = torch.randint(1, VOCAB, (8, 6), generator=g)
        tgt = src.flip(1)
        return src, torch.cat([torch.zeros(8, 1, dtype=torch.long), tgt[:, :-1]], 1), tgt

    history = train(TinySeq2Seq(TinyConfig(n_embd=16)), get_batch, quiet(max_iters=40, eval_interval=20, lr=3e-2))
    assert history.evals[-1]["val_loss"] < history.evals[0]["val_loss"] - 0.3


def test_early_stopping_and_callback_stop():
    # lr so small nothing improves by min_delta: stops after `patience` evaluations past the first
    cfg = quiet(max_iters=100, eval_interval=2, lr=1e-9, early_stopping_patience=2, min_delta=1e-3)
    history = Trainer(TinyLM(TinyConfig()), lm_data(), cfg).fit()
    assert history.status == "early_stopped" and history[-1]["event"] == "early_stopped"
    assert [r["step"] for r in history.evals] == [0, 2, 4]

    seen = []
    history = train(TinyLM(TinyConfig()), lm_data(), quiet(max_iters=50),
                    callback=lambda ev: seen.append(ev.kind) or (ev.kind == "step" and ev.step == 3))
    assert history.status == "stopped" and history[-1]["step"] == 3
    assert seen[:4] == ["eval", "step", "step", "step"] and seen[-1] == "end"


def test_time_budget_stops_training():
    history = train(TinyLM(TinyConfig()), lm_data(), quiet(max_iters=10**7, eval_interval=0, max_time_s=0.5))
    assert history.status == "time_limit"
    assert 0.5 <= history[-1]["elapsed"] < 30 and 1 <= history[-1]["step"] < 10**7


def test_nan_guard_stops_before_the_update_and_keeps_the_good_checkpoint(tmp_path):
    model = TinyLM(TinyConfig())

    def poison(event):  # after step 5, a NaN weight: the step-6 loss is NaN
        if event.kind == "step" and event.step == 5:
            with torch.no_grad():
                model.head.bias[0] = float("nan")

    cfg = quiet(max_iters=20, eval_interval=0, checkpoint_interval=4, out_dir=str(tmp_path))
    with pytest.raises(TrainingDiverged) as err:
        Trainer(model, lm_data(), cfg, callback=poison).fit()
    msg = str(err.value)
    assert "step 6" in msg and "grad norm=nan" in msg and "lr=" in msg and "lower lr" in msg
    assert str(tmp_path / "ckpt") in msg
    assert err.value.history.status == "diverged" and err.value.history[-1]["event"] == "diverged"
    good, info = load_checkpoint(tmp_path / "ckpt", model=TinyLM(TinyConfig()))
    assert info.step == 4 and all(torch.isfinite(p).all() for p in good.parameters())
    assert json.loads((tmp_path / "history.json").read_text())["status"] == "diverged"


def test_save_refuses_nan_weights(tmp_path):
    model = TinyLM(TinyConfig())
    trainer = Trainer(model, lm_data(), quiet(out_dir=str(tmp_path)))
    trainer.save()
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.emb.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="not saving"):
        trainer.save()
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before


def test_keyboard_interrupt_saves_and_returns(tmp_path):
    def interrupt(event):
        if event.kind == "step" and event.step == 7:
            raise KeyboardInterrupt

    model = TinyLM(TinyConfig())
    history = train(model, lm_data(), quiet(max_iters=50, out_dir=str(tmp_path)), callback=interrupt)
    assert history.status == "interrupted" and history[-1]["event"] == "interrupted"
    assert load_train_state(tmp_path / "ckpt")["step"] == 7
    loaded, _ = load_checkpoint(tmp_path / "ckpt", model=TinyLM(TinyConfig()))
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_bad_batches_and_models_get_clear_errors():
    with pytest.raises(TypeError, match="tuple of tensors"):
        train(TinyLM(TinyConfig()), lambda s, g: torch.zeros(2, 3, dtype=torch.long), quiet())

    class NoLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, y=None):
            return x.float() * self.w, None

    with pytest.raises(TypeError, match="targets as the last element"):
        train(NoLoss(), lm_data(), quiet())


def test_history_roundtrip_and_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    history = train(TinyLM(TinyConfig()), lm_data(), quiet(max_iters=6, eval_interval=3))
    again = History.from_dict(json.loads(history.to_json(tmp_path / "h.json")))
    assert again.rows == history.rows and again.status == "completed"
    ax = history.plot()
    assert len(ax.lines) == 3 and ax.get_xlabel() == "step"


# ---------------------------------------------------------------------------- resume


def _step_losses(history_rows):
    return {r["step"]: r["train_loss"] for r in history_rows if r["event"] == "step"}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_in_a_fresh_process_is_exact(tmp_path, optimizer):
    """N=12 steps straight vs 6 steps here + resume in a new Python process for the rest."""
    from _train_helpers import _run

    _run(str(tmp_path / "straight"), 12, False, optimizer)  # both in-process runs use 1 thread, as the
    _run(str(tmp_path / "split"), 6, False, optimizer)  # subprocess does, so the arithmetic is identical
    flags = ["--resume"] + (["--muon"] if optimizer == "muon" else [])
    proc = subprocess.run([sys.executable, str(HELPER), "run", str(tmp_path / "split"), "12", *flags],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["rows"]
    split = json.loads((tmp_path / "split" / "history.json").read_text())["rows"]
    a, b = _step_losses(straight), _step_losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert all(a[s] == b[s] for s in a), {s: (a[s], b[s]) for s in a if a[s] != b[s]}
    evals = lambda rows: [(r["step"], r["val_loss"]) for r in rows if r["event"] == "eval"]  # noqa: E731
    assert evals(straight) == evals(split)
    m1, i1 = load_checkpoint(tmp_path / "straight" / "ckpt")
    m2, i2 = load_checkpoint(tmp_path / "split" / "ckpt")
    assert i1.step == i2.step == 12
    for (name, p), q in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p, q), name
    s1, s2 = load_train_state(tmp_path / "straight" / "ckpt"), load_train_state(tmp_path / "split" / "ckpt")
    assert torch.equal(s1["rng"][0]["torch"], s2["rng"][0]["torch"])  # dropout stream continued exactly


def test_resume_without_checkpoint_starts_fresh_and_continues_after(tmp_path):
    cfg = quiet(max_iters=4, eval_interval=2, out_dir=str(tmp_path))
    first = Trainer(TinyLM(TinyConfig()), lm_data(), cfg, resume=True).fit()
    assert first.evals[0]["step"] == 0
    more = Trainer(TinyLM(TinyConfig()), lm_data(), quiet(max_iters=8, eval_interval=2, out_dir=str(tmp_path)),
                   resume=True).fit()
    assert more.status == "completed" and more[-1]["step"] == 8
    assert [r["step"] for r in more.evals] == [0, 2, 4, 6, 8]  # earlier history carried over
    done = Trainer(TinyLM(TinyConfig()), lm_data(), quiet(max_iters=8, eval_interval=2, out_dir=str(tmp_path)),
                   resume=True).fit()  # nothing left to do: no new steps, no duplicate evaluation
    assert done.status == "completed" and [r["step"] for r in done.evals] == [0, 2, 4, 6, 8]


def test_bf16_autocast_on_cpu_trains():
    x, y = fixed_batch()
    model = tiny_gpt()
    trainer = Trainer(model, lambda s, g: (x, y), quiet(max_iters=5, eval_interval=5, dtype="bfloat16"))
    assert trainer.dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    # what the matmuls really ran in: under autocast a Linear returns bfloat16 from float32 weights
    seen = {True: set(), False: set()}
    model.lm_head.register_forward_hook(lambda m, args, out: seen[m.training].add(out.dtype))
    history = trainer.fit()
    assert seen == {True: {torch.bfloat16}, False: {torch.bfloat16}}, seen  # training steps and evals
    assert all(p.dtype is torch.float32 for p in model.parameters())  # the master weights stay fp32
    assert history.status == "completed" and math.isfinite(history.evals[-1]["val_loss"])
    assert history.evals[-1]["val_loss"] < history.evals[0]["val_loss"]


# ---------------------------------------------------------------------------- run planning


def test_plan_run_turns_epochs_into_steps_from_the_data_size():
    from minigpt.train import plan_run

    get_batch = lm_data(block_size=8, batch_size=4)  # 2500 training tokens
    plan = plan_run(quiet(grad_accum=2, warmup_iters=0), get_batch, epochs=1.5)
    assert plan.config.max_iters == math.ceil(1.5 * 2500 / (4 * 8 * 2)) == 59
    # without an LMBatches the sizes must be given
    with pytest.raises(ValueError, match="train_tokens"):
        plan_run(quiet(), lambda split, g: None, epochs=1)
    assert plan_run(quiet(batch_size=10), epochs=2, train_tokens=1000, block_size=10).config.max_iters == 20


def test_plan_run_clamps_warmup_and_decay_to_the_run():
    from minigpt.train import plan_run

    plan = plan_run(quiet(max_iters=50, warmup_iters=100, lr_decay_iters=5000))
    assert (plan.config.warmup_iters, plan.config.lr_decay_iters) == (5, 50)
    assert any("warmup" in n for n in plan.notes)
    same = quiet(max_iters=50, warmup_iters=10, lr_decay_iters=40)
    assert plan_run(same).config == same  # nothing to change: nothing changed


def test_plan_run_fits_the_steps_to_the_time_budget_only_when_asked(monkeypatch):
    import minigpt.train as T

    monkeypatch.setattr(T, "measure_steps_per_second", lambda *a, **k: 100.0)
    cfg = quiet(max_iters=10**6, max_time_s=2.0, eval_interval=0, warmup_iters=500)
    assert T.plan_run(cfg, lm_data(), tiny_gpt()).config.max_iters == 10**6  # fit_time not asked
    plan = T.plan_run(cfg, lm_data(), tiny_gpt(), fit_time=True)
    assert plan.steps_per_s == 100.0 and plan.config.max_iters == int(0.9 * 2.0 * 100) == 180
    assert plan.config.warmup_iters == 18 and plan.config.lr_decay_iters is None
    assert "so 180 steps fit" in plan.notes[-1]
    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks timing themselves could disagree: never under torchrun
    assert T.plan_run(cfg, lm_data(), tiny_gpt(), fit_time=True).steps_per_s is None


def test_train_plans_epochs_like_the_command_line():
    history = train(tiny_gpt(), lm_data(block_size=8, batch_size=50), quiet(eval_interval=0), epochs=1)
    assert history.status == "completed" and history[-1]["step"] == math.ceil(2500 / (50 * 8))


def test_early_stopping_and_nan_guard_are_plain_objects():
    from minigpt.train import EarlyStopping, NanGuard

    stop = EarlyStopping(patience=2, min_delta=0.1)
    assert [stop.update(v) for v in (3.0, 2.95, 2.0, 1.95, 1.99)] == [True, False, True, False, False]
    assert stop.should_stop and stop.best == 2.0
    assert NanGuard(scaled=False).diverged(float("nan"), 1.0) and NanGuard(scaled=False).diverged(1.0, math.inf)
    fp16 = NanGuard(scaled=True, max_skipped=2)
    assert [fp16.diverged(1.0, math.inf) for _ in range(3)] == [False, False, True]  # the scaler skips a few


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_files(tmp_path, monkeypatch):
    import os

    from minigpt import atomic

    target = tmp_path / "sub" / "f.json"
    atomic.atomic_write_text(target, "old")
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(synced) == 2  # the file, then its folder
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions, not mkstemp's 0o600

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_one_parameter_counter_and_one_preset_name():
    from minigpt import hf, lora
    from minigpt.model import PRESETS, count_parameters
    from minigpt.presets import TRAIN_PRESETS

    assert hf.count_parameters is lora.count_trainable is count_parameters
    model = tiny_gpt()  # tied embedding: counted once
    model.transformer.wte.weight.requires_grad_(False)
    n_wte = model.transformer.wte.weight.numel()
    assert count_parameters(model) == (model.num_params() - n_wte, model.num_params())
    assert all(name == p.model and name in PRESETS for name, p in TRAIN_PRESETS.items())


def test_speedrun_preset_builds_and_trains_a_few_steps_and_leaves_the_others_alone():
    from minigpt.model import GPT
    from minigpt.presets import get_preset

    preset = get_preset("speedrun-cpu")
    torch.manual_seed(0)
    model = GPT(preset.model_config())
    data = torch.randint(0, 65, (4000,))
    cfg = preset.train_config(max_iters=3, batch_size=2, eval_interval=0, out_dir=None, progress=False,
                              device="cpu", log_interval=1)
    from minigpt.train import lm_batches

    history = Trainer(model, lm_batches(data[:3000], data[3000:], model.config.block_size, 2), cfg).fit()
    losses = [r["train_loss"] for r in history.rows if r.get("train_loss") is not None]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    default = get_preset("shakespeare-cpu")  # the default preset keeps its recipe and model
    assert (default.train_config().lr, default.train_config().optimizer) == (1e-2, "muon")
    # the speedrun recipe is the default with twice the context at the same tokens per step (RECORDS.md)
    fast, base = preset.model_config(), default.model_config()
    assert (fast.block_size, base.block_size) == (256, 128)
    assert fast.block_size * preset.train_config().batch_size == base.block_size * default.train_config().batch_size
    assert {k for k, v in fast.to_dict().items() if base.to_dict()[k] != v} == {"block_size"}
    assert not (default.model_config().qk_norm or default.model_config().logit_softcap)
