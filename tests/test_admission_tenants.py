"""Tenants from the config: named tenants or plain keys, their classes, bad input named."""

from __future__ import annotations

from typing import Any

import pytest

from router.admission.tenants import (
    ANONYMOUS,
    TenantConfigError,
    TenantDirectory,
    effective_class,
    tenant_of,
)
from router.config import AdmissionSettings, RouterSettings
from services.settings import ConfigError, load_settings

ADMISSION = AdmissionSettings(classes=("interactive", "batch"))


def settings(api_keys: list[Any], **extra: Any) -> RouterSettings:
    return load_settings(RouterSettings, None, http={"api_keys": api_keys}, **extra)


def directory(api_keys: list[Any], environ: dict[str, str] | None = None) -> TenantDirectory:
    loaded = settings(api_keys)
    return TenantDirectory.build(loaded.http.api_keys, loaded.admission, environ or {})


def test_named_tenants_carry_class_weight_limits_and_models() -> None:
    tenants = directory(
        [
            {"name": "app", "key": "k-app", "priority": "interactive", "weight": 4, "rpm": 60},
            {"name": "etl", "key_env": "ETL_KEY", "priority": "batch", "max_queued": 0,
             "models": ["m:1b"]},
        ],
        {"ETL_KEY": "k-etl"},
    )  # fmt: skip
    app = tenants.identify(b"Bearer k-app")
    etl = tenants.identify(b"Bearer k-etl")
    assert app is not None
    assert etl is not None
    assert (app.name, app.priority, app.weight, app.limits.rpm) == ("app", "interactive", 4, 60)
    assert (etl.name, etl.priority, etl.limits.max_queued) == ("etl", "batch", 0)
    assert etl.may_use("m:1b")
    assert not etl.may_use("m:70b")
    assert app.may_use("anything")
    assert tenants.identify(b"Bearer nope") is None
    assert tenants.identify(b"") is None
    assert app.scope == tenant_of("Bearer k-app", keys_configured=True)


def test_a_plain_list_of_keys_keeps_working_one_tenant_per_key() -> None:
    tenants = directory(["k1", "k2"])
    one, two = tenants.identify(b"Bearer k1"), tenants.identify(b"Bearer k2")
    assert one is not None
    assert two is not None
    assert (one.name, two.name) == ("key-0", "key-1")
    assert one.priority == two.priority == "interactive"  # the default class
    assert one.scope != two.scope


def test_no_keys_is_one_anonymous_tenant_whoever_asks() -> None:
    tenants = directory([])
    assert not tenants.keys_configured
    for header in (b"", b"Bearer whatever"):
        found = tenants.identify(header)
        assert found is not None
        assert found.name == ANONYMOUS


def test_the_default_class_is_configurable() -> None:
    loaded = settings(["k"], admission={"classes": ["gold", "bronze"], "default_class": "bronze"})
    tenants = TenantDirectory.build(loaded.http.api_keys, loaded.admission, {})
    found = tenants.identify(b"Bearer k")
    assert found is not None
    assert found.priority == "bronze"


@pytest.mark.parametrize(
    ("api_keys", "admission", "named"),
    [
        ([{"name": "a", "key": "k", "priority": "urgent"}], {}, "http.api_keys[0].priority"),
        ([{"name": "a", "key": "k", "weight": 0}], {}, "weight"),
        ([{"name": "a", "key": "k", "weight": -1}], {}, "weight"),
        ([{"name": "a", "key": "k", "rpm": -1}], {}, "rpm"),
        ([{"name": "a", "key": "k", "tpm": -5}], {}, "tpm"),
        ([{"name": "a", "key": "k", "max_concurrent": -1}], {}, "max_concurrent"),
        ([{"name": "a", "key": "k", "max_queued": -1}], {}, "max_queued"),
        ([{"name": "a"}], {}, "needs a key"),
        ([{"name": "a", "key": "k", "key_env": "K"}], {}, "not both"),
        ([{"name": "a", "key": "k"}, {"name": "b", "key": "k"}], {}, "http.api_keys[1].key"),
        ([{"name": "a", "key": "k"}, {"name": "a", "key": "j"}], {}, "http.api_keys[1].name"),
        (["k", {"name": "b", "key": "k"}], {}, "http.api_keys[1].key"),
        ([], {"classes": ["a", "a"]}, "classes"),
        ([], {"default_class": "gold"}, "default_class"),
        ([{"name": "a", "key": "k", "surprise": 1}], {}, "surprise"),
    ],
)
def test_bad_tenants_fail_at_start_naming_the_field(
    api_keys: list[Any], admission: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        settings(api_keys, admission=admission)
    assert named in str(refused.value)
    assert "'k'" not in str(refused.value)  # a key is never echoed


def test_duplicate_keys_through_the_environment_are_refused_naming_the_entry() -> None:
    entries = [{"name": "a", "key": "same"}, {"name": "b", "key_env": "B_KEY"}]
    with pytest.raises(TenantConfigError, match=r"api_keys\[1\]"):
        directory(entries, {"B_KEY": "same"})


def test_an_unset_key_variable_is_refused_naming_it() -> None:
    with pytest.raises(TenantConfigError, match="B_KEY"):
        directory([{"name": "b", "key_env": "B_KEY"}])


@pytest.mark.parametrize(
    ("tenant_class", "asked", "runs_in", "note"),
    [
        ("interactive", None, "interactive", ""),
        ("interactive", "batch", "batch", "lowered to batch by x-priority"),
        ("interactive", "BATCH ", "batch", "lowered to batch by x-priority"),
        ("batch", "interactive", "batch", "above the tenant's class"),
        ("batch", "batch", "batch", ""),
        ("batch", "urgent", "batch", "not a class"),
    ],
)
def test_a_request_may_lower_its_class_never_raise_it(
    tenant_class: str, asked: str | None, runs_in: str, note: str
) -> None:
    effective, said = effective_class(tenant_class, asked, ADMISSION)
    assert effective == runs_in
    assert note in said
    assert bool(said) == bool(note)


def test_a_tenant_is_found_by_its_key_in_either_header() -> None:
    tenants = directory([{"name": "app", "key": "k-app"}])
    by_bearer = tenants.identify(b"Bearer k-app")
    by_api_key = tenants.identify(b"", b"k-app")
    assert by_bearer is not None
    assert by_api_key is not None
    assert by_bearer.name == by_api_key.name == "app"
    assert tenants.identify(b"", b"wrong") is None
