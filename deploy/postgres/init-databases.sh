#!/bin/bash
# PostgreSQL's first start (the official image runs /docker-entrypoint-initdb.d/*.sh as its superuser, on an
# empty data folder only): one role per use, each with its own password (from the secret files), and one
# database per store.
#   mlflow          owns the tracking store (mlflow) and the tracking server's accounts (mlflow_auth)
#   housing_writer  owns the prediction-log database (predictions): the pipeline and the monitor
#   housing_api     may connect to predictions only; `python -m housing.store.provision --grant-to
#                   housing_api` then grants it reading and inserting the log's two tables, reading the
#                   labellers' token digests and moving the intervals' state, nothing else
# The superuser is used here only.
set -euo pipefail
secret() { tr -d '\n' < "/run/secrets/$1"; }
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  -v mlflow_password="$(secret mlflow_db_password)" \
  -v writer_password="$(secret writer_db_password)" \
  -v api_password="$(secret api_db_password)" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE housing_writer LOGIN PASSWORD :'writer_password';
CREATE ROLE housing_api LOGIN PASSWORD :'api_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE predictions OWNER housing_writer;
REVOKE ALL ON DATABASE mlflow, mlflow_auth, predictions FROM PUBLIC;
GRANT CONNECT ON DATABASE mlflow, mlflow_auth TO mlflow;
GRANT CONNECT ON DATABASE predictions TO housing_writer, housing_api;
\connect predictions
ALTER SCHEMA public OWNER TO housing_writer;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO housing_api;
SQL
