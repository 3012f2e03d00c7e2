"""Flag parsing shared by every command (``dgml_tf``'s and ``serving``'s): absl, one style.

Each command keeps its flags in a private ``absl.flags.FlagValues`` (no global FLAGS), so one
process can import several commands (and tests call them) without duplicate-flag errors, and
parses them with :func:`parse_flags`: ``--help`` (``-h``, ``--helpfull``) prints the command's
doc and flags and exits 0; a bad flag exits 1 with absl's message and a pointer to ``--help``.
:func:`define_alias` keeps an old flag name working (with a deprecation message) after a rename.
Only absl is imported: the library code of ``serving`` may use this, but no command module.
"""

from __future__ import annotations

import sys
from typing import Callable, List, Optional, Sequence, Tuple

from absl import flags as absl_flags

HELP_ARGS = ("--help", "-h", "--helpfull")


def parse_flags(argv: Optional[Sequence[str]], define_flags: Callable,
                doc: str) -> Tuple[List[str], absl_flags.FlagValues]:
    """Parses ``argv`` into fresh FlagValues; ``(remaining_argv, flag_values)``.

    Args:
        argv: the command line, program name first (``sys.argv`` when None).
        define_flags: ``define_flags(flag_values)`` declares the command's flags.
        doc: printed with ``--help`` above the flags.

    Raises:
        SystemExit: 0 after printing the help, or with absl's message for a bad flag.

    Example:
        >>> rest, values = parse_flags(
        ...     ["cmd", "--k=3", "a.png"],
        ...     lambda v: absl_flags.DEFINE_integer("k", 5, "Neighbours.", flag_values=v), "doc")
        >>> rest, values.k
        (['cmd', 'a.png'], 3)
    """
    argv = list(argv if argv is not None else sys.argv)
    flag_values = absl_flags.FlagValues()
    define_flags(flag_values)
    if any(a in HELP_ARGS for a in argv[1:]):
        print(doc)
        print(flag_values.get_help())
        raise SystemExit(0)
    try:
        remaining = flag_values(argv)
    except absl_flags.Error as error:
        raise SystemExit(f"{error}\nRun with --help for the flags.") from error
    return remaining, flag_values


class _AliasFlag(absl_flags.Flag):
    """``--name`` as another spelling of ``--target``: a value given to it is parsed by, and
    stored in, the target flag (so readers see only the target), left to right as usual."""

    def __init__(self, target: absl_flags.Flag, name: str, deprecated: bool):
        why = "Deprecated" if deprecated else "Another"
        super().__init__(target.parser, target.serializer, name, None,
                         f"{why} spelling of --{target.name}.", boolean=target.boolean)
        self._target = target
        self._deprecated = deprecated

    def parse(self, argument) -> None:
        if self._deprecated:
            print(f"--{self.name} is deprecated, use --{self._target.name}", file=sys.stderr,
                  flush=True)
        self._target.parse(argument)  # the alias itself keeps no value: one place to read
        # What absl's parser marks on the flag it was given, marked on the target too: code
        # that asks whether the user set --target (e.g. to override a run's config) sees it.
        self._target.using_default_value = False
        self.present += 1


def define_alias(name: str, target: str, values: absl_flags.FlagValues = absl_flags.FLAGS,
                 deprecated: bool = True) -> None:
    """Defines ``--name`` as another spelling of the already defined ``--target``.

    A deprecated spelling (an old flag name kept for one release) prints ``--name is
    deprecated, use --target`` each time it is used; its value lands in ``--target``, so code
    reads only the target. Non-deprecated aliases keep a name other tools use (TF Serving's
    ``--rest_api_port``).

    Args:
        name: the other spelling.
        target: the flag it sets (defined in ``values`` before this call).
        values: the FlagValues holding ``target``.
        deprecated: print the deprecation message when ``--name`` is used.

    Example:
        >>> values = absl_flags.FlagValues()
        >>> _ = absl_flags.DEFINE_string("data_dir", None, "Dataset root.", flag_values=values)
        >>> define_alias("data_root", "data_dir", values)
        >>> _ = values(["index", "--data_root=/data"])  # prints the deprecation to stderr
        >>> values.data_dir
        '/data'
    """
    module = values.find_module_defining_flag(target)  # listed next to it in --help
    absl_flags.DEFINE_flag(_AliasFlag(values[target], name, deprecated), flag_values=values,
                           **({"module_name": module} if module else {}))

