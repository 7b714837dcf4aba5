"""Shared fixtures. Tests never touch the network: the BPE file comes from the bpe-openai wheel."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def encodings_dir(tmp_path_factory):
    """A folder holding o200k_base.tiktoken (sha256-checked); TIKTOKEN_ENCODINGS_BASE points at it,
    which is how openai-harmony (our test oracle) finds it offline."""
    from gptoss.tokenizer import seed_bpe_file

    folder = tmp_path_factory.mktemp("encodings")
    seed_bpe_file(folder)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(encodings_dir):
    from gptoss.tokenizer import Tokenizer

    return Tokenizer.load(bpe_file=encodings_dir / "o200k_base.tiktoken")


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test. The tests' models are tiny: a second thread gains nothing
    and, on a CPU shared with other work, its spin-waits cost several times the work itself (measured:
    ~10x the CPU time per decode step of the tiny model on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
