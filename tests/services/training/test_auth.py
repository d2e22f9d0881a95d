"""Who may start training: the bearer token of POST /v1/training-runs, and the data roots a request may name.

In-process apps run the service's real routes with a run function that only records what it was asked (no
training starts); one real uvicorn process checks that the token and the roots are read from the environment.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deploy.processes import ManagedProcess, free_port, start_service
from services.training.config import TrainingSettings
from services.training.main import create_app
from services.training.options import FamilyProgress, TrainingOptions
from shared.core.dataset import SAMPLE_DATA_DIR

TOKEN = "training-token-for-tests"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"families": ["rf"], "search": "none", "register_models": False}


class RecordedRuns:
    """The service's run seam: remembers the options of every run it was given, trains nothing."""

    def __init__(self) -> None:
        self.options: list[TrainingOptions] = []

    def __call__(self, options: TrainingOptions, settings: TrainingSettings, report: Any) -> list[FamilyProgress]:
        self.options.append(options)
        return []


@pytest.fixture
def recorded() -> RecordedRuns:
    return RecordedRuns()


@pytest.fixture
def make_client(tmp_path: Path, unused_url: str, recorded: RecordedRuns) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        defaults = {"tracking_uri": unused_url, "cache_dir": tmp_path / "cache", "report_dir": tmp_path / "reports"}
        client = TestClient(
            create_app(TrainingSettings(**{**defaults, **settings}), run_function=recorded),
            base_url="http://127.0.0.1",
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.manager.wait(10)
        client.__exit__(None, None, None)


def test_no_token_configured_disables_starting_runs(make_client: Callable[..., TestClient], recorded) -> None:  # noqa: ANN001
    client = make_client()
    for headers in ({}, RIGHT, {"Authorization": "Bearer "}):
        response = client.post("/v1/training-runs", json=BODY, headers=headers)
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "AUTH_DISABLED" and "BT_TRAINING_API_TOKEN" in error["message"]
    assert client.get("/v1/training-runs").json() == [] and recorded.options == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
    ids=["missing", "wrong", "basic-scheme", "no-scheme"],
)
def test_a_missing_or_wrong_token_is_401_and_starts_nothing(
    make_client: Callable[..., TestClient], recorded: RecordedRuns, headers: dict[str, str]
) -> None:
    client = make_client(api_token=TOKEN)
    response = client.post("/v1/training-runs", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "UNAUTHORIZED"
    # Checked before the body: an anonymous caller learns nothing about what a valid request looks like.
    invalid = client.post("/v1/training-runs", json={"families": ["xgboost"]}, headers=headers)
    assert invalid.status_code == 401
    assert client.get("/v1/training-runs").json() == [] and recorded.options == []


def test_the_right_token_starts_the_run(make_client: Callable[..., TestClient], recorded: RecordedRuns) -> None:
    client = make_client(api_token=TOKEN)
    response = client.post("/v1/training-runs", json=BODY, headers=RIGHT)
    assert response.status_code == 202, response.text
    client.app.state.manager.wait(10)
    assert [options.register_models for options in recorded.options] == [False]
    # Reading runs changes nothing: it needs no token.
    assert [run["id"] for run in client.get("/v1/training-runs").json()] == [response.json()["id"]]


def test_the_schema_declares_the_token_on_the_route_that_starts_runs(make_client: Callable[..., TestClient]) -> None:
    paths = make_client(api_token=TOKEN).get("/openapi.json").json()["paths"]
    start = paths["/v1/training-runs"]["post"]
    assert {"401", "403"} <= set(start["responses"]) and start["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/v1/training-runs"]["get"]


# -- data roots ------------------------------------------------------------------------------------


@pytest.fixture
def outside_dataset(tmp_path: Path) -> Path:
    """A real, trainable image folder that lies outside the configured roots."""
    folder = tmp_path / "outside" / "scans"
    for label in ("glioma", "notumor"):
        (folder / label).mkdir(parents=True)
        for image in sorted((SAMPLE_DATA_DIR / label).iterdir())[:3]:
            shutil.copy(image, folder / label / image.name)
    return folder


def test_a_data_dir_outside_the_roots_gets_one_answer_whether_it_exists_or_not(
    make_client: Callable[..., TestClient], recorded: RecordedRuns, tmp_path: Path, outside_dataset: Path
) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "link-out").symlink_to(outside_dataset, target_is_directory=True)
    client = make_client(api_token=TOKEN, data_roots=[root])
    probes = {
        "existing dataset": str(outside_dataset),
        "existing system folder": "/etc",
        "existing file": "/etc/hostname",
        "missing": "/definitely/not/here",
        "missing under an existing folder": str(tmp_path / "nothing-here"),
        "dot-dot out of the root": f"{root}/inside/../../outside/scans",
        "symbolic link out of the root": str(root / "inside" / "link-out"),
        "relative": "shared/sample_data",
        "unknown user": "~no-such-user-here/scans",
    }
    answers = {}
    for name, data_dir in probes.items():
        response = client.post("/v1/training-runs", json={**BODY, "data_dir": data_dir}, headers=RIGHT)
        error = response.json()["error"]
        answers[name] = (response.status_code, error["code"], error["message"])
    assert len(set(answers.values())) == 1, answers
    status, code, message = next(iter(answers.values()))
    assert (status, code) == (422, "INVALID_DATA_FOLDER") and "BT_TRAINING_DATA_ROOTS" in message
    assert str(tmp_path) not in message
    assert recorded.options == []


def test_a_data_dir_under_a_root_is_used(
    make_client: Callable[..., TestClient], recorded: RecordedRuns, tmp_path: Path
) -> None:
    client = make_client(api_token=TOKEN, data_roots=[tmp_path / "unused", SAMPLE_DATA_DIR.parent])
    response = client.post("/v1/training-runs", json={**BODY, "data_dir": str(SAMPLE_DATA_DIR)}, headers=RIGHT)
    assert response.status_code == 202, response.text
    client.app.state.manager.wait(10)
    assert [options.data_dir for options in recorded.options] == [SAMPLE_DATA_DIR.resolve()]
    # Inside a root the service may say what is wrong with the folder.
    missing = client.post("/v1/training-runs", json={**BODY, "data_dir": str(SAMPLE_DATA_DIR / "nope")}, headers=RIGHT)
    assert missing.status_code == 422 and "does not exist" in missing.json()["error"]["message"]


def test_the_default_roots_are_the_sample_and_the_state_folders_data() -> None:
    assert TrainingSettings().data_roots == [SAMPLE_DATA_DIR, Path("var/data")]


# -- as a real process -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    state = tmp_path_factory.mktemp("training-auth")
    env = {
        "BT_TRAINING_API_TOKEN": TOKEN,
        "BT_TRAINING_DATA_ROOTS": f"{state / 'data'},{state / 'more'}",
        "BT_TRAINING_TRACKING_URI": "http://127.0.0.1:9",
        "BT_TRAINING_CACHE_DIR": str(state / "cache"),
    }
    server = start_service("training", free_port(), env, state / "training.log")
    yield server
    server.stop()


def test_a_real_process_reads_its_token_and_roots_from_the_environment(training_process: ManagedProcess) -> None:
    with httpx.Client(base_url=training_process.url, trust_env=False, timeout=30.0) as http:
        anonymous = http.post("/v1/training-runs", json=BODY)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        outside = http.post("/v1/training-runs", json={**BODY, "data_dir": str(SAMPLE_DATA_DIR)}, headers=RIGHT)
        assert outside.status_code == 422 and "BT_TRAINING_DATA_ROOTS" in outside.json()["error"]["message"]
        assert http.get("/v1/training-runs").json() == []
