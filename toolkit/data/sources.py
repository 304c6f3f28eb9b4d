"""Where text comes from: Hub datasets, local files, and corpora built into the toolkit.

Every source becomes a `datasets.Dataset` with two columns, `text` and `source` (its index
in the recipe), so that cleaning, splitting and weighting treat them all alike.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import gettext
import glob
import importlib
import inspect
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow.parquet as pq
from datasets import Dataset, IterableDataset, concatenate_datasets, load_dataset

from toolkit.data.files import check_file, load_error, row_location
from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import Source
from toolkit.tokenizer import conversation_problem

FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

# Modules whose import has side effects (a browser, printing, a GUI) or that hold no docs.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "test"}


def stdlib_objects():
    """(dotted name, docstring) of every documented public class and function of the standard library."""
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
            yield name, inspect.getdoc(module) or ""
            for attr, obj in sorted(vars(module).items()):
                if not attr.startswith("_") and getattr(obj, "__module__", None) == name:
                    if inspect.isclass(obj) or inspect.isfunction(obj):
                        yield f"{name}.{attr}", inspect.getdoc(obj) or ""


@functools.lru_cache(maxsize=1)
def _python_docs() -> tuple[str, ...]:
    docs = [topics[name] for name in sorted(topics)] + [doc for _, doc in stdlib_objects()]
    return tuple(d for d in docs if d.strip())


def python_docs() -> dict[str, list[str]]:
    """The Python reference topics and the standard library's docstrings: ~1 MB of real English."""
    return {"text": list(_python_docs())}


_SUMMARY = re.compile(r"^[A-Z][^\n]{15,200}\.$")


@functools.lru_cache(maxsize=1)
def _python_docs_qa() -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, doc in stdlib_objects():
        # PEP 257: the first line of a docstring is a one-sentence summary of what it does.
        first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
        if "." in name and _SUMMARY.match(first) and "(" not in first.split(" ")[0]:
            pairs.append((f"What does {name} do in Python?", first))
    return tuple(pairs)


def python_docs_qa() -> dict[str, list]:
    """Questions on standard-library functions and classes, answered by their docstring summaries."""
    pairs = _python_docs_qa()
    return {
        "prompt": [q for q, _ in pairs],
        "completion": [a for _, a in pairs],
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs],
    }


def python_docs_summaries() -> dict[str, list[str]]:
    """(document, summary) pairs: a docstring's body and its PEP 257 one-line summary."""
    sources, targets = [], []
    for _, doc in stdlib_objects():
        summary, _, body = doc.strip().partition("\n\n")
        summary, body = summary.replace("\n", " ").strip(), body.strip()
        if _SUMMARY.match(summary) and len(body.split()) >= 30:
            sources.append(body)
            targets.append(summary)
    return {"source": sources, "target": targets}


LOCALE_DIR = Path("/usr/share/locale")


def gettext_pairs(lang: str, locale_dir: Path = LOCALE_DIR) -> dict[str, list[str]]:
    """English to `lang` message pairs from the gettext catalogs installed on the machine.

    Every translated program ships its interface strings this way; plural forms, the
    catalog header and untranslated messages are left out; each English message once.
    """
    found: dict[str, str] = {}
    for path in sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo")):
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, ValueError):  # a few old catalogs are not UTF-8 or are truncated: left out
            continue
        for english, translated in catalog.items():
            if isinstance(english, str) and english.strip() and translated.strip() and translated != english:
                found.setdefault(english.strip(), translated.strip())
    if not found:
        raise ToolkitError(f"no English to {lang!r} message pairs: no gettext catalogs under {locale_dir / lang}"
                           " (install the language's locale packages, or use data files)")
    english = sorted(found)
    return {"source": english, "target": [found[e] for e in english]}


def installed_locales(locale_dir: Path = LOCALE_DIR) -> list[str]:
    """The locales with gettext catalogs on this machine (de, fr, zh_CN, pt_BR, ...)."""
    names = {p.parent.parent.name for p in locale_dir.glob("*/LC_MESSAGES/*.mo")} if locale_dir.is_dir() else set()
    return sorted(n for n in names if n != "en" and not n.startswith("en_"))


GETTEXT_PREFIX = "gettext-en-"  # gettext-en-<locale>: English to any installed locale, e.g. gettext-en-zh_CN
BUILTIN_CORPORA = {"python-docs": python_docs, "python-docs-qa": python_docs_qa,
                   "python-docs-summaries": python_docs_summaries,
                   **{f"{GETTEXT_PREFIX}{lang}": functools.partial(gettext_pairs, lang) for lang in ("de", "fr", "es")}}


def builtin_corpus(name: str):
    """The function that makes a built-in corpus: a fixed one, or the gettext pairs of any installed locale."""
    if name in BUILTIN_CORPORA:
        return BUILTIN_CORPORA[name]
    if name.startswith(GETTEXT_PREFIX):
        lang = name.removeprefix(GETTEXT_PREFIX)
        present = installed_locales()
        if lang not in present:
            close = [p for p in present if p.lower() == lang.lower()] or difflib.get_close_matches(lang, present, n=1)
            hint = f"did you mean {GETTEXT_PREFIX}{close[0]}? " if close else ""
            raise ToolkitError(f"no gettext catalogs for {lang!r} under {LOCALE_DIR}; {hint}the locales here are"
                               f" {', '.join(present) or 'none'} (install the language's locale packages)")
        return functools.partial(gettext_pairs, lang)
    raise ToolkitError(f"unknown built-in corpus {name!r}; available: {', '.join(BUILTIN_CORPORA)},"
                       f" or {GETTEXT_PREFIX}LOCALE for any locale with gettext catalogs")

# The columns each data.format reads, as (Source attribute naming the column, canonical name).
FORMAT_COLUMNS = {
    "text": [("text_column", "text")],
    "prompt_completion": [("prompt_column", "prompt"), ("completion_column", "completion")],
    "chat": [("messages_column", "messages")],
    "seq2seq": [("source_column", "source_text"), ("target_column", "target_text")],  # "source" is the source's index
}


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


def check_source(source: Source, key: str = "data.sources[]") -> None:
    """The cheap checks, done before any work: known built-in, files that exist, are not empty or
    binary, and begin as text in the source's encoding."""
    if source.builtin:
        builtin_corpus(source.builtin)
    if source.files:
        for path in resolve_files(source):
            check_file(path, source.encoding, key)


def file_columns(path: str, encoding: str = "utf-8") -> list[str] | None:
    """The columns of a local data file, read from its first record or header only (None: unknown)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".txt":
        return ["text"]
    if suffix == ".jsonl":
        with open(path, encoding=encoding, errors="replace") as f:
            for line in f:
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        return None  # the loader will name the problem
                    return list(record) if isinstance(record, dict) else None
        return None
    if suffix == ".csv":
        with open(path, encoding=encoding, errors="replace", newline="") as f:
            return next(csv.reader(f), None)
    if suffix == ".parquet":
        return pq.read_schema(path).names
    return None  # .json may be one big array: not worth reading here


def check_columns(source: Source, fmt: str) -> None:
    """A named column missing from a local file is found before any loading."""
    if not source.files:
        return
    for path in resolve_files(source):
        columns = file_columns(path, source.encoding)
        if columns is None:
            continue
        for attr, canonical in FORMAT_COLUMNS[fmt]:
            column = getattr(source, attr)
            nested = column.split(".")[0] in columns  # translation.en: a field of a nested column
            if column not in columns and not nested and not (Path(path).suffix.lower() == ".txt" and canonical == "text"):
                raise ToolkitError(
                    f"{canonical} column {column!r} not in {path}; its columns are {', '.join(columns)}"
                    f" (set data.sources[].{attr})"
                )


def source_fingerprint(source: Source) -> dict:
    """What identifies a source's content, for the data cache: the spec plus file sizes and times."""
    spec = dict(vars(source))
    if spec["encoding"] == "utf-8":
        del spec["encoding"]  # the default keeps the keys of caches made before the key existed
    if source.files:
        spec["file_stats"] = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in resolve_files(source)]
    if source.builtin:
        spec["python"] = sys.version  # the docs change with the interpreter
    return spec


def load_source(source: Source, index: int, fmt: str = "text", streaming: bool = False, bad_rows: str = "error",
                report: dict | None = None, key: str | None = None) -> Dataset | IterableDataset:
    """Load one source as the format's canonical columns plus `source` (its index).

    With `streaming`, an IterableDataset that reads as it is iterated: nothing is loaded in full.
    Chat rows that are no conversation stop the load (`bad_rows="error"`), or are left out and
    counted in `report` ("skip"); `key` names the source in messages (data.sources[0]).
    """
    key = key or f"data.sources[{index}]"
    files = resolve_files(source) if source.files else []
    if source.builtin:
        ds = Dataset.from_dict(builtin_corpus(source.builtin)())
        ds = ds.to_iterable_dataset() if streaming else ds
    else:
        builder = FILE_FORMATS[Path(files[0]).suffix.lower()] if files else None
        kwargs = {"sample_by": "document"} if builder == "text" else {}  # one file, one document
        ds = load_rows(source, files, builder, key, streaming, **kwargs)
    name = source.builtin or source.hub or source.files
    if fmt == "seq2seq" and not streaming:
        ds = ds.flatten()  # WMT-style {"translation": {"en": ..., "de": ...}} becomes translation.en, translation.de
    found = ds.column_names or _first_columns(ds, name)  # a stream may not know its columns before reading
    columns = [(getattr(source, attr), canonical) for attr, canonical in FORMAT_COLUMNS[fmt]]
    for column, canonical in columns:
        if column not in found:
            key = next(attr for attr, c in FORMAT_COLUMNS[fmt] if c == canonical)
            raise ToolkitError(
                f"{canonical} column {column!r} not in {name}; its columns are {', '.join(found)}"
                f" (set data.sources[].{key})"
            )
    if source.limit is not None:
        ds = ds.take(source.limit) if streaming else ds.select(range(min(source.limit, len(ds))))
    ds = ds.select_columns([c for c, _ in columns])

    def where(row: int) -> str:  # rows keep their file order up to here (a limit keeps the first ones)
        return row_location(files, row, source.encoding) if files else f"row {row + 1} of {name}"

    if fmt == "chat" and not streaming:
        ds = _drop_bad_conversations(ds, source.messages_column, where, bad_rows, report)
    elif fmt != "chat":
        attrs = {column: attr for attr, _ in FORMAT_COLUMNS[fmt] for column in [getattr(source, attr)]}
        ds = ds.map(lambda b, rows: {k: _texts(v, rows, where, f"{key}.{attrs[k]}", k) for k, v in b.items()},
                    batched=True, with_indices=True)
    ds = ds.rename_columns({c: canonical for c, canonical in columns if c != canonical})
    if streaming:
        return ds.map(lambda b: {"source": [index] * len(b["text"])}, batched=True)
    return ds.add_column("source", [index] * len(ds))


def load_rows(source: Source, files: list[str], builder: str | None, key: str, streaming: bool = False,
              **kwargs) -> Dataset | IterableDataset:
    """A source's rows as they are: its `files`, read by one `datasets` builder (json, csv, ...), or
    its Hub dataset. A failure is one line: the file and line at fault, or the Hub dataset and why."""
    if files:
        if builder != "parquet":
            kwargs["encoding"] = source.encoding
        try:
            return load_dataset(builder, data_files=files, split="train", streaming=streaming, **kwargs)
        except Exception as err:  # malformed JSON/CSV: the file, the line and the fix, not a parser traceback
            raise load_error(files, source.encoding, key, err) from None
    try:
        return load_dataset(source.hub, source.config, split=source.split, revision=source.revision, streaming=streaming)
    except Exception as err:  # offline, unknown name, wrong config or split
        raise ToolkitError(f"could not load Hub dataset {source.hub!r}: {first_line(err)}") from None


def _first_columns(ds: IterableDataset, name) -> list[str]:
    try:
        return list(next(iter(ds)).keys())
    except StopIteration:
        raise ToolkitError(f"{name} holds no documents; check data.sources") from None
    except Exception as err:
        raise ToolkitError(f"could not read {name}: {first_line(err)}") from None


def _texts(values: list, rows: list[int], where, setting: str, column: str) -> list[str]:
    """A column's values as text: null is empty, a number its digits; a list or mapping is refused."""
    for value, row in zip(values, rows):
        if isinstance(value, (list, dict)):
            kind = "list" if isinstance(value, list) else "mapping"
            shown = str(value) if len(str(value)) <= 60 else str(value)[:57] + "..."
            raise ToolkitError(f"{where(row)}: column {column!r} holds a {kind}, not text ({shown});"
                               f" point {setting} at a column of text, or make each row's value one string")
    return [v if isinstance(v, str) else ("" if v is None else str(v)) for v in values]


def _drop_bad_conversations(ds: Dataset, column: str, where, bad_rows: str, report: dict | None) -> Dataset:
    """Chat rows that are no conversation (a role the templates do not know, no assistant turn):
    left out and counted, or, with data.bad_rows=error, the first one refused with its file and line."""
    bad = []
    for start in range(0, len(ds), 1000):
        for i, messages in enumerate(ds[start:start + 1000][column], start):
            problem = conversation_problem(messages)
            if problem:
                if bad_rows == "error":
                    raise ToolkitError(f"{where(i)}: {problem}; fix the row, or set data.bad_rows=skip to leave"
                                       " such rows out")
                bad.append((i, problem))
    if not bad:
        return ds
    if report is not None:
        report["skipped_bad_rows"] = report.get("skipped_bad_rows", 0) + len(bad)
        report.setdefault("first_bad_row", f"{where(bad[0][0])}: {bad[0][1]}")
    drop = {i for i, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in drop])


def load_sources(sources: list[Source], fmt: str = "text", bad_rows: str = "error", report: dict | None = None,
                 section: str = "sources") -> Dataset:
    """Every source of data.sources (or data.eval_sources: `section`), one after the other."""
    return concatenate_datasets([load_source(s, i, fmt, bad_rows=bad_rows, report=report, key=f"data.{section}[{i}]")
                                 for i, s in enumerate(sources)])
