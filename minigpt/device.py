"""Hardware: pick a device once, set up mixed precision once, seed everything, sanity-check a backend.

Mixed precision in one paragraph: under `torch.autocast`, matmuls run in a 16-bit type while
weights and reductions stay fp32. bfloat16 keeps fp32's exponent range, so it needs no loss scaling;
float16 has a narrow range, so small gradients underflow unless the loss is multiplied by a large
factor first (`GradScaler`, Micikevicius et al. 2018, "Mixed Precision Training").
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass, field

import torch

__all__ = [
    "ParityReport",
    "autocast",
    "autocast_dtype",
    "available_devices",
    "check_device_parity",
    "describe_device",
    "get_device",
    "make_grad_scaler",
    "seed_everything",
]

log = logging.getLogger(__name__)

_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device strings usable on this machine, e.g. ['cuda:0', 'cpu']."""
    out = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        out.append("mps")
    out.append("cpu")
    return out


def get_device(preference: str | torch.device = "auto") -> torch.device:
    """Resolve a device choice. "auto" picks cuda, then mps, then cpu.

    An explicit choice ("cpu", "cuda", "cuda:1", "mps") is honoured or refused with the list of
    devices that do exist, never silently replaced: a run that asked for a GPU and got the CPU
    would only show up as "training is 50x slower".
    """
    if isinstance(preference, str) and preference.strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = available_devices()
    try:
        device = torch.device(preference.strip().lower() if isinstance(preference, str) else preference)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"unknown device {preference!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. "
            f"Available here: {', '.join(available)}."
        ) from e
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preference!r} requested but CUDA is not available (no NVIDIA GPU or a "
                f"CPU-only torch build). Available here: {', '.join(available)}; or use 'auto'."
            )
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise ValueError(
                f"device {preference!r} requested but only {n} CUDA device(s) exist "
                f"(cuda:0..cuda:{n - 1}). Available here: {', '.join(available)}."
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device {preference!r} requested but MPS (Apple GPU) is not available. "
                f"Available here: {', '.join(available)}; or use 'auto'."
            )
        return device
    raise ValueError(
        f"device type {device.type!r} is not supported by minigpt; use 'auto', 'cpu', 'cuda' or 'mps'. "
        f"Available here: {', '.join(available)}."
    )


def _parse_dtype(prefer: str | torch.dtype | None) -> torch.dtype | None:
    if prefer is None or isinstance(prefer, torch.dtype):
        return prefer
    key = prefer.strip().lower()
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {prefer!r}; use one of 'bf16', 'fp16', 'fp32' (or a torch.dtype)")
    return _DTYPE_NAMES[key]


def autocast_dtype(device: torch.device | str, prefer: str | torch.dtype | None = None) -> torch.dtype | None:
    """The 16-bit type to autocast to on `device`, or None for plain fp32.

    Defaults (prefer=None):
      - CUDA: bfloat16 if the GPU supports it (Ampere and newer), else float16 (needs a GradScaler);
      - CPU: None. CPU bf16 autocast helps only on CPUs with bf16 instructions, so it is opt-in
        with prefer="bf16";
      - MPS: None; opt in with prefer="fp16" or "bf16" (MPS autocast support varies by macOS/torch).
    `prefer="fp32"` always gives None. An impossible request (fp16 on CPU, bf16 on a GPU without
    it) raises instead of silently training in another precision.
    """
    device = torch.device(device)
    want = _parse_dtype(prefer)
    if want is torch.float32:
        return None
    if want is not None and want not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast supports bf16 or fp16 (or fp32 = off), got {want}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if want is None:
            return torch.bfloat16 if bf16_ok else torch.float16
        if want is torch.bfloat16 and not bf16_ok:
            raise ValueError("this GPU does not support bfloat16; use prefer='fp16' (with a GradScaler)")
        return want
    if device.type == "cpu":
        if want is torch.float16:
            raise ValueError("fp16 autocast on CPU is slow and poorly supported; use prefer='bf16' or 'fp32'")
        return want  # None (fp32) unless bf16 was asked for
    if device.type == "mps":
        return want
    raise ValueError(f"no autocast rule for device type {device.type!r}")


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """`torch.autocast` for a 16-bit dtype, or a no-op context for None / fp32."""
    device = torch.device(device)
    if dtype is None or dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 on CUDA (bf16 and fp32 need no loss scaling).

    A disabled scaler is a pass-through (`scale(loss)` returns loss, `step` calls optimizer.step),
    so the training loop can call it unconditionally.
    """
    device = torch.device(device)
    enabled = device.type == "cuda" and dtype is torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's `random`, NumPy, and torch (CPU and all GPUs); return a CPU Generator seeded alike.

    Pass the returned generator to `get_batch` / `make_toy_task` for reproducible data that does not
    depend on how many other random numbers were drawn elsewhere.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)  # numpy's legacy seed must fit in 32 bits
    except ImportError:  # numpy is optional for the library itself
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def describe_device(device: torch.device | str) -> str:
    """A short human-readable name, e.g. 'cpu (2 threads)' or 'cuda:0 (NVIDIA H100, 79 GiB)'."""
    device = torch.device(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        return f"cuda:{idx} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return str(device)


# ---------------------------------------------------------------------------- parity check


@dataclass
class ParityReport:
    """Result of `check_device_parity`."""

    device: str  # the device that was tested
    ok: bool  # True if it matched the CPU within tolerance
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per tensor: max |device - cpu|
    reason: str = ""  # why the device was rejected (empty when ok)

    def __str__(self) -> str:
        if self.ok:
            worst = max(self.max_abs_diff.values(), default=0.0)
            return f"{self.device}: matches cpu (max abs diff {worst:.2e})"
        return f"{self.device}: falling back to cpu: {self.reason}"


def _parity_probe(device: torch.device) -> dict[str, torch.Tensor]:
    """A seeded tiny net (Linear, GELU, LayerNorm, attention-style softmax, cross-entropy): forward
    and backward on `device`. Returns the output, loss and gradients on the CPU for comparison.

    Parameters are drawn on the CPU then moved, so every device sees the same numbers.
    """
    g = torch.Generator().manual_seed(1234)
    B, T, C, V = 2, 5, 16, 11
    cpu = {
        "x": torch.randn(B, T, C, generator=g),
        "w1": torch.randn(4 * C, C, generator=g) / C**0.5,
        "b1": torch.randn(4 * C, generator=g) * 0.1,
        "w2": torch.randn(C, 4 * C, generator=g) / (4 * C) ** 0.5,
        "ln_w": 1.0 + 0.1 * torch.randn(C, generator=g),
        "ln_b": 0.1 * torch.randn(C, generator=g),
        "w_out": torch.randn(V, C, generator=g) / C**0.5,
    }
    targets = torch.randint(V, (B, T), generator=g).to(device)
    p = {k: v.to(device).requires_grad_(k != "x") for k, v in cpu.items()}
    F = torch.nn.functional
    h = F.gelu(F.linear(p["x"], p["w1"], p["b1"]))  # (B, T, 4C)
    h = p["x"] + F.linear(h, p["w2"])  # (B, T, C)
    h = F.layer_norm(h, (C,), p["ln_w"], p["ln_b"])  # (B, T, C)
    att = (h @ h.transpose(1, 2)) / C**0.5  # (B, T, T), non-contiguous operand on purpose
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    h = att @ h  # (B, T, C)
    logits = F.linear(h, p["w_out"])  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach()}
    out.update({f"grad.{k}": v.grad for k, v in p.items() if v.grad is not None})
    return {k: v.float().cpu() for k, v in out.items()}


def check_device_parity(
    device: torch.device | str, atol: float = 1e-3, rtol: float = 1e-3
) -> tuple[torch.device, ParityReport]:
    """Run a tiny seeded forward+backward on `device` and on the CPU and compare.

    Returns `(device, report)` if every tensor matches (|a - b| <= atol + rtol * |b|), else
    `(cpu, report)` with the reason, so a buggy backend (it happens, e.g. with new MPS releases)
    costs a slower run instead of silently wrong training. On the CPU this is trivially fine.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return device, ParityReport(device=str(device), ok=True)
    cpu_device = torch.device("cpu")
    try:
        ref = _parity_probe(cpu_device)
        got = _parity_probe(device)
    except Exception as e:  # any backend failure means: do not train on it
        report = ParityReport(device=str(device), ok=False, reason=f"probe failed: {type(e).__name__}: {e}")
        log.warning("%s", report)
        return cpu_device, report
    diffs: dict[str, float] = {}
    failed: list[str] = []
    for name, r in ref.items():
        a = got.get(name)
        if a is None or a.shape != r.shape:
            failed.append(f"{name}: missing or wrong shape")
            continue
        if not torch.isfinite(a).all():
            diffs[name] = float("inf")
            failed.append(f"{name}: non-finite values")
            continue
        diffs[name] = (a - r).abs().max().item()
        if not torch.allclose(a, r, atol=atol, rtol=rtol):
            failed.append(f"{name}: max abs diff {diffs[name]:.3e} > atol {atol:g} + rtol {rtol:g}*|cpu|")
    if failed:
        report = ParityReport(device=str(device), ok=False, max_abs_diff=diffs, reason="; ".join(failed))
        log.warning("%s", report)
        return cpu_device, report
    return device, ParityReport(device=str(device), ok=True, max_abs_diff=diffs)
