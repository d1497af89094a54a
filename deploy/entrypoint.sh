#!/bin/sh
# The image's entrypoint: every HOUSING_*_FILE, MLFLOW_*_FILE and PG*_FILE variable in the environment
# becomes the variable without _FILE, read from the file it names; then the command runs. Secrets reach a
# container as files (compose secrets, Kubernetes Secret volumes), never as a value in the compose file,
# the image or a command line. Other *_FILE variables (SSL_CERT_FILE, ...) name files and are left alone.
set -eu
for variable in $(env | sed -n 's/^\(\(HOUSING_\|MLFLOW_\|PG\)[A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
  file=$(printenv "${variable}_FILE")
  if [ ! -r "$file" ]; then
    echo "error: ${variable}_FILE names $file, which cannot be read" >&2
    exit 2
  fi
  value=$(cat "$file")
  export "$variable=$value"
  unset "${variable}_FILE"
done
exec "$@"
