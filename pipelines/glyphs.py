"""Glyphs: a many-class offline retrieval dataset rendered from Debian font packages.

A class is a Unicode character; an instance is that character drawn by one font family.
Retrieval is Omniglot-like and zero-shot: find the same character drawn in other fonts, for
characters never seen in training. Everything comes from fonts installed by

    apt-get install fonts-noto-core fonts-dejavu-core fonts-freefont-ttf fonts-urw-base35 \\
        fonts-liberation2

Rendering (Pillow / FreeType, basic layout, no shaping): each glyph is drawn black on white at
twice the target size, cropped to its ink bounding box, scaled to fit the canvas minus a margin
(aspect ratio kept) and centred. A glyph is skipped when the font's cmap does not map the
character, or its render is empty or identical to the font's .notdef ("tofu") render; symbol
fonts that put other shapes on Latin code points (URW Dingbats, Standard Symbols) are not used
for U+0020-U+00FF. Within a
character, renders that are pixel-identical to an earlier family's render are dropped (many Noto
script fonts carry the same Latin glyphs), so a query's matches are real other designs.

Characters: no whitespace, control/format/private-use/unassigned (Unicode category Z* and C*),
no combining marks (M*), and no character with a Unicode decomposition (accented letters,
compatibility forms: they would duplicate their base character's shape). A character is kept when
at least ``min_families`` distinct families draw it.

Families: fonts are grouped by their typographic family name (name table ID 16, else ID 1), so
Bold / Italic / Condensed files of "DejaVu Sans" are one family. By default one style per family
is kept (upright, weight closest to 400, normal width). With ``keep_styles=True`` every style is
an instance; then the test classes also get a ``query`` / ``gallery`` partition by family, so the
styles of one family never sit on both sides of a query and its match (evaluate the test split
query-vs-gallery in that mode; self-retrieval on ``test`` would let styles match each other).

Splits: characters (classes) are shuffled with ``seed`` and cut into disjoint train / val / test
class sets. The rendered set is cached as an ``.npz`` keyed by the options and the SHA-256 of
every font file, together with its provenance (font paths, family and style names, Debian
package versions from ``dpkg-query``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import subprocess
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipelines.records import DatasetSplits, Record, SkippedFile

FONT_PACKAGES = ("fonts-noto-core", "fonts-dejavu-core", "fonts-freefont-ttf",
                 "fonts-urw-base35", "fonts-liberation2")
INSTALL_HINT = "apt-get install " + " ".join(FONT_PACKAGES)
FONT_EXTENSIONS = (".ttf", ".otf")
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "dgml_tf", "glyphs")
# Bump when rendering changes so old caches are not reused.
RENDER_VERSION = 2
_UPRIGHT_WEIGHT, _NORMAL_WIDTH = 400, 5


@dataclasses.dataclass
class GlyphSplits(DatasetSplits):
    """:class:`DatasetSplits` plus where the glyphs came from.

    Attributes:
        provenance: fonts (path, family, style, sha256, Debian package), package versions,
            options, library versions and cache key that produced the set; also
            ``loaded_from_cache`` for this call.
        instance_families: family name of every row of ``arrays``.
        instance_styles: style (subfamily) name of every row of ``arrays``.
    """

    provenance: dict = dataclasses.field(default_factory=dict)
    instance_families: Optional[np.ndarray] = None
    instance_styles: Optional[np.ndarray] = None


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


def is_glyph_character(codepoint: int) -> bool:
    """True for a visible, non-decomposable, non-combining character."""
    char = chr(codepoint)
    category = unicodedata.category(char)
    if category[0] in "ZCM" or char.isspace():
        return False
    return unicodedata.decomposition(char) == ""


def _ink_crop(font: ImageFont.FreeTypeFont, char: str) -> Optional[Image.Image]:
    """The glyph drawn black on white, cropped to its ink; None when nothing is drawn."""
    left, top, right, bottom = font.getbbox(char)
    pad = 2 + font.size // 8
    canvas = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 255)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=font, fill=0)
    ink = ImageOps.invert(canvas).getbbox()
    return None if ink is None else canvas.crop(ink)


def _fit(glyph: Image.Image, image_size: int, margin: int, rng=None) -> np.ndarray:
    """Scales ``glyph`` to fit ``image_size - 2*margin`` and centres it (optionally jittered)."""
    offset_x = offset_y = 0
    scale_jitter = 1.0
    if rng is not None:  # light augmentation: rotation, scale and shift
        glyph = glyph.rotate(float(rng.uniform(-6, 6)), resample=Image.BICUBIC, expand=True,
                             fillcolor=255)
        scale_jitter = float(rng.uniform(0.85, 1.0))
        offset_x, offset_y = (int(v) for v in rng.integers(-margin // 2, margin // 2 + 1, 2))
    box = (image_size - 2 * margin) * scale_jitter
    scale = box / max(glyph.size)
    size = (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
    glyph = glyph.resize(size, Image.LANCZOS)
    canvas = Image.new("L", (image_size, image_size), 255)
    canvas.paste(glyph, ((image_size - size[0]) // 2 + offset_x,
                         (image_size - size[1]) // 2 + offset_y))
    return np.asarray(canvas, dtype=np.uint8)


def _notdef_codepoint(font: FontInfo) -> int:
    for codepoint in range(0x10FFFD, 0xF0000, -1):  # supplementary private use: never mapped
        if codepoint not in font.codepoints:
            return codepoint
    raise ValueError(f"{font.path} maps all private-use code points; cannot find its .notdef.")


class _Renderer:
    """Renders (character, font) pairs at one size, remembering each font's .notdef render."""

    def __init__(self, image_size: int, margin: int):
        self.image_size, self.margin = image_size, margin
        self.point_size = max(24, 2 * image_size)  # supersampled, then downscaled
        self._fonts: Dict[str, ImageFont.FreeTypeFont] = {}
        self._notdef: Dict[str, Optional[bytes]] = {}

    def font(self, info: FontInfo) -> ImageFont.FreeTypeFont:
        if info.path not in self._fonts:
            self._fonts[info.path] = ImageFont.truetype(
                info.path, self.point_size, layout_engine=ImageFont.Layout.BASIC)
        return self._fonts[info.path]

    def crop(self, info: FontInfo, codepoint: int) -> Optional[Image.Image]:
        return _ink_crop(self.font(info), chr(codepoint))

    def notdef(self, info: FontInfo) -> Optional[bytes]:
        if info.path not in self._notdef:
            crop = self.crop(info, _notdef_codepoint(info))
            self._notdef[info.path] = None if crop is None else crop.tobytes() + bytes(crop.size)
        return self._notdef[info.path]

    def render(self, info: FontInfo, codepoint: int) -> Tuple[Optional[np.ndarray], str]:
        """(image, "") or (None, reason the glyph is not really in the font)."""
        if codepoint not in info.codepoints:
            return None, "not in cmap"
        crop = self.crop(info, codepoint)
        if crop is None:
            return None, "empty render"
        if crop.tobytes() + bytes(crop.size) == self.notdef(info):
            return None, "renders as .notdef"
        return _fit(crop, self.image_size, self.margin), ""


def _split_counts(num_classes: int, val_fraction: float, test_fraction: float) -> Tuple[int, int]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    num_test = int(round(num_classes * test_fraction)) if test_fraction else 0
    num_val = int(round(num_classes * val_fraction)) if val_fraction else 0
    num_test = max(num_test, 1 if test_fraction else 0)
    num_val = max(num_val, 1 if val_fraction else 0)
    if num_classes - num_test - num_val < 1:
        raise ValueError(
            f"{num_classes} classes cannot be split into val {val_fraction} / test "
            f"{test_fraction} with at least one training class; lower the fractions or raise "
            "max_classes."
        )
    return num_val, num_test


def _render_set(fonts: List[FontInfo], image_size: int, margin: int, min_families: int,
                max_classes: Optional[int], max_families_per_class: Optional[int],
                augment: bool, seed: int):
    candidates: Dict[int, set] = {}
    for font in fonts:
        for codepoint in font.codepoints:
            candidates.setdefault(codepoint, set()).add(font.family)
    order = sorted(cp for cp, families in candidates.items()
                   if len(families) >= min_families and is_glyph_character(cp))
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]

    renderer = _Renderer(image_size, margin)
    rows: Dict[int, list] = {}
    skipped = []
    for codepoint in order:
        if max_classes is not None and len(rows) >= max_classes:
            break
        seen, instances = set(), []
        for index, font in enumerate(fonts):
            if codepoint not in font.codepoints:
                continue
            image, reason = renderer.render(font, codepoint)
            if image is None:
                skipped.append(SkippedFile(f"{font.path}#U+{codepoint:04X}", reason))
                continue
            if image.tobytes() in seen:
                skipped.append(SkippedFile(f"{font.path}#U+{codepoint:04X}",
                                           "identical to another family's render"))
                continue
            seen.add(image.tobytes())
            instances.append((index, image))
        families = sorted({fonts[i].family for i, _ in instances})
        if max_families_per_class is not None:  # a seeded choice, not the alphabetically first
            chosen = np.random.default_rng([seed, codepoint]).permutation(len(families))
            keep = {families[i] for i in chosen[:max_families_per_class]}
            instances = [(i, im) for i, im in instances if fonts[i].family in keep]
            families = sorted(keep)
        if len(families) >= min_families:
            rows[codepoint] = instances

    codepoints = sorted(rows)
    images, labels, font_index = [], [], []
    for label, codepoint in enumerate(codepoints):
        for index, image in rows[codepoint]:
            if augment:
                rng = np.random.default_rng([seed, codepoint, index])
                image = _fit(renderer.crop(fonts[index], codepoint), image_size, margin, rng)
            images.append(image)
            labels.append(label)
            font_index.append(index)
    size = (0, image_size, image_size)
    images = np.stack(images) if images else np.zeros(size, np.uint8)
    return (np.asarray(codepoints, np.int64), images, np.asarray(labels, np.int64),
            np.asarray(font_index, np.int64), skipped)


def _class_name(codepoint: int) -> str:
    return f"U+{codepoint:04X} {chr(codepoint)} ({unicodedata.name(chr(codepoint), '?')})"


def _partition_by_family(records: List[Record], families: np.ndarray, seed: int):
    """Per class, half of its families (with all their styles) to query, the rest to gallery."""
    rng = np.random.default_rng([seed, 1])
    by_class: Dict[int, List[Record]] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record)
    query, gallery = [], []
    for label in sorted(by_class):
        names = sorted({families[r.source] for r in by_class[label]})
        names = [names[i] for i in rng.permutation(len(names))]
        query_families = set(names[: len(names) // 2])
        for record in by_class[label]:
            (query if families[record.source] in query_families else gallery).append(record)
    return query, gallery


def load_glyphs(
    root: Optional[str] = None,
    image_size: int = 64,
    min_families: int = 10,
    max_classes: Optional[int] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.5,
    seed: int = 0,
    font_dirs: Sequence[str] = ("/usr/share/fonts",),
    cache_dir: Optional[str] = None,
    keep_styles: bool = False,
    augment: bool = False,
    margin_fraction: float = 0.1,
    max_families_per_class: Optional[int] = None,
    use_cache: bool = True,
) -> GlyphSplits:
    """Renders (or loads from cache) the glyphs dataset and splits it by character.

    Args:
        root: accepted for the ``pipelines.load_dataset(name, root)`` contract; when given and
            ``cache_dir`` is None, the cache is kept under it.
        image_size: side of the square RGB images.
        min_families: a character is a class only if at least this many distinct families draw
            it (after dropping tofu and duplicate renders).
        max_classes: keep only this many characters (a seeded random choice) for small runs.
        val_fraction, test_fraction: fractions of the characters in the val and test splits.
        seed: seeds the character choice, the class split and augmentation.
        font_dirs: folders searched recursively for .ttf / .otf files.
        cache_dir: where the rendered ``.npz`` is cached (default ~/.cache/dgml_tf/glyphs).
        keep_styles: keep every style of a family as an instance (default: one per family); also
            fills ``query`` / ``gallery`` for the test classes, partitioned by family.
        augment: light seeded augmentation (rotation up to 6 degrees, 85-100 % scale, small
            shift) of every instance.
        margin_fraction: blank margin around the fitted glyph, as a fraction of image_size.
        max_families_per_class: cap on families per character (a seeded random choice).
        use_cache: read and write the cache.

    Returns:
        :class:`GlyphSplits`: ``arrays`` uint8 (N, H, W, 3), records whose ``source`` is the
        row, ``class_names`` label -> "U+0041 A (LATIN CAPITAL LETTER A)", ``provenance``.

    Raises:
        FileNotFoundError: no fonts under ``font_dirs`` (the message names the apt packages).
        ValueError: bad options, or too few characters for the requested split.

    Example:
        >>> splits = load_glyphs(image_size=32, max_classes=30)
        >>> splits.arrays.shape[1:], len({r.label for r in splits.test})
        ((32, 32, 3), 15)
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}.")
    if not isinstance(min_families, int) or min_families < 2:
        raise ValueError(f"min_families must be an integer >= 2 (a query needs a match in "
                         f"another family), got {min_families!r}.")
    if max_classes is not None and (not isinstance(max_classes, int) or max_classes < 3):
        raise ValueError(f"max_classes must be None or an integer >= 3 (train/val/test), got "
                         f"{max_classes!r}.")
    if max_families_per_class is not None and max_families_per_class < min_families:
        raise ValueError(f"max_families_per_class ({max_families_per_class}) must be >= "
                         f"min_families ({min_families}), or no character qualifies.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if not 0.0 <= margin_fraction < 0.5:
        raise ValueError(f"margin_fraction must be in [0, 0.5), got {margin_fraction}.")
    _split_counts(max_classes or 1000, val_fraction, test_fraction)  # validates the fractions

    paths = find_font_files(font_dirs)
    keys = [_file_key(p) for p in paths]
    options = dict(image_size=image_size, min_families=min_families, max_classes=max_classes,
                   seed=seed, keep_styles=keep_styles, augment=augment,
                   margin_fraction=margin_fraction,
                   max_families_per_class=max_families_per_class, render_version=RENDER_VERSION)
    checksums = [_sha256(k) for k in keys]
    cache_key = hashlib.sha256(json.dumps(
        [options, list(zip(paths, checksums))], sort_keys=True).encode()).hexdigest()
    cache_dir = cache_dir or (os.path.join(root, "glyphs_cache") if root else DEFAULT_CACHE_DIR)
    cache_path = os.path.join(cache_dir, f"glyphs-{cache_key[:20]}.npz")

    loaded = None
    if use_cache and os.path.exists(cache_path):
        try:
            with np.load(cache_path, allow_pickle=False) as data:
                loaded = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):
            loaded = None  # a truncated cache is re-rendered and overwritten
    if loaded is not None:
        provenance = json.loads(str(loaded["provenance"]))
        codepoints, images, labels = loaded["codepoints"], loaded["images"], loaded["labels"]
        families, styles = loaded["families"], loaded["styles"]
        skipped = [SkippedFile(p, r) for p, r in zip(loaded["skipped_paths"],
                                                     loaded["skipped_reasons"])]
    else:
        fonts, skipped = [], []
        for key in keys:
            try:
                fonts.append(_read_font(key))
            except Exception as error:  # a broken font file must not stop the others
                skipped.append(SkippedFile(key[0], f"unreadable font: {error}"))
        fonts = select_fonts(fonts, keep_styles)
        margin = int(round(image_size * margin_fraction))
        codepoints, images, labels, font_index, render_skips = _render_set(
            fonts, image_size, margin, min_families, max_classes, max_families_per_class,
            augment, seed)
        skipped += render_skips
        families = np.asarray([fonts[i].family for i in font_index], dtype=str)
        styles = np.asarray([fonts[i].style for i in font_index], dtype=str)
        used = sorted(set(font_index.tolist()))
        font_records = [{"path": fonts[i].path, "family": fonts[i].family,
                         "style": fonts[i].style, "sha256": checksums[paths.index(fonts[i].path)],
                         "package": owning_package(fonts[i].path)} for i in used]
        packages = tuple(sorted(set(FONT_PACKAGES) | {f["package"] for f in font_records
                                                      if f["package"]}))
        provenance = {
            "fonts": font_records,
            "packages": debian_package_versions(packages),
            "options": options,
            "cache_key": cache_key,
            "pillow_version": Image.__version__,
            "freetype_version": ImageFont.core.freetype2_version,
            "fonttools_version": __import__("fontTools").version,
        }
        if use_cache:
            os.makedirs(cache_dir, exist_ok=True)
            buffer = io.BytesIO()
            np.savez_compressed(
                buffer, codepoints=codepoints, images=images, labels=labels,
                families=families, styles=styles, provenance=np.asarray(json.dumps(provenance)),
                skipped_paths=np.asarray([s.path for s in skipped], dtype=str),
                skipped_reasons=np.asarray([s.reason for s in skipped], dtype=str))
            temporary = f"{cache_path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(buffer.getvalue())
            os.replace(temporary, cache_path)  # atomic: readers never see half a file

    num_classes = len(codepoints)
    if num_classes < 3:
        raise ValueError(
            f"Only {num_classes} characters are drawn by >= {min_families} font families under "
            f"{list(font_dirs)}; lower min_families or install the fonts: {INSTALL_HINT}"
        )
    num_val, num_test = _split_counts(num_classes, val_fraction, test_fraction)
    class_order = np.random.default_rng(seed).permutation(num_classes)
    test_classes = set(class_order[:num_test].tolist())
    val_classes = set(class_order[num_test:num_test + num_val].tolist())
    train, val, test = [], [], []
    for row, label in enumerate(labels.tolist()):
        record = Record(source=row, label=int(label),
                        item_id=f"U+{int(codepoints[label]):04X}/{families[row]}/{styles[row]}")
        (test if label in test_classes else val if label in val_classes else train).append(record)
    query, gallery = _partition_by_family(test, families, seed) if keep_styles else ([], [])
    provenance = dict(provenance, loaded_from_cache=loaded is not None, cache_path=cache_path)
    return GlyphSplits(
        name="glyphs", train=train, val=val, test=test, query=query, gallery=gallery,
        skipped=skipped, arrays=np.repeat(images[..., None], 3, axis=-1),
        class_names={i: _class_name(int(cp)) for i, cp in enumerate(codepoints)},
        provenance=provenance, instance_families=families, instance_styles=styles)
