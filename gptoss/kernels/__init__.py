"""Fast paths — Triton kernels on the GPU, native C++ kernels on the CPU — each beside the plain-torch path it
must match. The CPU kernels are :mod:`gptoss.kernels.cpu` (MXFP4 experts, bf16 dense products); the table
below lists the Triton ones.

=====================  =========================================  ==========================================
kernel module          fast function                              reference it must match
=====================  =========================================  ==========================================
``kernels.moe``        ``moe_experts`` (sort by expert, MXFP4     ``gptoss.model.moe.experts_reference``
                       grouped matmul, fused bias+SwiGLU, fused
                       bias+routing-weighted combine)
``kernels.attention``  ``paged_attention`` (flash-style prefill;  ``gptoss.model.paged_cache.
                       split-K decode), sinks, causal / banded    paged_attention_reference``
``kernels.norm_rope``  ``rms_norm``, ``rope_store`` (RoPE on q/k  ``RMSNorm.forward``,
                       and the paged KV write in one pass)        ``paged_cache.rope_store_reference``
=====================  =========================================  ==========================================

When the model uses them — :func:`active`:

* ``GPTOSS_KERNELS=auto`` (default): Triton on CUDA tensors when Triton imports; the native CPU kernels on CPU
  tensors (:func:`cpu_active`).
* ``GPTOSS_KERNELS=off``: never (the reference path everywhere, also on a GPU).
* ``GPTOSS_KERNELS=on``: Triton always — on the CPU this only works under ``TRITON_INTERPRET=1`` (the tests).

:func:`use` switches the mode for a block of code (``with kernels.use("off"): ...``). This package imports
without Triton; the kernel modules import Triton lazily and raise :class:`TritonUnavailable` when called
without it. ``TRITON_INTERPRET`` is read by Triton when a kernel module is first imported, so set it before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

MODES = ("auto", "on", "off")


class TritonUnavailable(RuntimeError):
    """A Triton kernel was asked for but Triton is not installed (``pip install 'gptoss[gpu]'``)."""


class _State(threading.local):
    def __init__(self) -> None:
        self.mode: str | None = None  # None: read GPTOSS_KERNELS


_state = _State()


@functools.lru_cache(maxsize=1)
def triton_version() -> str | None:
    """Triton's version, or None when it is not installed."""
    try:
        import triton
    except Exception:  # ImportError, or a broken install
        return None
    return str(triton.__version__)


def has_triton() -> bool:
    return triton_version() is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def mode() -> str:
    m = _state.mode or os.environ.get("GPTOSS_KERNELS", "auto").lower()
    if m not in MODES:
        raise ValueError(f"GPTOSS_KERNELS={m!r}: expected one of {', '.join(MODES)}")
    return m


@contextlib.contextmanager
def use(new_mode: str):
    """Temporarily set the kernel mode (``auto``, ``on``, ``off``) for this thread."""
    if new_mode not in MODES:
        raise ValueError(f"kernel mode {new_mode!r}: expected one of {', '.join(MODES)}")
    old, _state.mode = _state.mode, new_mode
    try:
        yield
    finally:
        _state.mode = old


def active(t: torch.Tensor) -> bool:
    """Whether the model should run its Triton kernels on tensors like ``t``."""
    m = mode()
    if m == "off":
        return False
    if m == "on":
        return True
    return t.is_cuda and has_triton()


def cpu_active(t: torch.Tensor) -> bool:
    """Whether the model should run the native CPU kernels (:mod:`gptoss.kernels.cpu`) on tensors like ``t``:
    in ``auto`` mode, on CPU tensors, when the kernels load (they are compiled on first use; where they cannot
    be, the reference path runs and one warning says why)."""
    if t.device.type != "cpu" or mode() != "auto":
        return False
    from gptoss.kernels import cpu

    return cpu.available()


def require_triton(what: str) -> None:
    if not has_triton():
        raise TritonUnavailable(
            f"{what} needs Triton, which is not installed: pip install 'triton>=3.2' (or the 'gpu' extra), "
            "or set GPTOSS_KERNELS=off to use the plain-torch reference path"
        )


def check_device(what: str, *tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors only under the Triton interpreter."""
    require_triton(what)
    for t in tensors:
        if not t.is_cuda and not interpreting():
            raise TritonUnavailable(
                f"{what}: a tensor is on {t.device}; Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 "
                "set before the kernel module is imported, for tests on the CPU)"
            )
