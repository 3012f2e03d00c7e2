"""Training-step throughput of our ResNet50 + attentive grouping against the authors' PyTorch
architecture, the speed-ups we tried, and the fraction of the machine's matmul peak we reach.

What is timed. One training step of the package's own stack: ``build_embedding_model(
backbone="resnet50", weights=None, head="attentive", num_groups=3, embedding_dim=512,
freeze_batch_norm=True)`` inside ``MetricLearningModel`` with ``MarginLoss`` (distance-weighted
mining, learnable per-class betas) plus ``diversity_weight`` x the diversity loss, optimised by the
grouped optimizer with the CUB recipe (per-group Adam rates, coupled L2), through Keras' own
``model.train_function`` (what ``fit`` runs). Against it: ``bench/torch_reference_step.py``, the
same architecture and losses in PyTorch (torchvision ResNet50), run in the separate venv
``.venv-torch`` (``bench/setup_torch_venv.sh``). Same batch (``--batch`` images = batch/2
classes x 2), resolution, and intra-op thread count (``--threads``). Inter-op threads are
TensorFlow's default, as the training CLI runs them (independent ops of the step graph may run at
once); PyTorch's eager autograd runs its ops one after another.

Every measurement runs in its own subprocess (TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` at import
time), each one warms up (XLA compiles, tf.data fills its buffer) and then times ``--repeats``
blocks of ``--steps`` steps. The table gives the median block rate and the min-max range.

Variants (``--variants``, comma separated; combine options with ``+``, e.g. ``nodet+xla``):

* ``default``: what ``python -m dgml_tf.train`` does by default (``dgml_tf/hardware.py``):
  oneDNN on unless ``TF_ENABLE_ONEDNN_OPTS`` is set, op determinism on for CPU-only training,
  ``--mixed_precision=auto`` (bf16 only where the hardware has it), images fed from an
  in-memory tensor;
* ``nodet``: op determinism off (``--nodeterministic``); ``det``: on (the CPU default);
* ``tfdefault``: oneDNN as TensorFlow ships it (off on CPUs without AVX-512 VNNI/BF16 or AMX;
  the table says what TF reported); ``noonednn``: ``TF_ENABLE_ONEDNN_OPTS=0``;
* ``onednn``: ``TF_ENABLE_ONEDNN_OPTS=1`` (what the default sets when unset);
* ``xla``: ``model.compile(jit_compile=True)``;
* ``nofold``: ``--nofold_batch_norm``, each frozen BatchNorm computed after its convolution
  instead of folded into it (what runs trained before the flag existed do);
* ``bf16`` / ``fp16``: Keras ``mixed_bfloat16`` / ``mixed_float16`` global policy (CPUs without
  bf16/fp16 arithmetic emulate it: expected slower; reported as measured). A ``bf16`` variant is
  compared with the PyTorch reference under ``torch.autocast(dtype=torch.bfloat16)`` (like for
  like), the others with PyTorch in float32;
* ``inter1``: one inter-op thread (the step graph's ops one at a time, as PyTorch's eager
  execution runs them; what this bench pinned for every variant until 2026-12-01);
* ``pipeline``: batches from ``pipelines.make_train_dataset`` (JPEG decode of the crop window,
  random resized crop, flip, prefetch) on generated 500x375 JPEGs instead of an in-memory tensor.

FLOPs per step: counted from the HLO that XLA lowers the train step to (convolutions and dots,
see ``bench/flops.py``); when the whole step cannot be lowered (today: the margin loss' miner draws
with ``StatelessMultinomial``, which has no XLA kernel), from the HLO of the network's forward +
backward pass alone. 3 x the forward count is printed as a cross-check. The
peak: the best of ``--repeats`` float32 ``tf.matmul`` of ``--matmul_size`` squared matrices, with
the same thread settings, with and without oneDNN; the best of those is "the machine's peak".

Usage::

    python bench/train_step_speed.py --quick                  # checks the script end to end
    python bench/train_step_speed.py                           # batch 16, 224 px, all variants
    python bench/train_step_speed.py --variants default,onednn --steps 5 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TORCH_PYTHON = os.path.join(REPO, ".venv-torch", "bin", "python")
RESULT_MARKER = "RESULT_JSON "
OPTIONS = ("onednn", "noonednn", "tfdefault", "det", "nodet", "xla", "bf16", "fp16", "pipeline",
           "nofold", "inter1")
DEFAULT_VARIANTS = "default,nodet,tfdefault,bf16"
# The authors' CUB recipe (method.md); the rates do not change the speed, the ops they imply do.
RECIPE_FLAGFILE = "cub.flags"


def parse_variant(name: str) -> tuple:
    """``"onednn+xla"`` -> ("onednn", "xla"); ``"default"`` -> ()."""
    if name == "default":
        return ()
    options = tuple(name.split("+"))
    unknown = [o for o in options if o not in OPTIONS]
    if unknown or not options:
        raise ValueError(
            f"Unknown variant {name!r}: use 'default' or options {list(OPTIONS)} joined by '+', "
            "e.g. 'onednn+xla'."
        )
    for pair in (("bf16", "fp16"), ("det", "nodet")):
        if set(pair) <= set(options):
            raise ValueError(f"Variant {name!r} asks for both {pair[0]} and {pair[1]}; pick one.")
    if len({"onednn", "noonednn", "tfdefault"} & set(options)) > 1:
        raise ValueError(f"Variant {name!r}: pick one of onednn, noonednn, tfdefault.")
    return options


def variant_environment(options: tuple) -> dict:
    """The subprocess environment of a variant: oneDNN is decided before TensorFlow loads, by
    the training CLI's own rule unless the variant overrides it."""
    sys.path.insert(0, REPO)
    from dgml_tf import hardware

    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    env.pop(hardware.ONEDNN_DEFAULTED, None)
    if "onednn" in options:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    elif "noonednn" in options:
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    elif "tfdefault" not in options:
        hardware.apply_onednn_default(env)
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.pop("TF_USE_LEGACY_KERAS", None)
    return env


# ------------------------------------------------------------------------------- workers
def _import_tensorflow(threads: int, inter_op: Optional[int] = None):
    """TensorFlow with ``threads`` intra-op threads; inter-op threads stay TensorFlow's default
    (what ``python -m dgml_tf.train`` runs) unless ``inter_op`` is given."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    return tf


def _onednn_enabled() -> Optional[bool]:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def benchmark_model(batch: int, image_size: int, num_classes: int, jit_compile: bool,
                    fold_batch_norm: bool = True):
    """Our model, loss and grouped optimizer from cub.flags, compiled as the training CLI does
    (``dgml_tf.train.recipe``; random init: the weights do not change the speed)."""
    import keras

    from dgml_tf import flags as dgml_flags
    from dgml_tf.train import recipe

    config = dgml_flags.training_config_from_args([
        f"--flagfile={RECIPE_FLAGFILE}", "--weights=none", f"--image_size={image_size}",
        f"--resize_size={image_size}", f"--jit_compile={jit_compile}",
        f"--fold_batch_norm={fold_batch_norm}"])
    keras.utils.set_random_seed(0)
    _, model = recipe.build_training_model(config, num_classes, steps_per_epoch=100)
    return model


def _time_blocks(run_step, steps: int, repeats: int, batch: int) -> list:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            run_step()
        rates.append(batch * steps / (time.perf_counter() - start))
    return rates


def variant_worker(args) -> dict:
    options = parse_variant(args.variant)
    tf = _import_tensorflow(args.threads, inter_op=1 if "inter1" in options else None)
    import keras
    import numpy as np

    from dgml_tf import hardware

    # The training CLI's defaults (dgml_tf.train.preflight.runtime_decisions) unless the
    # variant overrides them.
    deterministic = hardware.resolve_deterministic(
        True if "det" in options else False if "nodet" in options else None,
        len(tf.config.list_physical_devices("GPU")))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = ("mixed_bfloat16" if "bf16" in options else "mixed_float16" if "fp16" in options
              else hardware.resolve_mixed_precision("auto"))
    if policy != "none":
        keras.mixed_precision.set_global_policy(policy)
    batch, size = args.batch, args.image_size
    if batch < 2 or batch % 2:
        raise ValueError(f"--batch must be an even number >= 2 (classes x 2), got {batch}.")
    result = {"variant": args.variant, "onednn_enabled": _onednn_enabled(),
              "deterministic": deterministic, "policy": policy}
    with tempfile.TemporaryDirectory() as folder:
        if "pipeline" in options:
            import pipelines

            num_classes = batch  # twice the classes of a batch, 3 images each
            from synthetic_images import write_jpegs  # bench/ is sys.path[0]

            records = write_jpegs(folder, num_classes * 3, num_classes)
            dataset = pipelines.make_train_dataset(
                records, batch_classes=batch // 2, images_per_class=2, image_size=size, seed=0,
                check_files=False,  # the files were just written by bench/synthetic_images.py
            )
            batches = iter(dataset)
            # The pipeline on its own (same threads): does it keep up with the step?
            next(batches)
            start = time.perf_counter()
            for _ in range(args.steps):
                next(batches)
            result["pipeline_alone_images_per_s"] = batch * args.steps / (
                time.perf_counter() - start
            )
        else:
            num_classes = batch // 2
            rng = np.random.default_rng(0)
            images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
            labels = tf.constant(np.arange(batch) // 2, tf.int64)
            batches = None
        model = benchmark_model(batch, size, num_classes, jit_compile="xla" in options,
                                fold_batch_norm="nofold" not in options)
        model.make_train_function()

        def run_step():
            data = batches if batches is not None else [(images, labels)]
            logs = model.train_function(data)
            return float(logs["loss"])  # waits for the step to finish

        start = time.perf_counter()
        first_loss = run_step()
        result["first_step_s"] = time.perf_counter() - start
        for _ in range(args.warmup - 1):
            run_step()
        result["images_per_s"] = _time_blocks(run_step, args.steps, args.repeats, batch)
        result["finite_loss"] = bool(np.isfinite(first_loss) and np.isfinite(run_step()))
    return result


def flops_worker(args) -> dict:
    """FLOPs of one training step at the benchmark's batch and size (float32, default env)."""
    tf = _import_tensorflow(args.threads)
    import numpy as np

    sys.path.insert(0, HERE)
    from flops import function_flops

    batch, size = args.batch, args.image_size
    model = benchmark_model(batch, size, batch // 2, jit_compile=False)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)), tf.float32)
    labels = tf.constant(np.arange(batch) // 2, tf.int64)
    model.make_train_function()
    model.train_function([(images, labels)])  # builds the optimizer state before tracing
    forward = function_flops(
        tf.function(lambda x: model(x, training=True), jit_compile=True), (images,)
    )
    result = {"forward_flops": forward.flops, "forward_instructions": forward.instructions}
    try:
        step = function_flops(tf.function(model.train_step, jit_compile=True), ((images, labels),))
        result.update(step_flops=step.flops, step_instructions=step.instructions,
                      step_method="XLA HLO of the whole train step (conv + dot)")
        return result
    except ValueError as error:
        result["step_error"] = str(error)

    def forward_backward(x):
        # The loss' own arithmetic (B x B distances, K x K cosines) is negligible next to the
        # network; a sum stands in for it so the gradient reaches every weight as in training.
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            objective = tf.reduce_sum(outputs["group_embeddings"]) + tf.reduce_sum(
                outputs["attention"])
        return tape.gradient(objective, model.embedding_model.trainable_variables)

    step = function_flops(tf.function(forward_backward, jit_compile=True), (images,))
    result.update(step_flops=step.flops, step_instructions=step.instructions,
                  step_method="XLA HLO of the network's forward + backward pass (conv + dot; "
                  "the loss and the optimizer update, elementwise or B x B, left out)")
    return result


def peak_worker(args) -> dict:
    """Best float32 matmul rate (GFLOP/s) with the benchmark's thread settings."""
    tf = _import_tensorflow(args.threads)

    n = args.matmul_size
    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1]))
    matmul(a, b).numpy()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        seconds.append(time.perf_counter() - start)
    return {"gflops": 2 * n**3 / min(seconds) / 1e9, "onednn_enabled": _onednn_enabled(),
            "matmul_size": n}


# ------------------------------------------------------------------------------- driver
def run_subprocess(command: list, env: dict, timeout: float) -> dict:
    """Runs one worker, returns its result dict or ``{"error": ...}`` with the stderr tail."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
        if line.startswith("{") and '"images_per_s"' in line:  # the PyTorch script
            return json.loads(line)
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    # XLA failures end with a generic "tf2xla conversion failed"; the op that caused it is above.
    causes = [l for l in lines if "No registered '" in l or "unsupported operations" in l]
    reason = (causes or lines or [f"exit code {done.returncode}, no output"])[-1].strip()
    return {"error": reason[:300]}


def worker_command(args, worker: str, variant: str = "default") -> list:
    return [
        sys.executable, os.path.abspath(__file__), "--_worker", worker, "--variant", variant,
        "--batch", str(args.batch), "--image_size", str(args.image_size),
        "--steps", str(args.steps), "--repeats", str(args.repeats),
        "--warmup", str(args.warmup), "--threads", str(args.threads),
        "--matmul_size", str(args.matmul_size),
    ]


def machine_description() -> dict:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                   "avx512_vnni", "amx_bf16", "avx512_fp16")
                                     if f in present)
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": flags,
            "python": platform.python_version(), "os": platform.platform()}


def _versions() -> dict:
    versions = {}
    probe = "import tensorflow, keras; print(tensorflow.__version__, keras.__version__)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=variant_environment(()))
    parts = done.stdout.split()
    versions["tensorflow"], versions["keras"] = (parts + ["?", "?"])[:2]
    if os.path.exists(TORCH_PYTHON):
        done = subprocess.run(
            [TORCH_PYTHON, "-c", "import torch, torchvision; print(torch.__version__, "
             "torchvision.__version__)"], capture_output=True, text=True)
        parts = done.stdout.split()
        versions["torch"], versions["torchvision"] = (parts + ["?", "?"])[:2]
    return versions


def _rate_cell(rates: list) -> str:
    return f"{statistics.median(rates):.2f} ({min(rates):.2f}-{max(rates):.2f})"


def _precision(result_or_variant) -> str:
    """"bf16" for variants trained in bfloat16, else "fp32" (the PyTorch row they compare with)."""
    variant = result_or_variant if isinstance(result_or_variant, str) else (
        result_or_variant["variant"])
    if isinstance(result_or_variant, dict) and result_or_variant.get("policy") == "mixed_bfloat16":
        return "bf16"
    return "bf16" if "bf16" in parse_variant(variant) else "fp32"


def _table_header(args, machine, versions) -> list:
    return [
        f"### Training step speed, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} logical cores "
        f"(flags: {machine['cpu_flags'] or 'none of avx2/fma/avx512*/amx'}), "
        f"Python {machine['python']}; TensorFlow {versions.get('tensorflow')}, "
        f"Keras {versions.get('keras')}, PyTorch {versions.get('torch', 'n/a')}, "
        f"torchvision {versions.get('torchvision', 'n/a')}.",
        f"Batch {args.batch} ({args.batch // 2} classes x 2), {args.image_size} px, "
        f"{args.threads} intra-op thread(s) (inter-op: TensorFlow's default, as the training CLI; "
        "1 in inter1 variants), "
        f"{args.warmup} warm-up step(s), "
        f"{args.repeats} repeats x {args.steps} step(s)"
        + (f" in each of {args.rounds} rounds (every variant and PyTorch once per round, "
           "alternating; blocks pooled)" if args.rounds > 1 else "")
        + "; images/s as median (min-max). "
        "\"vs PyTorch\" compares with the PyTorch row of the same precision.",
        "",
    ]


def _table_rows(args, results, torch_results, torch_rates, step_flops, peak) -> list:
    lines = [
        "| variant | oneDNN | determinism | precision | images/s | ms/step | vs PyTorch "
        "| first step (s) | GFLOP/s | % of peak | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['variant']} | | | | failed | | | | | | {result['error']} |")
            continue
        rate = statistics.median(result["images_per_s"])
        ms = 1000 * args.batch / rate
        torch_rate = torch_rates.get(_precision(result))
        ratio = f"{rate / torch_rate:.2f}x" if torch_rate else "n/a"
        gflops = step_flops * rate / args.batch / 1e9 if step_flops else None
        notes = []
        if "pipeline_alone_images_per_s" in result:
            notes.append(f"pipeline alone {result['pipeline_alone_images_per_s']:.1f} img/s")
        if not result.get("finite_loss", True):
            notes.append("NON-FINITE LOSS")
        onoff = {True: "on", False: "off", None: "?"}
        cells = (f"{gflops:.1f} | {100 * gflops / peak:.1f}" if gflops is not None and peak
                 else "n/a | n/a")
        lines.append(
            f"| {result['variant']} | {onoff[result.get('onednn_enabled')]} "
            f"| {onoff[result.get('deterministic')]} | {result.get('policy', '?')} "
            f"| {_rate_cell(result['images_per_s'])} | {ms:.0f} | {ratio} "
            f"| {result['first_step_s']:.1f} | {cells} | {'; '.join(notes)} |")
    for precision, torch_result in torch_results.items():
        label = "PyTorch reference" + (" (bf16 autocast)" if precision == "bf16" else " (fp32)")
        if "error" in torch_result:
            lines.append(f"| {label} | | | | failed | | | | | | {torch_result['error']} |")
            continue
        rate = torch_rates[precision]
        torch_flops = torch_result.get("step_flops")
        gflops = torch_flops * rate / args.batch / 1e9 if torch_flops else None
        cells = f"{gflops:.1f} | {100 * gflops / peak:.1f}" if gflops and peak else "n/a | n/a"
        lines.append(
            f"| {label}, {torch_result.get('framework', 'torch')} | "
            f"{torch_result.get('mkldnn', '?')} | off | "
            f"{'bfloat16 autocast' if precision == 'bf16' else 'float32'} "
            f"| {_rate_cell(torch_result['images_per_s'])} "
            f"| {1000 * args.batch / rate:.0f} | 1.00x | "
            f"{torch_result.get('first_step_s', float('nan')):.1f} | {cells} "
            "| torchvision ResNet50 (v1.5); FLOPs by torch FlopCounterMode |"
        )
    return lines


def _table_notes(args, results, torch_results, torch_rates, flops, peaks, peak) -> list:
    step_flops = flops.get("step_flops")
    lines = [""]
    if step_flops:
        lines.append(
            f"FLOPs per step (ours): {step_flops / 1e9:.1f} GFLOP = "
            f"{step_flops / args.batch / 1e9:.2f} GFLOP/image, {flops['step_method']}; forward "
            f"pass {flops['forward_flops'] / args.batch / 1e9:.2f} GFLOP/image (step / forward = "
            f"{step_flops / flops['forward_flops']:.2f}). Taps on padding are not counted."
        )
        if "step_error" in flops:
            lines.append(f"(The whole train step could not be lowered to XLA: "
                         f"{flops['step_error']})")
    elif flops:
        lines.append(f"FLOP count failed: {flops.get('error')}")
    fp32 = torch_results.get("fp32", {})
    if fp32.get("step_flops"):
        lines.append(
            f"FLOPs per step (PyTorch reference, FlopCounterMode, dense taps): "
            f"{fp32['step_flops'] / 1e9:.1f} GFLOP."
        )
    peak_cells = ", ".join(
        f"oneDNN {name}: {p['gflops']:.1f}" if "gflops" in p else f"oneDNN {name}: {p['error']}"
        for name, p in peaks.items()
    )
    lines.append(
        f"Float32 matmul peak ({args.matmul_size}x{args.matmul_size}, best of {args.repeats}, "
        f"same threads): {peak_cells} GFLOP/s; % of peak uses "
        f"{f'{peak:.1f}' if peak else 'n/a'} GFLOP/s."
    )
    rates = {r["variant"]: statistics.median(r["images_per_s"]) for r in results
             if "error" not in r}
    default = next((r for r in results if r["variant"] == "default" and "error" not in r), None)
    if default and torch_rates.get(_precision(default)):
        rate, torch_rate = rates["default"], torch_rates[_precision(default)]
        lines.append(
            f"Ratio ours (default CLI path) / PyTorch ({_precision(default)}): "
            f"{rate / torch_rate:.2f} ({rate:.2f} vs {torch_rate:.2f} images/s)."
        )
    for with_det, without in (("default", "nodet"), ("det", "nodet")):
        if with_det in rates and without in rates:
            cost = 100 * (1 - rates[with_det] / rates[without])
            lines.append(
                f"Cost of op determinism: {with_det} {rates[with_det]:.2f} vs {without} "
                f"{rates[without]:.2f} images/s ({abs(cost):.1f}% "
                f"{'slower' if cost >= 0 else 'faster'} with it).")
            break
    best = max((r for r in results if "error" not in r),
               key=lambda r: statistics.median(r["images_per_s"]), default=None)
    if best and torch_rates.get(_precision(best)):
        lines.append(f"Ratio ours (best variant, {best['variant']}) / PyTorch "
                     f"({_precision(best)}): "
                     f"{rates[best['variant']] / torch_rates[_precision(best)]:.2f}.")
    return lines


def render_table(args, machine, versions, results, torch_results, flops, peaks) -> str:
    peak = max((p["gflops"] for p in peaks.values() if "gflops" in p), default=None)
    torch_rates = {k: statistics.median(r["images_per_s"]) for k, r in torch_results.items()
                   if "images_per_s" in r}
    lines = _table_header(args, machine, versions)
    lines += _table_rows(args, results, torch_results, torch_rates, flops.get("step_flops"), peak)
    lines += _table_notes(args, results, torch_results, torch_rates, flops, peaks, peak)
    return "\n".join(lines)


def _pooled(earlier: Optional[dict], result: dict) -> dict:
    """``result``'s timed blocks appended to the same variant's earlier result (rounds
    interleave the variants in time, so slow phases of a shared machine hit them alike)."""
    if earlier is None:
        return result
    if "images_per_s" in earlier and "images_per_s" in result:
        earlier["images_per_s"] = list(earlier["images_per_s"]) + list(result["images_per_s"])
    elif "error" in result:
        earlier.setdefault("error", result["error"])
    return earlier


def _run_variants(args, variants: list, log) -> list:
    results = []
    for variant in variants:
        log(f"variant {variant}")
        result = run_subprocess(worker_command(args, "variant", variant),
                                variant_environment(parse_variant(variant)), args.timeout)
        result.setdefault("variant", variant)
        results.append(result)
        log(f"  {result}")
    return results


def _run_torch(args, precisions: list, log, round_index: int) -> dict:
    out = {}
    for precision in precisions:
        log(f"PyTorch reference, {precision}")
        if not os.path.exists(TORCH_PYTHON):
            out[precision] = {"error": f"{TORCH_PYTHON} not found: run bench/setup_torch_venv.sh"}
            continue
        count_flops = precision == "fp32" and not args.skip_flops and round_index == 0
        out[precision] = run_subprocess(
            [TORCH_PYTHON, os.path.join(HERE, "torch_reference_step.py"),
             "--batch", str(args.batch), "--image_size", str(args.image_size),
             "--threads", str(args.threads), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--repeats", str(args.repeats),
             "--precision", precision, *(["--count_flops"] if count_flops else [])],
            dict(os.environ), args.timeout,
        )
        log(f"  {out[precision]}")
    return out


def run_benchmark(args) -> str:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        parse_variant(variant)  # fail before any measurement
    machine = machine_description()
    versions = _versions()
    timeout = args.timeout
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}.")

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    peaks = {}
    for name, options in (("off", ("noonednn",)), ("on", ("onednn",))):
        log(f"matmul peak, oneDNN {name}")
        peaks[name] = run_subprocess(worker_command(args, "peak"), variant_environment(options),
                                     timeout)
        log(f"  {peaks[name]}")
    flops = {}
    if not args.skip_flops:
        log("FLOP count of the train step")
        flops = run_subprocess(worker_command(args, "flops"), variant_environment(()), timeout)
        log(f"  {flops}")
    by_variant, torch_results = {}, {}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            log(f"round {round_index + 1} of {args.rounds}")
        for result in _run_variants(args, variants, log):
            by_variant[result["variant"]] = _pooled(by_variant.get(result["variant"]), result)
        if not args.skip_torch:
            precisions = ["fp32"] + (["bf16"] if any(_precision(v) == "bf16" for v in variants)
                                     else [])
            for precision, result in _run_torch(args, precisions, log, round_index).items():
                torch_results[precision] = _pooled(torch_results.get(precision), result)
    results = list(by_variant.values())
    return render_table(args, machine, versions, results, torch_results, flops, peaks)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per step (even)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every variant and the PyTorch reference this many times, "
                             "alternating; the table pools their timed blocks")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (>= 1)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--matmul_size", type=int, default=4096)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument("--skip_flops", action="store_true",
                        help="no FLOP count (no GFLOP/s and %% of peak columns)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the table in docs/benchmarks.md (bench/doc_tables.py)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run to check the script: 64 px, batch 4, 1 step, 1 repeat")
    parser.add_argument("--_worker", choices=("variant", "flops", "peak"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.image_size, args.steps, args.repeats, args.warmup = 4, 64, 1, 1, 1
        args.matmul_size = 1024
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step traces and compiles).")
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch must be an even number >= 2 (classes x 2), got {args.batch}.")
    if args._worker:
        worker = {"variant": variant_worker, "flops": flops_worker, "peak": peak_worker}
        print(RESULT_MARKER + json.dumps(worker[args._worker](args)), flush=True)
        return
    table = run_benchmark(args)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")
    if args.write_docs:
        from doc_tables import BENCHMARKS_DOC, refresh_section  # bench/ is sys.path[0]
        refresh_section(BENCHMARKS_DOC, "train_step_speed", table)
        print(f"refreshed train_step_speed in {BENCHMARKS_DOC}")


if __name__ == "__main__":
    main()
