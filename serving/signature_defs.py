"""SignatureDef protos: reading them from a SavedModel, writing new ones, and their JSON.

The metadata endpoint must answer exactly as TF Serving does, and TF Serving serialises the
``SignatureDefMap`` proto with protobuf's JSON printer (field names preserved, default values
printed). Going through the same proto, rather than hand-building dicts, gives that shape for
free, and for the retrieval model's signatures too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from google.protobuf import json_format

from dgml_tf.export.tf_serving_layout import SAVED_MODEL_FILE
from serving.tensor_json import InputSpec

PREDICT_METHOD = "tensorflow/serving/predict"


def read_signature_defs(saved_model_dir: str | Path) -> dict:
    """Returns ``{signature_name: SignatureDef}`` from ``saved_model.pb`` (as TF Serving reads it,
    ``__saved_model_init_op`` included)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(saved_model_dir) / SAVED_MODEL_FILE
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(path.read_bytes())
    if not saved_model.meta_graphs:
        raise ValueError(f"{path} has no MetaGraphDef; re-export the model with dgml_tf.export.")
    return dict(saved_model.meta_graphs[0].signature_def)


def tensor_info(name: str, dtype: str, shape: Sequence[int]):
    """A TensorInfo proto; ``dtype`` like "DT_FLOAT", -1 for an unknown dimension."""
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.core.framework import types_pb2

    info = meta_graph_pb2.TensorInfo(name=name, dtype=types_pb2.DataType.Value(dtype))
    for size in shape:
        info.tensor_shape.dim.add(size=size)
    return info


def make_signature_def(inputs: Mapping[str, object], outputs: Mapping[str, object]):
    """A predict SignatureDef from ``{name: TensorInfo}`` maps."""
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for key, info in inputs.items():
        signature.inputs[key].CopyFrom(info)
    for key, info in outputs.items():
        signature.outputs[key].CopyFrom(info)
    return signature


def signature_def_map_json(signature_defs: Mapping[str, object]) -> dict:
    """``{"signature_def": {name: {...}}}`` exactly as TF Serving prints a SignatureDefMap."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    message = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signature_defs.items():
        message.signature_def[key].CopyFrom(signature)
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def signature_def_map_from_json(doc: Mapping) -> dict:
    """Inverse of :func:`signature_def_map_json` (for metadata read from a remote TF Serving)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    message = get_model_metadata_pb2.SignatureDefMap()
    json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    return dict(message.signature_def)


def input_specs(signature) -> dict[str, InputSpec]:
    """``{input_name: InputSpec}`` of a SignatureDef."""
    import tensorflow as tf

    specs = {}
    for key, info in signature.inputs.items():
        dtype = tf.dtypes.as_dtype(info.dtype)
        np_dtype = np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
        shape = None if info.tensor_shape.unknown_rank else tuple(
            None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim
        )
        specs[key] = InputSpec(np_dtype, shape)
    return specs
