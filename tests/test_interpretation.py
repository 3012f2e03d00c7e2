"""Attention overlays, figures and group-diversity statistics against closed forms."""

import numpy as np
import pytest
from PIL import Image

from dgml_tf.explain import (attention_overlap, blend_heatmap, colorize,
                                    group_attention_grid, group_cosine, normalize_maps,
                                    overlay_groups, retrieval_figure, upsample_attention)


def test_upsample_constant_map_stays_constant():
    maps = np.full((2, 4, 4), 1 / 16, np.float32)
    up = upsample_attention(maps, (32, 32))
    assert up.shape == (2, 32, 32)
    np.testing.assert_allclose(up, 1 / 16, rtol=1e-6)


def test_upsample_one_hot_peaks_in_its_block():
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 1, 2] = 1.0  # row 1, column 2 -> pixels rows 8..15, columns 16..23 of a 32 px crop
    up = upsample_attention(maps, (32, 32))[0]
    row, col = np.unravel_index(np.argmax(up), up.shape)
    assert 8 <= row < 16 and 16 <= col < 24
    # far corner gets nothing from a non-adjacent cell
    assert up[31, 0] == pytest.approx(0.0, abs=1e-7)


def test_normalize_maps_range_and_constant():
    maps = np.stack([np.arange(9.0).reshape(3, 3), np.full((3, 3), 5.0)])
    out = normalize_maps(maps)
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    np.testing.assert_allclose(out[0], np.arange(9.0).reshape(3, 3) / 8.0, rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)


def test_blend_endpoints():
    image = np.full((4, 4, 3), 100, np.uint8)
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    np.testing.assert_array_equal(blend_heatmap(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(blend_heatmap(image, heat, alpha=1.0), colorize(heat))
    half = blend_heatmap(image, heat, alpha=0.5).astype(float)
    expected = 0.5 * 100 + 0.5 * colorize(heat).astype(float)
    np.testing.assert_allclose(half, expected, atol=1.0)


def test_blend_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="upsample_attention"):
        blend_heatmap(np.zeros((8, 8, 3)), np.zeros((4, 4)))


def test_overlay_groups_one_panel_per_group_and_grayscale_input():
    panels = overlay_groups(np.zeros((16, 16)), np.random.rand(3, 4, 4))
    assert panels.shape == (3, 16, 16, 3) and panels.dtype == np.uint8


def test_attention_overlap_closed_forms():
    n = 16
    uniform = np.full((n,), 1 / n)
    one_hot_a = np.eye(n)[0]
    one_hot_b = np.eye(n)[5]
    identical = np.stack([uniform, uniform]).reshape(1, 2, 4, 4)
    disjoint = np.stack([one_hot_a, one_hot_b]).reshape(1, 2, 4, 4)
    mixed = np.stack([uniform, one_hot_a]).reshape(1, 2, 4, 4)
    assert attention_overlap(identical) == pytest.approx(1.0)
    assert attention_overlap(disjoint) == pytest.approx(0.0)
    assert attention_overlap(mixed) == pytest.approx(1 / n)
    # K = 3: pairs (identical, disjoint...) average
    three = np.stack([one_hot_a, one_hot_a, one_hot_b]).reshape(1, 3, 4, 4)
    assert attention_overlap(three) == pytest.approx((1 + 0 + 0) / 3)


def test_group_cosine_closed_forms():
    e = np.eye(4)
    assert group_cosine(np.stack([e[:3]])) == pytest.approx(0.0)
    same = np.stack([[e[0], e[0] * 3.0]])
    assert group_cosine(same) == pytest.approx(1.0)
    sixty = np.stack([[e[0], 0.5 * e[0] + np.sqrt(0.75) * e[1]]])
    assert group_cosine(sixty) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2 groups"):
        group_cosine(np.ones((2, 1, 4)))


def test_figures_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
    attention = rng.random((2, 3, 4, 4))
    grid = group_attention_grid(images, attention, str(tmp_path / "grid.png"))
    with Image.open(grid) as png:
        width, height = png.size
    assert width > height  # 4 columns (image + 3 groups) by 2 rows
    figure = retrieval_figure(images[0], attention[0], images, attention,
                              str(tmp_path / "retrieval.png"), query_label=1,
                              neighbour_labels=[1, 2], scores=[0.9, 0.5])
    with Image.open(figure) as png:
        assert png.size[1] > png.size[0] * 0.5  # 3 rows
    assert not list(tmp_path.glob("*.tmp-*"))
