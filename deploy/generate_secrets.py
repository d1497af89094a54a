"""Generate the deployment's secrets, one file each, in a folder only its owner can open (0700).

    python3 deploy/generate_secrets.py [--dir deploy/secrets]

Existing files are kept (run it again to add what is missing, never to rotate by accident: delete a file to
get a new value). Each service mounts only the secrets its role needs (compose.yaml's `secrets:`, Kubernetes
Secrets built from the same files). The files are readable by their owner's containers: a container runs as
its own user, which is not the host's, so the folder, not the file mode, is what keeps them owner-only on the
host. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

NAMES = (
    "postgres_password",  # PostgreSQL's superuser: the first start only
    "mlflow_db_password",  # the tracking server's role
    "writer_db_password",  # the pipeline's and the monitor's role in the prediction-log database
    "api_db_password",  # the API's role: read and insert the log's rows, nothing more
    "tracking_admin_password",  # the tracking server's admin account: creates the two below, nothing else
    "tracking_writer_password",  # the pipeline and the monitor: register, move aliases
    "tracking_reader_password",  # the API: read the registry
    "tracking_flask_secret",  # the tracking server's session signing key
    "feedback_token",  # the default labeller's bearer token of POST /feedback
    "admin_token",  # the bearer token of POST /admin/reload
    "client_token",  # the team's own client of POST /predict (send it as a bearer token)
)
CLIENTS = "predict_tokens"
"""The API's HOUSING_PREDICT_TOKENS: ``team=<client_token>``; add ``name=token`` pairs for more clients."""


def generate(folder: Path) -> list[str]:
    """Write every missing secret to ``folder`` (created 0700); the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    written = []
    for name in NAMES:
        path = folder / name
        if path.exists():
            continue
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
        written.append(name)
    if not (folder / CLIENTS).exists():
        client = (folder / "client_token").read_text().strip()
        descriptor = os.open(folder / CLIENTS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(descriptor, "w") as file:
            file.write(f"team={client}")
        written.append(CLIENTS)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(__file__).resolve().parent / "secrets",
        help="Where the secrets go [default deploy/secrets]",
    )
    args = parser.parse_args()
    written = generate(args.dir)
    kept = len(NAMES) + 1 - len(written)
    print(f"{len(written)} secret(s) written to {args.dir} (an owner-only folder); {kept} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
