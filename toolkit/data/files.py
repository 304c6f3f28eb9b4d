"""Local data files as a user hands them over: a look at each before any work (empty, binary, not in
its encoding), the plain reason when one fails to load, and where a row came from (file and line).

The `datasets` loaders say "An error occurred while generating the dataset" or "StopIteration"
about a bad file; the messages here name the file, the line and the fix.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from toolkit.errors import ToolkitError, first_line

HEAD_BYTES = 8192  # the look before any work reads each file's first 8 KB (as git does to tell binary files)
_BOMS = {codecs.BOM_UTF32_LE: "utf-32", codecs.BOM_UTF32_BE: "utf-32", codecs.BOM_UTF16_LE: "utf-16",
         codecs.BOM_UTF16_BE: "utf-16"}


def _shown(encoding: str) -> str:
    return "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding


def check_file(path: str, encoding: str, key: str, whole: bool = False) -> None:
    """Refuse a file that cannot hold what its name says: empty, binary, or not text in `encoding`.
    Reads the head only, unless `whole` (after a failed load, to find the line at fault)."""
    if Path(path).suffix.lower() == ".parquet":
        return
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))  # their text holds NUL bytes
    with open(path, "rb") as f:
        chunk = f.read(HEAD_BYTES)
        if not chunk.strip() and os.path.getsize(path) <= HEAD_BYTES:
            raise ToolkitError(f"{path} is empty; fill it, or remove it from {key}.files")
        bom = next((name for mark, name in _BOMS.items() if chunk.startswith(mark)), None)
        if bom and not wide:
            raise ToolkitError(f"{path} is {bom.upper()} text; re-save it as UTF-8, or set {key}.encoding={bom}")
        decoder = codecs.getincrementaldecoder(encoding)()
        offset, line = 0, 1
        while chunk:
            if not wide and b"\0" in chunk:
                at = offset + chunk.index(b"\0")
                raise ToolkitError(f"{path} is not a text file (a NUL byte at offset {at}); data files hold text"
                                   f" (txt, json, jsonl, csv) or parquet: remove it from {key}.files")
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                start = max(0, err.start - len(pending))
                line += chunk[:start].count(b"\n")
                raise ToolkitError(
                    f"{path}, line {line}: not {_shown(encoding)} text (byte"
                    f" 0x{chunk[start]:02x} at offset {offset + start}); re-save it as UTF-8, or set {key}.encoding"
                    " to the file's encoding (e.g. latin-1, cp1252)") from None
            offset, line = offset + len(chunk), line + chunk.count(b"\n")
            chunk = f.read(1 << 20) if whole else b""


def load_error(files: list[str], encoding: str, key: str, err: BaseException) -> ToolkitError:
    """Why `files` failed to load, as one line: the file and line at fault when they can be found."""
    for path in files:
        check_file(path, encoding, key, whole=True)
        if Path(path).suffix.lower() in (".json", ".jsonl"):
            problem = _json_problem(path, encoding, key)
            if problem:
                return ToolkitError(problem)
    return ToolkitError(f"could not read {', '.join(files[:3])}: {_cause(err)}")


def _cause(err: BaseException) -> str:
    """The first message in an exception's chain that says more than 'an error occurred'."""
    seen = err
    while seen is not None:
        text = first_line(seen)
        if not text.startswith("An error occurred while generating") and text != type(seen).__name__:
            return text
        seen = seen.__cause__ or seen.__context__
    return first_line(err)


def _json_problem(path: str, encoding: str, key: str) -> str | None:
    with open(path, encoding=encoding, newline="") as f:
        if Path(path).suffix.lower() == ".json":
            try:
                json.load(f)
                return None  # one whole document: its layout, not its syntax, is the problem
            except json.JSONDecodeError as err:
                if not err.msg.startswith("Extra data"):  # else JSON Lines in a .json file
                    return f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); fix the file"
            f.seek(0)
        records = 0
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                at = f"{'' if err.msg.endswith(' at') else ' at'} column {err.colno}"
                return f"{path}, line {n}: not valid JSON ({err.msg}{at}); fix or remove the line"
            if not isinstance(record, dict):
                return (f"{path}, line {n}: a JSON Lines record is an object such as {{\"text\": ...}}, got a"
                        f" {type(record).__name__}; fix or remove the line")
            records += 1
    return None if records else f"{path} holds no records; fill it, or remove it from {key}.files"


def row_location(files: list[str], row: int, encoding: str = "utf-8") -> str:
    """Where row `row` (0-based, in load order) of a source's files is: `path, line N`, or `path, row N`
    in a parquet file. Read only to point a message at a row."""
    for path in files:
        suffix = Path(path).suffix.lower()
        if suffix == ".txt":  # one file, one document
            found, count = (path, 1)
        elif suffix == ".parquet":
            count = pq.ParquetFile(path).metadata.num_rows
            found = f"{path}, row {row + 1}"
        elif suffix == ".json" and (records := _json_array(path, encoding)) is not None:
            count = len(records)
            found = f"{path}, record {row + 1}"
        else:
            lines = _record_lines(path, suffix, encoding)
            count = len(lines)
            found = f"{path}, line {lines[row]}" if row < count else None
        if row < count:
            return found
        row -= count
    return f"row {row + 1}"


def _json_array(path: str, encoding: str) -> list | None:
    """The records of a .json file that is one array; None for JSON Lines in a .json file."""
    try:
        with open(path, encoding=encoding, errors="replace") as f:
            records = json.load(f)
    except json.JSONDecodeError:
        return None
    return records if isinstance(records, list) else [records]


def _record_lines(path: str, suffix: str, encoding: str) -> list[int]:
    """The line on which each record of a JSON Lines or CSV file starts (blank lines hold none)."""
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        if suffix == ".csv":
            reader, starts = csv.reader(f), []
            next(reader, None)  # the header
            last = reader.line_num + 1
            for record in reader:
                if record:
                    starts.append(last)
                last = reader.line_num + 1
            return starts
        return [n for n, line in enumerate(f, 1) if line.strip()]
