"""The registry, against a model dict; name suggestions and wildcards; plugin loading and its failures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from invertkit.core.errors import DuplicateNameError, UnknownNameError
from invertkit.core.hookspecs import hookimpl
from invertkit.core.plugins import load_plugins
from invertkit.core.registry import KINDS, Entry, KindRegistry, Registry, suggest

NAMES = st.sampled_from(["gmi", "gmj", "nes", "mi-face", "kedmi", "plg-mi", "rounding"]) | st.text(
    alphabet="abgim-*?", min_size=1, max_size=4
)
PLUGINS = st.sampled_from(["plug-a", "plug-b", "third-party"])


# ------------------------------------------------------------------------------ the state machine
class RegistryMachine(RuleBasedStateMachine):
    """``KindRegistry`` behaves like a dict ``name -> (obj, plugin)`` that refuses duplicates."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = KindRegistry("attack")
        self.model: dict[str, tuple[Any, str]] = {}

    names = Bundle("names")

    @rule(target=names, name=NAMES, plugin=PLUGINS)
    def add(self, name: str, plugin: str) -> str:
        obj = object()
        if name in self.model:
            first = self.model[name][1]
            with pytest.raises(DuplicateNameError) as info:
                self.registry.add(name, obj, plugin)
            message = str(info.value)
            assert f"'{first}'" in message and f"'{plugin}'" in message and name in message
        else:
            entry = self.registry.add(name, obj, plugin)
            assert entry == Entry("attack", name, obj, plugin)
            self.model[name] = (obj, plugin)
        return name

    @rule(name=st.one_of(names, NAMES))
    def getitem(self, name: str) -> None:
        if name in self.model:
            entry = self.registry[name]
            assert (entry.obj, entry.plugin, entry.kind, entry.name) == (*self.model[name], "attack", name)
            assert self.registry.get_obj(name) is self.model[name][0]
        else:
            with pytest.raises(UnknownNameError, match="Unknown attack"):
                self.registry[name]

    @rule(name=st.one_of(names, NAMES))
    def contains(self, name: str) -> None:
        assert (name in self.registry) == (name in self.model)

    @rule(name=st.one_of(names, NAMES))
    def remove(self, name: str) -> None:
        if name in self.model:
            entry = self.registry.remove(name)
            assert entry.obj is self.model.pop(name)[0]
        else:
            with pytest.raises(UnknownNameError):
                self.registry.remove(name)

    @rule(bad=st.sampled_from(["", None, 3]))
    def add_invalid_name(self, bad: Any) -> None:
        with pytest.raises(ValueError):
            self.registry.add(bad, object(), "plug-a")

    @invariant()
    def same_size(self) -> None:
        assert len(self.registry) == len(self.model)

    @invariant()
    def iteration_is_sorted(self) -> None:
        assert list(self.registry) == sorted(self.model)
        assert self.registry.names() == sorted(self.model)
        assert self.registry.resolve("*") == sorted(self.model)
        assert dict(self.registry.items()).keys() == self.model.keys()


RegistryMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestRegistryMachine = RegistryMachine.TestCase


# ------------------------------------------------------------------------------ suggestions, wildcards
def _filled(*names: str) -> KindRegistry:
    reg = KindRegistry("attack")
    for n in names:
        reg.add(n, object(), "plug-a")
    return reg


def test_suggest_the_nearest_name() -> None:
    assert suggest("gmj", ["gmi", "nes", "mi-face", "kedmi"]) == "gmi"
    assert suggest("mi-fcae", ["gmi", "nes", "mi-face"]) == "mi-face"
    assert suggest("zzzzzz", ["gmi", "nes"]) is None
    with pytest.raises(UnknownNameError, match="Did you mean 'gmi'"):
        _filled("gmi", "nes", "kedmi")["gmj"]


def test_resolve_wildcards_and_lists() -> None:
    reg = _filled("gmi", "gmi-dp", "kedmi", "nes", "mi-face")
    assert reg.resolve("gm*") == ["gmi", "gmi-dp"]
    assert reg.resolve("gm?") == ["gmi"]
    assert reg.resolve("*mi") == ["gmi", "kedmi"]
    assert reg.resolve("nes,gm*") == ["nes", "gmi", "gmi-dp"]
    assert reg.resolve("gmi, gm*") == ["gmi", "gmi-dp"]  # no duplicates, spaces ignored
    assert reg.resolve("zz*") == []
    assert reg.names("gm*,nes") == ["gmi", "gmi-dp", "nes"]
    with pytest.raises(UnknownNameError, match="Did you mean 'gmi'"):
        reg.resolve("gmj")


def test_registry_has_every_kind() -> None:
    reg = Registry()
    assert set(reg.kinds) == set(KINDS)
    with pytest.raises(UnknownNameError):
        reg["attacks"]
    registrar = reg.registrar("defense", "plug-a")

    class Named:
        name = "named"

    registrar(Named)
    registrar(object, name="explicit")
    assert reg["defense"]["named"].obj is Named and reg["defense"]["explicit"].plugin == "plug-a"


# ------------------------------------------------------------------------------ plugin loading
class _Gmi:
    name = "gmi"


class _OtherGmi:
    name = "gmi"


class _Nes:
    name = "nes-b"


def _plugin(**hooks: Any) -> SimpleNamespace:
    return SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def _attacks(*classes: type) -> Any:
    def invertkit_register_attacks(register: Any) -> None:
        for cls in classes:
            register(cls)

    return invertkit_register_attacks


def test_a_duplicate_name_fails_one_plugin_naming_both_and_the_other_keeps_working() -> None:
    first = _plugin(invertkit_register_attacks=_attacks(_Gmi))
    second = _plugin(invertkit_register_attacks=_attacks(_Nes, _OtherGmi))
    plugins = load_plugins(use_entry_points=False, extra=[("plug-a", first), ("plug-b", second)])
    failed = plugins.failures()
    assert len(failed) == 1, [(i.name, i.status, i.error) for i in plugins.infos.values()]
    loser = failed[0]
    winner = "plug-a" if loser.name == "plug-b" else "plug-b"
    assert "DuplicateNameError" in loser.error and "'plug-a'" in loser.error and "'plug-b'" in loser.error
    assert loser.registered == []
    assert plugins.infos[winner].status == "loaded"
    entry = plugins.registry["attack"]["gmi"]
    assert entry.plugin == winner
    assert plugins.get("attack", "gmi") is (_Gmi if winner == "plug-a" else _OtherGmi)
    # whatever the failed plugin had registered is withdrawn
    assert ("nes-b" in plugins.registry["attack"]) == (winner == "plug-b")


def test_the_second_plugin_to_register_a_name_is_the_one_that_fails() -> None:
    first = _plugin(invertkit_register_attacks=_attacks(_Gmi))
    second = _plugin(invertkit_register_attacks=_attacks(_Nes, _OtherGmi))
    plugins = load_plugins(use_entry_points=False, extra=[("plug-a", first), ("plug-b", second)])
    assert plugins.infos["plug-b"].status == "failed"
    assert plugins.infos["plug-a"].status == "loaded"
    assert plugins.get("attack", "gmi") is _Gmi
    assert "nes-b" not in plugins.registry["attack"]


def test_a_plugin_whose_hook_raises_has_its_registrations_withdrawn() -> None:
    class _Keep:
        name = "keep"

    class _Gone:
        name = "gone"

    class _GoneDefense:
        name = "gone-defense"

    def broken_metrics(register: Any) -> None:
        raise RuntimeError("metric hook exploded")

    def broken_defenses(register: Any) -> None:
        register(_GoneDefense)
        raise RuntimeError("defense hook exploded")

    good = _plugin(invertkit_register_attacks=_attacks(_Keep))
    late = _plugin(invertkit_register_attacks=_attacks(_Gone), invertkit_register_metrics=broken_metrics)
    partial = _plugin(invertkit_register_defenses=broken_defenses)
    plugins = load_plugins(use_entry_points=False, extra=[("good", good), ("late", late), ("partial", partial)])

    assert plugins.infos["good"].status == "loaded" and plugins.get("attack", "keep") is _Keep
    for name, message in (("late", "metric hook exploded"), ("partial", "defense hook exploded")):
        info = plugins.infos[name]
        assert info.status == "failed" and "RuntimeError" in info.error and message in info.error
        assert info.registered == []
    # registered in an earlier kind, withdrawn when a later hook failed
    assert "gone" not in plugins.registry["attack"]
    assert "gone-defense" not in plugins.registry["defense"]
    assert {i.name for i in plugins.failures()} == {"late", "partial"}


def test_a_plugin_with_an_invalid_hook_fails_to_register() -> None:
    def invertkit_register_attacks(register: Any, unexpected: Any) -> None:  # not in the hook spec
        raise AssertionError("never called")

    plugins = load_plugins(
        use_entry_points=False,
        extra=[("odd", _plugin(invertkit_register_attacks=invertkit_register_attacks)), ("good", _plugin(
            invertkit_register_attacks=_attacks(_Gmi)))],
    )
    assert plugins.infos["odd"].status == "failed" and "unexpected" in plugins.infos["odd"].error
    assert plugins.get("attack", "gmi") is _Gmi
