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

Modules: :mod:`~pipelines.glyphs.fonts` (font discovery, font tables, Debian package
provenance), :mod:`~pipelines.glyphs.rendering` (characters and drawing),
:mod:`~pipelines.glyphs.cache` (the ``.npz`` cache), :mod:`~pipelines.glyphs.splits` (class and
query / gallery splits) and :mod:`~pipelines.glyphs.dataset` (:func:`load_glyphs`). The names
below are re-exported so ``from pipelines.glyphs import X`` keeps working.
"""

from pipelines.glyphs.cache import DEFAULT_CACHE_DIR
from pipelines.glyphs.dataset import load_glyphs
from pipelines.glyphs.fonts import (
    FONT_EXTENSIONS,
    FONT_PACKAGES,
    INSTALL_HINT,
    FontInfo,
    _file_key,
    _read_font,
    _sha256,
    debian_package_versions,
    find_font_files,
    owning_package,
    select_fonts,
)
from pipelines.glyphs.rendering import RENDER_VERSION, _Renderer, _render_set, is_glyph_character
from pipelines.glyphs.splits import GlyphSplits

__all__ = [
    "DEFAULT_CACHE_DIR", "FONT_EXTENSIONS", "FONT_PACKAGES", "INSTALL_HINT", "RENDER_VERSION",
    "FontInfo", "GlyphSplits", "debian_package_versions", "find_font_files", "is_glyph_character",
    "load_glyphs", "owning_package", "select_fonts",
]
