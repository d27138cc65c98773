"""bfloat16 products on a CPU without bfloat16 units.

There, ATen's bfloat16 GEMM is 8-20x slower than float32 (AVX2 CPUs). A bfloat16 GEMM on
CUDA or oneDNN multiplies bfloat16 operands with float32 accumulation and rounds the result
once; the same arithmetic at float32 speed is a float32 product of the (exactly upcast)
operands, rounded back to bfloat16. Results are within one bfloat16 rounding of the native
kernel's, for summation order (tests/test_bf16_emulation.py).

etrm's own layers take that path themselves (`emulated_linear`, `attention`); any other model code,
the researcher's, runs under `bfloat16_products_emulated()`, a torch function mode that does
the same for every linear, matrix product and attention, so their code is run unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_emulate: bool | None = None  # None: decided once from the CPU


def native_bfloat16_products() -> bool:
    """Whether this CPU multiplies bfloat16 natively through oneDNN (AVX-512 with BF16/AMX
    units, where bfloat16 products are faster than float32); AVX2-only CPUs are not."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def aten_bfloat16_attention_runs() -> bool:
    """Whether ATen's CPU bfloat16 attention runs here. On a CPU with AMX tiles it packs its
    operands for AMX with code that only its AVX-512 kernels hold, so with a lower
    ATEN_CPU_CAPABILITY (avx2, default) it raises "pack_vnni2 is only supported when avx512
    is supported" for sequences of 64 and more (torch 2.13)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return not amx or torch.backends.cpu.get_cpu_capability() == "AVX512"


def emulating_bfloat16() -> bool:
    """Whether bfloat16 CPU products are emulated now (see use_emulated_bfloat16)."""
    global _emulate
    if _emulate is None:
        _emulate = not native_bfloat16_products()
    return _emulate


def use_emulated_bfloat16(enabled: bool | None = True) -> bool | None:
    """Whether bfloat16 CPU products run as float32 products of the bfloat16 operands,
    rounded back to bfloat16. None (the default) decides from the CPU: emulated where
    `native_bfloat16_products()` is false. Returns the previous setting."""
    global _emulate
    previous, _emulate = _emulate, enabled
    return previous


def emulated_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear of bfloat16 tensors as a bfloat16 GEMM computes it: float32 accumulation, one rounding."""
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *rest, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention (same parameter names: the official TRM passes them by
    keyword); CPU bfloat16 inputs run in float32 and the result is rounded once where products
    are emulated, or where ATen's bfloat16 kernel cannot run (aten_bfloat16_attention_runs).
    The forward is as fast either way there, but ATen's bfloat16 attention backward is 4.5x
    slower than float32's on AVX2 (1214 vs 271 ms at seq 916, 8 heads of 64), and H2's gradient
    check and training spend most of their time in it."""
    if _is_cpu_bfloat16(query) and (emulating_bfloat16() or not aten_bfloat16_attention_runs()):
        rest = [a.float() if _is_cpu_bfloat16(a) else a for a in rest]  # a float mask too
        kwargs = {n: a.float() if _is_cpu_bfloat16(a) else a for n, a in kwargs.items()}
        out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), *rest, **kwargs)
        return out.to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, *rest, **kwargs)


def _is_cpu_bfloat16(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 and value.device.type == "cpu"


class _RoutedAttention(TorchFunctionMode):
    """Attention through `attention` (float32 where ATen's bfloat16 kernel cannot run); all else as called."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class _EmulatedProducts(TorchFunctionMode):
    """Linear layers, matrix products and attention whose tensor operands are CPU bfloat16 run
    in float32 and are rounded back once; everything else runs as called."""

    PRODUCTS = {
        F.linear,
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.Tensor.mm,
        torch.Tensor.bmm,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return attention(*args, **kwargs)
        if func in self.PRODUCTS and "out" not in kwargs:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors and all(_is_cpu_bfloat16(t) for t in tensors):
                upcast = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
                kw = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                return func(*upcast, **kw).to(torch.bfloat16)
        return func(*args, **kwargs)


@contextmanager
def bfloat16_products_emulated() -> Iterator[None]:
    """Run the enclosed model code with its bfloat16 CPU products emulated, where
    `emulating_bfloat16()` says so, with its attention alone through `attention` where ATen's
    bfloat16 kernel cannot run, and otherwise as it is."""
    if emulating_bfloat16():
        with _EmulatedProducts():
            yield
    elif not aten_bfloat16_attention_runs():
        with _RoutedAttention():
            yield
    else:
        yield
