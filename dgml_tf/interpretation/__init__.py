"""Looking inside attentive-grouping embeddings: attention overlays, figures, group-diversity stats."""

from dgml_tf.interpretation.attention_overlay import blend_heatmap
from dgml_tf.interpretation.attention_overlay import colorize
from dgml_tf.interpretation.attention_overlay import normalize_maps
from dgml_tf.interpretation.attention_overlay import overlay_groups
from dgml_tf.interpretation.attention_overlay import upsample_attention
from dgml_tf.interpretation.figures import group_attention_grid
from dgml_tf.interpretation.figures import retrieval_figure
from dgml_tf.interpretation.group_diversity import attention_overlap
from dgml_tf.interpretation.group_diversity import group_cosine
from dgml_tf.interpretation.group_diversity import group_diversity_report

__all__ = [
    "attention_overlap",
    "blend_heatmap",
    "colorize",
    "group_attention_grid",
    "group_cosine",
    "group_diversity_report",
    "normalize_maps",
    "overlay_groups",
    "retrieval_figure",
    "upsample_attention",
]
