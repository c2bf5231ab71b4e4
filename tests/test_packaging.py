"""Packaging: a light core, one extra per feature, and one clear line when an extra is missing.

A missing package is simulated by ``sys.modules[name] = None`` (Python then refuses to import it,
exactly as when it is not installed); the core-only run does that for every optional module at once.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from minigpt._extras import DISTRIBUTION, EXTRA_OF_MODULE, MissingExtraError, missing_extra, require, require_installed
from minigpt.cli import main
from minigpt.tools import envcheck

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME_EXTRAS = {"hf", "viz", "serve", "grading", "notebooks", "logging"}
PYTHONS = ["3.11", "3.12", "3.13"]

# Declared floors and why: the oldest release whose APIs the library (and its tests) call. None was
# run at its floor here (only the pinned versions are installable offline); a test that needs a newer
# release than the floor skips with a reason (torch.optim.Muon in test_optim.py).
FLOORS = {
    "torch": ("2.6", "torch.nn.utils.get_total_norm (train.py) is new in 2.6; Muon parity test skips < 2.9"),
    "numpy": ("1.26", "only basic arrays; 1.26 is the first release with Python 3.12 wheels"),
    "safetensors": ("0.4", "safetensors.torch.save/load to bytes and a top-level SafetensorError"),
    "tokenizers": ("0.20", "Tokenizer, models.BPE, trainers.BpeTrainer, ByteLevel: APIs far older than 0.20"),
    "tqdm": ("4.66", "tqdm.auto only"),
    "transformers": ("5", "written against the 5.x API (GPT2/Llama classes, Trainer); <6 until 6 is tested"),
    "datasets": ("3", "load_dataset and DatasetDict only"),
    "accelerate": ("1.15", "needed by transformers' Trainer; pinned major.minor (not verified older with v5)"),
    "peft": ("0.21", "LoraConfig/get_peft_model with transformers 5; pinned major.minor (not verified older)"),
    "huggingface-hub": ("2.4", "huggingface_hub.constants; pinned major.minor (transformers 5 needs >=1.31)"),
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(req: str) -> tuple[str, str]:
    """("name", "specifier") of a requirement string such as "torch>=2.6" or "minigpt-course[hf]"."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", req)
    assert m, req
    return _norm(m.group(1)), (m.group(2) or "") + m.group(3).strip()


def _extra_packages(extra: str, seen: frozenset[str] = frozenset()) -> dict[str, str]:
    """{package: specifier} an extra installs, self-references (``minigpt-course[hf,viz]``) expanded."""
    out: dict[str, str] = {}
    for req in PROJECT["optional-dependencies"][extra]:
        name, spec = _split(req)
        if name == _norm(DISTRIBUTION):
            for sub in spec.strip("[]").split(","):
                assert sub not in seen | {extra}, f"[{extra}] refers to itself through [{sub}]"
                out.update(_extra_packages(sub, seen | {extra}))
        else:
            out[name] = spec
    return out


def _core() -> dict[str, str]:
    return dict(_split(r) for r in PROJECT["dependencies"])


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt pins exact versions: {line!r}"
            pins[_norm(name)] = version
    return pins


# ----------------------------------------------------------------------------- metadata


def test_distribution_metadata():
    assert PROJECT["name"] == DISTRIBUTION == "minigpt-course"  # `minigpt` on PyPI is another project
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert any(r.startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])  # SPDX license
    assert (ROOT / "minigpt" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["minigpt"]
    versions = sorted(c.rsplit(":: ", 1)[1] for c in PROJECT["classifiers"] if re.search(r"Python :: 3\.\d+$", c))
    assert versions == PYTHONS


def test_core_is_what_train_and_generate_need():
    assert set(_core()) == {"torch", "numpy", "safetensors", "tokenizers", "tqdm"}
    assert set(PROJECT["optional-dependencies"]) == RUNTIME_EXTRAS | {"all", "dev"}
    assert set(_extra_packages("all")) == set().union(*(_extra_packages(e) for e in RUNTIME_EXTRAS))
    assert "seaborn" not in _pins() and "seaborn" not in _extra_packages("all")  # nothing imports it


def test_requirements_pin_exactly_core_and_the_extras():
    declared = {**_core(), **_extra_packages("all"), **_extra_packages("dev")}
    pins = _pins()
    assert sorted(set(pins) - set(declared)) == [], "pinned in requirements.txt but in no extra of pyproject.toml"
    assert sorted(set(declared) - set(pins)) == [], "declared in pyproject.toml but not pinned in requirements.txt"


def test_pins_satisfy_the_declared_ranges():
    specifiers = pytest.importorskip("packaging.specifiers")
    pins = _pins()
    for name, spec in {**_core(), **_extra_packages("all"), **_extra_packages("dev")}.items():
        assert specifiers.SpecifierSet(spec).contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {spec}"


def test_floors_are_the_documented_ones():
    declared = {**_core(), **_extra_packages("all")}
    for name, (floor, _reason) in FLOORS.items():
        assert re.search(rf">={re.escape(floor)}(,|$)", declared[_norm(name)]), (name, declared[_norm(name)], floor)
    # the first-cell environment check tells students the same ranges
    assert _core()["torch"] == ">=" + ".".join(map(str, envcheck.TESTED["torch"][0]))
    lower, upper = envcheck.TESTED["transformers"]
    assert _extra_packages("hf")["transformers"] == f">={lower[0]},<{upper[0]}"
    for req in envcheck.OTHER_PACKAGES.values():
        name, spec = _split(req)
        assert {**_core(), **_extra_packages("all")}[name] == spec, f"envcheck says {req}, pyproject.toml disagrees"


def test_every_optional_module_belongs_to_its_extra():
    dist_of = {"IPython": "ipykernel", "yaml": "pyyaml"}  # IPython comes with ipykernel
    for module, extra in EXTRA_OF_MODULE.items():
        assert _norm(dist_of.get(module, module)) in _extra_packages(extra), f"{module} is not in [{extra}]"
        assert _norm(dist_of.get(module, module)) not in _core(), f"{module} is core; drop it from EXTRA_OF_MODULE"


def test_ci_tests_every_supported_python():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert wf["jobs"]["tests"]["strategy"]["matrix"]["python"] == PYTHONS
    assert PROJECT["requires-python"] == ">=" + PYTHONS[0]


# ----------------------------------------------------------------------------- a missing extra


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingExtraError) as e:
        require("uvicorn", feature="minigpt serve")
    assert str(e.value) == "minigpt serve needs the [serve] extra: pip install 'minigpt-course[serve]'"
    assert e.value.extra == "serve" and isinstance(e.value, ImportError)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"^transformers needs the \[hf\]"):
        require_installed("tokenizers", "transformers")  # tokenizers (core) is there; transformers is not
    assert require("json", extra="dev") is importlib.import_module("json")


def test_missing_extra_leaves_other_import_errors_alone():
    assert missing_extra(ModuleNotFoundError("No module named 'nope'", name="nope"), "x") is None
    assert missing_extra(ImportError("cannot import name 'X' from 'torch'"), "x") is None
    err = missing_extra(ModuleNotFoundError("No module named 'matplotlib.pyplot'", name="matplotlib.pyplot"), "x")
    assert err is not None and err.extra == "viz"


def _one_line(capsys, extra: str, command: str) -> None:
    captured = capsys.readouterr()
    assert captured.err == f"minigpt {command} needs the [{extra}] extra: pip install 'minigpt-course[{extra}]'\n"
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("blocked", ["uvicorn", "fastapi"])
def test_serve_without_the_serve_extra(monkeypatch, capsys, tmp_path, blocked):
    monkeypatch.delenv("MINIGPT_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, blocked, None)
    assert main(["serve", "--checkpoint", str(tmp_path)]) == 2
    _one_line(capsys, "serve", "serve")


def test_analyze_attention_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("MINIGPT_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert main(["analyze-attention", "--text", "to be or not", "--out", str(tmp_path / "a")]) == 2
    _one_line(capsys, "viz", "analyze-attention")


def test_course_tools_without_nbformat(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("MINIGPT_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "nbformat", None)
    monkeypatch.chdir(ROOT)
    assert main(["course", "student", "--out", str(tmp_path / "s")]) == 2
    _one_line(capsys, "grading", "course")


def test_debug_shows_the_traceback_instead(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGPT_DEBUG", "1")
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingExtraError):
        main(["serve", "--checkpoint", str(tmp_path)])


def test_python_api_without_the_hf_extra(monkeypatch):
    # datasets missing (transformers still there): minigpt.hf.data names the extra
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.delitem(sys.modules, "minigpt.hf.data", raising=False)
    with pytest.raises(MissingExtraError, match=r"^minigpt.hf.data needs the \[hf\] extra"):
        importlib.import_module("minigpt.hf.data")
    # transformers missing: the package says so in one line
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "minigpt.hf", raising=False)
    hint = r"^minigpt.hf needs the \[hf\] extra: pip install 'minigpt-course\[hf\]'$"
    with pytest.raises(MissingExtraError, match=hint):
        importlib.import_module("minigpt.hf")


def test_plots_without_the_viz_extra(monkeypatch):
    from minigpt.tools import viz

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"\[viz\] extra: pip install 'minigpt-course\[viz\]'"):
        viz.pyplot()


CORE_ONLY = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if only `pip install minigpt-course` had run
from minigpt.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
print("leaked:", leaked)
sys.exit(code)
"""


def test_core_install_trains_and_generates(tmp_path):
    """train and generate (char and BPE tokenizers) with every optional package unimportable."""
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("MINIGPT_DEBUG", None)
    script = CORE_ONLY.format(blocked=sorted(EXTRA_OF_MODULE))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                              timeout=300)

    tiny = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--eval-iters", "1", "--max-iters", "4", "--eval-interval", "2", "--quiet"]
    for tok in ("char", "bpe"):
        out = tmp_path / tok
        r = run("train", "--data-file", str(text), "--out-dir", str(out), "--tokenizer", tok, *tiny)
        assert r.returncode == 0 and "leaked: []" in r.stdout, r.stdout + r.stderr
        r = run("generate", "--checkpoint", str(out / "ckpt"), "--prompt", "To be", "--length", "5")
        assert r.returncode == 0 and "leaked: []" in r.stdout, r.stdout + r.stderr
    r = run("serve", "--checkpoint", str(tmp_path / "char" / "ckpt"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == "minigpt serve needs the [serve] extra: pip install 'minigpt-course[serve]'\n"


def test_colab_installs_the_distribution_with_the_notebooks_extra():
    """pip refuses `minigpt @ git+...` now that the metadata says minigpt-course; every first cell must agree."""
    import json

    assert f'"{DISTRIBUTION}[notebooks] @ git+' in envcheck.COLAB_CELL.replace("f\"", "\"")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        sources = ["".join(c["source"]).strip() for c in cells if c["cell_type"] == "code"]
        colab = [s for s in sources if "google.colab" in s]
        assert colab == [envcheck.COLAB_CELL.strip()], f"{nb.name}: its Colab cell is not envcheck.COLAB_CELL"


def test_python_m_minigpt_serve_without_the_serve_extra_is_one_line():
    code = ("import runpy, sys; sys.modules['fastapi'] = None; sys.argv = ['minigpt.serve', '--checkpoint', 'x']; "
            "runpy.run_module('minigpt.serve', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "[serve]" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
