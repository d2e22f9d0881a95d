#!/bin/sh
# Starts `mlflow server --app-name basic-auth` with the arguments given (host, port, workers).
# The backend store, the artifact destination and the S3 endpoint come from MLflow's own variables
# (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_S3_ENDPOINT_URL), the admin account from
# MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD. Where basic-auth keeps its users can only be given
# in an ini file; its URI holds a password, so the file is written here, readable by this user only, from
# MLFLOW_AUTH_DATABASE_URI, and never baked into the image. Defaults as the launcher's (deploy/processes.py):
# an authenticated user may read (the admin may do everything, anonymous callers nothing), and a checked
# password is remembered 60 s per worker (so a rotated password is refused by every worker within a minute).
set -eu
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI: where basic-auth keeps its users (e.g. postgresql://...)}"
umask 077
config_dir=$(mktemp -d)
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
exec mlflow server --app-name basic-auth "$@"
