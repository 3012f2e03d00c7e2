"""Glyphs dataset: font discovery, font tables and the Debian packages the fonts came from.

Families: fonts are grouped by their typographic family name (name table ID 16, else ID 1), so
Bold / Italic / Condensed files of "DejaVu Sans" are one family; :func:`select_fonts` keeps the
most regular style of each (upright, weight closest to 400, normal width) or every style.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

FONT_PACKAGES = ("fonts-noto-core", "fonts-dejavu-core", "fonts-freefont-ttf",
                 "fonts-urw-base35", "fonts-liberation2")
INSTALL_HINT = "apt-get install " + " ".join(FONT_PACKAGES)
FONT_EXTENSIONS = (".ttf", ".otf")
_UPRIGHT_WEIGHT, _NORMAL_WIDTH = 400, 5


@dataclasses.dataclass(frozen=True)
class FontInfo:
    """One font file: its family, style, and the code points its cmap maps."""

    path: str
    family: str
    style: str
    weight: int
    width: int
    italic: bool
    codepoints: frozenset


def _fonttools():
    try:
        from fontTools.ttLib import TTFont
    except ImportError as error:
        raise ImportError("The glyphs dataset reads font tables with fontTools: "
                          "pip install fonttools") from error
    return TTFont


def find_font_files(font_dirs: Sequence[str]) -> List[str]:
    """All .ttf / .otf files under ``font_dirs``, sorted; a clear error when there are none."""
    if isinstance(font_dirs, (str, os.PathLike)):
        font_dirs = (font_dirs,)
    paths = []
    for root in font_dirs:
        for folder, _, files in os.walk(root):
            paths += [os.path.join(folder, f) for f in files
                      if f.lower().endswith(FONT_EXTENSIONS)]
    if not paths:
        raise FileNotFoundError(
            f"No .ttf/.otf fonts found under {list(map(str, font_dirs))}. The glyphs dataset is "
            f"rendered from Debian font packages; install them with:\n  {INSTALL_HINT}\n"
            "or point font_dirs at a folder holding those fonts."
        )
    return sorted(paths)


def _file_key(path: str) -> Tuple[str, int, int]:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def _remaps_latin(cmap: Dict[int, str]) -> bool:
    """True for symbol fonts that map Latin letters to other shapes (URW Dingbats maps "E" to
    the glyph "a32", Standard Symbols maps it to "Epsilon"): most letters have real glyph
    names, and these names are not the letters'. Fonts without glyph names ("glyph00042",
    TrueType post format 3) are not judged."""
    from fontTools import agl

    letters = [cp for cp in range(0x41, 0x7B) if chr(cp).isalpha() and cp in cmap]
    named = [cp for cp in letters if not cmap[cp].startswith("glyph")]
    matching = [cp for cp in named if agl.toUnicode(cmap[cp]) == chr(cp)]
    return len(named) >= 10 and len(matching) < len(named) / 2


@functools.lru_cache(maxsize=None)
def _read_font(key: Tuple[str, int, int]) -> FontInfo:
    path = key[0]
    font = _fonttools()(path, lazy=True)
    try:
        names = font["name"]
        family = (names.getDebugName(16) or names.getDebugName(1) or "").strip()
        style = (names.getDebugName(17) or names.getDebugName(2) or "").strip()
        os2 = font["OS/2"] if "OS/2" in font else None
        weight = int(os2.usWeightClass) if os2 else _UPRIGHT_WEIGHT
        width = int(os2.usWidthClass) if os2 else _NORMAL_WIDTH
        italic = bool(os2.fsSelection & 1) if os2 else "italic" in style.lower()
        italic = italic or any(s in style.lower() for s in ("italic", "oblique"))
        cmap = font.getBestCmap() or {}
        codepoints = frozenset(cmap)
        if _remaps_latin(cmap):
            codepoints = frozenset(cp for cp in codepoints if not 0x20 <= cp < 0x100)
    finally:
        font.close()
    return FontInfo(path, family or os.path.basename(path), style, weight, width, italic,
                    codepoints)


@functools.lru_cache(maxsize=None)
def _sha256(key: Tuple[str, int, int]) -> str:
    digest = hashlib.sha256()
    with open(key[0], "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def debian_package_versions(packages: Tuple[str, ...] = FONT_PACKAGES) -> Dict[str, Optional[str]]:
    """``dpkg-query -W -f '${Version}'`` of each package; None where unknown (no dpkg)."""
    versions = {}
    for package in packages:
        try:
            done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                                  capture_output=True, text=True, check=False)
            versions[package] = done.stdout.strip() or None
        except OSError:
            versions[package] = None
    return versions


@functools.lru_cache(maxsize=None)
def _package_files(packages: Tuple[str, ...] = FONT_PACKAGES) -> Dict[str, str]:
    owners = {}
    for package in packages:
        try:
            done = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True,
                                  check=False)
        except OSError:
            return {}
        for line in done.stdout.splitlines():
            owners[os.path.realpath(line.strip())] = package
    return owners


@functools.lru_cache(maxsize=None)
def owning_package(path: str) -> Optional[str]:
    """The Debian package that installed ``path`` (None when not from a package / no dpkg)."""
    real = os.path.realpath(path)
    owner = _package_files().get(real)
    if owner:
        return owner
    try:  # e.g. DejaVuMathTeXGyre.ttf comes from fonts-dejavu-extra
        done = subprocess.run(["dpkg-query", "-S", real], capture_output=True, text=True,
                              check=False)
    except OSError:
        return None
    line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    return line.split(":", 1)[0].split(",")[0].strip() or None


def _style_rank(font: FontInfo) -> tuple:
    """Lower is more "Regular": upright, weight 400, normal width, then by path."""
    return (font.italic, abs(font.weight - _UPRIGHT_WEIGHT), abs(font.width - _NORMAL_WIDTH),
            font.path)


def select_fonts(fonts: Sequence[FontInfo], keep_styles: bool) -> List[FontInfo]:
    """One font per family (the most regular style), or every style, ordered by family."""
    by_family: Dict[str, List[FontInfo]] = {}
    for font in fonts:
        by_family.setdefault(font.family, []).append(font)
    chosen = []
    for family in sorted(by_family):
        styles = sorted(by_family[family], key=_style_rank)
        chosen += styles if keep_styles else styles[:1]
    return chosen


def font_records(fonts: Sequence[FontInfo], used: Sequence[int], paths: Sequence[str],
                 checksums: Sequence[str]) -> List[dict]:
    """Provenance of the fonts ``used`` (indices into ``fonts``): path, family, style, SHA-256
    (``checksums[i]`` belongs to ``paths[i]``) and the Debian package that installed each."""
    return [{"path": fonts[i].path, "family": fonts[i].family,
             "style": fonts[i].style, "sha256": checksums[paths.index(fonts[i].path)],
             "package": owning_package(fonts[i].path)} for i in used]
