"""dgml_tf on every Keras 3 backend: TensorFlow, JAX and (where installed) PyTorch.

``KERAS_BACKEND`` is fixed when Keras is imported, so each backend runs in its own process:
tests/backend_checks/check_parity.py (the layer, heads, losses, miner and training model
against the NumPy re-statements, plus cross-backend agreement), in the order TensorFlow, JAX,
PyTorch, each later backend comparing its numbers and loading the ``.keras`` files of the earlier
ones. PyTorch runs in ``./.venv-torch`` (``bash bench/setup_torch_venv.sh``, then
``.venv-torch/bin/pip install keras==3.15.1 numpy==2.4.6 pytest``: no TensorFlow there) or in
this interpreter if it has torch; otherwise its test is skipped, saying so.

TensorFlow-free imports are checked in a site directory made of this venv's packages minus
TensorFlow and its satellites (run with ``python -S``), so the check needs no second venv.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKS = REPO / "tests" / "backend_checks"
TORCH_VENV_PYTHON = REPO / ".venv-torch" / "bin" / "python"
BACKENDS = ("tensorflow", "jax", "torch")
_WITHOUT_TF = ("tensorflow", "tensorboard", "tf2onnx", "tf_keras", "scann", "keras_tuner")


@functools.lru_cache(maxsize=None)
def _torch_python() -> str | None:
    if TORCH_VENV_PYTHON.exists():
        probe = subprocess.run([str(TORCH_VENV_PYTHON), "-c", "import torch, keras, pytest"],
                               env={**os.environ, "KERAS_BACKEND": "torch"},
                               capture_output=True, text=True, timeout=300)
        if probe.returncode == 0:
            return str(TORCH_VENV_PYTHON)
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    return None


def _python_for(backend: str) -> str:
    if backend == "torch":
        python = _torch_python()
        if python is None:
            pytest.skip("torch backend: no torch here; `bash bench/setup_torch_venv.sh` and "
                        "`.venv-torch/bin/pip install keras==3.15.1 numpy==2.4.6 pytest`")
        return python
    if importlib.util.find_spec(backend) is None:
        pytest.fail(f"{backend} is not installed; `pip install -e .[test]` installs it")
    return sys.executable


def _environment(backend: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "XLA_FLAGS")}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
               JAX_PLATFORMS="cpu")
    env.update(extra)
    return env


def _pytest(python: str, check: str, env: dict, timeout: int = 1200):
    command = [python, "-m", "pytest", str(CHECKS / check), "-q", "-p", "no:cacheprovider",
               "--noconftest", "-c", os.devnull, "--rootdir", str(CHECKS),
               "-W", "ignore::DeprecationWarning"]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def backend_runs(tmp_path_factory):
    """Runs check_parity.py per backend once, in BACKENDS order (later ones compare)."""
    out = tmp_path_factory.mktemp("backends")
    done: dict = {}

    def run(backend: str):
        for earlier in BACKENDS[: BACKENDS.index(backend)]:
            if earlier not in done and earlier != "torch":
                run(earlier)
        if backend not in done:
            python = _python_for(backend)
            result = _pytest(python, "check_parity.py",
                             _environment(backend, DGML_BACKEND_OUT=str(out)))
            record = out / f"{backend}.json"
            done[backend] = (result, json.loads(record.read_text()) if record.exists() else None)
        return done[backend]

    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_checks_pass_on_backend(backend, backend_runs):
    result, record = backend_runs(backend)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
    assert record is not None, "check_parity.py wrote no record"
    earlier = [b for b in BACKENDS[: BACKENDS.index(backend)]
               if b != "torch" or _torch_python() is not None]
    # The later backends really compared numbers with, and loaded models of, the earlier ones.
    assert record["compared_with"] == earlier
    assert record["loaded_models_from"] == earlier


def test_data_parallel_on_two_jax_devices_equals_one_device():
    env = _environment("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = _pytest(_python_for("jax"), "check_data_parallel.py", env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


@pytest.fixture(scope="module")
def site_without_tensorflow(tmp_path_factory) -> Path:
    """This venv's site-packages without TensorFlow and its satellites (symlinks)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    target = tmp_path_factory.mktemp("site_without_tf")
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.endswith(".pth") or name.startswith(_WITHOUT_TF) or name.startswith("__editable"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def _run_without_tensorflow(site: Path, code: str, backend: str = "jax", args=()):
    env = _environment(backend)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(site)])
    return subprocess.run([sys.executable, "-S", *args, "-c", code] if code else
                          [sys.executable, "-S", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)


_NO_TF_IMPORTS = r"""
import sys
try:
    import tensorflow
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("tensorflow is importable: the check would prove nothing")
import dgml_tf.layers, dgml_tf.losses, dgml_tf.miners, dgml_tf.models
from dgml_tf.train import MetricLearningModel, build_grouped_optimizer, step_seed
from dgml_tf.models import build_embedding_model
for backbone in ("resnet50", "mobilenet_v2", "small_cnn"):
    model = build_embedding_model(backbone, input_shape=(64, 64, 3), num_groups=2,
                                  embedding_dim=16, diversity_weight=0.1)
    assert model.output["group_embeddings"].shape[1:] == (2, 8), backbone
assert "tensorflow" not in sys.modules, "something imported tensorflow"
import importlib.util
assert importlib.util.find_spec("tensorflow") is None  # probes (torch's dynamo) see "absent"
try:
    import tensorflow  # not dgml_tf's import: the usual message
except ModuleNotFoundError as error:
    assert "pip install" not in str(error)
for module in ("dgml_tf.export.preprocessing", "dgml_tf.train.custom_loop"):
    try:
        __import__(module)
    except ModuleNotFoundError as error:
        assert "pip install tensorflow==2.20.0" in str(error), (module, str(error))
        assert error.name == "tensorflow"
    else:
        raise SystemExit(f"{module} imported without tensorflow?")
try:
    from dgml_tf.train import CustomLoopTrainer
except ImportError as error:
    assert "pip install tensorflow==2.20.0" in str(error)
else:
    raise SystemExit("CustomLoopTrainer imported without tensorflow?")
print("OK")
"""


def test_layers_losses_miners_and_builder_import_without_tensorflow(site_without_tensorflow):
    result = _run_without_tensorflow(site_without_tensorflow, _NO_TF_IMPORTS)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-3000:] + result.stderr[-5000:])


def _readme_examples() -> dict:
    text = (REPO / "docs" / "library.md").read_text(encoding="utf-8")
    section = text.split("## Use it from JAX or PyTorch", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    examples = {}
    for block in blocks:
        match = re.search(r'os\.environ\["KERAS_BACKEND"\] = "(\w+)"', block)
        if match:
            examples[match.group(1)] = block
    return examples


def test_readme_has_one_example_per_backend():
    assert set(_readme_examples()) == {"jax", "torch"}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_readme_example_runs_as_written(backend, site_without_tensorflow):
    code = _readme_examples()[backend]
    if backend == "jax":  # as a JAX user would: no TensorFlow installed
        result = _run_without_tensorflow(site_without_tensorflow, code)
    else:
        python = _python_for("torch")
        env = _environment("torch")
        env["PYTHONPATH"] = str(REPO)
        result = subprocess.run([python, "-c", code], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "(16, 16)" in result.stdout


def test_gpu_jax_bench_runs_without_tensorflow(site_without_tensorflow):
    """bench/gpu_jax_step.py at toy size on CPU, where TensorFlow cannot be imported."""
    env = _environment("jax")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(site_without_tensorflow)])
    result = subprocess.run(
        [sys.executable, "-S", str(REPO / "bench" / "gpu_jax_step.py"), "--image_size=32",
         "--batch_sizes=2", "--steps=1", "--warmup=1", "--dtypes=float32,bfloat16"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "tensorflow imported: False" in result.stdout
    assert result.stdout.count("images/s") == 2
