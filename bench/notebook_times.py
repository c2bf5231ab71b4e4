"""The course's wall time: every notebook run end to end, in order, in a fresh kernel each.

Runs the notebooks one after another as a student would (so 13 finds the model 07 saved), each in its
own directory with `nbclient`, and reports per notebook the wall time and the CPU time of its kernel
and everything the kernel started (model servers, torchrun workers), then the total. Full mode by
default; `--fast` sets MINIGPT_FAST=1 as CI does. A notebook that fails is reported with the failing
cell's error and the run goes on.

    python bench/notebook_times.py                      # the whole course, full mode (~25-30 min)
    python bench/notebook_times.py 07 13                # some notebooks (by number or file name)
    python bench/notebook_times.py --fast               # fast mode (a few minutes)

Run it on an idle machine: the wall time is the figure a student sees, and other programs stretch it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path
from typing import Any

from _common import ROOT, machine_info, markdown_table, write_json

NOTEBOOKS = ROOT / "notebooks"


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every finished child process of this one, and their children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def select(names: list[str]) -> list[Path]:
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    picked = [p for p in every if any(p.name.startswith(n) for n in names)]  # "07", "07_char..." or the stem
    missing = [n for n in names if not any(p.name.startswith(n) for p in every)]
    if missing:
        raise SystemExit(f"no notebook matches {missing}; available: {', '.join(p.stem for p in every)}")
    return picked


def run_notebook(path: Path, timeout: int) -> dict[str, Any]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    wall, cpu = time.perf_counter(), children_cpu_s()
    error = None
    try:
        client.execute()
    except CellExecutionError as e:  # the message names the cell and the exception
        error = str(e).strip().splitlines()[-1][:300]
    except Exception as e:  # a timeout or a dead kernel
        error = f"{type(e).__name__}: {e}"[:300]
    return {"notebook": path.stem, "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(children_cpu_s() - cpu, 1), "ok": error is None, "error": error}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="numbers or names (default: all, in order)")
    ap.add_argument("--fast", action="store_true", help="MINIGPT_FAST=1, as CI runs them")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernels (default: unset)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run")
    args = ap.parse_args()
    os.environ.pop("MINIGPT_FAST", None)
    if args.fast:
        os.environ["MINIGPT_FAST"] = "1"
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()[0]
    results = []
    for path in select(args.notebooks):
        res = run_notebook(path, args.timeout)
        results.append(res)
        status = "ok" if res["ok"] else f"FAILED: {res['error']}"
        print(f"{res['notebook']}: {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU, {status}", flush=True)
    total_wall = sum(r["wall_s"] for r in results)
    total_cpu = sum(r["cpu_s"] for r in results)
    rows = [[r["notebook"], f"{r['wall_s'] / 60:.1f} min ({r['wall_s']:.0f} s)", f"{r['cpu_s']:.0f} s",
             "yes" if r["ok"] else "NO"] for r in results]
    rows.append(["**total**", f"**{total_wall / 60:.1f} min**", f"{total_cpu:.0f} s",
                 "yes" if all(r["ok"] for r in results) else "NO"])
    mode = "fast mode (MINIGPT_FAST=1)" if args.fast else "full mode"
    machine = machine_info()
    print(f"\n{mode}, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after; {machine['cpu']}, "
          f"{machine['cores']} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(markdown_table(["notebook", "wall time", "CPU time (kernel + children)", "ran"], rows))
    path = write_json("notebook_times", {"mode": mode, "results": results, "total_wall_s": total_wall,
                                          "total_cpu_s": total_cpu, "load_before": load_before,
                                          "load_after": os.getloadavg()[0], "machine": machine})
    print(f"wrote {path}")
    if not all(r["ok"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
