"""Where text comes from: Hub datasets, local files, and corpora built into the toolkit.

Every source becomes a `datasets.Dataset` with two columns, `text` and `source` (its index
in the recipe), so that cleaning, splitting and weighting treat them all alike.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib
import inspect
import io
import os
import sys
import warnings
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import Source

FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

# Modules whose import has side effects (a browser, printing, a GUI) or that hold no docs.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "test"}


@functools.lru_cache(maxsize=1)
def _python_docs() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs = [topics[name] for name in sorted(topics)]
    quiet = contextlib.ExitStack()
    with quiet:  # importing every module warns about deprecations and may print
        quiet.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
        quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in _SKIP_MODULES:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # platform-specific modules (winreg, ...) are simply absent here
                continue
            docs.append(inspect.getdoc(module) or "")
            for attr, obj in sorted(vars(module).items()):
                if not attr.startswith("_") and getattr(obj, "__module__", None) == name:
                    if inspect.isclass(obj) or inspect.isfunction(obj):
                        docs.append(inspect.getdoc(obj) or "")
    return tuple(d for d in docs if d.strip())


def python_docs() -> list[str]:
    """The Python reference topics and the standard library's docstrings: ~1 MB of real English."""
    return list(_python_docs())


BUILTIN_CORPORA = {"python-docs": python_docs}


def resolve_files(source: Source) -> list[str]:
    """Expand a source's paths and globs; a path that matches nothing is an error."""
    patterns = [source.files] if isinstance(source.files, str) else list(source.files)
    files = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else ([pattern] if Path(pattern).is_file() else [])
        if not matches:
            raise ToolkitError(f"data file not found: {pattern} (check data.sources[].files; globs like data/*.jsonl work)")
        files += matches
    formats = {FILE_FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in formats:
        odd = next(f for f in files if Path(f).suffix.lower() not in FILE_FORMATS)
        raise ToolkitError(f"unsupported data file {odd}: use one of {', '.join(FILE_FORMATS)}")
    if len(formats) > 1:
        raise ToolkitError(f"one source mixes file formats ({', '.join(sorted(formats))}); give each format its own source")
    return files


def check_source(source: Source) -> None:
    """The cheap checks, done before any work: known built-in, files that exist."""
    if source.builtin and source.builtin not in BUILTIN_CORPORA:
        raise ToolkitError(f"unknown built-in corpus {source.builtin!r}; available: {', '.join(BUILTIN_CORPORA)}")
    if source.files:
        resolve_files(source)


def source_fingerprint(source: Source) -> dict:
    """What identifies a source's content, for the data cache: the spec plus file sizes and times."""
    spec = dict(vars(source))
    if source.files:
        spec["file_stats"] = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in resolve_files(source)]
    if source.builtin:
        spec["python"] = sys.version  # the docs change with the interpreter
    return spec


def load_source(source: Source, index: int) -> Dataset:
    """Load one source as a Dataset of `text` (str) and `source` (int) columns."""
    from datasets import load_dataset

    if source.builtin:
        ds = Dataset.from_dict({"text": BUILTIN_CORPORA[source.builtin]()})
    elif source.files:
        files = resolve_files(source)
        builder = FILE_FORMATS[Path(files[0]).suffix.lower()]
        kwargs = {"sample_by": "document"} if builder == "text" else {}  # one file, one document
        try:
            ds = load_dataset(builder, data_files=files, split="train", **kwargs)
        except Exception as err:  # malformed JSON/CSV: say which files, not a parser traceback
            raise ToolkitError(f"could not read {', '.join(files[:3])}: {first_line(err)}") from None
    else:
        try:
            ds = load_dataset(source.hub, source.config, split=source.split, revision=source.revision)
        except Exception as err:  # offline, unknown name, wrong config or split
            raise ToolkitError(f"could not load Hub dataset {source.hub!r}: {first_line(err)}") from None
    name = source.builtin or source.hub or source.files
    if source.text_column not in ds.column_names:
        raise ToolkitError(
            f"text column {source.text_column!r} not in {name}; its columns are {', '.join(ds.column_names)}"
            " (set data.sources[].text_column)"
        )
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    ds = ds.select_columns([source.text_column])
    if source.text_column != "text":
        ds = ds.rename_column(source.text_column, "text")
    ds = ds.map(lambda b: {"text": [t if isinstance(t, str) else ("" if t is None else str(t)) for t in b["text"]]}, batched=True)
    return ds.add_column("source", [index] * len(ds))


def load_sources(sources: list[Source]) -> Dataset:
    return concatenate_datasets([load_source(s, i) for i, s in enumerate(sources)])
