"""Glyphs dataset: which characters qualify, and drawing a (character, font) pair.

Rendering (Pillow / FreeType, basic layout, no shaping): each glyph is drawn black on white at
twice the target size, cropped to its ink bounding box, scaled to fit the canvas minus a margin
(aspect ratio kept) and centred. A glyph is skipped when the font's cmap does not map the
character, or its render is empty or identical to the font's .notdef ("tofu") render. Within a
character, renders that are pixel-identical to an earlier family's render are dropped (many Noto
script fonts carry the same Latin glyphs), so a query's matches are real other designs.
"""

from __future__ import annotations

import unicodedata
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipelines.glyphs.fonts import FontInfo
from pipelines.records import SkippedFile

# Bump when rendering changes so old caches are not reused.
RENDER_VERSION = 2


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


def _candidate_order(fonts: List[FontInfo], min_families: int, seed: int) -> List[int]:
    """Code points drawn by >= ``min_families`` families, in a seeded random order."""
    candidates: Dict[int, set] = {}
    for font in fonts:
        for codepoint in font.codepoints:
            candidates.setdefault(codepoint, set()).add(font.family)
    order = sorted(cp for cp, families in candidates.items()
                   if len(families) >= min_families and is_glyph_character(cp))
    return [order[i] for i in np.random.default_rng(seed).permutation(len(order))]


def _character_instances(renderer: _Renderer, fonts: List[FontInfo], codepoint: int,
                         skipped: List[SkippedFile]) -> list:
    """(font index, image) of every font that really draws ``codepoint``, one per design."""
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
    return instances


def _render_set(fonts: List[FontInfo], image_size: int, margin: int, min_families: int,
                max_classes: Optional[int], max_families_per_class: Optional[int],
                augment: bool, seed: int):
    renderer = _Renderer(image_size, margin)
    rows: Dict[int, list] = {}
    skipped = []
    for codepoint in _candidate_order(fonts, min_families, seed):
        if max_classes is not None and len(rows) >= max_classes:
            break
        instances = _character_instances(renderer, fonts, codepoint, skipped)
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
