"""A claimer for the concurrent-claim test, kept apart so spawned processes import little."""

import time
from pathlib import Path
from threading import Barrier

from megu_core.request_queue import RequestQueue


def claim_all(folder: str, start: Barrier, pause_s: float) -> list[str]:
    """Wait for every claimer at `start`, then claim requests until none is pending.

    Each claim is followed by a `pause_s` sleep, as a worker would spend time processing it,
    so that the claimers interleave.
    """
    queue = RequestQueue(Path(folder))
    start.wait()
    claimed = []
    while (request := queue.claim_next()) is not None:
        claimed.append(request.request_id)
        time.sleep(pause_s)
    return claimed
