"""MLflow as the stack and the tests run it (``--app-name basic-auth``): anonymous calls change nothing.

The issue's probe moved the ``champion`` alias with one anonymous REST call and the served model changed; here
the same call is refused and the alias stays where it was.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deploy.credentials import MlflowCredentials
from deploy.processes import ManagedProcess
from deploy.stack import _registered_families
from shared.kit.schemas import CHAMPION_ALIAS, registered_name

ALIAS_API = "/api/2.0/mlflow/registered-models/alias"


def champion_of_rf(server: ManagedProcess, credentials: MlflowCredentials) -> str:
    response = httpx.get(
        f"{server.url}{ALIAS_API}",
        params={"name": registered_name("rf"), "alias": CHAMPION_ALIAS},
        auth=credentials.httpx_auth(),
        trust_env=False,
        timeout=30.0,
    )
    response.raise_for_status()
    return str(response.json()["model_version"]["version"])


@pytest.mark.parametrize(
    "auth",
    [None, httpx.BasicAuth("tests-admin", "wrong-password"), httpx.BasicAuth("nobody", "nothing")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_moving_or_deleting_an_alias_without_valid_credentials_is_refused(
    model_zoo: Any, mlflow_server: ManagedProcess, mlflow_credentials: MlflowCredentials, auth: httpx.Auth | None
) -> None:
    champion = model_zoo.aliases["rf"][CHAMPION_ALIAS]
    other = next(v.version for v in model_zoo.versions["rf"] if v.version != champion)
    with httpx.Client(base_url=mlflow_server.url, auth=auth, trust_env=False, timeout=30.0) as anonymous:
        moved_to = {"name": registered_name("rf"), "alias": CHAMPION_ALIAS, "version": other}
        move = anonymous.post(ALIAS_API, json=moved_to)
        assert move.status_code == 401
        delete = anonymous.request("DELETE", ALIAS_API, params={"name": registered_name("rf"), "alias": CHAMPION_ALIAS})
        assert delete.status_code == 401
        register = anonymous.post("/api/2.0/mlflow/registered-models/create", json={"name": "brain-tumor-intruder"})
        assert register.status_code == 401
        # Reading is refused too: the registry's contents are not public.
        assert anonymous.get("/api/2.0/mlflow/registered-models/search").status_code == 401
    assert champion_of_rf(mlflow_server, mlflow_credentials) == champion


def test_the_admin_credentials_are_accepted_and_the_ui_asks_a_browser_for_them(
    model_zoo: Any, mlflow_server: ManagedProcess, mlflow_credentials: MlflowCredentials
) -> None:
    with httpx.Client(base_url=mlflow_server.url, trust_env=False, timeout=30.0) as http:
        search = http.get("/api/2.0/mlflow/registered-models/search", auth=mlflow_credentials.httpx_auth())
        assert search.status_code == 200
        # The gateway's link to the MLflow UI still leads somewhere: the browser gets the login prompt.
        ui = http.get("/")
        assert ui.status_code == 401 and ui.headers["www-authenticate"].lower().startswith("basic")
        assert http.get("/", auth=mlflow_credentials.httpx_auth()).status_code == 200
        assert http.get("/health").status_code == 200  # health checks need no user


def test_the_stack_reads_the_registry_with_credentials(
    model_zoo: Any, mlflow_server: ManagedProcess, mlflow_credentials: MlflowCredentials
) -> None:
    assert _registered_families(mlflow_server.url, mlflow_credentials.httpx_auth()) == {
        "rf",
        "snn",
        "cnn",
        "mobilenetv2",
    }
    # Without an argument it takes MLflow's standard variables, as MLflow's own client does.
    assert "rf" in _registered_families(mlflow_server.url)
    with pytest.raises(httpx.HTTPStatusError):
        _registered_families(mlflow_server.url, httpx.BasicAuth(mlflow_credentials.username, "wrong"))
