import hashlib
import urllib.error

import pytest
import torch

from minigpt import data as D

GOOD = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any test that reaches the real _fetch fails loudly instead of touching the network."""

    def refuse(url, timeout=60.0):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(D, "_fetch", refuse)
    D._verified.clear()


# ---------------------------------------------------------------------------- download / cache


def test_download_good_bytes_are_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_fetch", lambda url, timeout=60.0: GOOD)
    dest = tmp_path / "cache" / "f.txt"
    out = D.download("https://example.invalid/f.txt", dest, GOOD_SHA)
    assert out == dest and dest.read_bytes() == GOOD
    assert [p.name for p in dest.parent.iterdir()] == ["f.txt"]  # no temp file left


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_fetch", lambda url, timeout=60.0: GOOD[:-1] + b"?")
    dest = tmp_path / "f.txt"
    with pytest.raises(D.ChecksumError, match="expected " + GOOD_SHA):
        D.download("https://example.invalid/f.txt", dest, GOOD_SHA)
    assert list(tmp_path.iterdir()) == []


def test_download_mismatch_never_overwrites_good_file(tmp_path, monkeypatch):
    dest = tmp_path / "f.txt"
    dest.write_bytes(GOOD)
    monkeypatch.setattr(D, "_fetch", lambda url, timeout=60.0: b"<html>rate limited</html>")
    with pytest.raises(D.ChecksumError):
        D.download("https://example.invalid/f.txt", dest, GOOD_SHA)
    assert dest.read_bytes() == GOOD
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_load_shakespeare_downloads_once_then_uses_cache(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(url, timeout=60.0):
        calls.append(url)
        return GOOD

    monkeypatch.setattr(D, "_fetch", fake_fetch)
    monkeypatch.setattr(D, "SHAKESPEARE_SHA256", GOOD_SHA)
    assert D.load_shakespeare(tmp_path) == GOOD.decode()
    assert calls == [D.SHAKESPEARE_URL]
    assert (tmp_path / D.SHAKESPEARE_FILENAME).read_bytes() == GOOD
    assert D.load_shakespeare(tmp_path) == GOOD.decode()
    assert len(calls) == 1


def test_load_shakespeare_corrupt_cache_is_reported(tmp_path):
    (tmp_path / D.SHAKESPEARE_FILENAME).write_text("not shakespeare", encoding="utf-8")
    with pytest.raises(D.ChecksumError) as ei:
        D.load_shakespeare(tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / D.SHAKESPEARE_FILENAME) in msg
    assert "Delete it" in msg and D.SHAKESPEARE_URL in msg


def test_load_shakespeare_offline_names_url_and_path(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(D, "_fetch", offline)
    with pytest.raises(D.DownloadError) as ei:
        D.load_shakespeare(tmp_path / "cache")
    msg = str(ei.value)
    assert D.SHAKESPEARE_URL in msg
    assert str((tmp_path / "cache" / D.SHAKESPEARE_FILENAME).resolve()) in msg
    assert not (tmp_path / "cache" / D.SHAKESPEARE_FILENAME).exists()


def test_default_data_dir_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path))
    assert D.default_data_dir() == tmp_path
    monkeypatch.setattr(D, "_REPO_ROOT", tmp_path / "not-a-checkout")  # even outside a checkout
    assert D.default_data_dir() == tmp_path


def test_default_data_dir_is_the_repo_data_folder_in_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    repo = tmp_path / "repo"
    (repo / "minigpt").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setattr(D, "_REPO_ROOT", repo)
    assert D.default_data_dir() == repo / "data"


def test_default_data_dir_is_the_user_cache_when_installed(tmp_path, monkeypatch):
    """An installed minigpt (no checkout around it) caches per user, not in the current folder."""
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "_REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # honoured by platformdirs on Linux too
    monkeypatch.chdir(tmp_path)
    expected = tmp_path / "xdg" / "minigpt" / "data"
    assert D.default_data_dir() == expected == D.user_cache_dir()
    assert not expected.exists() and not (tmp_path / "data").exists()  # choosing a folder creates nothing


def test_user_cache_dir_without_platformdirs_follows_xdg(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_platformdirs(name, *args, **kwargs):
        if name == "platformdirs":
            raise ImportError("No module named 'platformdirs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_platformdirs)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.user_cache_dir() == tmp_path / "xdg" / "minigpt" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.user_cache_dir() == tmp_path / "home" / ".cache" / "minigpt" / "data"


def test_failed_download_creates_no_folder(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(D, "_fetch", offline)
    cache = tmp_path / "cache" / "minigpt" / "data"
    with pytest.raises(D.DownloadError):
        D.load_shakespeare(cache)
    assert not (tmp_path / "cache").exists()


def test_failed_download_through_the_default_folder_creates_nothing(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(D, "_fetch", offline)
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "_REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(D.DownloadError, match="MINIGPT_DATA_DIR"):
        D.load_shakespeare()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_checksum_mismatch_creates_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_fetch", lambda url, timeout=60.0: b"an error page")
    with pytest.raises(D.ChecksumError):
        D.download("https://example.invalid/f.txt", tmp_path / "new" / "f.txt", GOOD_SHA)
    assert not (tmp_path / "new").exists()


def test_env_var_folder_is_used_and_created_on_success(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_fetch", lambda url, timeout=60.0: GOOD)
    monkeypatch.setattr(D, "SHAKESPEARE_SHA256", GOOD_SHA)
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "mine"))
    assert D.load_shakespeare() == GOOD.decode()
    assert (tmp_path / "mine" / D.SHAKESPEARE_FILENAME).read_bytes() == GOOD


def test_real_shakespeare_checksum_if_cached():
    path = D._REPO_ROOT / "data" / D.SHAKESPEARE_FILENAME
    if not path.exists():
        pytest.skip("data/tinyshakespeare.txt not cached")
    text = D.load_shakespeare(D._REPO_ROOT / "data")
    assert len(text) == D.SHAKESPEARE_NUM_CHARS == 1_115_394
    assert text.startswith("First Citizen:")


# ---------------------------------------------------------------------------- read_text


def test_read_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        D.read_text(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        D.read_text(empty)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 au lait".encode("latin-1"))  # 0xe9 at byte offset 3
    with pytest.raises(ValueError, match="byte offset 3") as ei:
        D.read_text(latin1)
    assert "0xe9" in str(ei.value) and "UTF-8" in str(ei.value)
    short = tmp_path / "short.txt"
    short.write_text("a", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 2"):
        D.read_text(short)
    with pytest.raises(IsADirectoryError):
        D.read_text(tmp_path)


def test_read_text_ok_and_strips_bom(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffhéllo 🤖".encode())
    assert D.read_text(p) == "héllo 🤖"


def test_check_length():
    D.check_length(9, 8)
    with pytest.raises(ValueError, match="text has 8 tokens but block_size is 8; need at least 9"):
        D.check_length(8, 8)


# ---------------------------------------------------------------------------- split and batches


def test_train_val_split_sizes_and_contiguity():
    t = torch.arange(1000)
    train, val = D.train_val_split(t)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), t)
    train, val = D.train_val_split(t, val_fraction=0.25)
    assert (len(train), len(val)) == (750, 250)
    with pytest.raises(ValueError, match="val_fraction"):
        D.train_val_split(t, val_fraction=1.0)
    with pytest.raises(ValueError, match="too few"):
        D.train_val_split(torch.arange(1), val_fraction=0.1)


def test_get_batch_shapes_and_shift():
    data = torch.arange(100, 200)  # values encode positions, so windows are checkable
    x, y = D.get_batch(data, block_size=8, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 8)
    assert x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    # each row is a contiguous window of data
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(16, 8))
    assert int(y.max()) <= 199 and int(x.min()) >= 100


def test_get_batch_covers_every_start_including_last():
    data = torch.arange(10)
    x, _ = D.get_batch(data, block_size=4, batch_size=2000, generator=torch.Generator().manual_seed(1))
    assert set(x[:, 0].tolist()) == set(range(6))  # starts 0..len-block_size-1


def test_get_batch_reproducible_with_generator():
    data = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(3))
    a = D.get_batch(data, 16, 4, generator=torch.Generator().manual_seed(42))
    b = D.get_batch(data, 16, 4, generator=torch.Generator().manual_seed(42))
    c = D.get_batch(data, 16, 4, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_errors():
    with pytest.raises(ValueError, match="need at least 9"):
        D.get_batch(torch.arange(8), block_size=8, batch_size=2)
    with pytest.raises(TypeError, match="torch.long"):
        D.get_batch(torch.zeros(20), block_size=4, batch_size=2)
    with pytest.raises(ValueError, match="1-D"):
        D.get_batch(torch.zeros(2, 20, dtype=torch.long), block_size=4, batch_size=2)


def test_block_dataset():
    data = torch.arange(11)
    ds = D.BlockDataset(data, block_size=4)
    assert len(ds) == 7  # starts 0..6
    x, y = ds[6]
    assert x.tolist() == [6, 7, 8, 9] and y.tolist() == [7, 8, 9, 10]
    assert torch.equal(ds[-1][0], x)
    with pytest.raises(IndexError):
        ds[7]
    strided = D.BlockDataset(data, block_size=4, stride=4)
    assert [strided[i][0].tolist() for i in range(len(strided))] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    xb, yb = next(iter(loader))
    assert xb.shape == (3, 4) and torch.equal(yb[:, :-1], xb[:, 1:])


# ---------------------------------------------------------------------------- toy tasks


@pytest.mark.parametrize("kind", ["reverse", "copy", "sort"])
def test_toy_task_correct(kind):
    task = D.make_toy_task(kind, n=64, length=7, vocab_size=12, generator=torch.Generator().manual_seed(0))
    assert task.src.shape == task.tgt_in.shape == task.tgt_out.shape == (64, 7)
    assert len(task) == 64
    assert int(task.src.min()) >= D.FIRST_SYMBOL and int(task.src.max()) < 12
    for s, t in zip(task.src.tolist(), task.tgt_out.tolist()):
        expected = {"reverse": s[::-1], "copy": s, "sort": sorted(s)}[kind]
        assert t == expected
    assert (task.tgt_in[:, 0] == D.BOS).all()
    assert torch.equal(task.tgt_in[:, 1:], task.tgt_out[:, :-1])


def test_toy_task_reproducible_and_errors():
    a = D.make_toy_task("copy", 5, 4, 10, generator=torch.Generator().manual_seed(7))
    b = D.make_toy_task("copy", 5, 4, 10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.src, b.src)
    with pytest.raises(ValueError, match="reverse"):
        D.make_toy_task("shuffle", 5, 4, 10)
    with pytest.raises(ValueError, match="vocab_size >= 5"):
        D.make_toy_task("copy", 5, 4, 4)


def test_toy_task_as_lm():
    task = D.make_toy_task("reverse", 3, 4, 10, generator=torch.Generator().manual_seed(0))
    x, y = D.toy_task_as_lm(task)
    assert x.shape == y.shape == (3, 8)
    assert torch.equal(x[:, :4], task.src)
    assert (x[:, 4] == D.SEP).all()
    assert (y[:, :4] == -1).all()
    assert torch.equal(y[:, 4:], task.tgt_out)  # the model is graded on the whole target
    assert torch.equal(x[:, 5:], task.tgt_out[:, :-1])
    # the models' loss (ignore_index=-1) counts exactly the target positions: with random logits,
    # counting a source position or dropping a target one changes the value
    from minigpt.baselines import BigramLM
    from minigpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    for model in (GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16)), BigramLM(10)):
        torch.nn.init.normal_(next(model.parameters()), std=1.0)  # far from uniform: every term differs
        logits, loss = model(x, y)
        want = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 10), task.tgt_out.reshape(-1))
        torch.testing.assert_close(loss, want)
        counted_all = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.clamp(min=0).reshape(-1))
        assert abs(loss.item() - counted_all.item()) > 1e-2  # the logits tell the two apart
