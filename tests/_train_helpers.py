"""Shared pieces for the trainer, checkpoint and distributed tests.

Also a script, so tests can train in a fresh process or under torchrun:
    python tests/_train_helpers.py run OUT_DIR MAX_ITERS [--resume] [--muon]
    torchrun --nproc_per_node=2 tests/_train_helpers.py ddp OUT_DIR STEPS
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.train import TrainConfig, Trainer, lm_batches

VOCAB = 11


@dataclass
class TinyConfig:
    vocab_size: int = VOCAB  # tokens
    n_embd: int = 8  # embedding width


class TinyLM(nn.Module):
    """Stand-in language model with the GPT contract: forward(idx, targets=None) -> (logits, loss)."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.ln = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx, targets=None):
        logits = self.head(self.ln(self.emb(idx)))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


class TinySeq2Seq(nn.Module):
    """Stand-in encoder-decoder: forward(src, tgt_in, targets=None), a batch of three tensors."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.src_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.tgt_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, src, tgt_in, targets=None):
        memory = self.src_emb(src).mean(dim=1, keepdim=True)  # (B, 1, C)
        logits = self.head(self.tgt_emb(tgt_in) + memory)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


@functools.cache
def _stream(n: int, seed: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(n, generator=g) < 0.1).tolist()
    rand = torch.randint(VOCAB, (n,), generator=g).tolist()
    out = [0]
    for i in range(1, n):
        out.append(rand[i] if noise[i] else (3 * out[-1] + 1) % VOCAB)
    return tuple(out)


def token_stream(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """A learnable stream: mostly next = (3 * current + 1) mod V, with 10% random tokens."""
    return torch.tensor(_stream(n, seed), dtype=torch.long)


def lm_data(block_size: int = 8, batch_size: int = 4):
    data = token_stream()
    return lm_batches(data[:2500], data[2500:], block_size, batch_size)


def fixed_batch(batch_size: int = 8, block_size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = token_stream()
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def tiny_gpt(seed: int = 0, dropout: float = 0.0):
    from minigpt.model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=dropout))


def quiet(**kw) -> TrainConfig:
    """A TrainConfig for tests: no progress bar, small evals."""
    base = dict(max_iters=10, eval_interval=5, eval_iters=2, warmup_iters=2, log_interval=1, progress=False,
                out_dir=None, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


@torch.no_grad()
def param_checksum(model: nn.Module) -> float:
    return float(sum(p.double().sum() * (i + 1) for i, p in enumerate(model.parameters())))


# ---------------------------------------------------------------------------- script modes


def _run(out_dir: str, max_iters: int, resume: bool, optimizer: str = "adamw") -> None:
    """Tiny GPT with dropout (so the torch RNG state matters), checkpoint every 3 steps."""
    torch.set_num_threads(1)
    model = tiny_gpt(seed=0, dropout=0.1)
    cfg = quiet(max_iters=max_iters, lr_decay_iters=12, eval_interval=4, checkpoint_interval=3,
                out_dir=out_dir, optimizer=optimizer)
    Trainer(model, lm_data(), cfg, resume=resume).fit()


def _ddp(out_dir: str, steps: int) -> None:
    """Two trainers in one process group (grad_accum 1, then 2), each rank training on its share of
    one fixed full batch; rank 0 records per-step weight checksums of every rank and the weights."""
    import torch.distributed as dist

    import minigpt.atomic as atomic_module
    import minigpt.train as train_module

    torch.set_num_threads(1)
    x, y = fixed_batch(batch_size=8)
    trainers = []
    for grad_accum in (1, 2):
        model = tiny_gpt(seed=0)
        checksums: list[list[float]] = []
        calls = [0]

        def get_batch(split, generator, grad_accum=grad_accum, calls=calls):
            # rank r's share of the full batch, cut into grad_accum equal pieces taken in turn, so
            # one optimizer step sees every row of the full batch exactly once
            rank, world = dist.get_rank(), dist.get_world_size()
            per = x.size(0) // (world * grad_accum)
            piece = rank * grad_accum + calls[0] % grad_accum
            calls[0] += 1
            return x[piece * per : (piece + 1) * per], y[piece * per : (piece + 1) * per]

        def callback(event, checksums=checksums):
            if event.kind == "step":
                mine = torch.tensor([param_checksum(event.model)], dtype=torch.float64)
                every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
                dist.all_gather(every, mine)
                checksums.append([t.item() for t in every])

        out = Path(out_dir) / f"ga{grad_accum}"
        # evaluations at steps 0 and `steps` draw 2 x eval_iters = 4 batches: an even number, so the
        # training pieces above stay in turn
        cfg = quiet(max_iters=steps, eval_interval=steps, eval_iters=2, grad_accum=grad_accum, out_dir=str(out),
                    grad_clip=1.0)
        trainer = Trainer(model, get_batch, cfg, callback=callback)
        trainers.append(trainer)
        if not trainer.is_main:  # rank-0-only files: any write from another rank fails the run
            def refuse(*args, **kwargs):
                raise AssertionError(f"rank {dist.get_rank()} tried to write a file")

            train_module.save_checkpoint = refuse
            atomic_module.atomic_write_bytes = refuse  # history files go through it
        history = trainer.fit()
        if trainer.is_main:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final_weights.pt")
            (out / "ddp_result.json").write_text(json.dumps({
                "checksums": checksums, "status": history.status, "world_size": dist.get_world_size(),
                "losses": history.column("train_loss", "step"), "device": str(trainer.device),
                "val_losses": history.column("val_loss", "eval"),
            }))
    for trainer in trainers:
        trainer.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "run":
        _run(args[0], int(args[1]), "--resume" in args, "muon" if "--muon" in args else "adamw")
    elif mode == "ddp":
        _ddp(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
