"""Read raw records from a dataset file, folder or hub id, each tagged with where it came from.

Own JSON/JSONL readers, not datasets.load_dataset: errors must name the line, and one bad line must be skippable.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import DataError

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class Record:
    """One raw record and its place in the source, e.g. 'data/train.jsonl, line 17'."""

    origin: str
    fields: dict[str, Any]


@dataclass
class ReadProblems:
    """Bad records met while reading with skip_bad on; each entry is a full error message."""

    skipped: list[str]


def read_records(source: str, skip_bad: bool, problems: list[str]) -> Iterator[Record]:
    """Yield the records of a file, a `save_to_disk` folder or (online) a hub dataset id.

    With `skip_bad`, unreadable lines are appended to `problems` instead of raising DataError.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _read_saved_dataset(path)
    elif path.is_file():
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unsupported file type '{path.suffix}'. lorakit reads "
                            f"{', '.join(FILE_SUFFIXES)} files, a datasets.save_to_disk folder or a hub dataset id.")
        yield from reader(path, skip_bad, problems)
    elif _looks_like_path(source):
        raise DataError(f"Dataset file {source} does not exist. Check the path (it is relative to the folder you "
                        "run lorakit from, or to data.dataset_dir).")
    else:
        yield from _read_hub_dataset(source)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.lower().endswith(FILE_SUFFIXES) or source.count("/") > 1


def _decode(path: Path, raw: bytes, first_line: int = 1) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = first_line + raw[: err.start].count(b"\n")
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column}). "
                        "Re-save the file as UTF-8 (e.g. `iconv -f GBK -t UTF-8`), or set data.skip_bad=true to "
                        "skip such lines in a .jsonl file.") from None


def _read_jsonl(path: Path, skip_bad: bool, problems: list[str]) -> Iterator[Record]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            origin = f"{path}, line {number}"
            try:
                value = json.loads(_decode(path, raw, number))
            except DataError as err:
                if not skip_bad:
                    raise
                problems.append(str(err))
                continue
            except json.JSONDecodeError as err:
                message = (f"{origin}: not valid JSON ({err.msg} at column {err.colno}). Each line of a .jsonl file "
                           "must be one complete JSON object; fix the line, or set data.skip_bad=true to skip it.")
                if not skip_bad:
                    raise DataError(message) from None
                problems.append(message)
                continue
            if not isinstance(value, dict):
                message = f"{origin}: expected a JSON object {{...}}, found {type(value).__name__}."
                if not skip_bad:
                    raise DataError(message)
                problems.append(message)
                continue
            yield Record(origin, value)


def _read_json(path: Path, skip_bad: bool, problems: list[str]) -> Iterator[Record]:
    text = _decode(path, path.read_bytes())
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}). "
                        "A .json dataset is one JSON array of records (or an object of equal-length lists); "
                        "for one record per line, name the file .jsonl.") from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        yield from _columns_to_records(path, value)
        return
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of records or an object of lists, "
                        f"found a JSON {type(value).__name__}.")
    lines = _record_start_lines(text)
    for index, item in enumerate(value):
        line = f" (line {lines[index]})" if index < len(lines) else ""
        origin = f"{path}, record {index + 1}{line}"
        if not isinstance(item, dict):
            message = f"{origin}: expected a JSON object {{...}}, found {type(item).__name__}."
            if not skip_bad:
                raise DataError(message)
            problems.append(message)
            continue
        yield Record(origin, item)


def _record_start_lines(text: str) -> list[int]:
    """Line number where each element of a top-level JSON array starts (best effort, for error messages)."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    position = text.index("[") + 1
    line = 1 + text.count("\n", 0, position)
    length = len(text)
    while position < length:
        while position < length and text[position] in " \t\r\n,":
            if text[position] == "\n":
                line += 1
            position += 1
        if position >= length or text[position] == "]":
            break
        lines.append(line)
        _, end = decoder.raw_decode(text, position)
        line += text.count("\n", position, end)
        position = end
    return lines


def _columns_to_records(path: Path, columns: dict[str, list]) -> Iterator[Record]:
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: an object of lists needs lists of equal length; found {lengths}.")
    for index in range(next(iter(lengths.values()))):
        yield Record(f"{path}, record {index + 1}", {key: values[index] for key, values in columns.items()})


def _read_csv(path: Path, skip_bad: bool, problems: list[str]) -> Iterator[Record]:
    text = _decode(path, path.read_bytes())
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        raise DataError(f"{path}: empty CSV file; the first row must name the columns.")
    for row in reader:
        origin = f"{path}, line {reader.line_num}"
        if None in row:
            message = f"{origin}: {len(row) + len(row[None]) - 1} values but the header names {len(reader.fieldnames)} columns."
            if not skip_bad:
                raise DataError(message + " Quote fields that contain commas.")
            problems.append(message)
            continue
        yield Record(origin, {key: value for key, value in row.items() if key})


def _read_parquet(path: Path, skip_bad: bool, problems: list[str]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({err}).") from None
    for index, row in enumerate(table.to_pylist()):
        yield Record(f"{path}, row {index + 1}", row)


def _read_text(path: Path, skip_bad: bool, problems: list[str]) -> Iterator[Record]:
    text = _decode(path, path.read_bytes())
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield Record(f"{path}, line {number}", {"text": line})


def _read_saved_dataset(path: Path) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(f"{path} is a folder but not a datasets.save_to_disk folder (no dataset_info.json / "
                        "state.json). Point data.paths at a file inside it, or at a dataset_info.json registry "
                        "with data.dataset_dir.") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    for index, row in enumerate(loaded):
        yield Record(f"{path}, row {index + 1}", dict(row))


def _read_hub_dataset(name: str) -> Iterator[Record]:
    import datasets

    repo, _, split = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, split=split or "train")
    except Exception as err:  # offline, unknown repo, gated repo: all end here with the same advice
        raise DataError(f"Dataset '{name}' is not a local file or folder, and loading it from the Hugging Face Hub "
                        f"failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                        "Check the path, or download the dataset where you have internet and point data.paths "
                        "at the file.") from None
    for index, row in enumerate(loaded):
        yield Record(f"{name}, row {index + 1}", dict(row))


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
            ".txt": _read_text}
