-- Run once by the postgres image on an empty data folder (compose): MLflow's basic-auth keeps its users in a
-- database of their own, apart from the tracking store (both use Alembic, each with its own version table).
CREATE DATABASE mlflow_auth;
-- The audit trail of the classifications answered (the gateway's and inference's records, docs/reliability.md).
CREATE DATABASE audit;
