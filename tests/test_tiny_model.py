from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.tasks import TASK_FAMILIES, generate_split


def test_tiny_model_reloads_with_auto_classes_and_round_trips_text(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    for name in TASK_FAMILIES:
        prompt, answer = generate_split(name, 1, 1, seed=0)[1][0]
        ids = tokenizer(prompt + answer)["input_ids"]
        assert len(ids) == len(prompt + answer)  # one token per character, spaces included
        assert tokenizer.decode(ids) == prompt + answer
    assert model.config.vocab_size == len(tokenizer) and tokenizer.eos_token_id is not None


def test_cache_is_reused(tiny_model_path):
    from pipeline.config import TinyModelConfig
    from pipeline.tiny_model import ensure_tiny_model

    calls = []
    assert str(ensure_tiny_model(TinyModelConfig(), log=calls.append)) == tiny_model_path
    assert calls == []
