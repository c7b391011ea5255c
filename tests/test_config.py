from pathlib import Path

import pytest
import yaml

from sentiment_lora.config import Config, config_from_dict, load_config
from sentiment_lora.errors import UserError

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_seed_setup():
    cfg = Config()
    assert cfg.model.name_or_path == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 16, 0.1, ["q_proj", "v_proj"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.lr) == (2, 2, 8, 2e-4)
    assert (cfg.data.train_size, cfg.data.test_size, cfg.prompt.max_length) == (15000, 7500, 512)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    # The file sets only known keys, and round-trips through the saved form.
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_presets_exist():
    names = {p.name for p in PRESETS}
    assert {"smollm2-cpu.yaml", "smollm2-best.yaml", "tinyllama-imdb.yaml"} <= names


def test_hybrid_preset_is_the_best_recipe_plus_a_stack():
    # The quality benchmark trains the best recipe's row from the hybrid preset: they must not drift apart.
    folder = Path(__file__).resolve().parents[1] / "configs"
    best, hybrid = load_config(folder / "smollm2-best.yaml"), load_config(folder / "smollm2-hybrid.yaml")
    assert hybrid.stack.baseline and not best.stack.baseline
    assert {**hybrid.to_dict(), "stack": None} == {**best.to_dict(), "stack": None}


def test_tinyllama_preset_reproduces_the_seed():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tinyllama-imdb.yaml")
    assert cfg.model.name_or_path == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert (cfg.data.train_size, cfg.data.test_size, cfg.data.seed) == (15000, 7500, 42)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.lr) == (2, 2, 8, 2e-4)
    assert cfg.train.scheduler == "cosine" and cfg.prompt.max_length == 512
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.lora.dropout == 0.1


def test_overrides_by_dotted_path():
    cfg = load_config(None, ["data.dataset=../shared/imdb", "train.epochs=1", "train.lr=2e-4",
                             "lora.target_modules=q_proj,k_proj", "data.train_size=null", "eval.calibrate=true",
                             "data.val_size=10"])
    assert cfg.data.dataset == "../shared/imdb"
    assert cfg.train.epochs == 1.0 and cfg.train.lr == 2e-4  # YAML reads 2e-4 as a string
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.data.train_size is None and cfg.eval.calibrate is True


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=1", "unknown key 'train.epoch'"),
    ("trian.epochs=1", "unknown section 'trian'"),
    ("train.epochs=-1", "train.epochs"),
    ("train.batch_size=two", "train.batch_size must be a number"),
    ("train.batch_size=1.5", "whole number"),
    ("eval.calibrate=yes please", "eval.calibrate must be true or false"),
    ("prompt.template=no placeholder", "prompt.template must contain {text}"),
    ("prompt.label_words=[Good]", "at least two"),
    ("prompt.truncation=middle", "prompt.truncation"),
    ("model.dtype=float8", "model.dtype"),
    ("eval.calibrate=true", "data.val_size above 0"),
    ("epochs=1", "section.key"),
    ("train.epochs", "section.key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UserError, match=None) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(bad)


def test_saved_config_reloads(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "prompt.label_words=[bad, good]"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_a_stack_needs_label_probabilities():
    from sentiment_lora.errors import UserError

    with pytest.raises(UserError, match="stack.baseline combines label probabilities"):
        load_config(None, ["stack.baseline=tfidf", "data.val_size=10", "eval.method=generate"])


@pytest.mark.parametrize("name", ["tfidf-nb", "tfidf-nb-chars"])
def test_an_nb_weighted_stack_is_for_two_classes(name):
    from sentiment_lora.errors import UserError

    assert load_config(None, [f"stack.baseline={name}", "data.val_size=10"]).stack.baseline == name
    with pytest.raises(UserError, match=f"stack.baseline {name} is NB-weighted, which handles two classes only"):
        load_config(None, [f"stack.baseline={name}", "data.val_size=10", "prompt.label_words=[bad, meh, good]"])
    assert load_config(None, ["stack.baseline=tfidf", "data.val_size=10",
                              "prompt.label_words=[bad, meh, good]"]).stack.baseline == "tfidf"
    with pytest.raises(UserError, match="stack.baseline is 'tfidf-chars'; use tfidf, tfidf-nb, tfidf-nb-chars or null"):
        load_config(None, ["stack.baseline=tfidf-chars", "data.val_size=10"])
