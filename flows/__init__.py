"""Prefect flows that compose megu's pipeline stages, and the `megu` command line."""

import os

# Prefect and MLflow send telemetry to outside hosts unless these are set, and MLflow reads its
# switch at import time, so they are set before either is imported. megu opts out by default;
# set the variables explicitly to opt back in.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # The library's loggers, shown in each Prefect run's logs beside the tasks' own.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "megu_core",
}.items():
    os.environ.setdefault(_name, _value)
