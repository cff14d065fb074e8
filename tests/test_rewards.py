import time

from rewards.registry import resolve_reward
from rewards.scoring import Scorer
from rewards.verifiers import exact_match, numeric_match

import pytest


def test_exact_match_normalises_whitespace_and_case():
    assert exact_match([" 12 ", "ab", "a  b"], ["12", "AB", "a b"]) == [1.0, 1.0, 1.0]
    assert exact_match(["12", ""], ["13", "0"]) == [0.0, 0.0]


def test_numeric_match_takes_the_last_number():
    assert numeric_match(["the answer is 1,234.0", "x=3 so 4", "none"], ["1234", "4", "1"]) == [1.0, 1.0, 0.0]


def test_unknown_component_lists_the_registered_ones():
    with pytest.raises(ValueError, match="exact_match"):
        resolve_reward("exact")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_reward("tests.reward_plugins:nope")


def test_a_raising_reward_scores_only_its_samples_and_counts_them():
    scorer = Scorer([("exact_match", 1.0, {}), ("tests.reward_plugins:fails_on_odd_length", 0.5, {})], timeout_s=5, failure_score=-1.0)
    scores = scorer.score(["12", "123", "4"], {"answer": ["12", "123", "0"]})
    assert scores.components["tests.reward_plugins:fails_on_odd_length"] == [1.0, -1.0, -1.0]
    assert scores.total == [1.5, 0.5, -0.5]
    assert scores.errors == 2 and scores.timeouts == 0


def test_a_hanging_reward_is_timed_out_and_scored():
    scorer = Scorer([("tests.reward_plugins:hangs_on_x", 1.0, {})], timeout_s=0.3, failure_score=0.0)
    start = time.perf_counter()
    scores = scorer.score(["ab", "xy"], {})
    assert scores.total == [0.5, 0.0] and scores.timeouts == 1
    assert time.perf_counter() - start < 5
