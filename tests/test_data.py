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


def test_prompt_template_and_answer_format(tmp_path):
    rows = [{"question": f"q{i}", "unit": "km", "answer": f"work\n#### {i},234", "source": "s"} for i in range(5)]
    cfg = DataConfig(files=[_jsonl(tmp_path / "t.jsonl", rows)], prompt_template="{question} (in {unit})\nEnd with ####.",
                     answer_format="gsm8k")
    train, _ = load_rows(cfg, seed=0)
    row = train["s"][0]
    assert (row.prompt, row.answer) == ("q1 (in km)\nEnd with ####.", "1234")  # row 0 is held out as test
    assert row.fields == {"question": "q1", "unit": "km"}


def test_missing_template_column_names_row_and_column(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"question": "q", "hint": "h", "answer": "1", "source": "s"},
                                         {"question": "q", "answer": "1", "source": "s"}])
    with pytest.raises(DataError, match=r"t.jsonl, line 2: data.prompt_template needs column 'hint'"):
        load_rows(DataConfig(files=[path], prompt_template="{question} {hint}"), seed=0)


def test_null_template_column_names_row_and_column(tmp_path):
    path = _jsonl(tmp_path / "n.jsonl", [{"question": "q", "hint": "h", "answer": "1", "source": "s"},
                                         {"question": "q", "hint": None, "answer": "1", "source": "s"}])
    with pytest.raises(DataError, match=r"n.jsonl, line 2: column 'hint' has no value \(null\)"):
        load_rows(DataConfig(files=[path], prompt_template="{question} {hint}"), seed=0)


def test_computed_columns_win_over_same_named_dataset_columns(tmp_path):
    """Reward functions get the extracted label and the real source, whatever extra columns a dataset has."""
    from pipeline.config import Config
    from pipeline.data import load_prompts

    rows = [{"problem": f"p{i}", "solution": f"so $\\boxed{{{i}}}$", "type": "Algebra", "answer": "stale",
             "source": "other", "prompt": "x", "question": "y", "level": 3} for i in range(5)]
    cfg = Config(data=DataConfig(files=[_jsonl(tmp_path / "m.jsonl", rows)], prompt_key="problem", answer_key="solution",
                                 source_key="type", answer_format="boxed", chat_template="never"))
    train, _ = load_prompts(cfg, _PlainTokenizer())
    columns = train["Algebra"][0].columns
    assert (columns["answer"], columns["source"], columns["prompt"], columns["question"], columns["level"]) == (
        "1", "Algebra", "p1", "p1", 3)


class _PlainTokenizer:
    """No chat template; one id per character."""
    chat_template = bos_token = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_chat_template_refusing_the_system_role_is_a_data_error():
    from pipeline.data import Row, prompt_text
    from tests.real_models import VARIANTS, build_tokenizer

    gemma_like = build_tokenizer(VARIANTS["qwen"])
    gemma_like.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                                "supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(DataError, match=r"source 's': the chat template cannot render .*System role not supported.*"
                                        r"drop data.system_prompt or set data.chat_template=never"):
        prompt_text(Row("s", "2+2?", "4"), gemma_like, "auto", "Think step by step.")


def test_reference_without_final_answer_names_the_line(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "#### 3", "source": "s"},
                                         {"prompt": "p", "answer": "three", "source": "s"}])
    with pytest.raises(DataError, match=r"a.jsonl, line 2: column 'answer' has no '#### <number>' final answer"):
        load_rows(DataConfig(files=[path], answer_format="gsm8k"), seed=0)


@pytest.mark.parametrize("template", ["{} apples", "{0}", "{question", "{q.__class__}", "{a[0]}"])
def test_template_fields_must_name_columns(template):
    with pytest.raises(ValueError, match="prompt_template"):
        DataConfig(prompt_template=template)


def test_answer_formats_agree_with_the_extraction_rules():
    from typing import get_args

    from rewards.answers import ANSWER_FORMATS

    assert get_args(DataConfig.model_fields["answer_format"].annotation) == tuple(ANSWER_FORMATS)


def test_system_prompt_goes_before_the_chat_template_or_the_plain_text():
    from pipeline.data import Row, prompt_text
    from tests.real_models import VARIANTS, build_tokenizer

    row = Row("s", "What is 2+2?\nPut the final answer after ####.", "4")
    chat = build_tokenizer(VARIANTS["qwen"])
    assert prompt_text(row, chat, "auto", "Think step by step.") == (
        "<|im_start|>system\nThink step by step.<|im_end|>\n<|im_start|>user\nWhat is 2+2?\nPut the final answer after "
        "####.<|im_end|>\n<|im_start|>assistant\n", True)
    assert prompt_text(row, chat, "never", "Think step by step.") == (
        "Think step by step.\n\nWhat is 2+2?\nPut the final answer after ####.", False)
    messages = Row("s", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4")
    with pytest.raises(DataError, match="already start with a system message"):
        prompt_text(messages, chat, "auto", "Think step by step.")


def test_prompts_over_the_token_limit_are_left_out_and_counted(tmp_path, capsys):
    from pipeline.config import Config
    from pipeline.data import load_prompts

    rows = [{"prompt": "q" * n, "answer": "1", "source": src} for n, src in [(3, "a"), (9, "a"), (12, "a"), (4, "b"), (5, "b")]]
    tests = [{"prompt": "q" * n, "answer": "1", "source": "a"} for n in (2, 20)]
    data = dict(files=[_jsonl(tmp_path / "t.jsonl", rows)], test_files=[_jsonl(tmp_path / "e.jsonl", tests)], chat_template="never")
    train, test = load_prompts(Config(data=DataConfig(**data, max_prompt_tokens=9)), _PlainTokenizer())
    assert {s: [len(p.ids) for p in ps] for s, ps in train.items()} == {"a": [3, 9], "b": [4, 5]}
    assert [len(p.ids) for p in test["a"]] == [2]
    out = capsys.readouterr().out
    assert "left out 1 of 5 train prompts longer than data.max_prompt_tokens=9 (a: 1)" in out
    assert "left out 1 of 2 test prompts" in out
    with pytest.raises(DataError, match=r"source\(s\) a, b is longer than data.max_prompt_tokens=2"):
        load_prompts(Config(data=DataConfig(**data, max_prompt_tokens=2)), _PlainTokenizer())


def test_without_a_limit_prompts_that_fill_the_engine_s_context_are_left_out_and_counted(tmp_path, capsys):
    from transformers import Qwen2Config

    from actors.rollout import engine_context
    from pipeline.config import Config, RolloutConfig
    from pipeline.data import load_prompts

    model = str(tmp_path / "model")
    Qwen2Config(max_position_embeddings=10).save_pretrained(model)  # only the config is read
    rows = [{"prompt": "q" * n, "answer": "1", "source": src} for n, src in [(3, "a"), (9, "a"), (10, "a"), (12, "a"), (4, "b")]]
    tests = [{"prompt": "q" * n, "answer": "1", "source": src} for n, src in [(2, "a"), (11, "b")]]
    data = dict(files=[_jsonl(tmp_path / "t.jsonl", rows)], chat_template="never", test_files=[_jsonl(tmp_path / "e.jsonl", tests)])

    def lengths(rollout: dict, **limit):
        cfg = Config(data=DataConfig(**data, **limit), rollout=RolloutConfig(**rollout))
        train, test = load_prompts(cfg, _PlainTokenizer(), engine_context(cfg.rollout, model))
        return {s: [len(p.ids) for p in ps] for s, ps in train.items()}, {s: [len(p.ids) for p in ps] for s, ps in test.items()}

    # hf generates within the model config's context (rollout.max_model_len is vLLM's and hf ignores it)
    assert lengths({"backend": "hf", "max_model_len": 50}) == ({"a": [3, 9], "b": [4]}, {"a": [2]})
    out = capsys.readouterr().out
    assert "left out 2 of 5 train prompts longer than 9 tokens (the model's context, 10, less one token" in out
    assert "test source(s) b left with no prompt: not evaluated" in out
    # vLLM: its max_model_len when set; unset, vLLM derives its own (rope scaling included) and checks it itself
    assert lengths({"backend": "vllm", "max_model_len": 5})[0] == {"a": [3], "b": [4]}
    assert "(rollout.max_model_len, 5, less one token" in capsys.readouterr().out
    assert lengths({"backend": "vllm"})[0] == {"a": [3, 9, 10, 12], "b": [4]}
    assert lengths({"backend": "hf"}, max_prompt_tokens=4)[0] == {"a": [3], "b": [4]}  # the configured limit wins
    assert engine_context(RolloutConfig(backend="hf"), str(tmp_path / "no-model")) is None  # loading it will say why
    with pytest.raises(DataError, match="every test prompt is longer than 4 tokens"):
        load_prompts(Config(data=DataConfig(**{**data, "test_files": [_jsonl(tmp_path / "f.jsonl", tests[1:])]})),
                     _PlainTokenizer(), (5, "rollout.max_model_len"))
