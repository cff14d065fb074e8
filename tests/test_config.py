import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config

CPU = "configs/debug_cpu.yaml"


def test_default_config_loads_and_overrides_apply_with_yaml_types():
    cfg = load_config(CPU, ["trainer.lr=1e-4", "rollout.n=4", "lora.target_modules=[q_proj,v_proj]", "run.seed=7"])
    assert cfg.trainer.lr == 1e-4 and cfg.rollout.n == 4 and cfg.run.seed == 7
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(CPU, ["trainer.learning_rate=1e-4"])
    message = str(err.value)
    assert "trainer.learning_rate" in message and "unknown key" in message
    assert "lr" in message and "prompts_per_step" in message


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="optimiser: unknown key"):
        load_config(CPU, ["optimiser.lr=1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_config(CPU, ["rollout.n=many"])
    assert "rollout.n" in str(err.value) and "'many'" in str(err.value)


def test_out_of_range_value_says_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(CPU, ["trainer.lr=-1"])
    assert "trainer.lr" in str(err.value) and "greater than 0" in str(err.value)


def test_wrong_choice_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        load_config(CPU, ["algorithm.name=ppo"])
    assert "'grpo', 'dr_grpo' or 'dapo'" in str(err.value)


def test_unknown_key_inside_a_list_item_lists_that_items_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["reward.components=[{name: exact_match, wieght: 2}]"])
    assert "reward.components.0.wieght" in str(err.value) and "name, weight" in str(err.value)


def test_presets_fill_defaults_but_explicit_keys_win():
    dapo = load_config(None, ["algorithm.name=dapo"]).algorithm
    assert (dapo.clip_eps_high, dapo.loss_agg_mode, dapo.kl_coef) == (0.28, "token-mean", 0.0)
    dr = load_config(None, ["algorithm.name=dr_grpo", "algorithm.clip_eps_high=0.3"]).algorithm
    assert dr.adv_estimator == "dr_grpo" and dr.loss_agg_mode == "seq-mean-token-sum-norm" and dr.clip_eps_high == 0.3


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CPU, ["trainer.lr"])


def test_cli_reports_config_errors_before_starting_anything(capsys):
    assert main(["train", CPU, "rollout.backend=tgi"]) == 2
    assert "rollout.backend" in capsys.readouterr().err


def test_cli_help_lists_every_section(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("model.path", "rollout.n", "trainer.lr", "lora.rank", "algorithm.kl_coef", "run.seed", "curriculum.name"):
        assert key in out


def test_an_override_yaml_cannot_parse_stays_text():
    cfg = load_config(None, ["data.prompt_template={question} Answer after ####:"])
    assert cfg.data.prompt_template == "{question} Answer after ####:"


def test_an_unknown_answer_extraction_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"args.extract='gsm'.*raw, gsm8k, boxed"):
        load_config(None, ["reward.components=[{name: numeric, args: {extract: gsm}}]"])


def test_a_text_override_is_taken_as_given():
    cfg = load_config(None, ["data.system_prompt=Be brief - end with #### and the number", "data.prompt_template={question}",
                             "data.dataset='org/name'", "model.path=null"])
    assert cfg.data.system_prompt == "Be brief - end with #### and the number"  # YAML would cut it at ' #'
    assert cfg.data.prompt_template == "{question}" and cfg.data.dataset == "org/name" and cfg.model.path is None


def test_options_may_come_before_the_overrides(monkeypatch, capsys):
    import pipeline.dry_run

    monkeypatch.setattr(pipeline.dry_run, "dry_run", lambda cfg: f"steps={cfg.trainer.steps}")
    assert main(["train", "configs/debug_cpu.yaml", "--dry-run", "trainer.steps=3"]) == 0
    assert capsys.readouterr().out == "steps=3\n"
