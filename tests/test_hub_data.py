"""data.dataset: a Hub dataset loaded offline from a datasets cache built here (tests/hub_cache.py),
shaped like openai/gsm8k (columns question and answer, config main)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import DataConfig
from pipeline.data import DataError, load_rows
from tests.hub_cache import cache_dataset

QUESTIONS = ["How many apples?", "How many pears?", "How much money?", "How many legs?", "How far?", "How long?"]
ANSWERS = ["3 + 4 = <<3+4=7>>7\n#### 7", "#### 12", "1,000 + 234 = 1,234\n#### 1,234", "#### 8", "#### 0", "#### -3"]
@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """openai/gsm8k, config main (6 train rows, 3 test rows), in the suite's offline datasets cache."""
    rows = {split: {"question": [f"main: {q}" for q in QUESTIONS[:n]], "answer": ANSWERS[:n]}
            for split, n in (("train", 6), ("test", 3))}
    cache_dataset("openai/gsm8k", {"main": rows}, tmp_path_factory.mktemp("gsm8k"))


GSM8K = dict(dataset="openai/gsm8k", dataset_config="main", answer_format="gsm8k",
             prompt_template="{question}\nPut the final answer after ####.")


def test_hub_dataset_by_id_config_and_splits(offline):
    train, test = load_rows(DataConfig(**GSM8K), seed=0)
    assert list(train) == ["openai/gsm8k"] and len(train["openai/gsm8k"]) == 6 and len(test["openai/gsm8k"]) == 3
    row = train["openai/gsm8k"][2]
    assert row.prompt == "main: How much money?\nPut the final answer after ####."
    assert row.answer == "1234" and row.fields == {"question": "main: How much money?"}
    assert [r.answer for r in test["openai/gsm8k"]] == ["7", "12", "1234"]


def test_empty_test_split_holds_out_training_rows(offline):
    train, test = load_rows(DataConfig(**GSM8K, test_split="", test_per_source=5), seed=0)
    assert len(train["openai/gsm8k"]) == 5 and len(test["openai/gsm8k"]) == 1  # never more than a fifth


def test_source_column_when_present_else_dataset_id(offline):
    train, _ = load_rows(DataConfig(**GSM8K, source_key="question"), seed=0)
    assert len(train) == 6 and "main: How far?" in train


def test_missing_split_is_named(offline):
    with pytest.raises(DataError, match=r"'openai/gsm8k': no split 'validation'; it has \['test', 'train'\]"):
        load_rows(DataConfig(**{**GSM8K, "test_split": "validation"}), seed=0)


def test_reference_without_final_answer_names_the_row(offline):
    with pytest.raises(DataError, match=r"openai/gsm8k, train split, row 0: column 'answer' has no '\\boxed\{...\}'"):
        load_rows(DataConfig(**{**GSM8K, "answer_format": "boxed"}), seed=0)


@pytest.mark.parametrize("dataset, config", [("openai/not-cached", "main"), ("openai/gsm8k", "socratic")])
def test_uncached_offline_names_the_dataset_and_how_to_fetch_it(offline, dataset, config):
    with pytest.raises(DataError) as err:
        load_rows(DataConfig(dataset=dataset, dataset_config=config), seed=0)
    message = str(err.value)
    assert f"data.dataset {dataset!r} (config {config!r}): cannot load it" in message
    assert f"datasets.load_dataset({dataset!r}, {config!r})" in message and "datasets cache" in message


def test_files_and_dataset_together_are_refused():
    with pytest.raises(ValueError, match="data.dataset and data.files/test_files cannot be combined"):
        DataConfig(dataset="openai/gsm8k", files=["d.jsonl"])


def test_offline_env_vars_and_hf_home_are_honoured(offline):
    """A fresh process with HF_HOME and HF_HUB_OFFLINE=1 (as a user sets them) loads the cached id."""
    script = ("import json; from pipeline.config import DataConfig; from pipeline.data import load_rows\n"
              f"train, test = load_rows(DataConfig(**{GSM8K!r}), seed=0)\n"
              "print(json.dumps({s: len(r) for s, r in train.items()}))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # HF_HOME: the suite's (tests/conftest.py)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"openai/gsm8k": 6}
