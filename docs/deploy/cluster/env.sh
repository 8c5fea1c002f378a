# Source this (`. docs/deploy/cluster/env.sh`) after filling in hosts and secrets: it points the
# unchanged qeforge Definitions at PostgreSQL (Dagster, MLflow) and an S3 API (LanceDB, MLflow artifacts).
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/docs/deploy/cluster}"              # holds dagster.yaml above
# dagster-postgres needs the psycopg2 driver named: SQLAlchemy 2.1 defaults to psycopg 3, whose server-side
# parameters break its NOTIFY.
export DAGSTER_PG_URL="${DAGSTER_PG_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/dagster}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-postgresql://postgres@127.0.0.1:5432/mlflow}"
export QEFORGE_MLFLOW_ARTIFACT_ROOT="${QEFORGE_MLFLOW_ARTIFACT_ROOT:-s3://qeforge/mlflow}"
export QEFORGE_LANCEDB_URI="${QEFORGE_LANCEDB_URI:-s3://qeforge/lancedb}"
# The S3 API: AWS's own variables, read by boto3 (MLflow) and by LanceDB's object store alike.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:?set the S3 access key}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:?set the S3 secret key}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_REGION="${AWS_REGION:-us-east-1}"
# Only for an S3-compatible server that is not AWS (MinIO, moto): its endpoint, and plain HTTP if it has no TLS.
# export AWS_ENDPOINT=http://127.0.0.1:9000 MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ALLOW_HTTP=true
