"""After a CPU model loads, its memory-mapped checkpoint files are read ahead into the page cache in the
background (so a first request does not wait on the disk) — unless they would not fit in memory."""

from gptoss.model import checkpoint


def test_files_that_fit_are_read_ahead(tmp_path, monkeypatch):
    files = []
    for i in range(2):
        f = tmp_path / f"shard{i}.safetensors"
        f.write_bytes(b"\0" * 100_000)
        files.append(f)
    advised = []
    real = checkpoint.os.posix_fadvise
    monkeypatch.setattr(
        checkpoint.os, "posix_fadvise", lambda fd, off, n, how: advised.append(how) or real(fd, off, n, how)
    )
    thread = checkpoint.read_ahead(files, available=10_000_000)
    assert thread is not None
    thread.join(10)
    assert advised == [checkpoint.os.POSIX_FADV_WILLNEED] * 2


def test_files_larger_than_the_free_memory_are_left_alone(tmp_path):
    f = tmp_path / "big.safetensors"
    f.write_bytes(b"\0" * 100_000)
    assert checkpoint.read_ahead([f], available=50_000) is None
    assert checkpoint.read_ahead([tmp_path / "missing.safetensors"]) is None  # a vanished file: nothing to do


def test_loading_a_cpu_model_reads_its_files_ahead(tmp_path, monkeypatch):
    from gptoss.model import Transformer
    from gptoss.model.config import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    seen = []
    monkeypatch.setattr(checkpoint, "read_ahead", lambda files, available=None: seen.append(files))
    write_checkpoint(tmp_path, ModelConfig.preset("tiny"), seed=0, tokenizer=False)
    Transformer.from_checkpoint(tmp_path, device="cpu")
    assert seen and all(str(f).endswith(".safetensors") for f in seen[0])


def test_copied_mapped_tensors_give_their_pages_back(tmp_path):
    # The HF layout's q, k and v are joined into one qkv copy: the file pages they were read from are dropped
    # from the process (resident memory), and reading them again still gives the file's numbers.
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    want = torch.arange(1 << 20, dtype=torch.float32)
    save_file({"w": want}, str(tmp_path / "t.safetensors"))
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        t = f.get_tensor("w")
        assert float(t.sum()) == float(want.sum())
        assert checkpoint.release_mapped_pages(t)
        assert torch.equal(t, want)
    own = torch.ones(1 << 20)
    assert not checkpoint.release_mapped_pages(own) and bool((own == 1).all())  # allocator memory: untouched
