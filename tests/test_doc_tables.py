"""bench/doc_tables.py: a bench script's table replaces only its marked section of a document."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ holds scripts, not a package: load the module by its path.
_spec = importlib.util.spec_from_file_location("doc_tables",
                                               os.path.join(REPO, "bench", "doc_tables.py"))
doc_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_tables)
BENCHMARKS_DOC, RESULTS_DOC = doc_tables.BENCHMARKS_DOC, doc_tables.RESULTS_DOC
refresh_section = doc_tables.refresh_section

BEFORE = ("# Benchmarks\r\n\nProse with trailing spaces   \n\n<!-- bench:speed -->\n| a | b |\n"
          "|---|---|\n| 1 | 2 |\n<!-- /bench:speed -->\n\nAfter, ünïcode \u2265 1.1x\n"
          "<!-- bench:other -->\nkept\n<!-- /bench:other -->\nno final newline")


def _write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8")


def test_only_the_marked_section_changes(tmp_path):
    doc = tmp_path / "doc.md"
    _write(doc, BEFORE)
    refresh_section(str(doc), "speed", "\n\n| a | b |\n|---|---|\n| 3 | 4 |\n\n")
    expected = BEFORE.replace("| 1 | 2 |", "| 3 | 4 |")
    assert _read(doc) == expected
    # what lies outside the markers is byte-identical, the other section included
    head, tail = BEFORE.split("<!-- bench:speed -->")[0], BEFORE.split("<!-- /bench:speed -->")[1]
    text = _read(doc)
    assert text.startswith(head + "<!-- bench:speed -->\n")
    assert text.endswith("<!-- /bench:speed -->" + tail)
    assert os.listdir(tmp_path) == ["doc.md"]  # no temporary file left behind


def test_refresh_is_idempotent_and_can_grow_or_empty_a_section(tmp_path):
    doc = tmp_path / "doc.md"
    _write(doc, BEFORE)
    table = "\n".join(f"| {i} | {i * i} |" for i in range(50))
    refresh_section(str(doc), "other", table)
    once = _read(doc)
    refresh_section(str(doc), "other", table)
    assert _read(doc) == once
    assert once == BEFORE.replace("\nkept\n", "\n" + table + "\n")
    refresh_section(str(doc), "other", "")
    assert _read(doc) == BEFORE.replace("\nkept\n", "\n\n")


@pytest.mark.parametrize("text, marker", [
    ("no markers at all\n", "<!-- bench:speed -->"),
    ("<!-- bench:speed -->\nx\n", "<!-- /bench:speed -->"),
    ("<!-- bench:speed -->\n<!-- /bench:speed -->\n<!-- bench:speed -->\n", "<!-- bench:speed -->"),
])
def test_missing_or_repeated_marker_names_marker_and_file(tmp_path, text, marker):
    doc = tmp_path / "doc.md"
    _write(doc, text)
    with pytest.raises(ValueError) as error:
        refresh_section(str(doc), "speed", "| new |")
    assert marker in str(error.value) and str(doc) in str(error.value)
    assert _read(doc) == text  # untouched


def test_closing_before_opening_is_refused(tmp_path):
    doc = tmp_path / "doc.md"
    text = "<!-- /bench:speed -->\nold\n<!-- bench:speed -->\n"
    _write(doc, text)
    with pytest.raises(ValueError, match="comes before"):
        refresh_section(str(doc), "speed", "| new |")
    assert _read(doc) == text


def test_content_holding_the_marker_and_bad_names_are_refused(tmp_path):
    doc = tmp_path / "doc.md"
    _write(doc, BEFORE)
    with pytest.raises(ValueError, match="holds the marker"):
        refresh_section(str(doc), "speed", "x\n<!-- /bench:speed -->\ny")
    with pytest.raises(ValueError, match="bad section name"):
        refresh_section(str(doc), "speed -->", "x")
    assert _read(doc) == BEFORE


def test_missing_document_is_an_error_not_a_new_file(tmp_path):
    missing = tmp_path / "nope.md"
    with pytest.raises(FileNotFoundError, match="nope.md"):
        refresh_section(str(missing), "speed", "x")
    assert not missing.exists()


def test_every_section_the_bench_scripts_write_exists_once():
    """Each --write_docs target of bench/*.py has its marker pair in the docs."""
    sections = {
        BENCHMARKS_DOC: ["train_step_speed", "rest_latency", "rest_grpc_latency", "ann",
                         "pipeline_throughput", "embedder_throughput", "eval_scaling",
                         "backend_step"],
        RESULTS_DOC: ["ablation_glyphs", "ablation_fashion_mnist",
                      "ablation_fashion_mnist_pretrained"],
    }
    for doc, names in sections.items():
        text = _read(doc)
        for name in names:
            assert text.count(f"<!-- bench:{name} -->") == 1, (doc, name)
            assert text.count(f"<!-- /bench:{name} -->") == 1, (doc, name)
            assert text.index(f"<!-- bench:{name} -->") < text.index(f"<!-- /bench:{name} -->")
