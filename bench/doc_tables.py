"""Refreshes a benchmark's table in a Markdown document (docs/benchmarks.md, docs/results.md).

A document marks each generated part with a pair of HTML comments, invisible when rendered::

    <!-- bench:rest_latency -->
    | endpoint | clients | ... |
    <!-- /bench:rest_latency -->

:func:`refresh_section` replaces what lies between the pair and leaves every other byte of the
file as it was, so the prose around a table (what it means, on which machine) stays hand-written.
The bench scripts call it with ``--write_docs``. The write is atomic and durable (temporary
file, fsync, ``os.replace``: dgml_tf/atomic.py), so an interrupted refresh leaves the
old document, never half a one.
"""

from __future__ import annotations

import os
import re
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # run as `python bench/<script>.py`: bench/ is on the path, not the repo
    sys.path.insert(0, _REPO)

from dgml_tf.atomic import write_text_atomically  # noqa: E402

BENCHMARKS_DOC = os.path.join(_REPO, "docs", "benchmarks.md")
RESULTS_DOC = os.path.join(_REPO, "docs", "results.md")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def refresh_section(doc_path: str, name: str, markdown: str) -> None:
    """Replaces the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.

    Args:
        doc_path: the Markdown file holding the markers (each exactly once, opening first).
        name: the section's name (letters, digits, ``_ . -``).
        markdown: the new content; surrounding blank lines are trimmed and it is written on the
            lines between the two markers.

    Raises:
        FileNotFoundError: ``doc_path`` does not exist (nothing is created).
        ValueError: a bad name, a marker missing, repeated or out of order, or ``markdown``
            itself holding a marker of this section; the message names the marker and the file,
            and the file is left untouched.

    Example:
        >>> refresh_section("docs/benchmarks.md", "ann", "| method | recall@10 |\\n|---|---|")
        ... # doctest: +SKIP
    """
    if not _NAME.match(name):
        raise ValueError(f"bad section name {name!r}: use letters, digits, '_', '.' or '-'.")
    opening, closing = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if not os.path.isfile(doc_path):
        raise FileNotFoundError(f"{doc_path} does not exist; cannot refresh section {opening}.")
    with open(doc_path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    for marker in (opening, closing):
        count = text.count(marker)
        if count != 1:
            raise ValueError(
                f"{doc_path}: marker {marker} appears {count} times (expected once); add the "
                f"pair {opening} ... {closing} around the table to refresh.")
        if marker in markdown:
            raise ValueError(f"the new content of {opening} holds the marker {marker} itself.")
    start, end = text.index(opening) + len(opening), text.index(closing)
    if end < start:
        raise ValueError(f"{doc_path}: {closing} comes before {opening}.")
    updated = text[:start] + "\n" + markdown.strip("\n") + "\n" + text[end:]
    if updated != text:
        write_text_atomically(doc_path, updated)


def cpu_note() -> str:
    """One line naming the CPU's vector flags that decide our kernels' speed, for the line
    beside each generated table (what is absent matters as much: no AVX-512 means emulated bf16).

    Example:
        >>> cpu_note()  # doctest: +SKIP
        'CPU: 2 logical cores; flags: avx2 fma (absent: avx512f avx512_vnni avx512_bf16 amx_bf16)'
    """
    from dgml_tf.hardware import cpu_flags

    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    present = " ".join(f for f in wanted if f in flags) or "-"
    absent = " ".join(f for f in wanted if f not in flags) or "-"
    return f"CPU: {os.cpu_count()} logical cores; flags: {present} (absent: {absent})"
