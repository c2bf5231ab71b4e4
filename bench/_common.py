"""Shared helpers for the benchmarks in bench/ (not part of the minigpt package).

Conventions every benchmark follows, because the machines they run on are shared and noisy:
- contenders run side by side in one process, interleaved round by round (A, B, A, B, ...), so
  a burst of load elsewhere hits all of them alike; reported figures are medians over rounds and
  ratios are medians of per-round ratios;
- peak memory is measured in a fresh child process per contender (ru_maxrss only ever grows, so
  in-process deltas would blame whichever contender ran first);
- results print as a markdown table and are written as JSON to bench/results/ (gitignored).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_bf16_matmul": cpu_has_bf16_matmul(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(), "load_avg_1min": load, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def cpu_has_bf16_matmul() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (Intel AMX tiles or AVX-512 BF16).

    Only such a CPU can gain from bf16 autocast (on the Xeon of RECORDS.md it did with 256-token windows and
    did not with 128-token ones). torch has no public query for it yet, so this reads its private ones and
    says False if they move.
    """
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def maxrss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads. On a machine shared with other jobs use 1: OpenMP threads that
    spin-wait for a busy sibling core make 2 threads up to 10x slower than 1 under oversubscription."""
    if n:
        torch.set_num_threads(n)


class PeakRSS:
    """Peak resident memory above a baseline while the `with` body runs (sampled every ~1 ms).

    Used inside a fresh child process, so the baseline holds only the interpreter, the imports, the
    model and the data; the delta is what training or generation itself needs.
    """

    def __enter__(self) -> PeakRSS:
        import threading

        import psutil

        self._proc = psutil.Process()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()

        def poll() -> None:
            while not self._stop.wait(0.001):
                self.peak = max(self.peak, self._proc.memory_info().rss)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in a fresh spawned interpreter and return its result (fn must be importable)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def matmul_peak_gflops(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """Achieved GFLOP/s of an n x n x n matmul: the practical peak that MFU is measured against."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # nan
                return "-"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def shakespeare_ids() -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Tiny Shakespeare as char ids: (train, val, tokenizer); the 90/10 split every run uses."""
    from minigpt.data import load_shakespeare, train_val_split
    from minigpt.tokenizer import CharTokenizer

    text = load_shakespeare()
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(torch.tensor(tok.encode(text), dtype=torch.long), 0.1)
    return train, val, tok
