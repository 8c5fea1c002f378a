"""In a serving process one thread drives the cores' OpenMP workers: the generation thread.

Why: libgomp gives every thread that opens a parallel region its own pool of workers, and once the
pools together hold more threads than there are cores, its workers stop spinning between regions (the
"throttled" spin count; GOMP_SPINCOUNT cannot raise it), so each of a decode step's ~250 ops pays a
futex wake-up. Measured, SmolLM2-135M with four adapters, one row, 2 idle cores: 19.7 ms a step on a
thread that alone had run torch; 30-35 ms once the main thread had run any parallel op before (loading
the model is enough), as it did in `qeforge serve`. So the shim's other torch work (loading a snapshot
with its parity check, exporting MiniLM) runs with one intra-op thread, which starts no workers, and
the generation thread claims the process's count for itself.
"""

from __future__ import annotations

import contextlib


def intra_op_threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def one_intra_op_thread():
    """torch on this thread runs on one intra-op thread inside the block; the count is restored after."""
    import torch

    before = torch.get_num_threads()  # also initializes this thread's count, so nothing resets it later
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def claim_intra_op_threads(n: int) -> None:
    """torch on this thread (the generation thread) runs on n intra-op threads from now on."""
    import torch

    torch.get_num_threads()  # a thread's first parallel op sets its count from the last one set anywhere
    torch.set_num_threads(n)
