"""Looking inside attentive-grouping embeddings: attention overlays, figures, group-diversity stats.

Modules: ``attention_overlay`` (maps upsampled, normalised, coloured and blended over images),
``figures`` (the attention grid and retrieval figures), ``group_diversity`` (attention overlap,
group cosine), ``report`` (the explain report of a trained run: :func:`explain`,
:func:`explain_run`) and ``cli`` (``python -m dgml_tf.explain``).
"""

from dgml_tf._lazy import lazy_exports

# Lazy, like dgml_tf.evaluate: importing the package costs nothing until a name is used.
_EXPORTS = {
    "blend_heatmap": "dgml_tf.explain.attention_overlay",
    "colorize": "dgml_tf.explain.attention_overlay",
    "normalize_maps": "dgml_tf.explain.attention_overlay",
    "overlay_groups": "dgml_tf.explain.attention_overlay",
    "upsample_attention": "dgml_tf.explain.attention_overlay",
    "group_attention_grid": "dgml_tf.explain.figures",
    "retrieval_figure": "dgml_tf.explain.figures",
    "attention_overlap": "dgml_tf.explain.group_diversity",
    "group_cosine": "dgml_tf.explain.group_diversity",
    "group_diversity_report": "dgml_tf.explain.group_diversity",
    "SplitEmbedding": "dgml_tf.explain.report",
    "crops_of": "dgml_tf.explain.report",
    "diversity_statistics": "dgml_tf.explain.report",
    "embed_with_attention": "dgml_tf.explain.report",
    "explain": "dgml_tf.explain.report",
    "explain_run": "dgml_tf.explain.report",
    "fixed_choice": "dgml_tf.explain.report",
    "format_report": "dgml_tf.explain.report",
    "has_attention": "dgml_tf.explain.report",
    "load_image_files": "dgml_tf.explain.report",
    "model_diversity": "dgml_tf.explain.report",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
