"""Kernel tests: on a GPU at real sizes in bf16; on the CPU at small sizes under Triton's interpreter.

Triton decides between compiling and interpreting when a kernel module is first imported, so without CUDA
``TRITON_INTERPRET=1`` is set here, before any test module imports one. (It concerns Triton only.) The
interpreter has no bfloat16 (numpy), so CPU runs use float32 and float16.

Without Triton, kernel tests are *skipped with the reason stated* — never counted as passed. CI installs
Triton (the ``test`` extra), so there they run.
"""

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from gptoss import kernels  # noqa: E402

NO_TRITON = (
    "Triton is not installed, so this kernel test did NOT run: pip install 'triton>=3.2' "
    "(on the CPU it runs under TRITON_INTERPRET=1)"
)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def require_triton() -> None:
    """Triton is a test dependency on Linux (the `test` extra installs it), so there its absence fails the
    test; elsewhere Triton has no wheels and the test is skipped with that reason, never counted as passed."""
    if kernels.has_triton():
        return
    if sys.platform.startswith("linux"):
        pytest.fail(NO_TRITON)
    pytest.skip(NO_TRITON)


@pytest.fixture
def device() -> str:
    """Where kernels run: CUDA, or the CPU through the interpreter."""
    require_triton()
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def precision(device) -> tuple[torch.dtype, float]:
    """The low precision a model runs in, and the tolerance on ||out - ref|| / ||ref|| (ref computed in
    float32 from the same inputs): bfloat16 on a GPU, float16 under the interpreter (no bfloat16 there).
    (float32 tests use 1e-5 on the CPU, 2e-3 on a GPU, whose tl.dot multiplies float32 in TF32.)"""
    return (torch.bfloat16, 1.6e-2) if HAS_CUDA else (torch.float16, 2e-3)


def f32_tol(device: str) -> float:
    return 2e-3 if device == "cuda" else 1e-5


gpu_only = pytest.mark.skipif(
    not HAS_CUDA, reason="real gpt-oss sizes: needs a CUDA GPU (the CPU runs the small sizes)"
)
