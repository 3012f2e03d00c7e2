"""Ablation of attentive grouping on a zero-shot split: which part of the method helps?

Four variants, same backbone, same embedding size D, same training budget (the dataset's
flagfile), ``--seeds`` seeds each:

==================  =====================================================================
single              one embedding of D dims (``--head=single --num_groups=1``)
grouping            conventional grouping: K linear heads on the pooled vector
                    (``--head=grouping --lambda_div=0``)
attentive_nodiv     attentive grouping without the diversity loss (``--lambda_div=0``)
attentive_div       attentive grouping with the flagfile's ``--lambda_div``
==================  =====================================================================

Each run is ``python -m dgml_tf.train --flagfile=<dataset>.flags --seed=S --head=...
--output_dir=<out>/runs/<variant>/seed<S>`` in a subprocess; it selects the model on the
validation classes and writes the test metrics of that model to ``summary.json``. This script
collects them and reports mean +- standard deviation (over seeds, ddof=1) of Recall@1, MAP@R and
NMI on the unseen test classes, next to training-free baselines on the same test split at the
same evaluation crop: raw-pixel cosine nearest neighbours, and for runs trained from an ImageNet
backbone (glyphs, fashion_mnist_pretrained) the frozen backbone's globally pooled features. For the
attentive variants it adds the "distinct groups" statistics of ``dgml_tf.explain`` (mean pairwise
group cosine and attention overlap on the test split).

Writes ``ablation.json``, ``ablation.md`` and ``ablation.png`` (bars with std error bars) into
``--output_dir`` (default ``outputs/ablation/<dataset>``) and prints the markdown table.

Usage::

    # smoke check (minutes)
    python bench/ablation.py --seeds=1 --epochs=1 --steps_per_epoch=3
    # the real thing (measured on 2 cores: ~30 min fashion_mnist, ~55 min glyphs;
    # --resume continues an interrupted ablation; --render_only redraws the report)
    python bench/ablation.py --dataset=fashion_mnist --seeds=3 --resume
    python bench/ablation.py --dataset=glyphs --seeds=3 --resume
    # another flagfile of a dataset (~32 min with two runs at a time)
    python bench/ablation.py --dataset=fashion_mnist --flagfile=fashion_mnist_pretrained.flags \
        --output_dir=outputs/ablation/fashion_mnist_pretrained --seeds=3 --jobs=2 --resume
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

METRICS = (("recall@1", "R@1"), ("map@r", "MAP@R"), ("nmi", "NMI"))
DIVERSITY = ("group_cosine", "attention_overlap")
# variant -> train flags; None stands for "the flagfile's --lambda_div".
VARIANTS: Dict[str, List[str]] = {
    "single": ["--head=single", "--num_groups=1", "--lambda_div=0"],
    "grouping": ["--head=grouping", "--lambda_div=0"],
    "attentive_nodiv": ["--head=attentive", "--lambda_div=0"],
    "attentive_div": ["--head=attentive"],
}
FLAGFILES = {"fashion_mnist": "fashion_mnist.flags", "glyphs": "glyphs.flags"}
PRETRAINED_FEATURES = "frozen_backbone"
RAW_PIXELS = "raw_pixels"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist",
                        help="Dataset with a bundled flagfile: " + ", ".join(FLAGFILES)
                        + " (or pass --flagfile for another).")
    parser.add_argument("--flagfile", default=None,
                        help="Training flagfile; default <dataset>.flags.")
    parser.add_argument("--data_dir", default=None, help="Passed to train (on-disk datasets).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per variant (0..N-1).")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="Comma-separated subset of " + ", ".join(VARIANTS) + ".")
    parser.add_argument("--epochs", type=int, default=None, help="Override (smoke runs).")
    parser.add_argument("--steps_per_epoch", type=int, default=None, help="Override (smoke).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Training runs at once (each uses all cores; default 1).")
    parser.add_argument("--resume", action="store_true",
                        help="Skip runs whose summary.json exists (others continue from their "
                             "checkpoint), so an interrupted ablation can be continued.")
    parser.add_argument("--eval_max_per_class", type=int, default=None,
                        help="Evaluate (runs, baselines, diversity) on the first N test images "
                             "of each class only (smoke runs; unset: the full protocol).")
    parser.add_argument("--output_dir", default=None,
                        help="Default outputs/ablation/<dataset>.")
    parser.add_argument("--render_only", action="store_true",
                        help="Rewrite ablation.md / ablation.png from <output_dir>/ablation.json "
                             "without training or evaluating anything.")
    parser.add_argument("--write_docs", action="store_true",
                        help="Also refresh the section ablation_<flagfile name> of "
                             "docs/results.md with the tables (bench/doc_tables.py).")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}.")
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds} must be >= 1 (3 or more for a mean and std).")
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1.")
    if args.flagfile is None:
        if args.dataset not in FLAGFILES:
            parser.error(f"no bundled flagfile for --dataset={args.dataset}; pass "
                         "--flagfile=<file.flags>.")
        args.flagfile = FLAGFILES[args.dataset]
    args.output_dir = args.output_dir or os.path.join("outputs", "ablation", args.dataset)
    return args


def overrides(args: argparse.Namespace) -> List[str]:
    """Flags every run shares on top of the flagfile (dataset location, smoke budget)."""
    extra = [f"--dataset={args.dataset}"]
    if args.data_dir:
        extra.append(f"--data_dir={args.data_dir}")
    if args.epochs is not None:
        extra.append(f"--epochs={args.epochs}")
    if args.steps_per_epoch is not None:
        extra.append(f"--steps_per_epoch={args.steps_per_epoch}")
    if args.eval_max_per_class is not None:
        extra.append(f"--eval_max_per_class={args.eval_max_per_class}")
    return extra


def training_config(flagfile: str, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """The flag values ``dgml_tf.train`` would use for ``--flagfile`` plus ``extra`` (no TF
    import)."""
    from dgml_tf import flags as dgml_flags

    return dgml_flags.training_config_from_args([f"--flagfile={flagfile}", *extra])


def run_dir_of(output_dir: str, variant: str, seed: int) -> str:
    return os.path.join(output_dir, "runs", variant, f"seed{seed}")


def train_command(args: argparse.Namespace, variant: str, seed: int) -> List[str]:
    return [sys.executable, "-m", "dgml_tf.train", f"--flagfile={args.flagfile}",
            *overrides(args), f"--seed={seed}", *VARIANTS[variant],
            f"--output_dir={run_dir_of(args.output_dir, variant, seed)}", "--verbose=2"]


def run_training(command: List[str], run_dir: str) -> Dict[str, Any]:
    """Runs one training subprocess, its output in ``<run_dir>/train.log``; returns summary."""
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    started = time.time()
    with open(os.path.join(run_dir, "train.log"), "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                              cwd=REPO).returncode
    if code != 0:
        raise RuntimeError(f"training failed (exit {code}); see {run_dir}/train.log")
    print(f"  done in {time.time() - started:.0f} s: {run_dir}", flush=True)
    return load_summary(run_dir)


def load_summary(run_dir: str) -> Dict[str, Any]:
    from dgml_tf.run_dir import RunDir

    with open(RunDir(run_dir).summary_path, encoding="utf-8") as handle:
        return json.load(handle)


def run_all(args: argparse.Namespace) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """Trains (or, with --resume, reuses) every variant x seed; returns their summaries."""
    from dgml_tf.run_dir import RunDir

    jobs, summaries = [], {v: {} for v in args.variants}
    for seed in range(args.seeds):
        for variant in args.variants:
            run_dir = run_dir_of(args.output_dir, variant, seed)
            if args.resume and os.path.isfile(RunDir(run_dir).summary_path):
                summaries[variant][seed] = load_summary(run_dir)
                print(f"  reusing {run_dir}")
                continue
            jobs.append((variant, seed, train_command(args, variant, seed), run_dir))
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_training, command, run_dir): (variant, seed)
                   for variant, seed, command, run_dir in jobs}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            variant, seed = futures[future]
            summaries[variant][seed] = future.result()
            print(f"[{n}/{len(jobs)}] {variant} seed {seed}", flush=True)
    return summaries


def diversity_of_run(run_dir: str, splits, config: Mapping[str, Any],
                     max_per_class: Optional[int]) -> Dict[str, Any]:
    """group cosine / attention overlap of a run's best.keras on the test split (cached)."""
    from dgml_tf.evaluate import load_run
    from dgml_tf.explain import model_diversity

    path = os.path.join(run_dir, "diversity.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
        if cached.get("max_per_class") == max_per_class:
            return cached
    model, _ = load_run(run_dir)
    stats = model_diversity(model, splits, config, "test", max_per_class)
    stats["max_per_class"] = max_per_class
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(stats, handle)
    return stats


def baseline_metrics(splits, config: Mapping[str, Any], max_per_class: Optional[int],
                     pretrained: bool) -> Dict[str, Dict[str, float]]:
    """Training-free baselines on the test split at the run's evaluation crop.

    ``raw_pixels``: cosine over the flattened crops. ``frozen_backbone`` (if ``pretrained``):
    cosine over the globally average-pooled feature map of the ImageNet backbone of the config.
    """
    import keras
    import numpy as np

    import pipelines
    from dgml_tf.evaluate import evaluate_retrieval, limit_per_class, recall_ks_for

    records = limit_per_class(splits.test, max_per_class)
    dataset = pipelines.make_eval_dataset(records, splits.arrays,
                                          image_size=config["image_size"],
                                          resize_size=config["resize_size"],
                                          batch_size=config["eval_batch_size"])
    options = dict(recall_ks=recall_ks_for(config["dataset"]), seed=int(config["seed"]))
    pixels, labels, features = [], [], []
    backbone = None
    if pretrained:
        from dgml_tf.models import get_backbone

        size = config["image_size"]
        # The same feature map the heads see (the flagfile's --feature_layer, if any).
        backbone = get_backbone(config["backbone"], (size, size, 3), weights=config["weights"],
                                freeze_batch_norm=True,
                                feature_layer=config.get("feature_layer") or None)
    for images, batch_labels in dataset:
        images = np.asarray(images)
        pixels.append(images.reshape(len(images), -1))
        labels.append(np.asarray(batch_labels))
        if backbone is not None:
            fmap = keras.ops.convert_to_numpy(backbone(images, training=False))
            features.append(fmap.mean(axis=(1, 2)))
    labels = np.concatenate(labels).astype(np.int64)
    results = {RAW_PIXELS: evaluate_retrieval(np.concatenate(pixels), labels, **options)}
    if backbone is not None:
        results[PRETRAINED_FEATURES] = evaluate_retrieval(np.concatenate(features), labels,
                                                          **options)
    return results


def mean_std(values: Sequence[float]) -> Dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of finite values."""
    import numpy as np

    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def aggregate(per_seed: Mapping[int, Mapping[str, Any]], keys: Sequence[str]) -> Dict[str, Any]:
    return {key: mean_std([per_seed[s].get(key) for s in sorted(per_seed)]) for key in keys}


def ordered_rows(result: Mapping[str, Any]) -> List[str]:
    """Trained variants in VARIANTS order, then the baselines (JSON round trips sort keys)."""
    rows = result["rows"]
    trained = [n for n in VARIANTS if n in rows]
    return trained + sorted(n for n in rows if n not in trained)


def paired_differences(result: Mapping[str, Any], reference: str = "attentive_div"
                       ) -> Dict[str, Dict[str, Any]]:
    """``reference`` minus each other trained variant, per seed, then mean +- std over seeds.

    Runs of one seed share the class split and the initialisation seed, so the paired
    difference removes the split-to-split spread that dominates the plain std.
    """
    rows = result["rows"]
    if reference not in rows:
        return {}
    ref = rows[reference]["per_seed"]
    out = {}
    for name in ordered_rows(result):
        if name == reference or name not in VARIANTS:
            continue
        other = rows[name]["per_seed"]
        seeds = sorted(set(ref) & set(other), key=int)
        out[name] = {key: mean_std([ref[s][key] - other[s][key] for s in seeds
                                    if ref[s].get(key) is not None
                                    and other[s].get(key) is not None])
                     for key, _ in METRICS}
    return out


def format_markdown(result: Mapping[str, Any]) -> str:
    """The ablation table: metrics in percent (mean +- std over seeds), diversity statistics."""

    def cell(stat, scale=100.0, digits=1):
        if not stat or stat["mean"] is None:
            return "n/a"
        return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"

    lines = [f"# Ablation on {result['dataset']} (zero-shot test classes)", "",
             f"Backbone {result['backbone']}, D={result['embedding_dim']}, "
             f"{result['epochs']} epochs x {result['steps_per_epoch']} steps, "
             f"seeds {result['seeds']}; mean ± std over seeds (percent).", "",
             "| variant | " + " | ".join(name for _, name in METRICS)
             + " | group cosine | attention overlap |",
             "|---" * (len(METRICS) + 3) + "|"]
    for name in ordered_rows(result):
        row = result["rows"][name]
        metrics = " | ".join(cell(row["metrics"].get(key)) for key, _ in METRICS)
        div = row.get("diversity") or {}
        lines.append(f"| {name} | {metrics} | {cell(div.get('group_cosine'), 1, 3)} | "
                     f"{cell(div.get('attention_overlap'), 1, 3)} |")
    frozen = any(name.startswith(PRETRAINED_FEATURES) for name in result["rows"])
    lines += ["", "Baselines without training (raw pixels"
              + ("; frozen ImageNet backbone, globally pooled" if frozen else "")
              + ") are evaluated on the same test images and crop. Group cosine and attention "
              "overlap: mean over pairs of groups and test images (lower = more distinct)."]
    paired = paired_differences(result)
    if paired:
        lines += ["", "Paired per seed (same class split and seed): attentive_div minus each "
                  "variant, mean ± std over seeds (percentage points).", "",
                  "| attentive_div minus | " + " | ".join(n for _, n in METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|"]
        for name, stats in paired.items():
            lines.append(f"| {name} | "
                         + " | ".join(cell(stats[key]) for key, _ in METRICS) + " |")
    return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any], path: str) -> str:
    """Bar chart, one panel per metric, bars = rows, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ordered_rows(result)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], METRICS, strict=True):
        stats = [result["rows"][n]["metrics"].get(key) or {} for n in names]
        means = [100 * (s.get("mean") or 0.0) for s in stats]
        stds = [100 * (s.get("std") or 0.0) for s in stats]
        ax.bar(np.arange(len(names)), means, yerr=stds, capsize=4,
               color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        ax.set_ylabel("percent")
    fig.suptitle(f"Ablation on {result['dataset']} (mean ± std over seeds)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(result: Mapping[str, Any], output_dir: str) -> str:
    """Writes ablation.md and ablation.png for ``result``; returns the markdown."""
    text = format_markdown(result)
    with open(os.path.join(output_dir, "ablation.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    plot(result, os.path.join(output_dir, "ablation.png"))
    return text


def write_docs(args: argparse.Namespace, text: str) -> None:
    """Refreshes ``<!-- bench:ablation_<flagfile name> -->`` of docs/results.md with ``text``."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from doc_tables import RESULTS_DOC, cpu_note, refresh_section

    name = "ablation_" + os.path.basename(args.flagfile).rsplit(".flags", 1)[0]
    refresh_section(RESULTS_DOC, name, cpu_note() + "\n\n" + text)
    print(f"refreshed {name} in {RESULTS_DOC}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.render_only:
        path = os.path.join(args.output_dir, "ablation.json")
        if not os.path.isfile(path):
            raise SystemExit(f"--render_only needs {path}; run the ablation first.")
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        print(write_report(result, args.output_dir))
        if args.write_docs:
            write_docs(args, format_markdown(result))
        return result
    os.makedirs(args.output_dir, exist_ok=True)
    base = training_config(args.flagfile, overrides(args))
    print(f"Ablation on {args.dataset}: variants {args.variants}, seeds 0..{args.seeds - 1}, "
          f"lambda_div of attentive_div = {base['lambda_div']}", flush=True)
    summaries = run_all(args)

    rows: Dict[str, Any] = {}
    keys = [k for k, _ in METRICS]
    for variant in args.variants:
        per_seed = {s: summary["metrics"]["concatenated"]
                    for s, summary in summaries[variant].items()}
        rows[variant] = {"metrics": aggregate(per_seed, keys), "per_seed": per_seed,
                         "train_flags": VARIANTS[variant]}

    # Baselines and diversity need the test split each seed trained on (glyphs' class split
    # depends on the seed); identical test splits are evaluated once.
    from dgml_tf.run_dir import load_splits

    pretrained = base["weights"] not in ("none", None)
    baselines: Dict[int, Dict[str, Any]] = {}
    diversity: Dict[str, Dict[int, Any]] = {v: {} for v in args.variants if "attentive" in v}
    seen: Dict[tuple, Dict[str, Any]] = {}
    for seed in range(args.seeds):
        config = training_config(args.flagfile, overrides(args) + [f"--seed={seed}"])
        splits = load_splits(config)  # exactly as the runs read it (the seed's class split)
        key = tuple(r.item_id for r in splits.test)
        if key not in seen:
            seen[key] = baseline_metrics(splits, config, args.eval_max_per_class, pretrained)
        baselines[seed] = seen[key]
        for variant in diversity:
            diversity[variant][seed] = diversity_of_run(
                run_dir_of(args.output_dir, variant, seed), splits, config,
                args.eval_max_per_class)
    for variant, per_seed in diversity.items():
        rows[variant]["diversity"] = aggregate(per_seed, DIVERSITY)
        rows[variant]["diversity_per_seed"] = per_seed
    for name in (RAW_PIXELS, PRETRAINED_FEATURES):
        per_seed = {s: b[name] for s, b in baselines.items() if name in b}
        if per_seed:
            label = name if name == RAW_PIXELS else f"{name} ({base['backbone']}, frozen)"
            rows[label] = {"metrics": aggregate(per_seed, keys), "per_seed": per_seed}

    result = {"dataset": args.dataset, "flagfile": args.flagfile, "seeds": args.seeds,
              "variants": list(args.variants),
              "backbone": base["backbone"], "embedding_dim": base["embedding_dim"],
              "num_groups": base["num_groups"], "lambda_div": base["lambda_div"],
              "epochs": base["epochs"], "steps_per_epoch": base["steps_per_epoch"],
              "eval_max_per_class": args.eval_max_per_class, "rows": rows}
    with open(os.path.join(args.output_dir, "ablation.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, sort_keys=True, default=float)
    print(write_report(result, args.output_dir))
    if args.write_docs:
        write_docs(args, format_markdown(result))
    return result


if __name__ == "__main__":
    main()
