"""What the machine can do, and the fast defaults that follow from it. Imports no TensorFlow.

- oneDNN: TensorFlow turns its oneDNN CPU kernels on by itself only on some CPUs, although they
  speed the training step up on the others too (docs/benchmarks.md). ``TF_ENABLE_ONEDNN_OPTS`` is
  read when TensorFlow is imported, so :func:`apply_onednn_default` must run before that; a value
  the user set is always kept.
- bfloat16: ``--mixed_precision=auto`` trains in ``mixed_bfloat16`` where the hardware has bf16
  arithmetic (CPUs with AVX512_BF16 or AMX-BF16; NVIDIA GPUs of compute capability >= 8.0) and
  in float32 elsewhere, where bf16 is emulated and 2-6x slower.
- op determinism: ``--deterministic`` unset means on for CPU-only training, where it costs little
  (bench/train_step_speed.py, the determinism rows), and off on GPUs, where deterministic cuDNN
  kernels are slower.

Example:
    >>> resolve_mixed_precision("auto", cpu_flags={"avx2", "fma"})
    'none'
    >>> resolve_mixed_precision("auto", cpu_flags={"avx512f", "avx512_bf16"})
    'mixed_bfloat16'
"""

from __future__ import annotations

import os
from typing import Dict, FrozenSet, Iterable, MutableMapping, Optional, Sequence, Tuple

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# Set next to TF_ENABLE_ONEDNN_OPTS when we chose the value, so child processes (the main job's
# stages) record it as our default rather than as the user's setting.
ONEDNN_DEFAULTED = "DGML_ONEDNN_DEFAULTED"
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
BF16_GPU_COMPUTE_CAPABILITY = (8, 0)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The instruction-set flags of the first CPU in ``cpuinfo`` (empty if unreadable)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """True when the CPU computes in bfloat16 natively (AVX512_BF16 or AMX-BF16)."""
    return bool(BF16_CPU_FLAGS & set(cpu_flags() if flags is None else flags))


def gpu_has_bf16(compute_capabilities: Sequence[Tuple[int, int]]) -> bool:
    """True when every GPU has bf16 tensor cores (compute capability >= 8.0, Ampere on)."""
    return bool(compute_capabilities) and all(
        tuple(c) >= BF16_GPU_COMPUTE_CAPABILITY for c in compute_capabilities)


def resolve_mixed_precision(value: str, cpu_flags: Optional[Iterable[str]] = None,
                            gpu_compute_capabilities: Sequence[Tuple[int, int]] = ()) -> str:
    """The Keras policy ``--mixed_precision=value`` means on this machine.

    Args:
        value: the flag value ("auto", "none", "mixed_bfloat16", "mixed_float16").
        cpu_flags: CPU flags (default: this machine's, from /proc/cpuinfo).
        gpu_compute_capabilities: (major, minor) of each visible GPU; training runs on the
            GPUs when there are any, so they decide.

    Returns:
        ``value`` unless it is "auto": then "mixed_bfloat16" where bf16 is native, else "none".
    """
    if value != "auto":
        return value
    if gpu_compute_capabilities:
        return "mixed_bfloat16" if gpu_has_bf16(gpu_compute_capabilities) else "none"
    return "mixed_bfloat16" if cpu_has_bf16(cpu_flags) else "none"


def resolve_deterministic(value: Optional[bool], num_gpus: int) -> bool:
    """``--deterministic`` as given, or (unset) on for CPU-only training and off on GPUs."""
    return bool(value) if value is not None else num_gpus == 0


def apply_onednn_default(environ: Optional[MutableMapping[str, str]] = None) -> Dict[str, object]:
    """Turns oneDNN on unless ``TF_ENABLE_ONEDNN_OPTS`` is already set; call before TF loads.

    Args:
        environ: the environment to read and change (default ``os.environ``).

    Returns:
        The decision for the run config: ``{"TF_ENABLE_ONEDNN_OPTS": "1", "source": "default"}``
        (or ``"environment"`` when the user set it).
    """
    environ = os.environ if environ is None else environ
    if ONEDNN_VARIABLE in environ:
        source = "default" if environ.get(ONEDNN_DEFAULTED) == "1" else "environment"
    else:
        environ[ONEDNN_VARIABLE] = "1"
        environ[ONEDNN_DEFAULTED] = "1"
        source = "default"
    return {ONEDNN_VARIABLE: environ[ONEDNN_VARIABLE], "source": source}


def onednn_active() -> Optional[bool]:
    """Whether the loaded TensorFlow runs oneDNN kernels (None if TF does not say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None
