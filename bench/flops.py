"""FLOPs of a TensorFlow function, counted from the HLO that XLA lowers it to.

Only ``convolution`` and ``dot`` instructions are counted (a multiply-add is 2 FLOPs); in a
ResNet50 training step they are all but a fraction of a percent of the arithmetic, and they are
what a matmul peak measures. Convolutions count only the (output position, kernel tap) pairs that
read a real input element, the way XLA's ``HloCostAnalysis`` does: taps on padding or on the holes
of a dilated input (the backward pass of a strided convolution) are not work. Instructions inside
``while`` bodies would be counted once; the train step of this package has none.

The counter reads the unoptimised HLO (``stage="hlo"``), so it counts what the program asks for
before XLA's fusion and dead-code elimination.

Example::

    fn = tf.function(model.train_step, jit_compile=True)
    count = function_flops(fn, (images, labels))
    count.flops, count.instructions
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

_SHAPE = r"[a-z0-9]+\[([0-9,]*)\]"
_CONVOLUTION = re.compile(
    rf"=\s*{_SHAPE}\S*\s+convolution\(\s*{_SHAPE}\S*\s+%?[\w.\-]+,\s*{_SHAPE}"
)
_DOT = re.compile(rf"=\s*{_SHAPE}\S*\s+dot\(\s*{_SHAPE}\S*\s+%?[\w.\-]+,\s*{_SHAPE}")
_DIM_LABELS = re.compile(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_LHS_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one program.

    Attributes:
        convolution_flops: 2 x multiply-adds of all convolutions.
        dot_flops: 2 x multiply-adds of all dots (matmuls, einsums).
        instructions: how many convolution and dot instructions were counted.
    """

    convolution_flops: int
    dot_flops: int
    instructions: int

    @property
    def flops(self) -> int:
        return self.convolution_flops + self.dot_flops


def _dims(text: str) -> list:
    return [int(d) for d in text.split(",") if d]


def _window_fields(window: str, rank: int) -> dict:
    """Parses ``size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=2x2`` into per-dimension lists."""
    fields = {
        "size": [1] * rank, "stride": [1] * rank, "lhs_dilate": [1] * rank,
        "rhs_dilate": [1] * rank, "pad": [(0, 0)] * rank,
    }
    for item in window.split():
        key, _, value = item.partition("=")
        parts = value.split("x")
        if key == "pad":
            fields["pad"] = [tuple(int(p) for p in part.split("_")) for part in parts]
        elif key in fields:
            fields[key] = [int(p) for p in parts]
    return fields


def _valid_taps(input_size, output_size, kernel_size, stride, pad_low, lhs_dilate, rhs_dilate):
    """(output position, kernel tap) pairs of one spatial dimension that hit a real input."""
    dilated_input = (input_size - 1) * lhs_dilate + 1
    count = 0
    for o in range(output_size):
        for k in range(kernel_size):
            position = o * stride + k * rhs_dilate - pad_low
            if 0 <= position < dilated_input and position % lhs_dilate == 0:
                count += 1
    return count


def convolution_macs(line: str) -> int:
    """Multiply-adds of one HLO ``convolution`` instruction line (0 if it is not one)."""
    match = _CONVOLUTION.search(line)
    labels = _DIM_LABELS.search(line)
    if match is None or labels is None:
        return 0
    output, lhs, kernel = (_dims(g) for g in match.groups())
    lhs_labels, kernel_labels, output_labels = labels.groups()
    spatial = [c for c in output_labels if c.isdigit()]
    window = _WINDOW.search(line)
    fields = _window_fields(window.group(1) if window else "", len(spatial))
    macs = output[output_labels.index("b")] * output[output_labels.index("f")]
    macs *= kernel[kernel_labels.index("i")]
    for axis, name in enumerate(sorted(spatial)):
        macs *= _valid_taps(
            lhs[lhs_labels.index(name)],
            output[output_labels.index(name)],
            kernel[kernel_labels.index(name)],
            fields["stride"][axis],
            fields["pad"][axis][0],
            fields["lhs_dilate"][axis],
            fields["rhs_dilate"][axis],
        )
    return macs


def dot_macs(line: str) -> int:
    """Multiply-adds of one HLO ``dot`` instruction line (0 if it is not one)."""
    match = _DOT.search(line)
    if match is None:
        return 0
    output, lhs, _ = (_dims(g) for g in match.groups())
    contracting = _LHS_CONTRACTING.search(line)
    contracted = [lhs[i] for i in _dims(contracting.group(1))] if contracting else []
    return math.prod(output) * math.prod(contracted)


def hlo_flops(hlo_text: str) -> FlopCount:
    """Counts the convolution and dot FLOPs of an HLO module's text."""
    convolution = dot = instructions = 0
    for line in hlo_text.splitlines():
        if " convolution(" in line:
            macs = convolution_macs(line)
            if macs == 0:
                raise ValueError(f"Could not parse an HLO convolution: {line.strip()[:300]}")
            convolution += macs
            instructions += 1
        elif " dot(" in line:
            macs = dot_macs(line)
            if macs == 0:
                raise ValueError(f"Could not parse an HLO dot: {line.strip()[:300]}")
            dot += macs
            instructions += 1
    return FlopCount(2 * convolution, 2 * dot, instructions)


def function_flops(function, args: Sequence) -> FlopCount:
    """FLOPs of ``function(*args)``, a ``tf.function(..., jit_compile=True)``, from its HLO.

    Raises:
        ValueError: if the function cannot be lowered to XLA (an op without an XLA kernel).
    """
    try:
        hlo = function.experimental_get_compiler_ir(*args)(stage="hlo")
    except Exception as error:  # TF raises several error types for non-lowerable graphs
        raise ValueError(
            f"XLA could not lower the function to HLO ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}); every op of the function needs an XLA kernel."
        ) from error
    return hlo_flops(hlo)
