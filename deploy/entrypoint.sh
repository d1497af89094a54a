#!/bin/sh
# The image's entrypoint: every NAME_FILE in the environment becomes NAME, read from that file, then the
# command runs. Secrets reach a container as files (compose secrets, Kubernetes Secret volumes): never as a
# value in the compose file, the image or a command line.
set -eu
for variable in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
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
