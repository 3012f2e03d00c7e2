"""Tests of ``python -m dgml_tf.explain`` on tiny untrained runs over Fashion-MNIST's test split.

Expectations are computed independently: neighbours by a NumPy brute-force cosine search over
the model's own outputs, diversity statistics by NumPy re-statements of histogram intersection
and pairwise cosine, image files by their pixels being those of a known split item.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags as absl_flags

from dgml_tf import explain
from dgml_tf import flags as dgml_flags
from dgml_tf.evaluate import limit_per_class, load_run
from dgml_tf.explain import cli as explain_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = 12  # 5 test classes x 12 images: quick, but a real retrieval


def _fashion_mnist_or_skip():
    import pipelines

    try:
        return pipelines.load_dataset("fashion_mnist", val_classes=0, seed=0)
    except Exception as error:  # absent dataset files
        pytest.skip(f"Fashion-MNIST not available: {error}")


@pytest.fixture(scope="module")
def splits():
    return _fashion_mnist_or_skip()


def _train_config(output_dir: str, head: str) -> dict:
    """The config.json train.py writes: every flag value after the fashion_mnist flagfile."""
    from dgml_tf import flagfiles

    values = absl_flags.FlagValues()
    dgml_flags.define_data_flags(values)
    dgml_flags.define_model_flags(values)
    dgml_flags.define_training_flags(values)
    dgml_flags.define_output_flags(values)
    k = 1 if head == "single" else 3
    values(flagfiles.resolve_flagfile_args(
        ["train", "--flagfile=fashion_mnist.flags", f"--head={head}", f"--num_groups={k}",
         "--embedding_dim=24", f"--output_dir={output_dir}", "--eval_batch_size=64"]))
    config = values.flag_values_dict()
    config["lr_decay_epochs"] = dgml_flags.decay_epochs(config)
    return config


def _make_run(root, head: str) -> str:
    from dgml_tf.models import build_embedding_model

    run_dir = str(root / head)
    os.makedirs(run_dir, exist_ok=True)
    config = _train_config(run_dir, head)
    model = build_embedding_model(backbone="small_cnn", input_shape=(28, 28, 3), head=head,
                                  num_groups=config["num_groups"], embedding_dim=24, reduction=2,
                                  freeze_batch_norm=False)
    model.save(os.path.join(run_dir, "best.keras"))
    with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return run_dir


@pytest.fixture(scope="module")
def attentive_run(tmp_path_factory, splits):
    return _make_run(tmp_path_factory.mktemp("runs"), "attentive")


def _parse(args):
    values = absl_flags.FlagValues()
    explain_cli.define_flags(values)
    values(["explain"] + args)
    return values


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_split_images_figures_neighbours_and_statistics(attentive_run, splits, tmp_path):
    out = str(tmp_path / "explain")
    report = explain_cli.explain_from_flags(_parse(
        [f"--run_dir={attentive_run}", "--num_images=3", "--num_queries=2", "--top_k=4",
         f"--eval_max_per_class={PER_CLASS}", f"--output_dir={out}"]))

    on_disk = json.load(open(os.path.join(out, "explain.json"), encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(report))
    assert _is_png(os.path.join(out, "attention_grid.png"))
    assert [_is_png(os.path.join(out, f"retrieval_{q}.png")) for q in range(2)] == [True, True]
    assert not os.path.exists(os.path.join(out, "retrieval_2.png"))

    records = limit_per_class(splits.test, PER_CLASS)
    ids = [r.item_id for r in records]
    assert len(report["images"]) == 3
    assert len({i["item_id"] for i in report["images"]}) == 3
    assert all(i["item_id"] in ids and 5 <= i["label"] <= 9 for i in report["images"])
    # The choice is fixed by the seed: a second run picks the same images.
    again = explain_cli.explain_from_flags(_parse(
        [f"--run_dir={attentive_run}", "--num_images=3", "--num_queries=0",
         f"--eval_max_per_class={PER_CLASS}", f"--output_dir={tmp_path / 'again'}"]))
    assert again["images"] == report["images"]

    # Independent brute-force search over the model's embeddings of the same crops.
    model, _ = load_run(attentive_run)
    import pipelines

    crops = np.concatenate([np.asarray(x) for x, _ in pipelines.make_eval_dataset(
        records, splits.arrays, image_size=28, resize_size=28, batch_size=64)])
    outputs = model(crops, training=False)
    emb = np.asarray(outputs["embedding"], np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert len(report["retrieval"]) == 2
    for entry in report["retrieval"]:
        q = ids.index(entry["query"]["item_id"])
        sims = emb @ emb[q]
        sims[q] = -np.inf
        expected = [ids[i] for i in np.argsort(-sims, kind="stable")[:4]]
        got = [n["item_id"] for n in entry["neighbours"]]
        assert len(got) == 4 and entry["query"]["item_id"] not in got
        assert got == expected
        np.testing.assert_allclose([n["score"] for n in entry["neighbours"]],
                                   np.sort(sims)[::-1][:4], atol=1e-4)

    # Diversity: NumPy histogram intersection and pairwise cosine, pairs (0,1), (0,2), (1,2).
    div = report["diversity"]
    att = np.asarray(outputs["attention"], np.float64).reshape(len(records), 3, -1)
    groups = np.asarray(outputs["group_embeddings"], np.float64)
    groups /= np.linalg.norm(groups, axis=-1, keepdims=True)
    pairs = [(0, 1), (0, 2), (1, 2)]
    overlap = np.mean([np.minimum(att[:, i], att[:, j]).sum(-1).mean() for i, j in pairs])
    cosine = np.mean([(groups[:, i] * groups[:, j]).sum(-1).mean() for i, j in pairs])
    assert div["num_images"] == 5 * PER_CLASS and div["num_groups"] == 3
    assert 0.0 <= div["attention_overlap"] <= 1.0 and -1.0 <= div["group_cosine"] <= 1.0
    np.testing.assert_allclose(div["attention_overlap"], overlap, atol=1e-4)
    np.testing.assert_allclose(div["group_cosine"], cosine, atol=1e-4)


def test_baseline_head_reports_cosine_without_attention(tmp_path, splits):
    run_dir = _make_run(tmp_path, "grouping")
    report = explain_cli.explain_from_flags(_parse(
        [f"--run_dir={run_dir}", "--num_images=2", "--top_k=3", "--eval_max_per_class=6"]))
    assert report["has_attention"] is False
    assert "no attention" in report["message"] and "grouping" in report["message"]
    assert report["diversity"]["attention_overlap"] is None
    assert -1.0 <= report["diversity"]["group_cosine"] <= 1.0
    out = os.path.join(run_dir, "explain")  # the default output_dir
    assert os.path.isfile(os.path.join(out, "explain.json"))
    assert not any(name.endswith(".png") for name in os.listdir(out))
    assert [len(e["neighbours"]) for e in report["retrieval"]] == [3, 3]


def test_bad_inputs_name_the_fix(tmp_path, attentive_run):
    with pytest.raises(ValueError, match="--run_dir"):
        load_run(None)
    with pytest.raises(ValueError, match="not a directory"):
        load_run(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        explain.load_image_files([str(tmp_path / "missing.png")], 28, 28)
    with pytest.raises(ValueError, match="num_images"):
        explain.fixed_choice(10, 0, seed=0)


def test_cli_with_image_files_finds_their_source_items(attentive_run, splits, tmp_path):
    from PIL import Image

    records = limit_per_class(splits.test, PER_CLASS)
    chosen = [records[7], records[PER_CLASS * 3 + 2]]
    paths = []
    for n, record in enumerate(chosen):
        path = str(tmp_path / f"item{n}.png")
        Image.fromarray(splits.arrays[record.source][..., 0]).save(path)  # gray 28x28
        paths.append(path)
    out = str(tmp_path / "cli")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "dgml_tf.explain", f"--run_dir={attentive_run}",
         f"--eval_max_per_class={PER_CLASS}", "--top_k=2", f"--output_dir={out}",
         "--images", paths[0], paths[1]],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attention overlap" in result.stdout
    report = json.load(open(os.path.join(out, "explain.json"), encoding="utf-8"))
    assert [i["file"] for i in report["images"]] == [os.path.abspath(p) for p in paths]
    assert _is_png(os.path.join(out, "attention_grid.png"))
    # A file holding a split item's pixels retrieves that very item first (nothing excluded).
    for entry, record in zip(report["retrieval"], chosen):
        assert len(entry["neighbours"]) == 2
        assert entry["neighbours"][0]["item_id"] == record.item_id
        assert entry["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def _ablation_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", os.path.join(REPO, "bench",
                                                                           "ablation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_commands_are_valid_training_configs_and_stats_are_sample_std(tmp_path):
    import statistics

    ablation = _ablation_module()
    args = ablation.parse_args(["--seeds=2", "--epochs=1", "--steps_per_epoch=3",
                                f"--output_dir={tmp_path}"])
    heads = {}
    for variant in ablation.VARIANTS:
        command = ablation.train_command(args, variant, seed=1)
        assert command[1:3] == ["-m", "dgml_tf.train"] and "--seed=1" in command
        config = ablation.training_config(args.flagfile, command[4:])
        assert dgml_flags.validate_training_flags(config) == []
        assert (config["epochs"], config["steps_per_epoch"]) == (1, 3)
        assert config["output_dir"] == os.path.join(str(tmp_path), "runs", variant, "seed1")
        heads[variant] = (config["head"], config["embedding_dim"], config["lambda_div"])
    # Same embedding budget everywhere; diversity only in attentive_div (the flagfile's value,
    # read from the file's text here).
    with open(os.path.join(REPO, "dgml_tf", "configs", "fashion_mnist.flags")) as handle:
        lines = dict(line.strip().split("=", 1) for line in handle if line.startswith("--")
                     and "=" in line)
    dim, weight = int(lines["--embedding_dim"]), float(lines["--lambda_div"])
    assert weight > 0
    assert heads == {"single": ("single", dim, 0.0), "grouping": ("grouping", dim, 0.0),
                     "attentive_nodiv": ("attentive", dim, 0.0),
                     "attentive_div": ("attentive", dim, weight)}
    values = [0.5, 0.7, 0.65]
    stats = ablation.mean_std(values + [float("nan")])
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(statistics.mean(values))
    assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert ablation.mean_std([0.3]) == {"mean": 0.3, "std": 0.0, "n": 1}
    with pytest.raises(SystemExit):
        ablation.parse_args(["--variants=single,bogus"])


def test_ablation_paired_differences_and_render_only(tmp_path):
    ablation = _ablation_module()
    metrics = lambda r1, m, n: {"recall@1": r1, "map@r": m, "nmi": n}  # noqa: E731
    # After a JSON round trip: string seeds, rows in alphabetical order.
    result = {"dataset": "toy", "backbone": "small_cnn", "embedding_dim": 8, "epochs": 1,
              "steps_per_epoch": 1, "seeds": 2, "rows": {
                  "attentive_div": {"per_seed": {"0": metrics(0.8, 0.5, 0.9),
                                                 "1": metrics(0.7, 0.6, 0.8)}},
                  "raw_pixels": {"per_seed": {"0": metrics(0.1, 0.1, 0.1),
                                              "1": metrics(0.1, 0.1, 0.1)}},
                  "single": {"per_seed": {"0": metrics(0.6, 0.4, 0.9),
                                          "1": metrics(0.7, 0.3, 0.6)}}}}
    for row in result["rows"].values():
        row["metrics"] = ablation.aggregate(row["per_seed"], ["recall@1", "map@r", "nmi"])
    paired = ablation.paired_differences(result)
    assert list(paired) == ["single"]  # baselines are not trained variants
    # Differences per seed: R@1 (0.2, 0.0), MAP@R (0.1, 0.3), NMI (0.0, 0.2).
    assert paired["single"]["recall@1"]["mean"] == pytest.approx(0.1)
    assert paired["single"]["map@r"]["mean"] == pytest.approx(0.2)
    assert paired["single"]["map@r"]["std"] == pytest.approx(0.2 / 2 ** 0.5)
    assert ablation.ordered_rows(result) == ["single", "attentive_div", "raw_pixels"]
    with open(tmp_path / "ablation.json", "w") as handle:
        json.dump(result, handle)
    ablation.main(["--render_only", f"--output_dir={tmp_path}"])
    text = (tmp_path / "ablation.md").read_text()
    assert "| single | 10.0 ± 14.1 | 20.0 ± 14.1 | 10.0 ± 14.1 |" in text
    assert (tmp_path / "ablation.png").stat().st_size > 0
