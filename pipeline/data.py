"""Training and test rows: built-in synthetic sources, user files (JSONL, Parquet, HF dataset dir)
or a Hugging Face dataset (`data.dataset`, a Hub id, loaded through datasets.load_dataset).

A malformed row, a missing column or an empty source stops the run with the file, the row and
the problem, before any actor starts.
"""
from __future__ import annotations

import json
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, DataConfig
from pipeline.errors import RlpostError
from pipeline.records import Prompt
from pipeline.tasks import generate_split
from rewards.answers import ANSWER_FORMATS, extract_answer


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
    if cfg.dataset:
        train_rows, test_rows = read_dataset(cfg)
        train, test = _group(train_rows), None if test_rows is None else _group(test_rows)
    elif cfg.files:
        train = _group(row for f in cfg.files for row in read_file(Path(f), cfg))
        test = _group(row for f in cfg.test_files for row in read_file(Path(f), cfg)) if cfg.test_files else None
    else:
        return _synthetic(cfg, seed)
    return (train, test) if test is not None else _split_off_test(train, cfg.test_per_source)


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
    return _rows(records, cfg, str(path), where)


def read_dataset(cfg: DataConfig) -> tuple[list[Row], list[Row] | None]:
    """Rows of data.train_split and (unless data.test_split is empty) data.test_split of data.dataset.
    Rows without a source column get the dataset id as their source."""
    splits = _load_dataset(cfg)
    for split in filter(None, (cfg.train_split, cfg.test_split)):
        if split not in splits:
            hint = " (or set data.test_split='' to hold out rows of the training split)" if split == cfg.test_split else ""
            raise DataError(f"data.dataset {cfg.dataset!r}: no split {split!r}; it has {sorted(splits)}{hint}")

    def rows(split: str) -> list[Row]:
        return _rows(enumerate(splits[split]), cfg, f"{cfg.dataset}, {split} split", "row", default_source=cfg.dataset)

    return rows(cfg.train_split), rows(cfg.test_split) if cfg.test_split else None


def _load_dataset(cfg: DataConfig):
    """All splits of data.dataset; datasets.load_dataset reads HF_HOME and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE."""
    import datasets

    try:
        return datasets.load_dataset(cfg.dataset, cfg.dataset_config)
    except Exception as err:  # datasets raises many types: unreachable Hub, unknown id or config, not cached
        name = repr(cfg.dataset) + (f" (config {cfg.dataset_config!r})" if cfg.dataset_config else "")
        hint = ""
        if datasets.config.HF_HUB_OFFLINE or isinstance(err, ConnectionError):
            args = ", ".join(repr(a) for a in (cfg.dataset, cfg.dataset_config) if a)
            hint = (f"; without the Hub it must be in the datasets cache ({datasets.config.HF_DATASETS_CACHE}): fetch it once "
                    f"with network access (HF_HUB_OFFLINE unset) and the same HF_HOME, e.g. python -c \"import datasets; "
                    f"datasets.load_dataset({args})\"")
        raise DataError(f"data.dataset {name}: cannot load it ({type(err).__name__}: {err}){hint}") from None


def _rows(records, cfg: DataConfig, name: str, where: str, default_source: str | None = None) -> list[Row]:
    rows = [_to_row(rec, cfg, f"{name}, {where} {n}", default_source) for n, rec in records]
    if not rows:
        raise DataError(f"{name}: contains no rows")
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


def _to_row(record: Any, cfg: DataConfig, where: str, default_source: str | None = None) -> Row:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with columns, got {type(record).__name__}")
    required = [k for k, needed in ((cfg.prompt_key, not cfg.prompt_template), (cfg.answer_key, True),
                                    (cfg.source_key, default_source is None)) if needed]
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; present: {sorted(record)}")
    prompt = _render(cfg.prompt_template, record, where) if cfg.prompt_template else record[cfg.prompt_key]
    answer, source = record[cfg.answer_key], record.get(cfg.source_key, default_source)
    if not _is_prompt(prompt):
        origin = "data.prompt_template" if cfg.prompt_template else f"column {cfg.prompt_key!r}"
        raise DataError(f"{where}: {origin} must give a non-empty string or a list of chat messages")
    if answer is None or isinstance(answer, (dict, list)):
        raise DataError(f"{where}: column {cfg.answer_key!r} must be a string or number, got {answer!r}")
    if not isinstance(source, str) or not source:
        raise DataError(f"{where}: column {cfg.source_key!r} must be a non-empty string, got {source!r}")
    label = extract_answer(str(answer), cfg.answer_format)
    if label is None:
        raise DataError(f"{where}: column {cfg.answer_key!r} has no {ANSWER_FORMATS[cfg.answer_format]} final answer "
                        f"(data.answer_format={cfg.answer_format}): ...{str(answer)[-80:]!r}")
    extra = {k: v for k, v in record.items() if k not in (cfg.prompt_key, cfg.answer_key, cfg.source_key)}
    return Row(source, prompt, label, extra)


def _render(template: str, record: dict[str, Any], where: str) -> str:
    """data.prompt_template filled from the row's columns; a null one is a missing value, not the text 'None'.
    Its fields are plain column names (config checks it)."""
    for name in (name for _, name, _, _ in string.Formatter().parse(template) if name is not None):
        if name not in record:
            raise DataError(f"{where}: data.prompt_template needs column {name!r}; present: {sorted(record)}")
        if record[name] is None:
            raise DataError(f"{where}: column {name!r} has no value (null), and data.prompt_template needs it")
    try:
        return template.format_map(record)
    except (KeyError, TypeError, ValueError) as err:  # a format spec that misfits ({n:d} on text) or names no column
        raise DataError(f"{where}: data.prompt_template cannot be filled from this row ({err})") from None


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


def prompt_text(row: Row, tokenizer: Any, chat_template: str, system_prompt: str | None = None) -> tuple[str, bool]:
    """The exact text the policy sees, and whether a chat template made it (chat messages always do).

    A system prompt goes before the user message as a system message; without a chat template
    it is prepended to the plain text, then a blank line, as base models read an instruction.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if isinstance(row.prompt, list):
        if not has_template:
            raise DataError(f"source {row.source!r}: chat-style prompts need a tokenizer with a chat template")
        if system and row.prompt[0]["role"] == "system":
            raise DataError(f"source {row.source!r}: a row's messages already start with a system message, so "
                            "data.system_prompt would add a second one; drop one of them")
        return _apply_chat_template(tokenizer, system + row.prompt, row.source), True
    if has_template and chat_template == "auto":
        return _apply_chat_template(tokenizer, [*system, {"role": "user", "content": row.prompt}], row.source), True
    return (f"{system_prompt}\n\n{row.prompt}" if system_prompt else row.prompt), False


def _apply_chat_template(tokenizer: Any, messages: list[dict[str, str]], source: str) -> str:
    """The rendered chat; a template's refusal (e.g. Gemma's and older Mistral's of a system message) is a DataError."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as err:
        raise DataError(f"source {source!r}: the chat template cannot render these messages ({err}); if it refuses the "
                        "system role, drop data.system_prompt or set data.chat_template=never") from None


def encode_prompt(tokenizer: Any, text: str, templated: bool) -> list[int]:
    """Prompt token ids as the model met such text in pre-training. A chat template writes its own
    special tokens (as transformers and vLLM tokenize chats); plain text gets the tokenizer's own
    rule, e.g. a Llama/Mistral BOS, unless the text already starts with it."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not templated and not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def load_prompts(cfg: Config, tokenizer: Any, context: tuple[int, str] | None = None) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    """Train and test prompts per source, tokenized exactly as the policy will see them. Prompts longer than
    data.max_prompt_tokens are left out and counted; without that limit, those that leave the rollout engine
    no room to generate within its `context` (tokens, what sets it: actors.rollout.engine_context), instead of
    the run stopping when one is drawn."""
    train_rows, test_rows = load_rows(cfg.data, cfg.run.seed)
    if not train_rows:
        raise DataError("no training rows: give data.sources, data.files or data.dataset")

    def encode(row: Row) -> Prompt:
        text, templated = prompt_text(row, tokenizer, cfg.data.chat_template, cfg.data.system_prompt)
        question = row.prompt if isinstance(row.prompt, str) else row.prompt[-1]["content"]
        columns = {**row.fields, "answer": row.answer, "source": row.source, "prompt": text, "prompts": row.prompt,
                   "question": question}  # the computed ones win over same-named dataset columns
        return Prompt(row.source, encode_prompt(tokenizer, text, templated), columns)

    train = {s: [encode(r) for r in rows] for s, rows in train_rows.items()}
    test = {s: [encode(r) for r in rows] for s, rows in test_rows.items() if rows}
    limit, why = _prompt_limit(cfg, context)
    if limit is None:
        return train, test
    kept = [_within(prompts, limit, split, why) for prompts, split in ((train, "train"), (test, "test"))]
    empty = [s for s, prompts in kept[0].items() if not prompts]
    if empty:
        raise DataError(f"every training prompt of source(s) {', '.join(empty)} is longer than {why}")
    emptied = [s for s, prompts in kept[1].items() if not prompts]
    if test and len(emptied) == len(test):
        raise DataError(f"every test prompt is longer than {why}")
    if emptied:
        print(f"data: test source(s) {', '.join(emptied)} left with no prompt: not evaluated")
    return kept[0], {s: prompts for s, prompts in kept[1].items() if prompts}


def _prompt_limit(cfg: Config, context: tuple[int, str] | None) -> tuple[int | None, str]:
    """The longest prompt a run keeps, and why: data.max_prompt_tokens, else the rollout engine's context
    (tokens, what sets it) less one token to generate."""
    if cfg.data.max_prompt_tokens is not None:
        return cfg.data.max_prompt_tokens, f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
    if context is None:
        return None, ""
    tokens, source = context
    return tokens - 1, f"{tokens - 1} tokens ({source}, {tokens}, less one token to generate; set data.max_prompt_tokens to choose the limit)"


def _within(prompts: dict[str, list[Prompt]], limit: int, split: str, why: str) -> dict[str, list[Prompt]]:
    """The prompts of at most `limit` tokens; says how many of each source were left out."""
    kept = {s: [p for p in ps if len(p.ids) <= limit] for s, ps in prompts.items()}
    dropped = {s: len(prompts[s]) - len(kept[s]) for s in prompts if len(kept[s]) < len(prompts[s])}
    if dropped:
        total = sum(map(len, prompts.values()))
        print(f"data: left out {sum(dropped.values())} of {total} {split} prompts longer than {why} "
              f"({', '.join(f'{s}: {n}' for s, n in dropped.items())})")
    return kept
