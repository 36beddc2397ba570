"""Plugin configs: round trips, ``key=value`` overrides, and errors that name the field."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from invertkit.core.errors import ConfigError
from invertkit.core.interfaces.config import ComponentConfig, build_config, parse_overrides, parse_value
from invertkit.core.interfaces.defense import Defense
from invertkit.plugins.defenses.gaussian_noise import GaussianNoise
from invertkit.plugins.defenses.label_only import LabelOnly
from invertkit.plugins.defenses.none import NoDefense
from invertkit.plugins.defenses.rounding import Rounding
from invertkit.plugins.defenses.topk import TopK

fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DEFENSES: tuple[type[Defense], ...] = (NoDefense, Rounding, TopK, GaussianNoise, LabelOnly)

#: a strategy for every field of every bundled defense's Config (the test below checks none is missing)
FIELDS: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("rounding", "decimals"): st.integers(0, 6),
    ("top-k", "k"): st.integers(1, 10**6),
    ("gaussian-noise", "sigma"): st.floats(0.0, 1e6, allow_nan=False),
    ("gaussian-noise", "clip"): st.floats(0.0, 1e6, allow_nan=False),
}

#: a value each bounded field must refuse
BAD_VALUES: dict[tuple[str, str], Any] = {
    ("rounding", "decimals"): 7,
    ("top-k", "k"): 0,
    ("gaussian-noise", "sigma"): -0.1,
    ("gaussian-noise", "clip"): "wide",
}


@st.composite
def configs(draw: Any, cls: type[Defense]) -> dict[str, Any]:
    fields = cls.Config.model_fields
    return {f: draw(FIELDS[(cls.name, f)]) for f in fields if draw(st.booleans())}


def test_every_config_field_has_a_strategy_and_a_description() -> None:
    for cls in DEFENSES:
        assert issubclass(cls.Config, ComponentConfig)
        for field, info in cls.Config.model_fields.items():
            assert (cls.name, field) in FIELDS, f"no strategy for {cls.name}.{field}"
            assert info.description
    assert set(FIELDS) >= set(BAD_VALUES)


@fast
@given(data=st.data(), cls=st.sampled_from(DEFENSES))
def test_configs_survive_dump_and_validate(data: st.DataObject, cls: type[Defense]) -> None:
    values = data.draw(configs(cls))
    config = cls(values).config
    assert isinstance(config, cls.Config)
    for key, value in values.items():
        assert getattr(config, key) == value
    assert cls.Config.model_validate(config.model_dump()) == config
    assert cls.Config.model_validate_json(config.model_dump_json()) == config
    assert cls.Config.model_validate(json.loads(config.model_dump_json())) == config
    # and a defense built from a dumped config is configured identically
    assert cls(config.model_dump()).config == config


@fast
@given(key=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), value=st.integers())
def test_overrides_parse_ints(key: str, value: int) -> None:
    assert parse_overrides([f"{key}={value}"]) == {key: value}
    assert type(parse_overrides([f"{key}={value}"])[key]) is int


@fast
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_overrides_parse_floats(value: float) -> None:
    text = repr(value)
    parsed = parse_overrides([f"sigma={text}"])["sigma"]
    assert parsed == value
    if "." in text or "e" in text:
        assert isinstance(parsed, float)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), ("null", None)])
def test_overrides_parse_json_literals(text: str, value: Any) -> None:
    assert parse_overrides([f"flag={text}"]) == {"flag": value}


@fast
@given(value=st.lists(st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.booleans(), max_size=5))
def test_overrides_parse_lists(value: list[Any]) -> None:
    assert parse_overrides([f"items={json.dumps(value)}"]) == {"items": value}


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@fast
@given(value=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12))
def test_overrides_keep_other_values_as_strings(value: str) -> None:
    value = value.strip()
    if not value or not _not_json(value):
        return
    assert parse_overrides([f"name={value}"]) == {"name": value}


def test_overrides_examples_and_errors() -> None:
    assert parse_overrides([" k = 3 ", "sigma=0.5", "mode=fast", "expr=a=b", "empty="]) == {
        "k": 3,
        "sigma": 0.5,
        "mode": "fast",
        "expr": "a=b",
        "empty": "",
    }
    assert parse_value("1e-3") == pytest.approx(1e-3) and math.isinf(parse_value("Infinity"))
    for bad in ("novalue", "=3", "  =x"):
        with pytest.raises(ConfigError, match="key=value"):
            parse_overrides([bad])


@pytest.mark.parametrize(("cls", "field"), [(c, f) for c in DEFENSES for f in c.Config.model_fields])
def test_a_bad_value_names_the_field(cls: type[Defense], field: str) -> None:
    bad = BAD_VALUES[(cls.name, field)]
    with pytest.raises(ConfigError) as info:
        cls({field: bad})
    message = str(info.value)
    assert f"'{field}'" in message and cls.name in message and repr(bad) in message
    with pytest.raises(ConfigError, match=field):
        build_config(cls.Config, {field: bad}, what="test")


@fast
@given(cls=st.sampled_from(DEFENSES), key=st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True))
def test_an_unknown_key_is_named(cls: type[Defense], key: str) -> None:
    if key in cls.Config.model_fields:
        return
    with pytest.raises(ConfigError) as info:
        cls({key: 1})
    message = str(info.value)
    assert f"unknown field '{key}'" in message
    for known in cls.Config.model_fields:
        assert known in message


def test_build_config_accepts_instances_and_other_models() -> None:
    config = Rounding.Config(decimals=3)
    assert build_config(Rounding.Config, config, what="x") is config
    assert build_config(Rounding.Config, None, what="x") == Rounding.Config()

    class Other(BaseModel):
        decimals: int = 4

    assert build_config(Rounding.Config, Other(), what="x").decimals == 4
    config = Rounding.Config(decimals=1)
    with pytest.raises(ValidationError, match="decimals"):  # validate_assignment: pydantic's own error
        config.decimals = 9
    assert config.decimals == 1
