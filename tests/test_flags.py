"""Flag validation, bundled flagfile resolution and the recipe flagfiles (no TensorFlow needed)."""

import os
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from dgml_tf import flagfiles
from dgml_tf import flags as dgml_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _values(*argv):
    """Parses argv with fresh FlagValues holding every training flag; returns a plain dict."""
    values = absl_flags.FlagValues()
    dgml_flags.define_data_flags(values)
    dgml_flags.define_model_flags(values)
    dgml_flags.define_training_flags(values)
    dgml_flags.define_output_flags(values)
    values(["train", *flagfiles.resolve_flagfile_args(["train", *argv])[1:]])
    return values.flag_values_dict()


def _errors(*argv, num_replicas=None):
    return dgml_flags.validate_training_flags(_values(*argv), num_replicas)


# --- validation ----------------------------------------------------------------------------

def test_a_valid_small_config_has_no_errors():
    assert _errors("--dataset=fashion_mnist", "--backbone=small_cnn", "--weights=none") == []


def test_zero_groups_is_rejected():
    (error,) = _errors("--dataset=fashion_mnist", "--num_groups=0")
    assert "--num_groups=0" in error and ">= 1" in error


def test_embedding_smaller_than_groups_names_group_dim():
    (error,) = _errors("--dataset=fashion_mnist", "--num_groups=8", "--embedding_dim=4")
    assert "D // K = 0" in error and "--embedding_dim >= 16" in error


def test_one_dim_groups_are_rejected():
    (error,) = _errors("--dataset=fashion_mnist", "--num_groups=3", "--embedding_dim=5")
    assert "D // K = 1" in error


def test_indivisible_embedding_dim_warns_with_effective_size():
    values = _values("--dataset=fashion_mnist", "--num_groups=3", "--embedding_dim=512")
    assert dgml_flags.validate_training_flags(values) == []
    (warning,) = dgml_flags.training_warnings(values)
    assert "170" in warning and "510" in warning


def test_on_disk_dataset_without_data_dir():
    (error,) = _errors("--dataset=cub")
    assert "--data_dir" in error and "cub" in error


def test_missing_data_dir(tmp_path):
    missing = str(tmp_path / "nope")
    (error,) = _errors("--dataset=sop", f"--data_dir={missing}")
    assert missing in error and "does not exist" in error


def test_batch_not_divisible_by_replicas_suggests_a_fix():
    (error,) = _errors("--dataset=fashion_mnist", "--classes_per_batch=5",
                       "--images_per_class=3", num_replicas=2)
    assert "15" in error and "2 replicas" in error and "--classes_per_batch=6" in error
    assert _errors("--dataset=fashion_mnist", "--classes_per_batch=4", "--images_per_class=3",
                   num_replicas=2) == []


def test_num_replicas_flag_is_used_for_the_early_check():
    (error,) = _errors("--dataset=fashion_mnist", "--classes_per_batch=3",
                       "--images_per_class=3", "--num_replicas=4")
    assert "4 replicas" in error


def test_single_head_needs_one_group():
    (error,) = _errors("--dataset=fashion_mnist", "--head=single", "--num_groups=3")
    assert "--num_groups=1" in error


@pytest.mark.parametrize("argv, needle", [
    (("--images_per_class=1",), "positives"),
    (("--classes_per_batch=1",), "negatives"),
    (("--image_size=224", "--resize_size=200"), "resize_size >= image_size"),
    (("--lr_backbone=0",), "--lr_backbone=0.0 must be > 0"),
    (("--wd_queries=-1",), "--wd_queries=-1.0 must be >= 0"),
    (("--lr_decay_factor=1.5",), "(0, 1]"),
    (("--lr_decay_epochs=a,3",), "comma-separated integers"),
    (("--val_classes=2.5",), "whole number"),
    (("--weights=torchvision",), "mobilenet_v2"),
    (("--backbone=small_cnn", "--weights=imagenet"), "--weights=none"),
    (("--weights=/no/such/file.h5",), "neither"),
    (("--epochs=0",), "--epochs=0 must be >= 1"),
])
def test_bad_values_name_the_flag(argv, needle):
    errors = _errors("--dataset=fashion_mnist", *argv)
    assert len(errors) == 1 and needle in errors[0], errors


def test_check_raises_with_every_problem():
    values = _values("--dataset=cub", "--num_groups=0")
    with pytest.raises(dgml_flags.FlagValidationError) as info:
        dgml_flags.check_training_flags(values)
    assert "--num_groups=0" in str(info.value) and "--data_dir" in str(info.value)


def test_bf16_warns_that_it_is_slow_only_without_bf16_hardware(monkeypatch):
    from dgml_tf import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: frozenset({"avx2", "fma"}))
    warnings = dgml_flags.training_warnings({"mixed_precision": "mixed_bfloat16"})
    assert any("slow" in w for w in warnings)
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16"}))
    assert dgml_flags.training_warnings({"mixed_precision": "mixed_bfloat16"}) == []


# --- machine-dependent defaults (dgml_tf/hardware.py) ------------------------------------------

@pytest.mark.parametrize("flags, gpus, expected", [
    ({"avx2", "fma"}, (), "none"),                              # this machine's kind
    ({"avx512f", "avx512_vnni"}, (), "none"),                   # AVX-512 without BF16
    ({"avx512f", "avx512_bf16"}, (), "mixed_bfloat16"),         # Cooper Lake, Zen 4
    ({"avx512f", "amx_bf16", "amx_tile"}, (), "mixed_bfloat16"),  # Sapphire Rapids
    ({"avx512_bf16"}, ((7, 5),), "none"),                       # a T4 trains: no bf16 there
    ({"avx2"}, ((8, 0), (9, 0)), "mixed_bfloat16"),             # A100 + H100
    ({"avx2"}, ((8, 6), (7, 0)), "none"),                       # one GPU without bf16
])
def test_auto_precision_follows_the_hardware(flags, gpus, expected):
    from dgml_tf import hardware

    assert hardware.resolve_mixed_precision("auto", flags, gpus) == expected
    # An explicit choice is never overridden.
    assert hardware.resolve_mixed_precision("mixed_float16", flags, gpus) == "mixed_float16"
    assert hardware.resolve_mixed_precision("none", flags, gpus) == "none"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from dgml_tf import hardware

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx2 avx512_bf16\n"
                       "\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert hardware.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert hardware.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_onednn_default_keeps_the_users_setting():
    from dgml_tf import hardware

    unset = {}
    assert hardware.apply_onednn_default(unset) == {"TF_ENABLE_ONEDNN_OPTS": "1",
                                                     "source": "default"}
    assert unset["TF_ENABLE_ONEDNN_OPTS"] == "1"
    # A child process of the main job inherits our choice and still records it as the default.
    assert hardware.apply_onednn_default(dict(unset))["source"] == "default"
    for value in ("0", "1"):
        user = {"TF_ENABLE_ONEDNN_OPTS": value}
        assert hardware.apply_onednn_default(user) == {"TF_ENABLE_ONEDNN_OPTS": value,
                                                       "source": "environment"}
        assert user == {"TF_ENABLE_ONEDNN_OPTS": value}


def test_determinism_default_is_on_for_cpu_only():
    from dgml_tf import hardware

    assert hardware.resolve_deterministic(None, num_gpus=0) is True
    assert hardware.resolve_deterministic(None, num_gpus=1) is False
    assert hardware.resolve_deterministic(False, num_gpus=0) is False
    assert hardware.resolve_deterministic(True, num_gpus=2) is True


def test_auto_precision_resumes_a_run_recorded_with_the_same_precision(tmp_path, monkeypatch):
    import json

    from dgml_tf import hardware

    monkeypatch.chdir(tmp_path)
    base = ["--flagfile=fashion_mnist.flags", "--output_dir=run"]
    auto = dgml_flags.training_config_from_args(base)
    assert auto["mixed_precision"] == "auto" and auto["deterministic"] is None
    old = json.loads(json.dumps({**auto, "mixed_precision": "none"}))  # before "auto" existed
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: frozenset({"avx2"}))
    assert dgml_flags.changed_training_flags(old, auto) == []
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16"}))
    assert dgml_flags.changed_training_flags(old, auto) == [
        "--mixed_precision: 'none' (none) -> 'auto' (mixed_bfloat16)"]
    # Recorded decisions win over this machine's: a bf16 run resumed on the same kind of machine.
    recorded = {**auto, "runtime": {"mixed_precision": "mixed_bfloat16", "deterministic": True}}
    assert dgml_flags.changed_training_flags(recorded, auto) == []
    assert dgml_flags.changed_training_flags(
        recorded, {**auto, "deterministic": False}) == []
    # Resumed where auto resolves otherwise (both decisions known): refused, naming both.
    elsewhere = {**auto, "runtime": {"mixed_precision": "none"}}
    assert dgml_flags.changed_training_flags(recorded, elsewhere) == [
        "--mixed_precision: 'auto' (mixed_bfloat16) -> 'auto' (none)"]


def test_cli_rejects_bad_flags_before_importing_tensorflow(tmp_path):
    # The CLI module is run in a fresh interpreter; after the usage error, TensorFlow and Keras
    # must still be unimported (validation happens before any heavy import).
    script = (
        "import runpy, sys\n"
        "sys.argv = ['train', '--dataset=cub', '--num_groups=0']\n"
        "try:\n"
        "    runpy.run_module('dgml_tf.train', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print('EXIT', exit.code)\n"
        "print('HEAVY', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    assert "EXIT 1" in result.stdout
    assert "--num_groups=0" in result.stderr and "--data_dir" in result.stderr


# --- flagfile resolution -------------------------------------------------------------------

def test_bundled_flagfile_found_by_bare_name_from_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = os.path.join(REPO, "dgml_tf", "configs", "cub.flags")
    for spelling in ("cub.flags", "cub", "configs/cub.flags"):
        argv = flagfiles.resolve_flagfile_args(["train", f"--flagfile={spelling}", "--epochs=3"])
        assert os.path.samefile(argv[1].split("=", 1)[1], expected)
        assert argv[2] == "--epochs=3"
    argv = flagfiles.resolve_flagfile_args(["train", "--flagfile", "sop.flags"])
    assert argv[1] == "--flagfile" and argv[2].endswith(os.path.join("configs", "sop.flags"))


def test_file_in_cwd_wins_over_bundled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cub.flags").write_text("--dataset=fashion_mnist\n")
    argv = flagfiles.resolve_flagfile_args(["train", "--flagfile=cub.flags"])
    assert os.path.samefile(argv[1].split("=", 1)[1], tmp_path / "cub.flags")
    assert _values("--flagfile=cub.flags")["dataset"] == "fashion_mnist"


def test_unknown_flagfile_lists_bundled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(flagfiles.UnknownFlagfileError) as info:
        flagfiles.resolve_flagfile_args(["train", "--flagfile=cubb.flags"])
    message = str(info.value)
    for name in ("cub", "cars196", "sop", "inshop", "fashion_mnist", "glyphs"):
        assert name in message


def test_command_line_overrides_flagfile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = _values("--flagfile=cub.flags", "--epochs=7", "--lambda_div=0.5")
    assert values["epochs"] == 7 and values["lambda_div"] == 0.5
    assert values["dataset"] == "cub"


# --- the recipe flagfiles equal method.md's table --------------------------------------------

# Typed from /work/shared/method.md, "Training recipe of the authors' code".
RECIPE = {
    #          epochs lr     wd_bb  wd_kv  wd_q   lr_beta lambda decay
    "cub":     (100, 1e-5, 0.003, 0.003, 0.001, 5e-5, 0.02, 55),
    "cars196": (200, 1e-5, 0.002, 0.002, 0.001, 5e-5, 0.01, 100),
    "sop":     (150, 9e-6, 3e-4, 3e-4, 1e-4, 1e-5, 0.03, 100),
    "inshop":  (150, 1e-5, 3e-4, 3e-4, 1e-4, 5e-5, 0.03, 100),
}


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_recipe_flagfiles_match_method_table(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    epochs, lr, wd_bb, wd_kv, wd_q, lr_beta, lambda_div, decay = RECIPE[name]
    v = _values(f"--flagfile={name}.flags")
    assert v["dataset"] == name
    assert (v["backbone"], v["weights"], v["head"]) == ("resnet50", "imagenet", "attentive")
    assert v["freeze_bn"] is True
    assert (v["num_groups"], v["reduction"], v["embedding_dim"]) == (3, 8, 512)
    assert (v["classes_per_batch"], v["images_per_class"]) == (56, 2)
    assert v["classes_per_batch"] * v["images_per_class"] == 112
    assert v["sample_with_replacement"] is True
    assert (v["image_size"], v["resize_size"]) == (224, 256)
    assert v["loss"] == "margin" and v["margin"] == 0.2 and v["beta_init"] == 1.2
    assert v["epochs"] == epochs
    assert v["lr_backbone"] == v["lr_key_value"] == v["lr_queries"] == lr
    assert (v["wd_backbone"], v["wd_key_value"], v["wd_queries"]) == (wd_bb, wd_kv, wd_q)
    assert v["lr_beta"] == lr_beta
    assert v["lambda_div"] == lambda_div
    assert dgml_flags.decay_epochs(v) == [decay] and v["lr_decay_factor"] == 0.3
    assert v["decoupled_weight_decay"] is False
    os.makedirs(tmp_path / "data")
    v["data_dir"] = str(tmp_path / "data")
    assert dgml_flags.validate_training_flags(v) == []


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_pretrained", "glyphs"])
def test_small_flagfiles_are_valid(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    v = _values(f"--flagfile={name}")
    assert dgml_flags.validate_training_flags(v) == []
    if name != "fashion_mnist":
        assert (v["backbone"], v["weights"]) == ("mobilenet_v2", "torchvision")


def test_changed_training_flags_names_what_changes_training_only(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    base = ["--flagfile=fashion_mnist.flags", "--output_dir=run"]
    stored = json.loads(json.dumps(dgml_flags.training_config_from_args(base)))  # as config.json
    same = dgml_flags.training_config_from_args(base + ["--verbose=0", "--eval_batch_size=7"])
    assert dgml_flags.changed_training_flags(stored, same) == []
    other = dgml_flags.training_config_from_args(base + ["--epochs=9", "--lambda_div=0.5"])
    assert dgml_flags.changed_training_flags(stored, other) == [
        "--epochs: 3 -> 9", "--lambda_div: 1.0 -> 0.5"]
    # A config.json written before a flag existed: that flag ran at its default.
    old_run = {k: v for k, v in stored.items() if k != "hflip"}
    assert dgml_flags.changed_training_flags(old_run, same) == []
    assert dgml_flags.changed_training_flags(
        old_run, dgml_flags.training_config_from_args(base + ["--nohflip"])) == [
        "--hflip: True -> False"]


# --- one source for names, one spelling per concept, one flag style ----------------------------

def test_importing_the_flags_loads_no_tensorflow():
    # The name lists come from the registries; each must stay importable without Keras/TF.
    script = ("import sys\nfrom dgml_tf import flags\n"
              "print('HEAVY', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_flag_choices_are_the_registries():
    import pipelines
    from dgml_tf.losses.registry import LOSSES
    from dgml_tf.models.backbones import available_backbones

    assert sorted(dgml_flags.DATASETS) == sorted(pipelines.available_datasets())
    assert sorted(dgml_flags.BACKBONES) == sorted(available_backbones())
    assert list(dgml_flags.LOSSES) == list(LOSSES)
    values = absl_flags.FlagValues()
    dgml_flags.define_model_flags(values)
    dgml_flags.define_training_flags(values)
    assert set(values["head"].parser.enum_values) == {"attentive", "grouping", "single"}
    assert set(values["loss"].parser.enum_values) == set(LOSSES)


def test_every_augmentation_choice_resolves_to_crop_ranges():
    from pipelines.augmentations import resolve_augmentation

    values = absl_flags.FlagValues()
    dgml_flags.define_training_flags(values)
    choices = values["augmentation"].parser.enum_values
    assert set(choices) == {"auto", "crop_flip", "small_shift", "none"}
    # auto: small shifts for 28 px garments, ImageNet-style 8-100% crops for photos.
    assert resolve_augmentation("auto", 28)["scale"] == (0.64, 1.0)
    assert resolve_augmentation("auto", 224)["scale"] == (0.08, 1.0)
    assert resolve_augmentation("none", 224) is None
    with pytest.raises(ValueError, match="crop_flip"):
        resolve_augmentation("rotate", 224)


def _aliased(deprecated=True):
    values = absl_flags.FlagValues()
    absl_flags.DEFINE_string("data_dir", None, "Dataset root.", flag_values=values)
    absl_flags.DEFINE_integer("port", 8501, "Port.", flag_values=values)
    absl_flags.DEFINE_bool("onnx", False, "ONNX too.", flag_values=values)
    dgml_flags.define_alias("data_root", "data_dir", values, deprecated=deprecated)
    dgml_flags.define_alias("rest_api_port", "port", values, deprecated=deprecated)
    dgml_flags.define_alias("make_onnx", "onnx", values, deprecated=deprecated)
    return values


def test_deprecated_spelling_sets_the_new_flag_and_says_so(capsys):
    values = _aliased()
    assert values(["cmd", "--data_root=/d", "--rest_api_port", "9000", "rest"]) == ["cmd", "rest"]
    assert (values.data_dir, values.port) == ("/d", 9000)
    err = capsys.readouterr().err
    assert "--data_root is deprecated, use --data_dir" in err
    assert "--rest_api_port is deprecated, use --port" in err
    assert values["data_dir"].present and not values["data_dir"].using_default_value


@pytest.mark.parametrize("argv, expected", [
    (["--data_dir=/new", "--data_root=/old"], "/old"),  # absl's rule: the last one wins
    (["--data_root=/old", "--data_dir=/new"], "/new"),
    (["--data_root", "/spaced"], "/spaced"),
    ([], None),
])
def test_both_spellings_follow_left_to_right_order(argv, expected):
    values = _aliased()
    values(["cmd", *argv])
    assert values.data_dir == expected


def test_alias_of_a_boolean_flag_takes_its_forms(capsys):
    values = _aliased(deprecated=False)
    values(["cmd", "--make_onnx"])
    assert values.onnx is True
    values.unparse_flags()
    values(["cmd", "--onnx", "--nomake_onnx"])
    assert values.onnx is False
    assert capsys.readouterr().err == ""  # not deprecated: no message


def test_alias_values_are_checked_by_the_target_flag():
    values = _aliased()
    with pytest.raises(absl_flags.IllegalFlagValueError, match="abc"):
        values(["cmd", "--rest_api_port=abc"])


def test_alias_help_names_the_new_spelling():
    help_text = _aliased().get_help()
    assert "--data_root: Deprecated spelling of --data_dir." in help_text


# Every user-facing command and flags its --help must list.
COMMAND_FLAGS = {
    "dgml_tf.train": ("--dataset", "--output_dir", "--lr_beta", "--augmentation"),
    "dgml_tf.evaluate": ("--run_dir", "--keras_model", "--per_class"),
    "dgml_tf.explain": ("--run_dir", "--keras_model", "--output_dir"),
    "dgml_tf.export": ("--run_dir", "--keras_model", "--base_dir"),
    "dgml_tf.index": ("--saved_model", "--index_dir", "--data_dir"),
    "dgml_tf.main": ("--output_dir", "--fresh", "--train_args"),
    "serving.server": ("--model_name", "--model_base_path", "--rest_api_port"),
    "serving.client": ("--url", "--model_name", "--grpc"),
}


@pytest.mark.parametrize("module", sorted(COMMAND_FLAGS))
def test_help_exits_zero_and_lists_the_flags(module, tmp_path):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    for flag in COMMAND_FLAGS[module]:
        assert flag in result.stdout, (module, flag, result.stdout)
    assert os.listdir(tmp_path) == []  # --help writes nothing
