"""dgml-tf: attentive-grouping deep metric learning for Keras 3 / TensorFlow 2.20."""

from setuptools import find_packages, setup

# One pinned line, known to work together on Python 3.11 (TF 2.20 is the line scann's ops are
# built for; with TF 2.21 `import scann` crashes).
INSTALL_REQUIRES = [
    "tensorflow==2.20.0",  # not tensorflow-cpu: scann, tf-serving-api require it by name
    "keras==3.15.1",
    "numpy==2.4.6",
    "ml_dtypes==0.6.0",  # what TF 2.20 + jax 0.10.2 were tested with (a fresh resolve picks 0.7)
    "protobuf==6.33.6",
    "absl-py==2.5.1",
    "tensorboard==2.20.0",
    "pillow>=10",
    "tqdm>=4.60",
    "fonttools>=4.40",  # glyph dataset: font cmaps and family names
]

EXTRAS = {
    "serving": ["scann[tf]==1.4.2", "tensorflow-serving-api==2.20.0",
                # the REST stack (docs/serving.md, "The HTTP stack"): ASGI server, routing, metrics
                "uvicorn==0.54.0", "h11==0.16.0", "starlette==1.10.0", "prometheus_client==0.26.0",
                "orjson==3.13.0"],  # response JSON (serving.tensor_json.dumps)
    "onnx": ["tf2onnx==1.17.0", "onnx==1.23.2", "onnxruntime==1.32.0"],
    "similarity": ["tensorflow-similarity==0.17.1"],
    "explain": ["matplotlib>=3.8"],
    "evaluation": ["scikit-learn>=1.4"],
    # The torchvision MobileNetV2 ImageNet weights, offline. Install with --no-deps: its metadata
    # pins torch 1.6 and an old numpy, neither of which is needed to read the file.
    "pretrained": [],
    "benchmark": ["faiss-cpu==1.15.1"],
    "test": ["pytest>=8", "pyyaml>=6", "scikit-learn>=1.4", "matplotlib>=3.8", "scikit-image>=0.22",
             # the explorer page's browser test (drives Debian's chromium-driver); 4.38: newer
             # releases need a certifi newer than the index here has
             "selenium==4.38.0",
             # the JAX-backend tests (tests/test_backends.py); resolves next to TF 2.20
             "jax[cpu]==0.10.2",
             # lint (tests/test_lint.py runs it over the repo; config in pyproject.toml)
             "ruff==0.8.6"],
}
# Everything a user may run, benchmark-only comparisons (faiss) excepted.
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "benchmark" for req in reqs})

setup(
    name="dgml-tf",
    version="0.1.0",
    description="Deep metric learning via attentive grouping (Xu et al. 2020) for Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["dgml_tf*", "pipelines*", "serving*"]),
    package_data={"dgml_tf": ["configs/*.flags"], "serving": ["configs/*", "explorer/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "dgml-train=dgml_tf.train.cli:run",
            "dgml-evaluate=dgml_tf.evaluate.cli:run",
            "dgml-export=dgml_tf.export.cli:run",
            "dgml-index=dgml_tf.index.cli:run",
            "dgml-explain=dgml_tf.explain.cli:run",
        ]
    },
)
