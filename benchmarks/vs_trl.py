"""The peer benchmark (issue #15): rlpost against TRL's GRPOTrainer on the same model, data and batch.

    python benchmarks/vs_trl.py --quick                      # a few minutes: 1 seed, a few steps, every arm
    python benchmarks/vs_trl.py                              # full: 3 seeds, enough steps for the accuracy check
    python benchmarks/vs_trl.py --regimes short --arms trl,hf_sync --seeds 1 --steps-short 10
    python benchmarks/vs_trl.py --profile 10                 # rlpost's hf sync step: driver vs in-actor time per call

Needs the `bench` extra (`pip install -e .[bench]`: TRL pinned); installs nothing itself. Run Ray-using
benchmarks inside a network namespace on machines without one (`unshare -n sh -c 'ip link set lo up && ...'`).

Both sides get the same things:
  * model: a character-level Qwen2 built and SFT-warmed here (cached), ~1.06M parameters for the short-answer
    regime (built-in tasks sort_4 / reverse_8 / count_8 / add_2d, up to 9 new tokens) and ~6.3M for the
    long-answer regime (a task defined here, `lng`: 74-character answers, up to 75 new tokens);
  * data: the same train/test JSONL rows; 8 prompts x 8 completions per step, one optimizer step on all 64;
  * micro-batches (gradient accumulation inside that one step): `trl` and `trl_2t` run the 64 in one forward
    and backward, `trl_2t_mb32` in two halves; rlpost by its CPU config's token budget (4,096 tokens: one pass
    with short answers, two with long ones), `hf_sync_whole` in one pass;
  * LoRA r=8, alpha=16, no dropout, on all seven linear projections; AdamW, the same constant learning rate,
    no weight decay, gradient clip 1.0; sampling at temperature 1.0, no top-p / top-k;
  * loss: TRL's default `loss_type="dapo"` (token-mean over the whole batch) = rlpost's grpo `token-mean` with one
    mini-batch; clip 0.2, no KL (TRL's default beta=0); group-normalised advantages (TRL divides by std + 1e-4,
    rlpost by std + 1e-6, both unbiased std);
  * threads: TRL in one process, no vLLM, bf16 off, gradient checkpointing off (its GRPO default is on, which
    costs a recomputed forward per step), at 1 torch thread (arm `trl`) and 2 (`trl_2t`, `trl_2t_mb32`); ratios
    are against the fastest TRL arm run. rlpost with one CPU per actor (one rollout worker, one learner, a reward
    worker with a quarter CPU); in the sync arms the side at work uses both CPUs (placement.cpu_threads=turns,
    the default), `hf_sync_own` keeps one thread per actor, and the `_2w` arms run two rollout workers on half a
    CPU each (in `hf_async_2w` three busy threads share the two cores while the learner trains).

Measured per run (a subprocess each): median step time after --skip warm-up steps, generation share (TRL: time
in its `_generate_single_turn`; rlpost: `time/generate`), rlpost's phase split (generate / score / train / sync /
other), start-up, and held-out greedy accuracy of the trained policy (the same evaluator for both): exact match, and
the mean training reward of the greedy answers (in the long regime exact match of 74 characters stays near 0 at this
scale, so the partial-credit reward is where learning shows). "Not worse" = rlpost's mean over seeds is at least
TRL's mean less the larger of its spread over seeds and one standard error over the test set, on both.
rlpost arms: hf_sync (the default shape), vllm_sync, vllm_async, hf_async, hf_sync_whole, hf_sync_own, hf_sync_2w,
hf_async_2w. Prints a ratio table (rlpost s/step over the fastest TRL arm's) and writes benchmarks/results/vs_trl.json (vs_trl_quick.json with
--quick) and a PNG beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NO_EVAL, QUIET, ROOT, parser, print_table, read_jsonl, write_result  # noqa: E402

LETTERS = "abcdefgh"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARMS = {  # rlpost arm -> config overrides
    "hf_sync": ["rollout.backend=hf", "rollout.async=false"],
    "vllm_sync": ["rollout.backend=vllm", "rollout.async=false"],
    "vllm_async": ["rollout.backend=vllm", "rollout.async=true"],
    "hf_async": ["rollout.backend=hf", "rollout.async=true"],
    # the whole batch in one forward/backward, as TRL's `trl_2t` does, instead of the default token budget
    "hf_sync_whole": ["rollout.backend=hf", "rollout.async=false", "trainer.max_tokens_per_micro_batch=null"],
    "hf_sync_own": ["rollout.backend=hf", "rollout.async=false", "placement.cpu_threads=own"],  # one thread per actor
    # two rollout workers on half a CPU each: while the learner waits, each generates half the batch on one core
    "hf_sync_2w": ["rollout.backend=hf", "rollout.async=false", "rollout.num_workers=2", "rollout.cpus_per_worker=0.5"],
    "hf_async_2w": ["rollout.backend=hf", "rollout.async=true", "rollout.num_workers=2", "rollout.cpus_per_worker=0.5"],
}
# TRL arm -> (torch threads, samples per forward/backward); the fastest arm is the baseline. The half-batch arm
# accumulates gradients over two halves of the 64 it generates at once (steps_per_generation=2): one optimizer step
TRL_ARMS = {"trl": (1, 64), "trl_2t": (2, 64), "trl_2t_mb32": (2, 32)}
PHASES = ("generate", "score", "train", "sync")
MODEL_VERSION = 1


# --- tasks -------------------------------------------------------------------------------------

def _long_example(rng: random.Random) -> tuple[str, str]:
    """`lng <24 letters>=` -> the word, reversed, and again as given, space-separated: 74 characters."""
    word = "".join(rng.choice(LETTERS) for _ in range(24))
    return f"lng {word}=", " ".join([word, word[::-1], word])


REGIMES: dict[str, dict[str, Any]] = {
    # model shape (Qwen2, character tokenizer), SFT warm-up, task sources, answer budget, learning rate
    "short": dict(hidden_size=128, num_layers=4, num_heads=4, sft_steps=250, sft_lr=3e-3, sft_batch=64,
                  sources=["sort_4", "reverse_8", "count_8", "add_2d"], max_new_tokens=9, lr=1e-3,
                  steps=60, quick_steps=8, skip=3, quick_skip=2),
    "long": dict(hidden_size=256, num_layers=6, num_heads=8, sft_steps=150, sft_lr=2e-3, sft_batch=32,
                 sources=["lng"], max_new_tokens=75, lr=1e-3,
                 steps=30, quick_steps=4, skip=2, quick_skip=1),
}


def make_split(source: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list, list]:
    if source == "lng":
        rng, seen = random.Random(f"lng:{seed}"), {}
        while len(seen) < n_train + n_test:
            prompt, answer = _long_example(rng)
            seen.setdefault(prompt, answer)
        rows = list(seen.items())
        return rows[n_test:], rows[:n_test]
    from pipeline.tasks import generate_split

    return generate_split(source, n_train, n_test, seed)


def write_data(regime: str, directory: Path, n_train: int = 400, n_test: int = 40) -> tuple[Path, Path]:
    train, test = [], []
    for source in REGIMES[regime]["sources"]:
        tr, te = make_split(source, n_train, n_test)
        train += [{"prompt": p, "answer": a, "source": source} for p, a in tr]
        test += [{"prompt": p, "answer": a, "source": source} for p, a in te]
    paths = directory / f"{regime}_train.jsonl", directory / f"{regime}_test.jsonl"
    for path, rows in zip(paths, (train, test)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """The training reward both sides use: 1 for an exact answer; else, for long answers, a partial credit of
    half the share of answer characters right in place (a 74-character exact match alone is too sparse to learn
    from in a few steps). Short answers (<= 8 characters) get exact match only."""
    out = []
    for completion, reference in zip(completions, answer, strict=True):
        got, want = " ".join(completion.split()), " ".join(str(reference).split())
        if got == want:
            out.append(1.0)
        elif len(want) > 16:
            out.append(0.5 * sum(a == b for a, b in zip(got, want)) / len(want))
        else:
            out.append(0.0)
    return out


# --- the model ---------------------------------------------------------------------------------

def ensure_model(regime: str, log=print) -> Path:
    """The regime's policy: a fresh character-level Qwen2 with a short supervised warm-up on its train split,
    cached under ~/.cache/rlpost by a hash of its recipe."""
    spec = REGIMES[regime]
    recipe = {k: spec[k] for k in ("hidden_size", "num_layers", "num_heads", "sft_steps", "sft_lr", "sft_batch", "sources")}
    recipe["version"] = MODEL_VERSION
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    target = Path("~/.cache/rlpost").expanduser() / f"vs-trl-{regime}-{digest}"
    if (target / "config.json").exists():
        return target
    import torch

    from pipeline.config import TinyModelConfig
    from pipeline.tiny_model import SFT_SEED, _fresh_model, _sft_batch, build_tokenizer

    start = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = build_tokenizer()
    model = _fresh_model(TinyModelConfig(hidden_size=spec["hidden_size"], num_layers=spec["num_layers"],
                                         num_heads=spec["num_heads"]), tokenizer)
    examples = [ex for s in spec["sources"] for ex in make_split(s, 400, 40)[0]]
    rng = random.Random(SFT_SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["sft_lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    for step in range(spec["sft_steps"]):
        input_ids, labels = _sft_batch(rng.sample(examples, spec["sft_batch"]), tokenizer)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0:
            log(f"  SFT step {step}/{spec['sft_steps']}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)")
    model.eval()
    staging = Path(tempfile.mkdtemp(prefix=".vs-trl-", dir=target.parent if target.parent.exists() else None))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "recipe.json").write_text(json.dumps(recipe, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    log(f"built the {regime} model ({sum(p.numel() for p in model.parameters()):,} parameters, final SFT loss "
        f"{loss.item():.3f}) in {time.perf_counter() - start:.0f}s: {target}")
    return target


def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int = 80) -> dict[str, float]:
    """Held-out greedy exact-match accuracy and mean training reward (the same evaluator for both sides)."""
    import torch

    model.eval()
    pad, scores = tokenizer.pad_token_id, []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        encoded = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in chunk]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=(torch.arange(width) >= torch.tensor(
                [width - len(e) for e in encoded]).unsqueeze(1)).long(), do_sample=False, max_new_tokens=max_new_tokens,
                pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        scores += reward(texts, [r["answer"] for r in chunk])
    return {"accuracy": sum(v == 1.0 for v in scores) / len(rows), "greedy_reward": sum(scores) / len(rows)}


# --- one run (a subprocess) --------------------------------------------------------------------

def run_trl(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    threads, micro = TRL_ARMS[job["arm"]]
    torch.set_num_threads(threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = REGIMES[job["regime"]]
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    train_rows = read_jsonl(job["train"])
    args = GRPOConfig(
        output_dir=job["out_dir"], per_device_train_batch_size=micro, num_generations=8, steps_per_generation=64 // micro,
        gradient_accumulation_steps=64 // micro, num_iterations=1, max_completion_length=spec["max_new_tokens"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=job["steps"], temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", bf16=False, fp16=False, use_cpu=True, use_vllm=False, logging_steps=1, report_to=[],
        save_strategy="no", seed=job["seed"], data_seed=job["seed"], dataloader_num_workers=0, disable_dropout=True,
        remove_unused_columns=False,
        gradient_checkpointing=False)  # TRL's GRPO default is True (memory over speed): off, its faster setting here
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LINEAR, task_type="CAUSAL_LM")

    def reward_fn(completions, answer, **kwargs):
        return reward(completions, answer)

    trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(train_rows), peft_config=lora)
    phase = {"generate": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phase[name] += time.perf_counter() - start
        return wrapper

    trainer._generate_single_turn = timed("generate", trainer._generate_single_turn)
    trainer._calculate_rewards = timed("score", trainer._calculate_rewards)
    steps: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()
            phase.update(generate=0.0, score=0.0)

        def on_step_end(self, *a, **k):
            step = time.perf_counter() - self.start
            steps.append({"step": step, "generate": phase["generate"], "score": phase["score"],
                          "train": step - phase["generate"] - phase["score"]})

    trainer.add_callback(StepClock())
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    held_out = greedy_accuracy(trainer.model, tokenizer, read_jsonl(job["test"]), spec["max_new_tokens"])
    return {"steps": steps, "total_s": total, "reward_curve": rewards, **held_out}


def run_rlpost(job: dict[str, Any]) -> dict[str, Any]:
    from pipeline.train import train

    spec = REGIMES[job["regime"]]
    run_dir = Path(job["out_dir"]) / "run"
    start = time.perf_counter()
    train(rlpost_config(job, run_dir))
    total = time.perf_counter() - start
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [{"step": r["time/step"], **{p: r.get(f"time/{p}", 0.0) for p in PHASES},
              "wait_for_rollouts": r.get("time/wait_for_rollouts", 0.0)} for r in rows]
    held_out = _adapter_accuracy(job["model"], run_dir / "final_adapter", read_jsonl(job["test"]), spec["max_new_tokens"])
    return {"steps": steps, "total_s": total, "reward_curve": [r["reward/mean"] for r in rows], **held_out}


def rlpost_config(job: dict[str, Any], run_dir: Path):
    """rlpost's config for a job: configs/debug_cpu.yaml made equal to the TRL side (see the module docstring)."""
    from pipeline.config import load_config

    spec = REGIMES[job["regime"]]
    overrides = [*QUIET, *NO_EVAL, f"run.dir={run_dir}", f"run.seed={job['seed']}",
                 f"model.path={job['model']}", f"data.files=[{job['train']}]", f"data.test_files=[{job['test']}]",
                 "data.chat_template=never", "rollout.n=8", "rollout.temperature=1.0", "rollout.top_p=1.0",
                 "rollout.top_k=0", f"rollout.max_new_tokens={spec['max_new_tokens']}", "rollout.num_workers=1",
                 "rollout.cpus_per_worker=1", "lora.rank=8", "lora.alpha=16", "lora.dropout=0.0",
                 f"lora.target_modules=[{','.join(LINEAR)}]", f"trainer.steps={job['steps']}", "trainer.prompts_per_step=8",
                 "trainer.minibatch_size=64", "trainer.micro_batch_size=64", f"trainer.lr={spec['lr']}",
                 "trainer.warmup_steps=0", "trainer.cpus_per_learner=1", "trainer.grad_clip=1.0", "algorithm.name=grpo",
                 "algorithm.kl_coef=0.0", "algorithm.ppo_epochs=1", "algorithm.clip_eps_low=0.2",
                 "algorithm.clip_eps_high=0.2", "algorithm.loss_agg_mode=token-mean", "tracking.samples_every=0",
                 "reward.components=[{name: 'benchmarks.vs_trl:reward'}]", *ARMS[job["arm"]], *job.get("overrides", [])]
    return load_config(ROOT / "configs" / "debug_cpu.yaml", overrides)


def _adapter_accuracy(model_path: str, adapter: Path, rows: list[dict], max_new_tokens: int) -> dict[str, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), adapter)
    return greedy_accuracy(model, tokenizer, rows, max_new_tokens)


def base_accuracy(regime: str, model_path: Path, test: Path) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return greedy_accuracy(model, AutoTokenizer.from_pretrained(model_path), read_jsonl(test),
                           REGIMES[regime]["max_new_tokens"])


def _inside(method: str, *args: Any):
    """For `actor.__ray_call__`: run a method of the actor's instance, timed inside the actor."""
    def call(instance, *a):
        start = time.perf_counter()
        out = getattr(instance, method)(*a)
        return out, time.perf_counter() - start
    return call


def profile_rlpost(regime: str, reps: int, seed: int = 0) -> dict[str, Any]:
    """Where an hf sync rlpost step goes: each phase timed at the driver and, separately, inside the actor,
    with Ray's bare round trip; the difference is what the framework adds to the work itself."""
    import ray

    from actors.group import ActorGroup, init_ray
    from actors.placement import own_threads
    from actors.policy_model import load_tokenizer
    from pipeline.data import load_prompts
    from pipeline.records import PromptSpec, SamplingSpec
    from pipeline.step_batch import reward_inputs, train_batch
    from pipeline.advantages import compute_advantages

    spec = REGIMES[regime]
    work = Path(tempfile.mkdtemp(prefix="vs-trl-profile-"))
    train_file, test_file = write_data(regime, work)
    job = {"regime": regime, "arm": "hf_sync", "seed": seed, "steps": 1, "model": str(ensure_model(regime)),
           "train": str(train_file), "test": str(test_file)}
    cfg = rlpost_config(job, work / "run")
    train_prompts, _ = load_prompts(cfg, load_tokenizer(job["model"]))
    pool = [p for ps in train_prompts.values() for p in ps]
    init_ray(cfg)
    actors = ActorGroup(cfg, job["model"])
    worker, learner = actors.rollout.actors[0], actors._learners[0]
    own = own_threads(cfg) if actors.placement.turns else (None, None)
    probe = (pool[0].ids, pool[0].ids[:6])
    actors.sync(0, probe)
    times: dict[str, list[float]] = {}

    def clock(name: str, fn):
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    rng = random.Random(seed)
    try:
        for rep in range(reps + 1):
            picked = rng.sample(pool, 8)
            specs = [PromptSpec(i, p.ids) for i, p in enumerate(picked)]
            sampling = SamplingSpec(n=8, temperature=1.0, max_new_tokens=spec["max_new_tokens"], seed=rep)
            clock("rpc_noop", lambda: ray.get(worker.__ray_call__.remote(lambda w: None)))
            completions = clock("generate_driver", lambda: actors.generate(specs, sampling))
            clock("generate_in_actor", lambda: ray.get(worker.__ray_call__.remote(
                _inside("generate"), specs, sampling, actors._version))[1])
            rows = [picked[c.group_id].columns for c in completions]
            scores = clock("score_driver", lambda: actors.score([c.text for c in completions], reward_inputs(rows, completions)))
            from pipeline.step_batch import StepBatch
            batch = StepBatch()
            batch.extend(completions, [p.source for p in picked for _ in range(8)], rows, scores,
                         [t >= 1.0 for t in scores.total])
            advantages, _ = clock("advantages_driver", lambda: compute_advantages(cfg, batch, list(range(len(completions)))))
            tb = train_batch(cfg, list(zip(completions, advantages)))
            clock("train_driver", lambda: actors.update(tb))
            clock("train_in_actor", lambda: ray.get(learner.__ray_call__.remote(_inside("update"), tb))[1])
            clock("sync_driver", lambda: actors.sync(rep + 1, probe))
            weights, t_state = ray.get(learner.__ray_call__.remote(_inside("adapter_state")))
            times.setdefault("sync_learner_adapter_state", []).append(t_state)
            # the sync's two sides one after the other, at the threads the sync gives them (it runs them at once)
            clock("sync_learner_probe_driver", lambda: ray.get(learner.probe_logprobs.remote(probe, False, own[0])))
            times.setdefault("sync_learner_probe_in_actor", []).append(ray.get(learner.__ray_call__.remote(
                _inside("probe_logprobs"), probe, False, own[0]))[1])
            times.setdefault("sync_worker_load_and_probe_in_actor", []).append(ray.get(worker.__ray_call__.remote(
                _inside("load_weights"), weights, rep + 1, probe, own[1]))[1])
    finally:
        actors.shutdown()
        ray.shutdown()
    return {name: statistics.median(values[1:]) for name, values in times.items()}  # the first rep warms up


def _worker(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    result = (run_trl if job["arm"] in TRL_ARMS else run_rlpost)(job)
    Path(job["result"]).write_text(json.dumps(result))


def launch(job: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    """One run in a fresh interpreter (its own threads, its own Ray), its output in a log file."""
    name = f"{job['regime']}-{job['arm']}-s{job['seed']}"
    job = {**job, "out_dir": str(log_dir / name), "result": str(log_dir / f"{name}.result.json")}
    Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
    job_file = log_dir / f"{name}.job.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        code = subprocess.run([sys.executable, __file__, "--worker", str(job_file)], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = (log_dir / f"{name}.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"{name} failed (exit {code}); log {log_dir / name}.log:\n" + "\n".join(tail))
    result = json.loads(Path(job["result"]).read_text())
    result["wall_s"] = time.perf_counter() - start
    return result


# --- summary -----------------------------------------------------------------------------------

def summarize(result: dict[str, Any], skip: int, overlapped: bool = False) -> dict[str, Any]:
    """Median step time and mean phase split over the steps after `skip`. With async rollouts (`overlapped`)
    generate and score run beside train, so "other" is the step less train, sync and the wait for rollouts."""
    steps = result["steps"][skip:] or result["steps"]
    med = statistics.median(s["step"] for s in steps)
    names = (*PHASES, "wait_for_rollouts")
    phases = {p: statistics.median(s.get(p, 0.0) for s in steps) for p in names}
    mean_step = statistics.mean(s["step"] for s in steps)
    means = {p: statistics.mean(s.get(p, 0.0) for s in steps) for p in names}
    counted = ("train", "sync", "wait_for_rollouts") if overlapped else PHASES
    other = mean_step - sum(means[p] for p in counted)
    return {"step_s": med, "mean_step_s": mean_step, "phases_median_s": phases, "phases_mean_s": means,
            "other_mean_s": other, "other_share": other / mean_step, "gen_share": means["generate"] / mean_step,
            "sync_share": means["sync"] / mean_step, "accuracy": result["accuracy"],
            "greedy_reward": result["greedy_reward"], "steps_measured": len(steps),
            "wall_s": result.get("wall_s"), "startup_s": result.get("wall_s", 0) - sum(s["step"] for s in result["steps"]),
            "reward_first": result["reward_curve"][:3], "reward_last": result["reward_curve"][-3:]}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [r["step_s"] for r in runs]
    acc = [r["accuracy"] for r in runs]
    greedy = [r["greedy_reward"] for r in runs]
    return {"step_s": statistics.median(steps), "step_s_per_seed": steps,
            "gen_share": statistics.median(r["gen_share"] for r in runs),
            "other_share": statistics.median(r["other_share"] for r in runs),
            "sync_share": statistics.median(r["sync_share"] for r in runs),
            "phases_mean_s": {p: statistics.median(r["phases_mean_s"][p] for r in runs) for p in runs[0]["phases_mean_s"]},
            "other_mean_s": statistics.median(r["other_mean_s"] for r in runs),
            "accuracy_mean": statistics.mean(acc), "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy_per_seed": acc, "greedy_reward_mean": statistics.mean(greedy),
            "greedy_reward_sd": statistics.stdev(greedy) if len(greedy) > 1 else 0.0,
            "startup_s": statistics.median(r["startup_s"] for r in runs)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(result["regimes"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    arms = result["arms"]
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        ratios = [result["regimes"][r]["arms"].get(arm, {}).get("ratio_vs_trl") or float("nan") for r in regimes]
        accs = [result["regimes"][r]["arms"].get(arm, {}).get("accuracy_mean", float("nan")) for r in regimes]
        sds = [result["regimes"][r]["arms"].get(arm, {}).get("accuracy_sd", 0.0) for r in regimes]
        xs = [x + (i - (len(arms) - 1) / 2) * width for x in range(len(regimes))]
        axes[0].bar(xs, ratios, width, label=arm)
        axes[1].bar(xs, accs, width, yerr=sds, label=arm)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("s/step relative to TRL (lower is faster)")
    axes[1].set_ylabel("held-out greedy exact match")
    for ax in axes:
        ax.set_xticks(range(len(regimes)), [f"{r} ({REGIMES[r]['max_new_tokens']} tok)" for r in regimes])
    axes[0].legend(fontsize=8)
    fig.suptitle(f"rlpost vs TRL GRPOTrainer {result['trl_version']} (8x8 per step, LoRA r=8, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--worker", help=argparse_hidden())
    cli.add_argument("--quick", action="store_true", help="1 seed, a few steps per regime (the pipeline check)")
    cli.add_argument("--regimes", default="short,long")
    cli.add_argument("--arms", default=",".join([*TRL_ARMS, *ARMS]), help="TRL arms (trl: 1 thread, trl_2t: 2, trl_2t_mb32: 2 "
                     "in two micro-batches) and "
                     "rlpost arms to run; ratios are against the fastest TRL arm")
    cli.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; 1 with --quick)")
    cli.add_argument("--steps-short", type=int, default=None)
    cli.add_argument("--steps-long", type=int, default=None)
    cli.add_argument("--skip", type=int, default=None, help="warm-up steps left out of the timings (default per regime)")
    cli.add_argument("--out", default=None, help="result JSON (default benchmarks/results/vs_trl.json, "
                                                   "vs_trl_quick.json with --quick); the PNG goes beside it")
    cli.add_argument("--keep-logs", default=None, help="directory for the runs' logs (default: a temporary one)")
    cli.add_argument("--profile", type=int, default=0, metavar="REPS",
                     help="instead: profile rlpost's hf sync step (driver vs in-actor time per phase) over REPS "
                          "repetitions per regime; writes benchmarks/results/vs_trl_profile.json")
    args, extra = cli.parse_known_args()
    if args.worker:
        _worker(args.worker)
        return
    if extra:
        cli.error(f"unrecognised arguments: {' '.join(extra)}")
    seeds = args.seeds or (1 if args.quick else 3)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in TRL_ARMS and a not in ARMS]
    if unknown:
        cli.error(f"unknown arms {unknown}; known: {', '.join([*TRL_ARMS, *ARMS])}")
    regimes = [r for r in args.regimes.split(",") if r]
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("vs_trl_quick.json" if args.quick else "vs_trl.json"))
    if args.profile:
        profile = {}
        for regime in regimes:
            profile[regime] = profile_rlpost(regime, args.profile)
            print(f"[{regime}] ms per call (median of {args.profile}):")
            print_table(["what", "ms"], [(k, v * 1000) for k, v in profile[regime].items()], ["", ".1f"])
        write_result(args.out or ROOT / "benchmarks" / "results" / "vs_trl_profile.json", {"reps": args.profile, "profile": profile})
        return
    log_dir = Path(args.keep_logs or tempfile.mkdtemp(prefix="vs-trl-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs in {log_dir}")
    import trl

    result: dict[str, Any] = {"trl_version": trl.__version__, "quick": args.quick, "seeds": seeds, "arms": arms,
                              "regimes": {}}
    for regime in regimes:
        spec = REGIMES[regime]
        steps = getattr(args, f"steps_{regime}") or spec["quick_steps" if args.quick else "steps"]
        skip = args.skip if args.skip is not None else spec["quick_skip" if args.quick else "skip"]
        model = ensure_model(regime)
        train_file, test_file = write_data(regime, log_dir)
        base = base_accuracy(regime, model, test_file)
        print(f"[{regime}] model {model}, base greedy accuracy {base['accuracy']:.3f} (reward {base['greedy_reward']:.3f}), "
              f"{steps} steps ({skip} warm-up), {seeds} seed(s)", flush=True)
        per_arm: dict[str, list] = {}
        for seed in range(seeds):
            for arm in arms:
                job = {"regime": regime, "arm": arm, "seed": seed, "steps": steps, "model": str(model),
                       "train": str(train_file), "test": str(test_file)}
                run = summarize(launch(job, log_dir), skip, overlapped="async" in arm)
                per_arm.setdefault(arm, []).append(run)
                print(f"  {arm:11s} seed {seed}: {run['step_s']:.3f} s/step (gen {run['gen_share']:.0%}), "
                      f"accuracy {run['accuracy']:.3f} (reward {run['greedy_reward']:.3f}), wall {run['wall_s']:.0f}s",
                      flush=True)
        summary = {arm: aggregate(runs) for arm, runs in per_arm.items()}
        baseline = min((a for a in summary if a in TRL_ARMS), key=lambda a: summary[a]["step_s"], default=None)
        trl_step = summary[baseline]["step_s"] if baseline else None
        for arm, s in summary.items():
            s["ratio_vs_trl"] = s["step_s"] / trl_step if trl_step else None
        result["regimes"][regime] = {"baseline": baseline, "model": str(model), "parameters": _parameters(model), "steps": steps, "skip": skip,
                                     "test_rows": len(read_jsonl(test_file)),
                                     "max_new_tokens": spec["max_new_tokens"], "base_accuracy": base, "arms": summary,
                                     "runs": per_arm}
    result["targets"] = targets(result)
    _report(result)
    write_result(out, result)
    plot(result, out.with_suffix(".png"))


def _parameters(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    per_layer = 4 * h * h + 3 * h * config["intermediate_size"] + 3 * h + 2 * h  # q,k,v,o + mlp + qkv biases + norms
    return layers * per_layer + vocab * h + h


TARGETS = {"short": {"default": 1.0, "best": 0.6}, "long": {"default": 0.8, "best": 0.33}}  # issue #15, x TRL s/step


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue #15's targets, each with the measured value and whether it is met: the default shape (hf_sync) and the
    best arm against TRL's s/step, framework overhead and sync under 5% of the step (hf_sync), and held-out accuracy
    not worse than TRL's (rlpost's mean over seeds >= TRL's mean less the larger of TRL's standard deviation over
    seeds and the standard error of a mean over the test set), in exact match and in greedy reward."""
    out: dict[str, Any] = {}
    for regime, r in result["regimes"].items():
        arms, goal, trl = r["arms"], TARGETS[regime], r.get("baseline")
        if trl is None:
            continue
        checks: dict[str, Any] = {}
        if "hf_sync" in arms:
            d = arms["hf_sync"]
            checks["default_ratio"] = {"value": d["ratio_vs_trl"], "target": goal["default"], "met": d["ratio_vs_trl"] <= goal["default"]}
            checks["default_other_share"] = {"value": d["other_share"], "target": 0.05, "met": d["other_share"] < 0.05}
            checks["default_sync_share"] = {"value": d["sync_share"], "target": 0.05, "met": d["sync_share"] < 0.05}
        rl = {a: s for a, s in arms.items() if a not in TRL_ARMS}
        if rl:
            best = min(rl, key=lambda a: rl[a]["ratio_vs_trl"])
            checks["best_ratio"] = {"arm": best, "value": rl[best]["ratio_vs_trl"], "target": goal["best"],
                                    "met": rl[best]["ratio_vs_trl"] <= goal["best"]}
        def floor(metric: str) -> float:  # TRL's mean less its spread over seeds, at least one standard error
            mean, n = arms[trl][f"{metric}_mean"], r.get("test_rows", 1)  # of the mean over the test set
            return mean - max(arms[trl][f"{metric}_sd"], (mean * (1 - mean) / n) ** 0.5)

        acc_floor, reward_floor = floor("accuracy"), floor("greedy_reward")
        checks["accuracy_not_worse"] = {a: {"value": s["accuracy_mean"], "trl": arms[trl]["accuracy_mean"],
                                            "greedy_reward": s["greedy_reward_mean"], "trl_greedy_reward": arms[trl]["greedy_reward_mean"],
                                            "met": s["accuracy_mean"] >= acc_floor and s["greedy_reward_mean"] >= reward_floor}
                                        for a, s in rl.items()}
        out[regime] = checks
    return out


def _report(result: dict[str, Any]) -> None:
    rows = []
    for regime, r in result["regimes"].items():
        for arm, s in r["arms"].items():
            rows.append((regime, arm, s["step_s"], s["ratio_vs_trl"] if s["ratio_vs_trl"] is not None else float("nan"),
                         s["gen_share"], s["other_share"] if arm not in TRL_ARMS else float("nan"),
                         s["sync_share"] if arm not in TRL_ARMS else float("nan"), s["accuracy_mean"], s["accuracy_sd"],
                         s["greedy_reward_mean"]))
    print()
    print_table(["regime", "arm", "s/step", "x TRL", "gen share", "other", "sync", "accuracy", "sd", "greedy reward"], rows,
                ["", "", ".3f", ".2f", ".0%", ".1%", ".1%", ".3f", ".3f", ".3f"])
    for regime, r in result["regimes"].items():
        print(f"{regime}: ratios against {r['baseline']} (the fastest TRL arm); base accuracy {r['base_accuracy']['accuracy']:.3f}; {r['parameters']:,} parameters; "
              f"{r['max_new_tokens']} new tokens at most")
    for regime, checks in result.get("targets", {}).items():
        for name, c in checks.items():
            if name == "accuracy_not_worse":
                print(f"{regime} {name} (exact match / greedy reward): " + ", ".join(
                    f"{a} {v['value']:.3f}/{v['greedy_reward']:.3f} vs TRL {v['trl']:.3f}/{v['trl_greedy_reward']:.3f} "
                    f"{'ok' if v['met'] else 'MISSED'}" for a, v in c.items()))
            else:
                print(f"{regime} {name}{' (' + c['arm'] + ')' if 'arm' in c else ''}: {c['value']:.3f} "
                      f"(target {c['target']}) {'ok' if c['met'] else 'MISSED'}")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
