"""The deployment's files agree with each other and with the code: every Kubernetes manifest is valid for a
current Kubernetes release (offline schemas), and the image, compose.yaml, the manifests and `make serve` run
the same commands, on the same ports, with the same probe paths and the same settings; each service holds
only its role's credentials."""

from __future__ import annotations

import re
import runpy
import shlex
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from housing.api.main import SERVER_FLAGS, create_app
from housing.config.settings import PROJECT_DIR, Settings

KUBERNETES_VERSION = "1.37.0"
MANIFESTS = sorted((PROJECT_DIR / "deploy" / "kubernetes").glob("*.yaml"))
IMAGE_NAME = "california-housing"
API_PORT, TRACKING_PORT = 8000, 5000


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's ``!reset`` tag."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    return yaml.load((PROJECT_DIR / name).read_text(), Loader=ComposeLoader)


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def containers() -> dict[str, dict[str, Any]]:
    """Every container of every workload, by the workload's name."""
    found = {}
    for _, doc in documents():
        spec = doc.get("spec", {})
        template = spec.get("jobTemplate", {}).get("spec", spec).get("template")
        if template:
            [container] = template["spec"]["containers"]
            found[doc["metadata"]["name"]] = container
    return found


def env_names(env: dict[str, Any] | list[dict[str, Any]] | None) -> set[str]:
    if env is None:
        return set()
    return set(env) if isinstance(env, dict) else {item["name"] for item in env}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_is_valid_for_a_current_kubernetes_release(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_an_invalid_manifest_is_refused():
    deployment = next(doc for _, doc in documents() if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_image_is_the_same_everywhere_and_its_tag_is_the_version():
    version = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["version"]
    assert compose()["x-housing"]["image"] == "${HOUSING_IMAGE:-" + IMAGE_NAME + ":latest}"
    assert {container["image"] for container in containers().values()} == {f"{IMAGE_NAME}:{version}"}


def test_the_api_runs_with_the_same_flags_ports_and_probes_everywhere():
    assert {"/health", "/ready"} <= set(create_app(Settings()).openapi()["paths"])
    flags = list(SERVER_FLAGS)
    makefile = (PROJECT_DIR / "Makefile").read_text().splitlines()
    serve = next(line for line in makefile if "uvicorn app:app" in line)
    assert serve.rstrip().endswith(" ".join(flags))
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)
    assert cmd is not None and yaml.safe_load(cmd.group(1))[-len(flags) :] == flags
    assert f"EXPOSE {API_PORT}" in dockerfile and "/health" in dockerfile.split("HEALTHCHECK", 1)[1]
    composed = compose()["services"]["api"]
    assert composed["command"][-len(flags) :] == flags
    assert "/health" in " ".join(composed["healthcheck"]["test"])
    api = containers()["api"]
    assert api["command"][:2] == ["uvicorn", "app:app"] and api["command"][-len(flags) :] == flags
    assert api["ports"][0]["containerPort"] == API_PORT and f"--port={API_PORT}" in api["command"]
    probes = api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]
    assert probes == ("/ready", "/health")


def without_port(command: list[str]) -> list[str]:
    return [re.sub(r"=\$\{[A-Z_]+:-(\d+)\}$", r"=\1", part) for part in command]


def test_every_role_runs_the_same_command_in_compose_and_on_kubernetes():
    services, workloads = compose()["services"], containers()
    assert without_port(services["mlflow"]["command"]) == workloads["mlflow"]["command"]
    assert f"--port={TRACKING_PORT}" in workloads["mlflow"]["command"]
    assert services["init"]["command"] == workloads["provision"]["command"]
    assert services["pipeline"]["command"] == workloads["pipeline"]["command"]
    assert shlex.split(workloads["pipeline"]["command"][2]) == shlex.split(
        "python load_data.py && python preprocess.py && python train.py && python promote.py"
    )
    assert services["monitor"]["command"][:2] == workloads["monitor"]["command"] == ["python", "monitor.py"]
    assert (
        services["monitor"]["command"][2] == "--watch"
    )  # compose repeats the round; Kubernetes schedules it


def accepted_hosts(command: list[str]) -> list[str]:
    [flag] = [part for part in command if part.startswith("--allowed-hosts=")]
    return flag.removeprefix("--allowed-hosts=").split(",")


def test_the_tracking_server_accepts_the_host_name_its_clients_use():
    """MLflow answers 403 to a Host header it does not know (DNS rebinding): on a container network the
    clients reach the server by its service name, which the server must list, with and without a port."""
    services, workloads = compose()["services"], containers()
    config = next(doc["data"] for _, doc in documents() if doc["kind"] == "ConfigMap")
    composed = services["api"]["environment"]["MLFLOW_TRACKING_URI"]
    names = {
        "compose": (urlsplit(composed.replace("${HOUSING_MLFLOW_HOST:-mlflow}", "mlflow")).hostname, 5000),
        "kubernetes": (urlsplit(config["MLFLOW_TRACKING_URI"]).hostname, TRACKING_PORT),
    }
    for where, command in (
        ("compose", services["mlflow"]["command"]),
        ("kubernetes", workloads["mlflow"]["command"]),
    ):
        host, port = names[where]
        for header in (host, f"{host}:{port}", "127.0.0.1", f"127.0.0.1:{port}"):  # clients, health checks
            assert any(fnmatch(header, pattern) for pattern in accepted_hosts(command)), (where, header)


EXTERNAL = {
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PGPASSWORD",
    "PROMETHEUS_MULTIPROC_DIR",
    "POSTGRES_PASSWORD",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "HOUSING_API_PORT",
    "HOUSING_TRACKING_AUTH_DATABASE_URI",
    "HOUSING_TRACKING_ADMIN_PASSWORD",
    "HOUSING_TRACKING_WRITER_PASSWORD",
    "HOUSING_TRACKING_READER_PASSWORD",
}
"""The variables the deployment sets that are not settings: MLflow's and PostgreSQL's own, the API's port for
the health check, the Kubernetes manifests' database address, the tracking-server launcher's."""


def test_every_variable_the_deployment_sets_is_a_setting_or_a_known_one():
    settings = {f"HOUSING_{name.upper()}" for name in Settings.model_fields} | {"MLFLOW_TRACKING_URI"}
    names = set()
    for service in compose()["services"].values():
        names |= env_names(service.get("environment"))
    for container in containers().values():
        names |= env_names(container.get("env"))
    for _, doc in documents():
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
    unknown = {name for name in names if name.removesuffix("_FILE") not in settings | EXTERNAL}
    assert not unknown, unknown


def test_each_service_holds_only_the_credentials_of_its_role():
    services = compose()["services"]
    assert set(services["api"]["secrets"]) == {
        "tracking_reader_password",
        "api_db_password",
        "feedback_token",
        "admin_token",
        "predict_tokens",  # the clients' tokens it checks, not a client's own
    }
    assert services["api"]["environment"]["MLFLOW_TRACKING_USERNAME"] == "reader"
    assert services["api"]["environment"]["HOUSING_PREDICTION_LOG_URL"].startswith(
        "postgresql+psycopg://housing_api@"
    )
    for role in ("pipeline", "monitor"):
        assert set(services[role]["secrets"]) == {"tracking_writer_password", "writer_db_password"}
        assert services[role]["environment"]["MLFLOW_TRACKING_USERNAME"] == "writer"
    assert set(services["init"]["secrets"]) == {"writer_db_password"}
    holders = [
        name for name, service in services.items() if "postgres_password" in service.get("secrets", [])
    ]
    assert holders == ["postgres"]  # the superuser initialises, nothing else has its password
    admin = [
        name for name, service in services.items() if "tracking_admin_password" in service.get("secrets", [])
    ]
    assert admin == ["mlflow"]
    for name, service in services.items():
        for value in env_names(service.get("environment")):
            assert not re.search(r"://[^/@]*:[^/@]*@", str(service["environment"][value])), (name, value)
    workloads = containers()
    assert (
        workloads["api"]["env"][
            [e["name"] for e in workloads["api"]["env"]].index("MLFLOW_TRACKING_USERNAME")
        ]["value"]
        == "reader"
    )


def test_every_secret_compose_mounts_is_one_the_secrets_command_generates(tmp_path):
    generator = runpy.run_path(str(PROJECT_DIR / "deploy" / "generate_secrets.py"))
    written = set(generator["generate"](tmp_path / "secrets"))
    assert set(compose()["secrets"]) == written - {"client_token"}  # the team client's own, used from outside
    client = (tmp_path / "secrets" / "client_token").read_text()
    assert (tmp_path / "secrets" / "predict_tokens").read_text() == f"team={client}"
    assert generator["generate"](tmp_path / "secrets") == []  # existing secrets are kept


def test_the_image_runs_as_a_user_from_the_lock_with_a_health_check_and_labels():
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile
    assert "pip install --no-deps --require-hashes -r /tmp/runtime.lock" in dockerfile
    assert "/opt/venv/bin/pip check" in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, flags=re.MULTILINE)
    for label in ("source", "revision", "version"):
        assert f"org.opencontainers.image.{label}=" in dockerfile
    ignored = (PROJECT_DIR / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!tests/" not in ignored and "!.git" not in ignored


ENTRYPOINT = PROJECT_DIR / "deploy" / "entrypoint.sh"


def run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_the_entrypoint_reads_each_secret_file_into_its_variable_and_drops_the_file_variable(tmp_path):
    token, password = tmp_path / "token", tmp_path / "password"
    token.write_text("s3cret token\n")
    password.write_text("pg-pass")
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----")
    shown = run_entrypoint(
        {
            "HOUSING_FEEDBACK_TOKEN_FILE": str(token),
            "PGPASSWORD_FILE": str(password),
            "SSL_CERT_FILE": str(bundle),
        },
        "sh",
        "-c",
        'printf "%s|%s|%s|%s" "$HOUSING_FEEDBACK_TOKEN" "$PGPASSWORD" "${HOUSING_FEEDBACK_TOKEN_FILE-unset}" '
        '"$SSL_CERT_FILE"',
    )
    assert shown.returncode == 0, shown.stderr
    # command substitution strips the file's trailing newline; a file that is not a secret stays a path
    assert shown.stdout == f"s3cret token|pg-pass|unset|{bundle}"


def test_the_entrypoint_refuses_a_secret_file_it_cannot_read(tmp_path):
    refused = run_entrypoint({"HOUSING_ADMIN_TOKEN_FILE": str(tmp_path / "missing")}, "echo", "started")
    assert refused.returncode == 2
    assert "HOUSING_ADMIN_TOKEN_FILE" in refused.stderr and "cannot be read" in refused.stderr
    assert "started" not in refused.stdout
