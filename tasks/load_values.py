"""What every loader shares: its error, UTF-8 reading, and the coercion of record values.

One answer normaliser serves every source (JSONL, CSV, Parquet, SQuAD JSON, Hugging Face datasets),
so an answer means the same whatever file it came from: a string is one answer (never its
characters), a list holds several, a SQuAD answers dict contributes its `text`, and a number is
its string. Anything else is refused with the file, the record and the rule, instead of being
coerced into something that trains on the wrong target.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import UserError


class DataLoadError(UserError, ValueError):
    """The input cannot be read into the data contract; the message names file, record and rule."""


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type, for messages ('null' for None, 'list' for an array)."""
    if is_missing(value):
        return "null"
    if isinstance(value, np.ndarray):
        return "list"
    if isinstance(value, np.generic):
        value = value.item()
    return type(value).__name__


def is_missing(value: Any) -> bool:
    """None, NaN, pd.NA or NaT: a cell with no value."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def read_utf8(path: Path) -> str:
    """The file's text (a leading UTF-8 BOM dropped); a DataLoadError names the first byte that is not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataLoadError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataLoadError(f"{path}: not UTF-8 text: byte 0x{raw[err.start]:02x} at byte offset {err.start} "
                            f"(line {line}); save the file as UTF-8") from None


def parse_json(text: str, where: str) -> Any:
    """json.loads whose every failure (syntax, nesting too deep for the parser) is a DataLoadError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"line {err.lineno} column {err.colno}" if "\n" in text.strip() else f"column {err.colno}"
        raise DataLoadError(f"{where}: not valid JSON ({err.msg}; {at})") from None
    except RecursionError:
        raise DataLoadError(f"{where}: JSON nested too deeply to parse") from None


def required_text(value: Any, where: str) -> str | None:
    """A required text field (id, question, title, text): strings kept, numbers as their string, missing as
    None (validation reports it by name); a list, dict or bool is refused here, since its str() is no text."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value.item() if isinstance(value, np.generic) else value)
    raise DataLoadError(f"{where}: must be a string, got {type_name(value)}")


def normalise_answers(value: Any, where: str, json_lists: bool = False) -> list[str]:
    """The accepted answers of one record, as a list of distinct strings in their order.

    Accepted: a string (one answer), a number (its string), a list or array of those or of {"text": ...}
    dicts, and a SQuAD answers dict {"text": [...], "answer_start": [...]}. With `json_lists` (flat table
    files, where a list is written as text) a string starting with '[' is parsed as a JSON list.
    An empty list stays empty: validation's "answer list is not empty" rule reports it (and can quarantine
    the row). `where` names the value (file, record, field); a refused value raises DataLoadError saying why.
    """
    if json_lists and isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise DataLoadError(f"{where}: starts with '[' but is not a JSON list; write a list of answers as "
                                f'JSON (["a", "b"]), or one answer that starts with "[" as ["[...]"]') from None
        if not isinstance(value, list):
            raise DataLoadError(f"{where}: starts with '[' but is not a JSON list")
    if isinstance(value, dict):
        return _answer_dict(value, where)
    if isinstance(value, (list, tuple, np.ndarray)):
        answers = _answer_items(list(value), where)
    else:
        answers = [_one_answer(value, where)]
    return list(dict.fromkeys(answers))


def _answer_dict(value: dict, where: str) -> list[str]:
    if "text" not in value:
        raise DataLoadError(f"{where}: missing 'text' (an answer dict needs it; keys: {sorted(map(str, value))})")
    text = value["text"]
    if isinstance(text, (list, tuple, np.ndarray)):
        return list(dict.fromkeys(_answer_items(list(text), f"{where}.text", dicts=False)))
    return [_one_answer(text, f"{where}.text")]


def _answer_items(items: list[Any], where: str, dicts: bool = True) -> list[str]:
    answers = []
    for i, item in enumerate(items):
        if dicts and isinstance(item, dict):
            answers += _answer_dict(item, f"{where}[{i}]")
        elif isinstance(item, (list, tuple, np.ndarray, dict)):
            raise DataLoadError(f"{where}[{i}]: must be a string, got {type_name(item)} (nested values are not "
                                f"answers)")
        else:
            answers.append(_one_answer(item, f"{where}[{i}]"))
    return answers


def _one_answer(value: Any, where: str) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise DataLoadError(f"{where}: blank answer; an answer needs some text")
        return value
    if is_missing(value):
        raise DataLoadError(f"{where}: missing (null); an answer must be a string or a list of strings")
    if _is_number(value):
        return str(value.item() if isinstance(value, np.generic) else value)
    raise DataLoadError(f"{where}: an answer must be a string or a number, got {type_name(value)}")
