import json

import pytest

from pipeline.config import DataConfig
from pipeline.data import DataError, load_rows
from pipeline.tasks import TASK_FAMILIES, generate_split


def test_synthetic_sources_are_deterministic_and_disjoint():
    for name in TASK_FAMILIES:
        train, test = generate_split(name, 50, 10, seed=3)
        assert (train, test) == generate_split(name, 50, 10, seed=3)
        assert not {p for p, _ in train} & {p for p, _ in test}
        assert len(test) == 10 and train


def test_synthetic_answers_are_correct():
    (prompt, answer), = generate_split("add_2d", 1, 0, seed=0)[0][:1]
    a, b = prompt.rstrip("=").split("+")
    assert int(a) + int(b) == int(answer)
    (prompt, answer), = generate_split("reverse_4", 1, 0, seed=0)[0][:1]
    assert prompt[4:-1][::-1] == answer


def test_unknown_builtin_source_is_named():
    with pytest.raises(DataError, match="add_9d"):
        load_rows(DataConfig(sources=["add_9d"]), seed=0)


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_rows_grouped_by_source_with_extra_columns(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": i, "source": "a" if i % 2 else "b", "level": i} for i in range(20)]
    train, test = load_rows(DataConfig(files=[_jsonl(tmp_path / "d.jsonl", rows)], test_per_source=2), seed=0)
    assert set(train) == {"a", "b"} and len(test["a"]) == 2 and len(train["a"]) == 8
    assert train["a"][0].answer == str(train["a"][0].fields["level"])


def test_malformed_jsonl_line_is_named(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "answer": "1", "source": "s"}, "{not json"])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_rows(DataConfig(files=[path]), seed=0)


def test_missing_column_is_named(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "answer": "1", "source": "s"}, {"prompt": "p", "source": "s"}])
    with pytest.raises(DataError, match=r"m.jsonl, line 2: missing column\(s\) \['answer'\]"):
        load_rows(DataConfig(files=[path]), seed=0)


def test_configurable_column_names(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"question": "p", "gold": "1", "task": "t"}] * 5)
    train, _ = load_rows(DataConfig(files=[path], prompt_key="question", answer_key="gold", source_key="task"), seed=0)
    assert train["t"][0].prompt == "p"


def test_empty_file_and_non_utf8_are_errors(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="contains no rows"):
        load_rows(DataConfig(files=[str(empty)]), seed=0)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"prompt": "ok", "answer": "1", "source": "s"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"b.jsonl, line 2: not valid UTF-8"):
        load_rows(DataConfig(files=[str(binary)]), seed=0)


def test_parquet_and_hf_dataset_directory(tmp_path):
    import datasets

    rows = {"prompt": [f"q{i}" for i in range(10)], "answer": [str(i) for i in range(10)], "source": ["s"] * 10}
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "hf"))
    for path in (tmp_path / "d.parquet", tmp_path / "hf"):
        train, test = load_rows(DataConfig(files=[str(path)], test_per_source=2), seed=0)
        assert len(train["s"]) == 8 and len(test["s"]) == 2


def test_bad_parquet_row_names_the_row(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["a", ""], "answer": ["1", "2"], "source": ["s", "s"]}).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"p.parquet, row 1: column 'prompt'"):
        load_rows(DataConfig(files=[str(tmp_path / "p.parquet")]), seed=0)
