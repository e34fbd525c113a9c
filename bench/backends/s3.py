"""S3 backend vs raw boto3 (placeholder until the backend lands)."""

BACKEND_MODULE = "persistkit.backends.s3"
