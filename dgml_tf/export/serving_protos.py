"""TF Serving config messages that tensorflow-serving-api does not ship, rebuilt from their .proto.

tensorflow-serving-api 2.20 has ``model_server_config_pb2`` but not ``session_bundle_config_pb2``
(``BatchingParameters``, read by ``--batching_parameters_file``) nor ``monitoring_config_pb2``
(``MonitoringConfig``, read by ``--monitoring_config_file``). Both are small; their descriptors are
declared here with the field names, numbers and types of
``tensorflow_serving/servables/tensorflow/session_bundle_config.proto`` and
``tensorflow_serving/config/monitoring_config.proto``, so generated text protos can be parsed
(validated) exactly as the model server parses them. They live in a private descriptor pool so
they never clash with the real generated modules if those are importable.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(message, name, number, type_, label=_F.LABEL_OPTIONAL, type_name=None):
    field = message.field.add(name=name, number=number, type=type_, label=label)
    if type_name:
        field.type_name = type_name


@functools.lru_cache(maxsize=None)
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)

    batching = descriptor_pb2.FileDescriptorProto(
        name="dgml_tf/session_bundle_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    params = batching.message_type.add(name="BatchingParameters")
    msg = _F.TYPE_MESSAGE
    _field(params, "max_batch_size", 1, msg, type_name=".google.protobuf.Int64Value")
    _field(params, "batch_timeout_micros", 2, msg, type_name=".google.protobuf.Int64Value")
    _field(params, "max_enqueued_batches", 3, msg, type_name=".google.protobuf.Int64Value")
    _field(params, "num_batch_threads", 4, msg, type_name=".google.protobuf.Int64Value")
    _field(params, "thread_pool_name", 5, msg, type_name=".google.protobuf.StringValue")
    _field(params, "allowed_batch_sizes", 6, _F.TYPE_INT64, label=_F.LABEL_REPEATED)
    _field(params, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="dgml_tf/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    _field(prometheus, "enable", 1, _F.TYPE_BOOL)
    _field(prometheus, "path", 2, _F.TYPE_STRING)
    config = monitoring.message_type.add(name="MonitoringConfig")
    _field(config, "prometheus_config", 1, msg, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(monitoring)
    return pool


def batching_parameters_class():
    """The ``tensorflow.serving.BatchingParameters`` message class."""
    return message_factory.GetMessageClass(
        _pool().FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def monitoring_config_class():
    """The ``tensorflow.serving.MonitoringConfig`` message class."""
    return message_factory.GetMessageClass(
        _pool().FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )
