"""The catalogue's rules (aliases, latest, the default version, the not-found errors), without MLflow."""

from __future__ import annotations

import pytest

from services.inference.catalog import Catalog, ModelRecord, VersionRecord
from shared.kit.errors import ErrorCode, ServiceError
from shared.kit.schemas import BEST_ALIAS, CHAMPION_ALIAS, LATEST_VERSION


def _record(name: str, versions: list[str], aliases: dict[str, str] | None = None) -> ModelRecord:
    records = {v: VersionRecord(v, run_id=f"run-{v}", source=f"s3://{name}/{v}", created_at=None) for v in versions}
    return ModelRecord(name, f"brain-tumor-{name}", records, dict(aliases or {}))


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(
        {
            "cnn": _record("cnn", ["1", "2", "10"]),
            "rf": _record("rf", ["1", "2"], {CHAMPION_ALIAS: "1", BEST_ALIAS: "2"}),
            "zeta": _record("zeta", ["3"]),
            "snn": _record("snn", ["1", "2"], {CHAMPION_ALIAS: "7"}),  # champion points at a deleted version
            "empty": _record("empty", []),
        }
    )


def test_versions_sort_numerically_newest_first(catalog: Catalog) -> None:
    assert catalog.models["cnn"].version_numbers() == ["10", "2", "1"]
    assert catalog.models["cnn"].latest_version() == "10"
    assert catalog.models["empty"].latest_version() is None


def test_names_put_the_known_families_first(catalog: Catalog) -> None:
    assert catalog.names() == ["rf", "snn", "cnn", "empty", "zeta"]


@pytest.mark.parametrize(
    ("model", "spec", "expected"),
    [
        ("rf", None, "1"),  # the champion wins over the latest version
        ("rf", "", "1"),
        ("rf", "  ", "1"),
        ("rf", CHAMPION_ALIAS, "1"),
        ("rf", BEST_ALIAS, "2"),
        ("rf", LATEST_VERSION, "2"),
        ("rf", "2", "2"),
        ("rf", " 2 ", "2"),
        ("rf", "02", "2"),  # leading zeros name the same number
        ("rf", "0001", "1"),
        ("cnn", None, "10"),  # no champion: the latest, by number rather than by text
        ("cnn", LATEST_VERSION, "10"),
        ("snn", None, "2"),  # a champion pointing at a missing version falls back to the latest
    ],
)
def test_resolve(catalog: Catalog, model: str, spec: str | None, expected: str) -> None:
    record, version = catalog.resolve(model, spec)
    assert record.short_name == model
    assert version.version == expected
    assert version.run_id == f"run-{expected}"
    assert catalog.has(model, spec)


@pytest.mark.parametrize(
    ("model", "spec"),
    [("rf", "3"), ("rf", "0"), ("rf", "staging"), ("rf", "Champion"), ("snn", CHAMPION_ALIAS), ("empty", None)],
)
def test_unknown_versions_and_aliases_are_version_not_found(catalog: Catalog, model: str, spec: str | None) -> None:
    assert catalog.models[model].resolve(spec) is None
    assert not catalog.has(model, spec)
    with pytest.raises(ServiceError) as caught:
        catalog.resolve(model, spec)
    assert caught.value.code is ErrorCode.VERSION_NOT_FOUND
    assert caught.value.status == 404


def test_version_not_found_names_what_exists(catalog: Catalog) -> None:
    with pytest.raises(ServiceError) as caught:
        catalog.resolve("rf", "staging")
    error = caught.value
    assert error.message == (
        "Model 'rf' has no version or alias 'staging'. Available versions: 2, 1; aliases: best -> 2, champion -> 1."
    )
    assert error.details == {"available_versions": ["2", "1"], "aliases": {"best": "2", "champion": "1"}}


def test_a_model_without_versions_says_so(catalog: Catalog) -> None:
    with pytest.raises(ServiceError) as caught:
        catalog.resolve("empty", None)
    assert caught.value.message == "Model 'empty' has no versions yet. Available versions: none."


def test_unknown_model_names_the_available_ones(catalog: Catalog) -> None:
    with pytest.raises(ServiceError) as caught:
        catalog.resolve("vgg16", "1")
    error = caught.value
    assert error.code is ErrorCode.MODEL_NOT_FOUND
    assert error.message == "Unknown model 'vgg16'. Available models: rf, snn, cnn, empty, zeta."
    assert error.details == {"available_models": ["rf", "snn", "cnn", "empty", "zeta"]}
    assert not catalog.has("vgg16", None)


def test_an_empty_catalogue_says_nothing_is_registered() -> None:
    with pytest.raises(ServiceError) as caught:
        Catalog({}).resolve("rf", None)
    assert "none registered yet" in caught.value.message


def test_aliases_by_version(catalog: Catalog) -> None:
    rf = _record("rf", ["1", "2"], {CHAMPION_ALIAS: "1", BEST_ALIAS: "1", "canary": "2"})
    assert rf.aliases_by_version() == {"1": [BEST_ALIAS, CHAMPION_ALIAS], "2": ["canary"]}
    assert catalog.models["cnn"].aliases_by_version() == {}


def test_default_version(catalog: Catalog) -> None:
    assert {name: record.default_version() for name, record in catalog.models.items()} == {
        "cnn": "10",
        "rf": "1",
        "zeta": "3",
        "snn": "2",
        "empty": None,
    }


def test_age_grows_from_the_fetch_time() -> None:
    assert Catalog({}, fetched_at=0.0).age_s() > Catalog({}).age_s()


def test_defaults_to_load_skip_models_without_versions_and_ensembles(catalog: Catalog) -> None:
    assert catalog.defaults() == ["rf", "snn", "cnn", "zeta"]  # "empty" has no version to load
    spec = VersionRecord("1", run_id="run-1", source="s3://ensemble/1", created_at=None, kind="ensemble")
    with_ensemble = Catalog(
        {**catalog.models, "ensemble": ModelRecord("ensemble", "brain-tumor-ensemble", {"1": spec}, {})}
    )
    assert "ensemble" not in with_ensemble.defaults()  # served through its members, no file of its own
