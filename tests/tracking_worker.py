"""A worker for the concurrent-writer test, kept apart so spawned processes import little."""

from megu_core import tracking


def log_and_register(worker: int, checkpoint_dir: str) -> tuple[str, int]:
    """Log metrics and parameters and register one checkpoint version, in its own process."""
    with tracking.start_run("tiny", run_name=f"worker-{worker}") as run_id:
        for step in range(20):
            tracking.log_metrics(run_id, {"loss": 1.0 / (step + 1), "worker": worker}, step=step)
        tracking.log_config(run_id, {"worker": worker, "method": {"name": "megu"}})
        version = tracking.register_checkpoint(run_id, checkpoint_dir, "megu-tiny-resnet18")
    return run_id, version
