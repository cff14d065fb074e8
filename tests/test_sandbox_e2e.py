"""A run whose reward includes code_tests trains end to end, its completions scored in the OS sandbox."""
import json

import pytest

from pipeline.config import load_config
from pipeline.tasks import generate_split
from rewards.sandbox_isolation import probe

pytestmark = [pytest.mark.slow, pytest.mark.skipif(probe()[0] is None, reason="the OS sandbox cannot start here")]


def test_code_tests_reward_trains_through_ray(ray_session, tiny_model_path, tmp_path):
    from pipeline.train import train

    data = tmp_path / "code.jsonl"
    with data.open("w") as f:
        for source in ("add_2d", "reverse_4"):
            for prompt, answer in generate_split(source, 60, 0, seed=0)[0]:
                # the completion runs as a program: digits are valid Python, letters a NameError
                tests = {"inputs": [""], "outputs": [""]} if source == "add_2d" else [f"assert {answer!r} == {answer!r}"]
                f.write(json.dumps({"prompt": prompt, "answer": answer, "source": source, "tests": tests}) + "\n")
    cfg = load_config("configs/debug_cpu.yaml", [
        f"data.files=[{data}]", "trainer.steps=3", "trainer.prompts_per_step=4", "rollout.n=4", "eval.before=false",
        "eval.after=false", "reward.components=[{name: exact_match}, {name: code_tests, weight: 0.5}]",
        f"run.dir={tmp_path / 'run'}", "run.checkpoint_every=0"])
    assert cfg.reward.components[1].args["sandbox"] == "strict"
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    code = [v for r in rows for k, v in r.items() if k.startswith("reward_component/code_tests")]
    assert code and all(0.0 <= v <= 1.0 for v in code)
    assert all(r.get("scoring/errors", 0) == 0 and r.get("scoring/timeouts", 0) == 0 for r in rows)
