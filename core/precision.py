"""Numeric precision and memory layout: what --amp and --channels-last mean on each device.

--amp is mixed precision wherever the hardware has it: bf16 on GPUs that support it (else
fp16, with a grad scaler in training) and on CPUs with native bf16 (AVX512-BF16 or AMX); on
other CPUs it has no effect, with a note. channels_last (NHWC) is the default layout of every
network except where benchmarks/bench_precision.py measured it slower (docs/benchmarks.md).
Neither changes a result beyond rounding.
"""
import contextlib
import functools

import torch

# (device type, network class, precision) where the default NCHW layout was measured faster
# than channels_last, inference and training step (docs/benchmarks.md: CPU with AMX, H100).
CONTIGUOUS_FASTER = {
    ("cpu", "DeepLabV2", "fp32"),        # 1.06x / 1.08x slower in channels_last
    ("cpu", "DSCDiscriminator", "bf16"),  # depthwise convolutions: training 1.6x slower
    ("cuda", "DeepLabV2", "fp32"), ("cuda", "DeepLabV2", "bf16"),   # dilated ResNet-101
    ("cuda", "DSCDiscriminator", "fp32"), ("cuda", "DSCDiscriminator", "bf16"),
}


def cpu_has_native_bf16():
    """AVX512-BF16 or AMX (lscpu: avx512_bf16, amx_bf16): the CPUs where bf16 autocast runs
    natively and fast; elsewhere it is emulated and slower than float32."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported",
                                                          "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def mixed_precision_is_native(device_flag):
    """Whether --amp acts for --device `device_flag` (auto, cpu, cuda): on a visible GPU, or
    on a CPU with native bf16. The demo's default (docs/demo-results.md: every row in 10
    minutes on a 2-core CPU without AMX only with it)."""
    if device_flag != "cpu" and torch.cuda.is_available():
        return True
    return cpu_has_native_bf16()


@functools.cache
def _note_no_bf16():
    print("note: --amp has no effect on this CPU (no native bf16: lscpu shows neither "
          "avx512_bf16 nor amx_bf16); running in float32", flush=True)


def amp_dtype(device, amp):
    """--amp: the autocast dtype on `device`, or None (full precision)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    _note_no_bf16()
    return None


def inference_autocast(device, amp):
    """--amp of the inference scripts, as a context factory: autocast in amp_dtype (logits are
    upsampled and soft-maxed in fp32), or nothing."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=dtype)


def prefers_channels_last(module, device, dtype):
    """Default layout of `module` on `device` at autocast `dtype` (None: float32)."""
    precision = "fp32" if dtype is None else "bf16"   # fp16 (older GPUs) as bf16
    return (device.type, type(module).__name__, precision) not in CONTIGUOUS_FASTER


def set_memory_format(module, device, dtype=None, choice=None):
    """`module` in channels_last or the default layout (choice: --channels-last / --no-...,
    None = measured default), with a hook that gives its forward its inputs in that layout
    too: a convolution runs in channels_last when its input or its weight is."""
    channels_last = prefers_channels_last(module, device, dtype) if choice is None else choice
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def inputs_in_layout(_, args):
        return tuple(a.contiguous(memory_format=fmt) if torch.is_tensor(a) and a.dim() == 4
                     else a for a in args)

    module = module.to(memory_format=fmt)
    module.register_forward_pre_hook(inputs_in_layout)
    return module
