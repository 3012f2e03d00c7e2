"""The one runner shared by CLIs that keep their flags in a private ``absl.flags.FlagValues``.

A private FlagValues (instead of the global FLAGS) lets one process import several CLIs (and
tests call them) without duplicate-flag errors.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence


def run_cli(argv: Optional[Sequence[str]], define_flags: Callable, main: Callable,
            doc: str) -> None:
    """Parses ``argv`` into fresh FlagValues and exits with ``main(remaining, flag_values)``.

    Args:
        argv: the command line (``sys.argv`` when None).
        define_flags: ``define_flags(flag_values)`` declares the CLI's flags.
        main: ``main(remaining_argv, flag_values) -> int``.
        doc: printed with ``--help`` above the flags.
    """
    from absl import flags as absl_flags

    argv = list(argv if argv is not None else sys.argv)
    flag_values = absl_flags.FlagValues()
    define_flags(flag_values)
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
        print(doc)
        print(flag_values.get_help())
        raise SystemExit(0)
    try:
        remaining = flag_values(argv)
    except absl_flags.Error as error:
        raise SystemExit(f"{error}\nRun with --help for the flags.") from error
    raise SystemExit(main(remaining, flag_values))
