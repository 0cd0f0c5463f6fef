"""Typed configs: YAML sections, --set overrides, clear errors for unknown keys and bad types."""

from __future__ import annotations

import pytest

from qarm.config import Config, load_config, resolve_config_path
from qarm.errors import ConfigError


def test_builtin_configs_load_and_validate():
    demo = load_config("demo")
    ml = load_config("movielens-100k")
    assert demo.data.source == "synthetic"
    assert ml.data.source == "movielens"
    assert ml.data.path.endswith("movielens-100k")
    assert resolve_config_path("demo").name == "demo.yaml"


def test_set_overrides_nested_values_with_yaml_types():
    cfg = load_config("demo", ["rank.epochs=7", "rank.seeds=[3, 4]", "data.synthetic.n_users=10",
                               "align.learnable_temperature=false", "data.path=/x/y"])
    assert cfg.rank.epochs == 7
    assert cfg.rank.seeds == [3, 4]
    assert cfg.data.synthetic.n_users == 10
    assert cfg.align.learnable_temperature is False
    assert cfg.data.path == "/x/y"


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; a float field still takes it, from --set and from a file
    cfg = load_config("demo", ["rank.lr=1e-4", "align.tower_lr=2e-05"])
    assert cfg.rank.lr == 1e-4 and cfg.align.tower_lr == 2e-05
    path = tmp_path / "c.yaml"
    path.write_text("rank:\n  lr: 3e-3\n")
    assert load_config(path).rank.lr == 3e-3
    with pytest.raises(ConfigError, match="rank.lr: expected a number, got 'fast'"):
        load_config("demo", ["rank.lr=fast"])


def test_unknown_key_names_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["rank.epoch=2"])
    msg = str(err.value)
    assert "epoch" in msg and "epochs" in msg and "batch_size" in msg


def test_unknown_section_lists_sections(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rnak:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "rnak" in str(err.value) and "rank" in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("rank.epochs=many", "expected an integer"),
    ("align.fusion=attention", "not one of"),
    ("rank.seeds=3", "expected a list"),
    ("align.learnable_temperature=maybe", "expected true or false"),
    ("rank.epochs", "expected section.key=value"),
])
def test_bad_values_are_rejected_with_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert fragment in str(err.value)


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="neither a file nor a built-in"):
        load_config("no-such-config.yaml")


def test_section_hash_changes_only_with_its_sections():
    a = load_config("demo")
    b = load_config("demo", ["rank.epochs=9"])
    assert a.section_hash(["data", "split"]) == b.section_hash(["data", "split"])
    assert a.section_hash(["rank"]) != b.section_hash(["rank"])
    c = load_config("demo", ["seed=5"])
    assert a.section_hash(["data"]) != c.section_hash(["data"])
    assert isinstance(Config().to_dict()["rank"], dict)
