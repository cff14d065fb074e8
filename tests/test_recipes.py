"""Every shipped config validates, and each recipe runs end to end for two steps, on this CPU, from
its own Hub ids: the model id is cached (tests/hub_cache.py) as a model with the recipe model's
architecture config and tokenizer shape (chat template, EOS / pad tokens, generation_config.json) at
tiny dimensions with random weights, the dataset id as rows shaped like the real dataset's. Only
what a CPU cannot do (GPUs, placement, sizes) is overridden, so a typo in a recipe or a drift in an
API it uses breaks here, not in a user's cluster job."""
import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from tests.hub_cache import cache_dataset, cache_model
from tests.real_models import Variant, build_tokenizer

CONFIGS = sorted(str(p) for p in Path("configs").glob("*.yaml"))

# The Hub models' config.json (architecture fields) and their tokenizers' shape.
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_CHAT = ("{% if messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
             "{% else %}<|im_start|>system\nSYSTEM<|im_end|>\n{% endif %}"
             "{% for m in messages %}{% if not (m['role'] == 'system' and loop.first) %}"
             "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MODELS = {
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        config=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                    sliding_window=32768, max_window_layers=21, use_sliding_window=False, tie_word_embeddings=True,
                    hidden_act="silu"),
        eos=["<|im_end|>", "<|endoftext|>"], system=QWEN_SYSTEM,
        generation=dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1)),
    "Qwen/Qwen2.5-Math-1.5B": dict(
        config=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
                    sliding_window=4096, max_window_layers=21, use_sliding_window=False, tie_word_embeddings=True,
                    hidden_act="silu"),
        eos=["<|endoftext|>"], system=MATH_SYSTEM, generation=dict(do_sample=False, max_new_tokens=2048)),
}
HEAD_DIM, LAYERS = 32, 2  # tiny: two layers, heads of 32 (the vLLM CPU kernels' size), the real GQA ratio


def tiny_model(repo_id: str, target: Path) -> Path:
    """A random-weight model with `repo_id`'s architecture and tokenizer shape, at tiny dimensions."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = MODELS[repo_id]
    tokenizer = build_tokenizer(Variant(SPECIALS, spec["eos"], "<|endoftext|>", chat=True))
    tokenizer.chat_template = QWEN_CHAT.replace("SYSTEM", spec["system"])
    real = spec["config"]
    heads = real["num_attention_heads"] // real["num_key_value_heads"]
    eos = [tokenizer.convert_tokens_to_ids(t) for t in spec["eos"]]
    config = Qwen2Config(**{**real, "hidden_size": heads * HEAD_DIM, "intermediate_size": 2 * heads * HEAD_DIM,
                            "num_hidden_layers": LAYERS, "max_window_layers": LAYERS, "num_attention_heads": heads,
                            "num_key_value_heads": 1, "vocab_size": len(tokenizer)},
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=eos[0],
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos if len(eos) > 1 else eos[0], bos_token_id=config.bos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, **spec["generation"])
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def gsm8k_rows(n: int) -> dict[str, list]:
    return {"question": [f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?" for i in range(n)],
            "answer": [f"He has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2:,}"
                       for i in range(n)]}


def math_rows(n: int) -> dict[str, list]:
    subjects = ["Algebra", "Geometry", "Number Theory"]
    return {"problem": [f"What is ${i}+\\frac{{1}}{{2}}$?" for i in range(n)],
            "level": [f"Level {1 + i % 5}" for i in range(n)],
            "solution": [f"Add: ${i}+\\frac{{1}}{{2}} = \\boxed{{\\frac{{{2 * i + 1}}}{{2}}}}$." for i in range(n)],
            "type": [subjects[i % len(subjects)] for i in range(n)]}


DATASETS = {"openai/gsm8k": ("main", gsm8k_rows), "DigitalLearningGmbH/MATH-lighteval": ("default", math_rows)}
RECIPES = ["configs/gsm8k_qwen0.5b_1gpu.yaml", "configs/math_qwen1.5b_cluster.yaml"]
# (random weights solve nothing, so DAPO's dynamic sampling would never find a mixed group)
ON_THIS_CPU = ["placement.mode=cpu", "rollout.gpus_per_worker=0", "trainer.gpus_per_learner=0", "model.dtype=float32",
               "rollout.sleep_while_training=false", "rollout.cpus_per_worker=1", "trainer.cpus_per_learner=0.5",
               "reward.num_workers=1", "reward.cpus_per_worker=0.25", "rollout.max_model_len=null",
               "trainer.steps=2", "trainer.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=8",
               "rollout.num_workers=1", "trainer.minibatch_size=8", "trainer.micro_batch_size=4", "algorithm.dynamic_sampling=false",
               "eval.before=false", "eval.prompts_per_source=2", "eval.n_samples=2", "eval.k=[1]",
               "tracking.wandb=disabled", "tracking.samples_every=0", "run.checkpoint_every=0"]


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_validates(path):
    load_config(path)


def test_every_recipe_is_exercised_here():
    recipes = {str(p) for p in Path("configs").glob("*.yaml") if "Recipe:" in p.read_text()}
    assert recipes == set(RECIPES)
    assert {load_config(r).model.path for r in RECIPES} == set(MODELS)
    assert {load_config(r).data.dataset for r in RECIPES} == set(DATASETS)


@pytest.fixture(scope="module")
def hub_ids(tmp_path_factory):
    """The recipes' model and dataset ids, cached offline (the suite's HF_HOME)."""
    for repo_id in MODELS:
        cache_model(repo_id, str(tiny_model(repo_id, tmp_path_factory.mktemp("model"))))
    for repo_id, (config, rows) in DATASETS.items():
        cache_dataset(repo_id, {config: {"train": rows(12), "test": rows(6)}}, tmp_path_factory.mktemp("data"))


def test_a_recipe_dry_run_shows_the_prompts_as_the_model_sees_them(hub_ids, capsys):
    from pipeline.cli import main

    assert main(["train", RECIPES[1], *ON_THIS_CPU, "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "model: Qwen/Qwen2.5-Math-1.5B -> " in shown and "models--Qwen--Qwen2.5-Math-1.5B/snapshots/" in shown
    assert "Algebra 4 train / 2 test" in shown  # curriculum sources from the type column
    system = "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
    assert shown.count(system + "<|im_start|>user\nWhat is $") == 3  # the recipe's system prompt, as Qwen-Math's own
    assert "$?<|im_end|>\n<|im_start|>assistant\n" in shown
    assert "learner ×2: 0.5 CPU each" in shown and "dry run: nothing was trained" in shown


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_trains_two_steps(ray_session, hub_ids, recipe, tmp_path):
    pytest.importorskip("vllm")
    from pipeline.train import train

    cfg = load_config(recipe, [*ON_THIS_CPU, f"run.dir={tmp_path / 'run'}"])
    assert cfg.rollout.backend == "vllm" and cfg.model.path in MODELS
    report = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert report["after"]  # held-out evaluation ran on the test split
