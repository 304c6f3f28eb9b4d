"""Sources: local files of every format, globs, the built-in corpus, the Hub path, and weights."""

import json

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset

from toolkit.data.prepare import apply_weights
from toolkit.data.sources import load_source, load_sources, python_docs, resolve_files
from toolkit.errors import ToolkitError
from toolkit.recipe import Source

DOCS = ["First document about parsing.", "Second one, on tokens.", "Third: the lexer."]


def test_builtin_python_docs_is_real_english_prose():
    docs = python_docs()["text"]
    assert len(docs) > 1000
    assert sum(map(len, docs)) > 500_000
    assert any("The import statement" in d or "import statement" in d for d in docs)


@pytest.mark.parametrize("fmt", ["txt", "json", "jsonl", "csv", "parquet"])
def test_local_files_of_each_format(tmp_path, fmt):
    if fmt == "txt":
        for i, d in enumerate(DOCS):
            (tmp_path / f"doc{i}.txt").write_text(d + "\nwith a second line\n")
        pattern = str(tmp_path / "*.txt")
    elif fmt in ("json", "jsonl"):
        lines = "\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS))
        (tmp_path / f"data.{fmt}").write_text(lines)
        pattern = str(tmp_path / f"data.{fmt}")
    elif fmt == "csv":
        pd.DataFrame({"body": DOCS, "id": [0, 1, 2]}).to_csv(tmp_path / "data.csv", index=False)
        pattern = str(tmp_path / "data.csv")
    else:
        pd.DataFrame({"body": DOCS, "id": [0, 1, 2]}).to_parquet(tmp_path / "data.parquet")
        pattern = str(tmp_path / "data.parquet")
    column = "text" if fmt == "txt" else "body"
    ds = load_source(Source(files=pattern, text_column=column), index=3)
    assert ds.column_names == ["text", "source"]
    assert set(ds["source"]) == {3}
    if fmt == "txt":  # a text file is one document, lines and all
        assert sorted(ds["text"]) == sorted(d + "\nwith a second line\n" for d in DOCS)
    else:
        assert sorted(ds["text"]) == sorted(DOCS)


def test_missing_file_and_empty_glob_are_named(tmp_path):
    with pytest.raises(ToolkitError, match="data file not found: .*nothing.jsonl"):
        resolve_files(Source(files=str(tmp_path / "nothing.jsonl")))
    with pytest.raises(ToolkitError, match=r"data file not found: .*\*.txt"):
        resolve_files(Source(files=str(tmp_path / "*.txt")))


def test_missing_text_column_lists_the_columns(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(ToolkitError, match=r"text column 'text' not in .*; its columns are body, id"):
        load_source(Source(files=str(tmp_path / "d.jsonl")), 0)


def test_hub_source_uses_load_dataset_and_fails_in_one_line_offline(monkeypatch):
    import datasets
    import huggingface_hub

    # The libraries read these variables when first imported; their flags are set as well, or
    # the call would wait out network timeouts (the Hub is unreachable here) before failing.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ToolkitError) as err:
        load_source(Source(hub="Salesforce/wikitext", config="wikitext-2-raw-v1", split="train"), 0)
    assert str(err.value).startswith("could not load Hub dataset 'Salesforce/wikitext':")
    assert "\n" not in str(err.value)


def test_limit_and_mixture_of_sources(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS))
    ds = load_sources([Source(builtin="python-docs", limit=5), Source(files=str(tmp_path / "d.jsonl"))])
    assert np.bincount(ds["source"]).tolist() == [5, 3]


def test_weights_repeat_and_subsample_documents():
    ds = Dataset.from_dict({"text": [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)], "source": [0] * 10 + [1] * 10})
    out = apply_weights(ds, [2.0, 0.5], seed=0)
    counts = np.bincount(out["source"]).tolist()
    assert counts == [20, 5]
    assert sorted(t for t in out["text"] if t.startswith("a")) == sorted([f"a{i}" for i in range(10)] * 2)
    assert apply_weights(ds, [0.0, 1.0], seed=0)["source"].count(0) == 0
    # Seeded: the same weights and seed give the same order.
    assert apply_weights(ds, [1.5, 1.0], seed=3)["text"] == apply_weights(ds, [1.5, 1.0], seed=3)["text"]
