"""Every choice- and range-valued key is checked when a config loads, whatever else is on."""

import dataclasses
import re
import typing

import pytest
import yaml
from conftest import TINY

from otdistill import config_rules
from otdistill.config import Config, load_config
from otdistill.config_reference import _comments
from otdistill.errors import UserError


def _override(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


@pytest.mark.parametrize("rule_key", list(config_rules.RULES))
def test_every_rule_rejects_a_bad_value_at_load_naming_the_key(rule_key):
    rule = config_rules.RULES[rule_key]
    key = rule_key.replace(".N", ".0")
    base = load_config(TINY)
    with pytest.raises(UserError) as err:
        load_config(TINY, [_override(key, rule.invalid(base))])
    message = str(err.value)
    assert f"{key}:" in message
    if isinstance(rule, config_rules.OneOf):  # the valid choices and the closest one
        assert all(str(o) in message for o in rule.options()) and "did you mean" in message
    # the defaults and the recipe's own value pass the rule
    for where, value in config_rules.values(base, rule_key):
        assert value is None or rule.problem(value, base) is None, where


def test_a_bad_value_of_a_feature_that_is_off_still_stops_the_load():
    cfg = load_config(TINY)
    assert cfg.sample.guidance.ot.weight == 0
    with pytest.raises(UserError, match="sample.guidance.ot.cost: must be one of l1, sqeuclidean, cosine, got 'l3'; "
                                        "did you mean 'l1'"):
        load_config(TINY, ["sample.guidance.ot.cost=l3"])


def test_every_problem_is_named_at_once():
    with pytest.raises(UserError, match=r"sample.init: .*; relabel.rule: .*; student.soft_labels: "):
        load_config(TINY, ["relabel.rule=ipc", "student.soft_labels=cached", "sample.init=proto"])


def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        item = (typing.get_args(tp) or [None])[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, key + ".")
        elif dataclasses.is_dataclass(item):
            yield from _fields(item, key + ".N.")
        else:
            yield key, tp, comments.get(f.name, "")


def test_every_key_documented_with_choices_or_a_count_has_a_rule():
    """A key whose comment lists choices (a | b) and every int key of a size or count is in the table,
    so a new key cannot slip past the load-time check."""
    missing = []
    for key, tp, comment in _fields(Config):
        listed = re.search(r"\w \| \w", comment) and tp in (str, int | str)
        counted = tp in (int, int | None) and not key.endswith("seed")
        if (listed or counted) and key not in config_rules.RULES:
            missing.append(key)
    assert not missing, f"add rules for {missing} to config_rules.RULES"
