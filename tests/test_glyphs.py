"""Tests of the glyphs dataset (pipelines/glyphs.py) on the Debian fonts under /usr/share/fonts.

Small configurations only (<= 30 characters at 32 px) so each render takes a few seconds.
"""

import os
import unicodedata

import numpy as np
import pytest

from pipelines import glyphs
from pipelines.glyphs import FontInfo, GlyphSplits, is_glyph_character, load_glyphs
from pipelines.records import DatasetSplits

FONT_ROOT = "/usr/share/fonts"
pytestmark = pytest.mark.skipif(
    not any(f.endswith((".ttf", ".otf")) for _, _, fs in os.walk(FONT_ROOT) for f in fs),
    reason=f"no fonts under {FONT_ROOT}: {glyphs.INSTALL_HINT}")

SMALL = dict(image_size=32, max_classes=30, min_families=10, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("glyph_cache"))


@pytest.fixture(scope="module")
def small(cache_dir):
    return load_glyphs(cache_dir=cache_dir, **SMALL)


def labels(records):
    return np.asarray([r.label for r in records])


def test_small_config_shapes_and_class_counts(small):
    assert isinstance(small, DatasetSplits) and isinstance(small, GlyphSplits)
    assert small.name == "glyphs"
    assert small.arrays.dtype == np.uint8 and small.arrays.shape[1:] == (32, 32, 3)
    assert len(small.class_names) == 30
    # 30 classes: test 50 % -> 15, val 10 % -> 3, train the remaining 12.
    assert len(set(labels(small.test))) == 15
    assert len(set(labels(small.val))) == 3
    assert len(set(labels(small.train))) == 12
    rows = sorted(r.source for r in small.train + small.val + small.test)
    assert rows == list(range(len(small.arrays)))  # every row in exactly one split
    for label in small.class_names:
        rows = [r.source for r in small.train + small.val + small.test if r.label == label]
        assert len({small.instance_families[i] for i in rows}) >= 10


def test_class_splits_are_disjoint(small):
    train, val, test = (set(labels(s)) for s in (small.train, small.val, small.test))
    assert not train & val and not train & test and not val & test
    assert small.query == [] and small.gallery == []  # one style per family: self-retrieval


def test_one_style_per_family_by_default(small):
    pairs = [(r.label, small.instance_families[r.source]) for r in small.train + small.test]
    assert len(pairs) == len(set(pairs))
    # The kept style is the upright regular one where the family has it.
    styles = {small.instance_families[i]: small.instance_styles[i]
              for i in range(len(small.arrays))}
    assert styles["DejaVu Sans"] == "Book"
    assert styles["Liberation Serif"] == "Regular"


def test_classes_are_visible_non_decomposable_characters(small):
    for name in small.class_names.values():
        char = chr(int(name.split()[0][2:], 16))
        assert unicodedata.decomposition(char) == ""
        assert unicodedata.category(char)[0] not in "ZCM"


def test_is_glyph_character_rules():
    assert is_glyph_character(ord("A"))
    assert not is_glyph_character(ord("é"))  # decomposes to e + acute
    assert not is_glyph_character(ord(" "))
    assert not is_glyph_character(0x0301)  # combining acute accent
    assert not is_glyph_character(0x07)  # control
    assert not is_glyph_character(0xE000)  # private use


def test_images_are_black_glyphs_centred_on_white(small):
    images = small.arrays[..., 0]
    assert np.array_equal(small.arrays[..., 0], small.arrays[..., 2])
    margin = round(32 * 0.1)
    for image in images:
        assert (image < 128).any()
        ink = np.argwhere(image < 255)  # include the anti-aliased edge
        top, left = ink.min(axis=0)
        bottom, right = ink.max(axis=0)
        assert min(top, left) >= margin - 1 and max(bottom, right) <= 32 - margin
        # the longer side of the ink box spans the fitted box; centred within a pixel or two
        assert max(bottom - top, right - left) + 1 >= 32 - 2 * margin - 1
        assert abs((top + bottom) / 2 - 15.5) <= 1.5 and abs((left + right) / 2 - 15.5) <= 1.5
        assert image[0, 0] == 255


def test_missing_glyphs_and_tofu_are_detected():
    path = os.path.join(FONT_ROOT, "truetype/dejavu/DejaVuSans.ttf")
    if not os.path.exists(path):
        pytest.skip("fonts-dejavu-core is not installed")
    real = glyphs._read_font(glyphs._file_key(path))
    renderer = glyphs._Renderer(32, 3)
    image, reason = renderer.render(real, ord("A"))
    assert image is not None and reason == ""
    assert renderer.render(real, 0x10FFF0) == (None, "not in cmap")
    # A cmap that wrongly claims a code point: FreeType draws .notdef, which must be caught.
    lying = FontInfo(path, real.family, real.style, real.weight, real.width, real.italic,
                     real.codepoints | {0x10FFF0})
    assert renderer.render(lying, 0x10FFF0) == (None, "renders as .notdef")


def test_symbol_fonts_do_not_supply_latin_letters():
    dingbats = os.path.join(FONT_ROOT, "opentype/urw-base35/D050000L.otf")
    if not os.path.exists(dingbats):
        pytest.skip("fonts-urw-base35 is not installed")
    # URW Dingbats maps "E" (and all its other Latin-1 code points) to ornaments.
    assert ord("E") not in glyphs._read_font(glyphs._file_key(dingbats)).codepoints
    regular = os.path.join(FONT_ROOT, "opentype/urw-base35/NimbusSans-Regular.otf")
    assert ord("E") in glyphs._read_font(glyphs._file_key(regular)).codepoints


def test_determinism_of_a_fresh_render(small):
    again = load_glyphs(use_cache=False, **SMALL)
    assert not again.provenance["loaded_from_cache"]
    np.testing.assert_array_equal(again.arrays, small.arrays)
    assert again.train == small.train and again.test == small.test
    assert again.class_names == small.class_names


def test_cache_hit_equals_fresh_render(small, cache_dir):
    cached = load_glyphs(cache_dir=cache_dir, **SMALL)
    assert cached.provenance["loaded_from_cache"]
    assert not small.provenance["loaded_from_cache"]
    assert os.path.exists(cached.provenance["cache_path"])
    np.testing.assert_array_equal(cached.arrays, small.arrays)
    assert cached.train == small.train and cached.val == small.val and cached.test == small.test
    assert cached.class_names == small.class_names
    assert cached.skipped == small.skipped
    np.testing.assert_array_equal(cached.instance_families, small.instance_families)
    # another option is another cache entry
    other = load_glyphs(cache_dir=cache_dir, **dict(SMALL, max_classes=5, min_families=12))
    assert not other.provenance["loaded_from_cache"]


def test_provenance_records_fonts_and_packages(small):
    provenance = small.provenance
    used = {small.instance_families[i] for i in range(len(small.arrays))}
    assert {f["family"] for f in provenance["fonts"]} == used
    for font in provenance["fonts"]:
        assert os.path.exists(font["path"]) and len(font["sha256"]) == 64
    assert set(provenance["packages"]) >= set(glyphs.FONT_PACKAGES)
    if any(provenance["packages"].values()):  # dpkg present: every font maps to a package
        for font in provenance["fonts"]:
            assert provenance["packages"][font["package"]], font
    assert provenance["options"]["image_size"] == 32


def test_keep_styles_never_splits_a_family_across_query_and_gallery(tmp_path):
    splits = load_glyphs(image_size=32, max_classes=6, min_families=10, keep_styles=True,
                         test_fraction=0.5, val_fraction=0.2, cache_dir=str(tmp_path))
    families = splits.instance_families
    assert any(len({splits.instance_styles[r.source] for r in splits.test
                    if families[r.source] == f}) > 1 for f in set(families))
    assert sorted(r.source for r in splits.query + splits.gallery) == sorted(
        r.source for r in splits.test)
    for label in set(labels(splits.test)):
        query = {families[r.source] for r in splits.query if r.label == label}
        gallery = {families[r.source] for r in splits.gallery if r.label == label}
        assert query and gallery and not query & gallery


def test_augmentation_is_seeded_and_light(tmp_path):
    options = dict(image_size=32, max_classes=4, min_families=10, val_fraction=0.25,
                   test_fraction=0.25, use_cache=False)
    plain = load_glyphs(**options)
    augmented = load_glyphs(augment=True, **options)
    again = load_glyphs(augment=True, **options)
    np.testing.assert_array_equal(augmented.arrays, again.arrays)
    assert augmented.train == plain.train
    changed = np.mean(np.any(augmented.arrays != plain.arrays, axis=(1, 2, 3)))
    assert changed > 0.9
    ink_plain = (plain.arrays < 128).sum(axis=(1, 2, 3))
    ink_aug = (augmented.arrays < 128).sum(axis=(1, 2, 3))
    assert np.median(ink_aug / ink_plain) > 0.5  # still the same glyph, lightly transformed


def test_missing_fonts_error_names_the_packages(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-core"):
        load_glyphs(font_dirs=(str(tmp_path),), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("options, message", [
    (dict(min_families=1), "min_families"),
    (dict(image_size=4), "image_size"),
    (dict(test_fraction=1.2), "test_fraction"),
    (dict(max_classes=2), "max_classes"),
    (dict(seed=-1), "seed"),
    (dict(max_families_per_class=5), "max_families_per_class"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        load_glyphs(**options)


def test_raw_pixel_retrieval_is_well_above_chance(small):
    rows = np.asarray([r.source for r in small.test])
    y = labels(small.test)
    x = 255.0 - small.arrays[rows, ..., 0].reshape(len(rows), -1)  # ink is the signal
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    recall_at_1 = np.mean(y[similarity.argmax(axis=1)] == y)
    chance = np.mean([(np.sum(y == c) - 1) / (len(y) - 1) for c in y])
    assert recall_at_1 > max(0.3, 4 * chance)
