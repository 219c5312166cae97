"""Run megatron-core's CUDA-minded code on CPU processes (gloo), so CI tests the real parallel code.

megatron-core assumes a GPU in many places: `device="cuda"` and `torch.cuda.current_device()` as
tensor devices, `.cuda()` copies, `param.type() == 'torch.cuda.FloatTensor'` checks in the
optimizers, CUDA streams/events, NVTX ranges and the CUDA RNG state in its RNG tracker. This module
makes each of those mean "the CPU" for the life of the process:

- a `TorchFunctionMode` rewrites CUDA devices in tensor constructors and `.to()`, makes `.cuda()`
  the identity and reports CPU tensors' `.type()` under the CUDA name megatron checks for;
- `pin_memory=True` (the rotary embedding's context-parallel index) is dropped;
- `torch.cuda` functions megatron calls get CPU stand-ins (streams and events that are already
  complete, the CPU RNG as "the CUDA RNG", zero memory statistics);
- mixture-of-experts layers (shims named below, each with its test in tests/test_moe_cpu.py):
  `moe_te_general_gemm_shim`, `gloo_all_to_all_split_sizes_shim`, `custom_backward_under_mode_shim`.

It is switched on only when CUDA is absent (`enable_cpu_compat()` is a no-op on a GPU machine),
so the GPU path runs megatron-core untouched.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_enabled = False
_lock = threading.Lock()

# `.type()` names megatron-core's optimizers compare against.
_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare integer is a CUDA ordinal (torch.cuda.current_device() returns 0 here).
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_if_cuda(device):
    return _CPU if _is_cuda_device(device) else device


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA placements to the CPU; everything else passes through unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args))
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):  # page-locked host memory for CUDA copies: none without CUDA
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class _CompletedEvent:
    """A CUDA event stand-in: CPU work is synchronous, so every event is already complete."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return 0.0


class _SynchronousStream:
    """A CUDA stream stand-in: CPU ops run in order, so streams need no synchronisation."""

    def __init__(self, *args, **kwargs):
        self.device = _CPU

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _CompletedEvent()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_DEFAULT_STREAM = _SynchronousStream()


def _noop():
    """A fresh do-nothing function per patched name: torch._dynamo refuses one object under two names."""

    def noop(*args, **kwargs):
        return None

    return noop


def _cpu_rng_state():
    return lambda device=None: torch.get_rng_state()


def _set_cpu_rng_state():
    return lambda state, device=None: torch.set_rng_state(state)


def _patch_torch_cuda():
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = _noop()
    cuda.device_count = lambda: 1
    cuda.synchronize = _noop()
    cuda.empty_cache = _noop()
    cuda.Stream = _SynchronousStream
    cuda.Event = _CompletedEvent
    cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.set_stream = _noop()
    cuda.get_rng_state = _cpu_rng_state()
    cuda.set_rng_state = _set_cpu_rng_state()
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.random.get_rng_state = _cpu_rng_state()
    cuda.random.set_rng_state = _set_cpu_rng_state()
    cuda.memory_allocated = lambda device=None: 0
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.memory_reserved = lambda device=None: 0
    cuda.max_memory_reserved = lambda device=None: 0
    cuda.reset_peak_memory_stats = _noop()
    cuda.memory_stats = lambda device=None: {}
    cuda.nvtx.range_push = _noop()
    cuda.nvtx.range_pop = _noop()
    cuda.nvtx.mark = _noop()
    cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()


def _patch_megatron_rng():
    # megatron's RNG tracker reads and writes the CUDA generator through private helpers that,
    # on a CPU build, queue the write forever (torch.cuda._lazy_call); point them at the CPU RNG.
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)


def custom_backward_under_mode_shim() -> None:
    """Run every custom autograd Function's backward under the CUDA->CPU mode.

    The autograd engine does not carry torch-function modes into backward, so megatron's
    Functions whose backward allocates on `torch.cuda.current_device()` (the expert-parallel
    all-to-all and all-gather of the MoE dispatchers, tensor_parallel/mappings.py) met the bare CUDA
    device there. The engine calls BackwardCFunction.apply by name: wrap it once.
    """
    from torch.autograd.function import BackwardCFunction

    original = BackwardCFunction.apply
    if getattr(original, "_megactllm_cpu_mode", False):
        return

    def apply(self, *args):
        with _CudaToCpuMode():
            return original(self, *args)

    apply._megactllm_cpu_mode = True
    BackwardCFunction.apply = apply


def moe_te_general_gemm_shim() -> bool:
    """megatron-core 0.16's moe_utils imports `te_general_gemm` from Transformer Engine and tests
    `te_general_gemm is not None` in the router's linear; without TE the import fails and the name is
    never bound (NameError at the first routed token; upstream binds it to None from 0.17). Bind it
    to None so the router takes its torch.mm path. Needed wherever TE is absent, GPU or not.
    Returns True when it bound the name."""
    from megatron.core.transformer.moe import moe_utils

    if hasattr(moe_utils, "te_general_gemm"):
        return False
    moe_utils.te_general_gemm = None
    return True


def _split_sizes(sizes):
    # The alltoall dispatcher keeps split sizes as tensors (or numpy arrays) where its CUDA path
    # synchronises them lazily; gloo's all_to_all_single takes a list of ints only.
    if sizes is None or isinstance(sizes, list):
        return sizes
    if isinstance(sizes, torch.Tensor):
        return [int(n) for n in sizes.tolist()]
    return [int(n) for n in sizes]


def gloo_all_to_all_split_sizes_shim() -> None:
    """Make torch.distributed.all_to_all_single accept split sizes given as tensors or arrays
    (megatron-core's alltoall token dispatcher at expert parallelism > 1), as NCCL's path does."""
    import torch.distributed as dist

    original = dist.all_to_all_single
    if getattr(original, "_megactllm_split_sizes", False):
        return

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        return original(output, input, output_split_sizes=_split_sizes(output_split_sizes),
                        input_split_sizes=_split_sizes(input_split_sizes), group=group, async_op=async_op)

    all_to_all_single._megactllm_split_sizes = True
    dist.all_to_all_single = all_to_all_single


def enable_cpu_compat() -> bool:
    """Make megatron-core's CUDA assumptions mean the CPU in this process; False (no-op) on CUDA."""
    global _enabled
    if torch.cuda.is_available():
        return False
    with _lock:
        if _enabled:
            return True
        _patch_torch_cuda()
        _patch_megatron_rng()
        moe_te_general_gemm_shim()
        custom_backward_under_mode_shim()
        gloo_all_to_all_split_sizes_shim()
        # Entered for the life of the process: megatron creates tensors on "cuda" from many places.
        _CudaToCpuMode().__enter__()
        _enabled = True
    return True


def cpu_compat_enabled() -> bool:
    return _enabled
