"""Training FLOPs per step, counted on the real first step (reported beside parameter counts).

torch's `FlopCounterMode` also attributes FLOPs to modules through forward and gradient hooks,
and those hooks break `torch.autograd.grad` inside a step (SynDiff's R1 penalty raises "A leaf
node was passed to _will_engine_execute_node"). Only the total is reported here, so the
counter below keeps torch's dispatch-level counting and formulas and leaves the module
tracking out: the step's numerics are unchanged (the counter only observes each operator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

try:  # torch's dispatch mode behind FlopCounterMode (private; absent in some versions)
    from torch.utils.flop_counter import _FlopCounterMode
except ImportError:  # pragma: no cover - other torch versions: no count rather than a risk
    _FlopCounterMode = None


class _TotalFlops(FlopCounterMode):
    """FlopCounterMode without per-module attribution (no module hooks)."""

    def __enter__(self) -> _TotalFlops:
        self.flop_counts.clear()
        self.mode = _FlopCounterMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args: Any) -> Any:
        done = self.mode.__exit__(*args)
        self.mode = None
        return done


def counted(step: Callable[[], Any]) -> tuple[Any, int | None]:
    """Run `step()` once while counting its FLOPs: (its result, total FLOPs or None)."""
    if _FlopCounterMode is None:
        return step(), None
    counter = _TotalFlops(display=False)
    with counter:
        result = step()
    return result, int(counter.get_total_flops())
