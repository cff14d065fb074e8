"""Training and test rows: built-in synthetic sources or user files (JSONL, Parquet, HF dataset dir).

A malformed row, a missing column or an empty source stops the run with the file, the row and
the problem, before any actor starts.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, DataConfig
from pipeline.errors import RlpostError
from pipeline.records import Prompt
from pipeline.tasks import generate_split


class DataError(RlpostError, ValueError):
    """A data problem: the message names the file, the row and what is wrong."""


@dataclass(frozen=True)
class Row:
    source: str
    prompt: str | list[dict[str, str]]  # plain text, or chat messages
    answer: str
    fields: dict[str, Any] = field(default_factory=dict)  # every other column, passed to reward functions


def load_rows(cfg: DataConfig, seed: int) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
    """Train and test rows grouped by source name."""
    if not cfg.files:
        return _synthetic(cfg, seed)
    train = _group(row for f in cfg.files for row in read_file(Path(f), cfg))
    if cfg.test_files:
        test = _group(row for f in cfg.test_files for row in read_file(Path(f), cfg))
    else:
        train, test = _split_off_test(train, cfg.test_per_source)
    return train, test


def _synthetic(cfg: DataConfig, seed: int) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
    train, test = {}, {}
    for source in cfg.sources:
        try:
            tr, te = generate_split(source, cfg.train_per_source, cfg.test_per_source, seed)
        except KeyError as err:
            raise DataError(f"data.sources: {err.args[0]}") from None
        train[source] = [Row(source, p, a) for p, a in tr]
        test[source] = [Row(source, p, a) for p, a in te]
    return train, test


def _group(rows) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.source].append(row)
    return dict(grouped)


def _split_off_test(train: dict[str, list[Row]], n_test: int) -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
    """Hold out up to n_test rows per source (never the whole source) as the test split."""
    kept, held = {}, {}
    for source, rows in train.items():
        n = min(n_test, len(rows) // 5)
        kept[source], held[source] = rows[n:], rows[:n]
    return kept, held


def read_file(path: Path, cfg: DataConfig) -> list[Row]:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        records = _hf_dataset_records(path)
        where = "row"
    elif path.suffix == ".parquet":
        records = _parquet_records(path)
        where = "row"
    elif path.suffix in (".jsonl", ".json"):
        records = _jsonl_records(path)
        where = "line"
    else:
        raise DataError(f"{path}: unsupported format (use .jsonl, .parquet or a Hugging Face dataset directory)")
    rows = [_to_row(rec, cfg, f"{path}, {where} {n}") for n, rec in records]
    if not rows:
        raise DataError(f"{path}: contains no rows")
    return rows


def _jsonl_records(path: Path):
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({err.reason})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {n}: not valid JSON ({err.msg})") from None


def _parquet_records(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read as Parquet ({err})") from None
    yield from enumerate(table.to_pylist(), start=0)


def _hf_dataset_records(path: Path):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{path}: not a Hugging Face dataset saved with save_to_disk ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict needs a 'train' split; found {list(ds)}")
        ds = ds["train"]
    yield from enumerate(ds, start=0)


def _to_row(record: Any, cfg: DataConfig, where: str) -> Row:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with columns, got {type(record).__name__}")
    missing = [k for k in (cfg.prompt_key, cfg.answer_key, cfg.source_key) if k not in record]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; present: {sorted(record)}")
    prompt, answer, source = record[cfg.prompt_key], record[cfg.answer_key], record[cfg.source_key]
    if not _is_prompt(prompt):
        raise DataError(f"{where}: column {cfg.prompt_key!r} must be a non-empty string or a list of chat messages")
    if answer is None or isinstance(answer, (dict, list)):
        raise DataError(f"{where}: column {cfg.answer_key!r} must be a string or number, got {answer!r}")
    if not isinstance(source, str) or not source:
        raise DataError(f"{where}: column {cfg.source_key!r} must be a non-empty string, got {source!r}")
    extra = {k: v for k, v in record.items() if k not in (cfg.prompt_key, cfg.answer_key, cfg.source_key)}
    return Row(source, prompt, str(answer), extra)


def _is_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt)
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
    )


def columnar(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts -> {column: values}: the TRL-style keyword arguments of reward functions."""
    columns: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        for key, value in row.items():
            columns[key].append(value)
    return dict(columns)


def prompt_text(row: Row, tokenizer: Any, chat_template: str) -> tuple[str, bool]:
    """The exact text the policy sees, and whether a chat template made it (chat messages always do)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if isinstance(row.prompt, list):
        if not has_template:
            raise DataError(f"source {row.source!r}: chat-style prompts need a tokenizer with a chat template")
        return tokenizer.apply_chat_template(row.prompt, tokenize=False, add_generation_prompt=True), True
    if has_template and chat_template == "auto":
        messages = [{"role": "user", "content": row.prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return row.prompt, False


def encode_prompt(tokenizer: Any, text: str, templated: bool) -> list[int]:
    """Prompt token ids as the model met such text in pre-training. A chat template writes its own
    special tokens (as transformers and vLLM tokenize chats); plain text gets the tokenizer's own
    rule, e.g. a Llama/Mistral BOS, unless the text already starts with it."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not templated and not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def load_prompts(cfg: Config, tokenizer: Any) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    """Train and test prompts per source, tokenized exactly as the policy will see them."""
    train_rows, test_rows = load_rows(cfg.data, cfg.run.seed)
    if not train_rows:
        raise DataError("no training rows: give data.sources or data.files")

    def encode(row: Row) -> Prompt:
        text, templated = prompt_text(row, tokenizer, cfg.data.chat_template)
        question = row.prompt if isinstance(row.prompt, str) else row.prompt[-1]["content"]
        columns = {"answer": row.answer, "source": row.source, "prompt": text, "prompts": row.prompt, "question": question,
                   **row.fields}
        return Prompt(row.source, encode_prompt(tokenizer, text, templated), columns)

    return ({s: [encode(r) for r in rows] for s, rows in train_rows.items()},
            {s: [encode(r) for r in rows] for s, rows in test_rows.items() if rows})
