"""One typed, validated run config: YAML file + dotted command-line overrides.

Every section forbids unknown keys, so a typo stops the run before Ray starts, with a message
that names the key, the value given and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import core_algos
from pipeline.errors import RlpostError


class ConfigError(RlpostError, ValueError):
    """A config problem a user can fix; the message names the key and what is allowed."""

    exit_code = 2


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True, serialize_by_alias=True)


class TinyModelConfig(Section):
    """Recipe of the built-in tiny model (built on the fly, cached by a hash of this recipe)."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0, description="head size = hidden_size / num_heads (32 here, which the CPU vLLM kernels support)")
    max_positions: int = Field(128, gt=0, description="context length of the built model")
    sft_steps: int = Field(250, ge=0, description="supervised warm-up steps before RL")
    sft_batch_size: int = Field(64, gt=0)
    sft_lr: float = Field(3e-3, gt=0)
    cache_dir: str = Field("~/.cache/rlpost", description="where built tiny models are cached")


class ModelConfig(Section):
    path: str | None = Field(None, description="Hugging Face causal LM: a local directory or a Hub id (org/name, fetched into "
                             "the Hub cache, HF_HOME); empty = build the tiny model")
    revision: str | None = Field(None, description="branch, tag or commit of a Hub id path; empty = main")
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field("float32", description="float64: for exactness checks (hf backend)")
    tiny: TinyModelConfig = TinyModelConfig()


class DataConfig(Section):
    sources: list[str] = Field(
        default_factory=lambda: ["add_1d", "add_2d", "reverse_4", "sort_4"],
        description="built-in synthetic task families (used when neither `files` nor `dataset` is given)",
    )
    files: list[str] = Field(default_factory=list, description="JSONL / Parquet files or HF dataset directories")
    test_files: list[str] = Field(default_factory=list, description="held-out files; empty = split `files`")
    dataset: str | None = Field(None, description="a Hugging Face dataset instead of `files`: a Hub id (e.g. openai/gsm8k) or "
                                "anything datasets.load_dataset accepts; offline (HF_HUB_OFFLINE=1) it is read from the "
                                "datasets cache under HF_HOME")
    dataset_config: str | None = Field(None, description="config name of `dataset` (e.g. main); empty = its default")
    train_split: str = Field("train", min_length=1, description="training split of `dataset`")
    test_split: str | None = Field("test", description="held-out split of `dataset`; empty = split off from the training split")
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    source_key: str = Field("source", description="column naming each row's source; a `dataset` without it uses the dataset id")
    prompt_template: str | None = Field(None, description="user prompt from the row's columns, str.format style, e.g. "
                                        "'{question} Put the final answer after ####.'; empty = the `prompt_key` column")
    system_prompt: str | None = Field(None, description="system message before the user prompt; with no chat template "
                                      "(or chat_template=never) it is prepended to the prompt text, then a blank line")
    answer_format: Literal["raw", "gsm8k", "boxed"] = Field("raw", description="how the label is read from the answer "
                                                             "column: raw = as is, gsm8k = the number after '####', "
                                                             "boxed = the last \\boxed{...}")
    max_prompt_tokens: int | None = Field(None, gt=0, description="prompts longer than this (in tokens, as the policy sees "
                                          "them) are left out when the data loads, counted per source and reported, "
                                          "instead of stopping the run where one would not fit the context (empty = "
                                          "the rollout engine's context less one token: hf the model config's, vllm "
                                          "rollout.max_model_len when set)")
    train_per_source: int = Field(400, gt=0, description="synthetic train examples per source")
    test_per_source: int = Field(40, gt=0, description="synthetic (or split-off) test examples per source")
    chat_template: Literal["auto", "never"] = Field("auto", description="apply the tokenizer's chat template when it has one")

    @field_validator("prompt_template")
    @classmethod
    def _named_fields(cls, template: str | None) -> str | None:
        import string

        if template is not None:
            try:
                names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
            except ValueError as err:  # a lone brace; literal braces are written {{ }}
                raise ValueError(f"not a str.format template ({err}); write literal braces as {{{{ and }}}}") from None
            if any(not name or name[0].isdigit() or "." in name or "[" in name for name in names):
                raise ValueError("fields must name columns, e.g. {question}, not {}, {0}, {q.attr} or {q[0]}")
        return template

    @model_validator(mode="after")
    def _one_kind_of_data(self) -> "DataConfig":
        if self.dataset and (self.files or self.test_files):
            raise ValueError("data.dataset and data.files/test_files cannot be combined: give one (to mix a Hub dataset "
                             "with local files, save it to Parquet and list it in data.files)")
        return self


class RolloutConfig(Section):
    backend: Literal["hf", "vllm", "auto"] = Field("hf", description="rollout engine; auto = vllm when installed")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vllm on a GPU: share of its memory for the engine")
    max_model_len: int | None = Field(None, gt=0, description="vllm: context length (empty = the model's)")
    n: int = Field(8, ge=1, description="completions per prompt (group size G)")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(8, gt=0)
    stop: list[str] = Field(default_factory=list, description="stop strings (EOS always stops)")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    weight_sync: Literal["adapter", "merged"] = Field("adapter", description="adapter: the LoRA adapter goes to the "
                                                      "rollout engines; merged: full weights with the adapter folded in, "
                                                      "reloaded in place (engines then run no LoRA)")
    async_: bool = Field(False, alias="async", description="generate step t+1's batch while the learner trains on step t "
                         "(one-step off-policy: the clipped ratio is taken against the behaviour log-probs, or, with "
                         "algorithm.tis_cap, against the learner's and weighted by the truncated IS ratio)")
    chunks_per_worker: int = Field(2, ge=1, description="prompts go out in this many chunks per worker, each to the next free worker")
    worker_deadline_s: float = Field(600.0, gt=0, description="a rollout worker silent this long on one chunk is killed, restarted, the chunk redone")
    max_restarts: int = Field(5, ge=-1, description="times Ray restarts a dead rollout worker (-1 = always)")
    sleep_while_training: bool = Field(False, description="rollout engines free their GPU memory while the learner trains "
                                       "(vLLM sleep mode level 1; hf moves its weights to host memory); for placement.mode=colocate")


class RewardComponent(Section):
    name: str = Field(description="registered reward name or an import path 'pkg.module:function'")
    weight: float = 1.0
    args: dict[str, Any] = Field(default_factory=dict, description="keyword options passed to the function")

    @field_validator("name")
    @classmethod
    def _resolvable(cls, name: str) -> str:
        from rewards.registry import resolve_reward

        resolve_reward(name)  # unknown names and failing imports stop the run here, naming the key
        return name

    @field_validator("args")
    @classmethod
    def _known_extraction(cls, args: dict[str, Any]) -> dict[str, Any]:
        from rewards.answers import ANSWER_FORMATS

        if "extract" in args and args["extract"] not in ANSWER_FORMATS:
            raise ValueError(f"args.extract={args['extract']!r} is not an answer format; use one of {', '.join(ANSWER_FORMATS)}")
        return args


class UnlikelinessConfig(Section):
    """Rewarding the Unlikely (spec §2): scale correct rewards by 1 - beta_rank * rank / G."""

    beta_rank: float = Field(0.0, ge=0, le=1, description="0 = off; the paper's recipe uses 0.25")
    rank_convention: Literal["code", "paper0"] = "code"
    component: str | None = Field(None, description="the reward component whose weighted value is the correctness term "
                                  "that gets scaled; empty = the first component of the sample's source")


class ConsensusConfig(Section):
    """Consensus-game equilibrium ranking over each group's distinct answers (spec §4)."""

    weight: float = Field(0.0, ge=0, description="0 = off")
    use: Literal["bonus", "label_free"] = Field("bonus", description="bonus: added to the verifier reward; "
                                                "label_free: the training reward is the consensus reward alone")
    reward: Literal["er_d", "rank"] = Field("er_d", description="a sample's reward: its answer's ER-D probability, or its rank")
    model_path: str | None = Field(None, description="scoring LM; empty = the current policy on the rollout workers")
    answer_regex: str | None = Field(None, description="final answer = first group of the last match; empty = the whole completion")
    generator_correct: str = "{prompt}"
    generator_incorrect: str = "wrong answer: {prompt}"
    discriminator: str = "{prompt}{answer} is"
    correct_word: str = " right"
    incorrect_word: str = " wrong"
    lambda_g: float = Field(0.1, gt=0)
    lambda_d: float = Field(0.1, gt=0)
    eta_g: float = Field(0.1, gt=0)
    eta_d: float = Field(0.1, gt=0)
    iterations: int = Field(5000, ge=1)

    @property
    def label_free(self) -> bool:
        """Training on the consensus reward alone: nothing that trains may read the answer column."""
        return self.weight > 0 and self.use == "label_free"


class RewardConfig(Section):
    components: list[RewardComponent] = Field(default_factory=lambda: [RewardComponent(name="exact_match")])
    by_source: dict[str, list[RewardComponent]] = Field(default_factory=dict, description="components for named sources (instead of `components`)")
    timeout_s: float = Field(5.0, gt=0, description="per sample and component")
    worker_deadline_s: float = Field(120.0, gt=0, description="a reward worker silent this long is killed, restarted, its samples scored as failures")
    failure_score: float = Field(0.0, description="score of a sample whose reward function raised or timed out")
    correct_threshold: float = Field(1.0, description="a sample counts as correct when its total reward >= this")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(0.25, gt=0)
    max_restarts: int = Field(5, ge=-1, description="times Ray restarts a dead reward worker (-1 = always)")
    unlikeliness: UnlikelinessConfig = UnlikelinessConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    sandbox: Literal["strict", "best_effort"] = Field("strict", description="code_tests: strict = refuse to start "
                                                      "without the OS sandbox (bubblewrap); best_effort = run with the "
                                                      "weaker in-process layers when it cannot start, warned once")

    @model_validator(mode="after")
    def _sandbox_decided(self) -> "RewardConfig":
        """With code_tests configured, probe the OS sandbox now (strict stops the run before Ray starts) and pass
        the mode to every code_tests component, so the reward workers apply the same decision."""
        code = [c for c in [*self.components, *(c for cs in self.by_source.values() for c in cs)] if c.name == "code_tests"]
        if code:
            from rewards.sandbox_isolation import SandboxUnavailable, isolation

            try:
                isolation(self.sandbox)
            except SandboxUnavailable as err:
                raise ValueError(f"reward.sandbox={self.sandbox}: {err}") from None
            for component in code:
                component.args["sandbox"] = self.sandbox
        return self


ALGORITHM_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": dict(adv_estimator="grpo", adv_eps=1e-6, loss_agg_mode="token-mean", clip_eps_low=0.2, clip_eps_high=0.2),
    "dr_grpo": dict(adv_estimator="dr_grpo", loss_agg_mode="seq-mean-token-sum-norm", clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0),
    "dapo": dict(adv_estimator="grpo", adv_eps=1e-6, loss_agg_mode="token-mean", clip_eps_low=0.2, clip_eps_high=0.28, kl_coef=0.0,
                 filter_groups=True, dynamic_sampling=True),
}

# The choices come from the registries: adding an estimator, KL type, aggregation or policy loss is one registration.
AdvEstimator = Literal[tuple(core_algos.ADVANTAGE_ESTIMATORS)]
KLType = Literal[tuple(core_algos.KL_ESTIMATORS) + tuple(f"{k}+" for k in core_algos.KL_ESTIMATORS)]
LossAggMode = Literal[tuple(core_algos.LOSS_AGGREGATIONS)]
PolicyLoss = Literal[tuple(core_algos.POLICY_LOSSES)]


class AlgorithmConfig(Section):
    """`name` is a preset (spec §1): it fills the defaults below; any key given explicitly wins."""

    name: Literal["grpo", "dr_grpo", "dapo"] = "grpo"
    adv_estimator: AdvEstimator = "grpo"
    adv_eps: float = Field(1e-6, ge=0)
    std_ddof: int = Field(1, ge=0, le=1)
    clip_eps_low: float = Field(0.2, ge=0)
    clip_eps_high: float = Field(0.2, ge=0)
    dual_clip_c: float | None = Field(None, gt=1, description="dual-clip constant for negative advantages; empty = off")
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient in the loss")
    kl_type: KLType = "k3"
    kl_in: Literal["loss", "reward"] = Field("loss", description="where the KL to the reference goes")
    loss_agg_mode: LossAggMode = "token-mean"
    policy_loss: PolicyLoss = Field("ppo_clip", description="the registered loss the learner minimises (pipeline/core_algos.py)")
    tis_cap: float | None = Field(None, gt=0, description="truncated importance sampling: weight tokens by "
                                  "min(pi_learner / pi_rollout, cap) to correct the rollout engine's mismatch; empty = off")
    ppo_epochs: int = Field(1, ge=1, description="passes over each batch (mu)")
    filter_groups: bool | None = Field(None, description="drop groups whose filter_metric is equal for every sample; "
                                       "empty = on with the unlikeliness reward (spec §2.3), else off; the dapo preset turns it on")
    filter_metric: Literal["acc", "score"] = "acc"
    dynamic_sampling: bool = Field(False, description="keep generating until prompts_per_step mixed groups are kept (DAPO)")
    gen_prompts_per_round: int | None = Field(None, gt=0, description="prompts per generation round; empty = 3 x prompts_per_step")
    max_gen_rounds: int = Field(10, description="generation rounds per step before giving up; <= 0 = no limit")
    overlong_filtering: bool = Field(False, description="mask the loss of truncated samples (DAPO option a)")
    overlong_buffer_len: int | None = Field(None, ge=0, description="soft overlong punishment buffer (DAPO option b); "
                                            "0 = off, empty = off except for dapo (20% of max_new_tokens)")
    overlong_penalty_factor: float = Field(1.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            preset = ALGORITHM_PRESETS.get(data.get("name", "grpo"), {})
            data = {**preset, **data}
        return data


class LoraSection(Section):
    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    init: Literal["default", "eva"] = Field("default", description="eva: data-driven init by peft's EVA (spec §5)")
    eva_rho: float = Field(2.0, ge=1, description="EVA: a layer may get up to rho * rank")
    eva_tau: float = Field(0.99, ge=0, le=1, description="EVA: cosine-similarity convergence threshold")
    eva_max_steps: int = Field(50, gt=0, description="EVA: SVD batches at most (peft's loop has no cap)")
    eva_prompts: int = Field(64, gt=0, description="EVA: training prompts rolled out for the activations")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class TrainerConfig(Section):
    steps: int = Field(60, ge=0)
    prompts_per_step: int = Field(16, gt=0, description="prompts per step (B); samples = B * rollout.n")
    minibatch_size: int = Field(64, gt=0, description="samples per optimizer step")
    micro_batch_size: int = Field(64, gt=0, description="samples per forward/backward at most (gradient accumulation)")
    max_tokens_per_micro_batch: int | None = Field(None, gt=0, description="cap micro-batches by tokens too: samples sorted "
                                                   "by length, packed while samples x longest prompt+completion stays within "
                                                   "it and the count within micro_batch_size (a longer sample goes alone), "
                                                   "each padded only to its own longest; gradients are unchanged")
    share_prompt_forward: bool = Field(True, description="run each distinct prompt of a micro-batch once and its samples' "
                                       "completions on its cached keys/values (GRPO's n samples share a prompt): the same "
                                       "log-probs and gradients with the prompt's compute paid once instead of n times; "
                                       "micro-batches keep a prompt's samples together. Not with gradient checkpointing, "
                                       "FSDP or sliding-window/recurrent layers (those run every row whole)")
    gradient_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in the backward "
                                         "(non-reentrant): activation memory drops to about one layer's, at ~1 extra "
                                         "forward of compute per update")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up, in optimizer steps")
    grad_clip: float = Field(1.0, gt=0)
    grad_skip_thresh: float | None = Field(None, gt=0, description="skip an optimizer step whose gradient norm is >= this "
                                           "(non-finite norms are always skipped); the unlikeliness recipe uses 20")
    max_consecutive_skips: int = Field(10, ge=1, description="stop the run after this many skipped updates in a row")
    num_learners: int = Field(1, ge=1, description="data-parallel learner actors (one torch.distributed group: gloo on "
                              "the CPU, NCCL on GPUs); each takes whole groups, gradients are summed")
    fsdp: bool = Field(False, description="shard the model over the learners (FSDP2: each holds 1/N of the weights; for "
                       "models that do not fit one device); needs num_learners >= 2")
    cpus_per_learner: float = Field(1.0, gt=0)
    gpus_per_learner: float = Field(0.0, ge=0)


class CurriculumConfig(Section):
    name: Literal["uniform", "fixed", "ucb"] = Field("uniform", description="uniform = sources by size; ucb = DUMP")
    weights: dict[str, float] | None = Field(None, description="per-source weights for name=fixed")
    window: int = Field(300, gt=0, description="ucb: responses per source in the learnability window")
    exploration_c: float = Field(1.0, ge=0, description="ucb: exploration constant c")
    temperature: float = Field(0.1, gt=0, description="ucb: softmax temperature")
    update_on_validation: bool = Field(False, description="ucb: also feed validation rewards (released-code parity)")

    @model_validator(mode="after")
    def _weights_only_when_fixed(self) -> "CurriculumConfig":
        if self.weights and self.name != "fixed":
            raise ValueError(f"weights are used only by name=fixed (name is {self.name!r})")
        return self


class TrackingConfig(Section):
    wandb: Literal["offline", "online", "disabled"] = Field("offline", description="WANDB_MODE, if set, wins")
    project: str = "rlpost"
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = Field(default_factory=list)
    console_every: int = Field(1, gt=0)
    samples_every: int = Field(10, ge=0, description="log a table of sample completions every k steps; 0 = never")
    samples_per_table: int = Field(8, gt=0)


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="evaluate every k steps during training; 0 = only before/after")
    before: bool = True
    after: bool = True
    prompts_per_source: int = Field(40, gt=0)
    n_samples: int = Field(8, gt=0, description="samples per prompt for pass@k")
    k: list[int] = Field(default_factory=lambda: [1, 4, 8])
    temperature: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvalConfig":
        too_big = [k for k in self.k if k > self.n_samples or k < 1]
        if too_big:
            raise ValueError(f"every k must be in 1..n_samples={self.n_samples}; got {too_big}")
        return self


class PlacementConfig(Section):
    mode: Literal["cpu", "colocate", "split"] = Field("cpu", description="cpu: no GPUs; colocate: learner and rollout "
                                                      "workers share one GPU (fractional shares); split: placement groups "
                                                      "of rollout GPUs and learner GPUs, across nodes")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="split: Ray placement-group strategy of each group's bundles")
    timeout_s: float = Field(120.0, gt=0, description="how long to wait for the cluster to grant the placement groups "
                             "and to place every actor")
    cpu_threads: Literal["turns", "own"] = Field("turns", description="torch threads of learners and rollout workers. "
                                                  "turns: in a synchronous run whose learners and rollout workers share "
                                                  "one node (colocate, or cpu mode on a one-node Ray) the side at work "
                                                  "also uses the CPUs of the side that waits; own: each actor's own "
                                                  "CPU share (always so with async rollouts or split placement)")
    autoscaling: bool = Field(False, description="the cluster adds nodes on demand (KubeRay, the Ray autoscaler): skip "
                              "the checks that the nodes present now hold the run and place every actor within timeout_s "
                              "(placement groups still wait timeout_s: raise it to cover node start-up)")


class RunConfig(Section):
    dir: str = Field("runs/debug", description="run directory (metrics, checkpoints, final adapter)")
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0, description="0 = never")
    keep_last: int = Field(2, ge=1, description="checkpoints kept (older ones are deleted)")
    resume: str | None = Field(None, description="'auto' = the run directory's latest checkpoint, or a checkpoint path")
    ray_address: str | None = Field(None, description="empty = start a local Ray; 'auto' or an address = join a cluster")


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    lora: LoraSection = LoraSection()
    trainer: TrainerConfig = TrainerConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    placement: PlacementConfig = PlacementConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _cross_section_checks(self) -> "Config":
        if self.trainer.micro_batch_size > self.trainer.minibatch_size:
            raise ValueError(
                f"trainer.micro_batch_size={self.trainer.micro_batch_size} must be <= "
                f"trainer.minibatch_size={self.trainer.minibatch_size}"
            )
        if self.algorithm.filter_groups is None:
            self.algorithm.filter_groups = self.reward.unlikeliness.beta_rank > 0  # the released code filters (spec §2.3)
        if self.algorithm.overlong_buffer_len is None:  # DAPO's 4096 of 20480 tokens, scaled to this run
            share = 0.2 if self.algorithm.name == "dapo" else 0.0
            self.algorithm.overlong_buffer_len = round(share * self.rollout.max_new_tokens)
        if self.algorithm.overlong_buffer_len > self.rollout.max_new_tokens:
            raise ValueError(f"algorithm.overlong_buffer_len={self.algorithm.overlong_buffer_len} must be <= "
                             f"rollout.max_new_tokens={self.rollout.max_new_tokens}")
        named = {c.name for c in self.reward.components} | {c.name for cs in self.reward.by_source.values() for c in cs}
        if self.reward.unlikeliness.component not in (None, *named):
            raise ValueError(f"reward.unlikeliness.component={self.reward.unlikeliness.component!r} is not a configured "
                             f"reward component ({sorted(named)})")
        if self.rollout.async_ and self.rollout.sleep_while_training:
            raise ValueError("rollout.async=true generates while the learner trains, so the rollout engines cannot sleep "
                             "then: set rollout.sleep_while_training=false (or rollout.async=false)")
        if self.reward.consensus.label_free and self.curriculum.update_on_validation:
            raise ValueError("curriculum.update_on_validation feeds the verifiers' validation rewards (which read the "
                             "answers) to the sampler; label-free training (reward.consensus.use=label_free) must not")
        if self.reward.consensus.label_free and self.reward.unlikeliness.beta_rank > 0:
            raise ValueError("reward.unlikeliness scales the reward of correct samples, which needs labels; it cannot be "
                             "combined with reward.consensus.use=label_free (set reward.unlikeliness.beta_rank=0)")
        if self.trainer.num_learners > 1 and self.lora.init == "eva":
            raise ValueError("lora.init=eva runs on one learner: set trainer.num_learners=1 (or lora.init=default)")
        if self.trainer.fsdp and (self.trainer.num_learners < 2 or self.rollout.weight_sync != "adapter"):
            raise ValueError(f"trainer.fsdp=true needs trainer.num_learners >= 2 and rollout.weight_sync=adapter (got "
                             f"{self.trainer.num_learners} and {self.rollout.weight_sync})")
        self._check_placement()
        return self

    def _check_placement(self) -> None:
        gpus = {"rollout.gpus_per_worker": self.rollout.gpus_per_worker, "trainer.gpus_per_learner": self.trainer.gpus_per_learner}
        mode = self.placement.mode
        if mode == "cpu" and any(gpus.values()):
            raise ValueError(f"placement.mode=cpu uses no GPUs, but {gpus}; choose placement.mode=colocate (one GPU) or split")
        if mode == "colocate":
            shared = self.trainer.num_learners * self.trainer.gpus_per_learner + self.rollout.num_workers * self.rollout.gpus_per_worker
            if not all(gpus.values()) or shared > 1:
                raise ValueError(f"placement.mode=colocate shares one GPU: trainer.num_learners * trainer.gpus_per_learner + rollout.num_workers * "
                                 f"rollout.gpus_per_worker must be in (0, 1], each share > 0; got {gpus} (sum {shared:g})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file, apply `a.b=value` overrides (values parsed as YAML), validate once."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        _set_dotted(raw, key.strip(), _override_value(value, _is_text(key.strip())))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def _override_value(text: str, is_text: bool) -> Any:
    """An override's value parsed as YAML (numbers, lists, null). A text option takes the text as given
    (YAML would cut 'Answer after #### ...' at its comment and read '{question}' as a mapping), unless
    quoted or null; text YAML cannot parse stays the string it is."""
    if not text.strip():
        return None
    if is_text and text.strip() not in ("null", "~") and not text.lstrip().startswith(("'", '"')):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _is_text(dotted: str) -> bool:
    """Whether the option at `dotted` holds text (str or str | None)."""
    *parents, leaf = dotted.split(".")
    model: type[BaseModel] = Config
    for part in parents:
        annotation = getattr(model.model_fields.get(part), "annotation", None)
        if not _is_section(annotation):
            return False
        model = annotation
    field = model.model_fields.get(leaf) or next((f for f in model.model_fields.values() if f.alias == leaf), None)
    return field is not None and field.annotation in (str, str | None)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def format_validation_error(err: ValidationError) -> str:
    lines = ["invalid config:"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "<root>"
        given = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = sorted(f.alias or n for n, f in _section_at(loc[:-1]).model_fields.items())
            lines.append(f"  {key}: unknown key (given {given!r}); allowed keys here: {', '.join(allowed)}")
        else:
            lines.append(f"  {key}: {e['msg']} (given {given!r})")
    return "\n".join(lines)


def _section_at(loc: list[str]) -> type[BaseModel]:
    """The pydantic model that a validation error's location points into (list items included)."""
    model: type[BaseModel] = Config
    for part in loc:
        if part.isdigit():
            continue
        annotation = getattr(model.model_fields.get(part), "annotation", None)
        item = next((a for a in get_args(annotation) if _is_section(a)), None)
        if _is_section(annotation):
            model = annotation
        elif item is not None:
            model = item
        else:
            break
    return model


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def describe_options(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """One line per leaf option (`section.key  type  default  description`) for `--help`."""
    lines = []
    for name, field in model.model_fields.items():
        annotation, name = field.annotation, field.alias or name
        if _is_section(annotation):
            lines += describe_options(annotation, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        if get_origin(annotation) is Literal:
            type_name = " | ".join(map(str, get_args(annotation)))
        else:
            type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        text = f"  {prefix}{name} = {default!r}  [{type_name}]"
        if field.description:
            text += f"  {field.description}"
        lines.append(text)
    return lines
