import random

import numpy as np
import pytest
import torch

from minigpt import device as dev

needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available() or dev._mps_available(), reason="expects a CPU-only machine"
)


@needs_no_gpu
def test_auto_picks_cpu_here():
    assert dev.get_device("auto") == torch.device("cpu")
    assert dev.available_devices() == ["cpu"]


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.get_device("auto").type == "mps"


def test_explicit_cpu_and_device_object():
    assert dev.get_device("cpu") == torch.device("cpu")
    assert dev.get_device(" CPU ") == torch.device("cpu")
    assert dev.get_device(torch.device("cpu")) == torch.device("cpu")


def test_bad_device_string_lists_available():
    with pytest.raises(ValueError, match="unknown device 'gpu'.*Available here: .*cpu"):
        dev.get_device("gpu")


@needs_no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_unavailable_accelerator_is_refused(name):
    with pytest.raises(ValueError, match="not available.*Available here: cpu"):
        dev.get_device(name)


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.get_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"only 1 CUDA device\(s\)"):
        dev.get_device("cuda:1")


def test_autocast_dtype_rules(monkeypatch):
    cpu = torch.device("cpu")
    assert dev.autocast_dtype(cpu) is None
    assert dev.autocast_dtype(cpu, prefer="bf16") is torch.bfloat16
    assert dev.autocast_dtype(cpu, prefer=torch.float32) is None
    with pytest.raises(ValueError, match="bf16"):
        dev.autocast_dtype(cpu, prefer="fp16")
    with pytest.raises(ValueError, match="unknown dtype"):
        dev.autocast_dtype(cpu, prefer="int8")
    assert dev.autocast_dtype("mps") is None
    # CUDA: bf16 where supported, fp16 on older GPUs (faked here)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.autocast_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.autocast_dtype("cuda") is torch.float16
    with pytest.raises(ValueError, match="does not support bfloat16"):
        dev.autocast_dtype("cuda", prefer="bf16")


def test_autocast_context():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with dev.autocast("cpu", None):
        assert lin(x).dtype == torch.float32
    with dev.autocast("cpu", torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # matmuls really run in bf16 under autocast
    assert lin(x).dtype == torch.float32


def test_grad_scaler_enabled_only_for_cuda_fp16():
    assert not dev.make_grad_scaler("cpu", None).is_enabled()
    assert not dev.make_grad_scaler("cpu", torch.bfloat16).is_enabled()
    # disabled scaler is a pass-through
    loss = torch.tensor(2.0)
    assert dev.make_grad_scaler("cpu", None).scale(loss) is loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grad_scaler_cuda():
    assert dev.make_grad_scaler("cuda", torch.float16).is_enabled()
    assert not dev.make_grad_scaler("cuda", torch.bfloat16).is_enabled()


def test_seed_everything_reproducible():
    g1 = dev.seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=g1))
    g2 = dev.seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=g2))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    # the generator is seeded like torch.manual_seed(123): independent reference
    assert torch.equal(a[3], torch.rand(3, generator=torch.Generator().manual_seed(123)))
    dev.seed_everything(124)
    assert random.random() != a[0]
    with pytest.raises(ValueError, match="non-negative int"):
        dev.seed_everything(-1)


def test_describe_device_cpu():
    assert dev.describe_device("cpu") == f"cpu ({torch.get_num_threads()} threads)"


def test_parity_on_cpu_is_trivially_fine():
    d, report = dev.check_device_parity("cpu")
    assert d == torch.device("cpu") and report.ok and report.reason == ""


def test_parity_probe_is_deterministic_and_has_grads():
    a = dev._parity_probe(torch.device("cpu"))
    b = dev._parity_probe(torch.device("cpu"))
    assert {"logits", "loss", "grad.w1", "grad.w_out", "grad.ln_w"} <= set(a)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert a["loss"].item() > 0


def _fake_accelerator(noise: float):
    """A probe that runs on the CPU but, for the 'accelerator', perturbs one gradient."""
    real = dev._parity_probe

    def probe(device):
        out = real(torch.device("cpu"))
        if device.type != "cpu":
            out["grad.w1"] = out["grad.w1"] + noise
        return out

    return probe


def test_parity_passes_for_matching_accelerator(monkeypatch):
    monkeypatch.setattr(dev, "_parity_probe", _fake_accelerator(1e-6))
    d, report = dev.check_device_parity("cuda")
    assert d == torch.device("cuda") and report.ok
    assert report.max_abs_diff["grad.w1"] == pytest.approx(1e-6, rel=1e-2)


def test_parity_falls_back_to_cpu_with_reason(monkeypatch):
    monkeypatch.setattr(dev, "_parity_probe", _fake_accelerator(0.05))
    d, report = dev.check_device_parity("cuda", atol=1e-3)
    assert d == torch.device("cpu")
    assert not report.ok
    assert "grad.w1" in report.reason and "logits" not in report.reason
    assert report.max_abs_diff["grad.w1"] == pytest.approx(0.05, rel=1e-3)
    assert "falling back to cpu" in str(report)


def test_parity_non_finite_and_crash_fall_back(monkeypatch):
    real = dev._parity_probe

    def nan_probe(device):
        out = real(torch.device("cpu"))
        if device.type != "cpu":
            out["loss"] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(dev, "_parity_probe", nan_probe)
    d, report = dev.check_device_parity("mps")
    assert d.type == "cpu" and "loss: non-finite" in report.reason

    def crash(device):
        if device.type != "cpu":
            raise RuntimeError("kernel not implemented")
        return real(device)

    monkeypatch.setattr(dev, "_parity_probe", crash)
    d, report = dev.check_device_parity("cuda")
    assert d.type == "cpu" and "probe failed" in report.reason and "kernel not implemented" in report.reason
