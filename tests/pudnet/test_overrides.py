"""pudnet.overrides: dicts and key=value strings into typed config dataclasses; one-line errors name the field."""
from dataclasses import dataclass, field

import pytest

from pudnet.overrides import CONFIG, apply_overrides, from_dict


@dataclass(frozen=True)
class Inner:
    __pydantic_config__ = CONFIG
    count: int = 1
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"count={self.count}: expected >= 0")


@dataclass(frozen=True)
class Outer:
    __pydantic_config__ = CONFIG
    inner: Inner = field(default_factory=Inner)
    name: str = "x"
    flag: bool = False
    lr: float = 0.1
    kwargs: dict = field(default_factory=dict)


def test_values_are_coerced_to_the_declared_types():
    cfg = from_dict(Outer, {"inner": {"count": "3", "sizes": ["4", 5]}, "name": 7, "flag": "yes", "lr": "1e-3"})
    assert cfg == Outer(Inner(3, (4, 5)), "7", True, 1e-3)
    for text, value in (("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("no", False)):
        assert apply_overrides(Outer(), [f"flag={text}"]).flag is value


def test_overrides_take_comma_or_json_lists_json_dicts_and_nested_keys():
    assert apply_overrides(Outer(), ["inner.sizes=7,8"]).inner.sizes == (7, 8)
    assert apply_overrides(Outer(), ["inner.sizes=[9]", "inner.count=2"]).inner == Inner(2, (9,))
    assert apply_overrides(Outer(), ["inner.sizes="]).inner.sizes == ()
    assert apply_overrides(Outer(), ['kwargs={"depth": 3}']).kwargs == {"depth": 3}
    assert apply_overrides(Outer(), ['inner={"count": 4}']).inner == Inner(4)


@pytest.mark.parametrize("overrides, message", [
    (["inner.count=1.5"], r"^inner.count='1.5': Input should be a valid integer"),
    (["flag=maybe"], r"^flag='maybe': Input should be a valid boolean"),
    (["lr=abc"], r"^lr='abc': Input should be a valid number"),
    (["inner.count=-1"], r"^inner: count=-1: expected >= 0$"),
    (["inner.sizes=1,a"], r"^inner.sizes.1='a': Input should be a valid integer"),
    (["nope=1"], r"^override 'nope=1': unknown key 'nope'; known: \['flag', 'inner', 'kwargs', 'lr', 'name'\]$"),
    (["inner.nope=1"], r"unknown key 'inner.nope'; known: \['count', 'sizes'\]$"),
    (["name.x=1"], r"'name' is not a nested config"),
    (["kwargs={bad"], r"^override 'kwargs=\{bad': not JSON"),
    (["flag"], r"expected key=value"),
])
def test_bad_overrides_raise_one_line_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        apply_overrides(Outer(), overrides)
    assert "\n" not in str(info.value) and "pydantic" not in str(info.value)


def test_unknown_and_ill_typed_dict_keys_raise_at_any_depth():
    with pytest.raises(ValueError, match=r"^unknown Outer key 'inner.nope'; known: \['count', 'sizes'\]$"):
        from_dict(Outer, {"inner": {"nope": 1}})
    with pytest.raises(ValueError, match=r"^inner.count=1.5: .*fractional part; flag=2: .*valid boolean"):
        from_dict(Outer, {"inner": {"count": 1.5}, "flag": 2})
