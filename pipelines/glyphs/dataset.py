"""Glyphs dataset: :func:`load_glyphs`, which renders (or reads from the cache) and splits it."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageFont

from pipelines.glyphs import cache, fonts as fonts_lib
from pipelines.glyphs.fonts import FONT_PACKAGES, INSTALL_HINT
from pipelines.glyphs.rendering import RENDER_VERSION, _render_set
from pipelines.glyphs.splits import GlyphSplits, _class_name, _split_counts, split_by_character
from pipelines.records import SkippedFile


def _check_options(image_size, min_families, max_classes, max_families_per_class, seed,
                   margin_fraction, val_fraction, test_fraction) -> None:
    """Raises ValueError naming the first bad option of :func:`load_glyphs`."""
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


def _render_fresh(keys, paths, checksums, options: dict, key: str) -> dict:
    """Reads the fonts, renders the set and records its provenance (what the cache holds)."""
    fonts, skipped = [], []
    for font_key in keys:
        try:
            fonts.append(fonts_lib._read_font(font_key))
        except Exception as error:  # a broken font file must not stop the others
            skipped.append(SkippedFile(font_key[0], f"unreadable font: {error}"))
    fonts = fonts_lib.select_fonts(fonts, options["keep_styles"])
    image_size = options["image_size"]
    margin = int(round(image_size * options["margin_fraction"]))
    codepoints, images, labels, font_index, render_skips = _render_set(
        fonts, image_size, margin, options["min_families"], options["max_classes"],
        options["max_families_per_class"], options["augment"], options["seed"])
    skipped += render_skips
    families = np.asarray([fonts[i].family for i in font_index], dtype=str)
    styles = np.asarray([fonts[i].style for i in font_index], dtype=str)
    used = sorted(set(font_index.tolist()))
    font_records = fonts_lib.font_records(fonts, used, paths, checksums)
    packages = tuple(sorted(set(FONT_PACKAGES) | {f["package"] for f in font_records
                                                  if f["package"]}))
    provenance = {
        "fonts": font_records,
        "packages": fonts_lib.debian_package_versions(packages),
        "options": options,
        "cache_key": key,
        "pillow_version": Image.__version__,
        "freetype_version": ImageFont.core.freetype2_version,
        "fonttools_version": __import__("fontTools").version,
    }
    return dict(codepoints=codepoints, images=images, labels=labels, families=families,
                styles=styles, provenance=provenance, skipped=skipped)


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
    _check_options(image_size, min_families, max_classes, max_families_per_class, seed,
                   margin_fraction, val_fraction, test_fraction)
    paths = fonts_lib.find_font_files(font_dirs)
    keys = [fonts_lib._file_key(p) for p in paths]
    options = dict(image_size=image_size, min_families=min_families, max_classes=max_classes,
                   seed=seed, keep_styles=keep_styles, augment=augment,
                   margin_fraction=margin_fraction,
                   max_families_per_class=max_families_per_class, render_version=RENDER_VERSION)
    checksums = [fonts_lib._sha256(k) for k in keys]
    key = cache.cache_key(options, paths, checksums)
    cache_path = cache.cache_path(key, cache_dir, root)

    rendered = cache.read_cache(cache_path) if use_cache else None
    loaded_from_cache = rendered is not None
    if rendered is None:
        rendered = _render_fresh(keys, paths, checksums, options, key)
        if use_cache:
            cache.write_cache(cache_path, **rendered)
    codepoints, families = rendered["codepoints"], rendered["families"]

    num_classes = len(codepoints)
    if num_classes < 3:
        raise ValueError(
            f"Only {num_classes} characters are drawn by >= {min_families} font families under "
            f"{list(font_dirs)}; lower min_families or install the fonts: {INSTALL_HINT}"
        )
    train, val, test, query, gallery = split_by_character(
        codepoints, rendered["labels"], families, rendered["styles"], val_fraction,
        test_fraction, seed, keep_styles)
    provenance = dict(rendered["provenance"], loaded_from_cache=loaded_from_cache,
                      cache_path=cache_path)
    return GlyphSplits(
        name="glyphs", train=train, val=val, test=test, query=query, gallery=gallery,
        skipped=rendered["skipped"], arrays=np.repeat(rendered["images"][..., None], 3, axis=-1),
        class_names={i: _class_name(int(cp)) for i, cp in enumerate(codepoints)},
        provenance=provenance, instance_families=families, instance_styles=rendered["styles"])
