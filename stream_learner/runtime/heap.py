"""A long-running process's heap and Python's cyclic garbage collector.

The collector's full collections traverse every container object alive, and every thread waits for
them (they hold the GIL). Most of a process's objects never die: the modules imported at start and
those torch imports on its first optimiser step, compiled kernels, the model's Python objects
(hundreds of thousands in a learner, tens of thousands in the scoring service). Traversing them made
garbage collection a sizeable share of the learner's time and gave the scoring service's requests
pauses of tens of milliseconds. `settle` moves them out of the collector's reach once they exist (the
learner after its first trained window, the scoring service once it has started); what is allocated
later is collected as before. At exit the heap is unfrozen, so that the interpreter's last collection
finalises everything (extensions such as triton's report objects they never saw freed).
"""

from __future__ import annotations

import atexit
import gc


def settle() -> None:
    """Collect once, then freeze what is alive (`gc.freeze`): later collections skip it."""
    gc.collect()
    gc.freeze()
    atexit.unregister(gc.unfreeze)  # once, however often a process settles
    atexit.register(gc.unfreeze)
