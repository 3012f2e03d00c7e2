"""The one runner shared by the ``dgml_tf`` commands (``python -m dgml_tf.<command>``).

Flags live in a private ``absl.flags.FlagValues`` and are parsed by
:func:`dgml_tf.flag_parsing.parse_flags` (the style ``serving``'s commands use too): ``--help``
exits 0, a bad flag exits 1 naming it.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from dgml_tf.flag_parsing import parse_flags


def run_cli(argv: Optional[Sequence[str]], define_flags: Callable, main: Callable,
            doc: str, onednn_default: bool = False) -> None:
    """Parses ``argv`` and exits with ``main(remaining, flag_values)``.

    Args:
        argv: the command line (``sys.argv`` when None).
        define_flags: ``define_flags(flag_values)`` declares the CLI's flags.
        main: ``main(remaining_argv, flag_values) -> int``.
        doc: printed with ``--help`` above the flags.
        onednn_default: apply the training CLI's oneDNN default first (``dgml_tf.hardware``;
            before TensorFlow loads), so a command that runs a trained model uses the kernels
            it was trained with and reproduces its metrics.
    """
    if onednn_default:
        from dgml_tf import hardware

        hardware.apply_onednn_default()
    remaining, flag_values = parse_flags(argv, define_flags, doc)
    raise SystemExit(main(remaining, flag_values))
