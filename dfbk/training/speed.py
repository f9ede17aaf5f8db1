"""Speed switches of the trainer, each off by default and recorded in the run's params.

bf16 autocast is `TrainSpec.amp` (on by default on CUDA). The others change how the same
computation runs, not what it computes (up to float rounding, measured in
tests/test_speed_switches.py):

- `channels_last`: the method's 4-D weights and every batch in NHWC layout (faster
  convolutions on tensor cores);
- `compile`: `torch.compile` of each of the method's top-level networks in place
  (`nn.Module.compile`, so parameter names and checkpoints are unchanged), with the given
  mode (`default`, `reduce-overhead`, `max-autotune`); off until measured per method;
- `tf32`: TF32 matmuls and convolutions on CUDA (no effect on CPU);
- `fused_adam`: the methods' Adam/AdamW optimisers step with torch's fused kernel (CUDA and,
  in torch >= 2.4, CPU); other optimiser types are left alone and named in the notes.
- `loader_workers`: DataLoader worker processes that read the next batches from the slice
  store while the current step computes (0: read in the training process when needed); the
  batches are identical either way (`dfbk.data.slices.loader.prefetched_batches`).
- `loader_thread`: one background thread reads the next batches instead (NumPy's copies out of
  the memory map release the GIL; no inter-process transfer, which costs the training thread
  about what reading does: bench/bench_loader.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dfbk.errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Speed:
    """The switches; `record()` is what run.json stores."""

    channels_last: bool = False
    compile: str | None = None  # None: eager
    tf32: bool = False
    fused_adam: bool = False
    loader_workers: int = 0
    loader_thread: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            raise ConfigError(
                f"train.speed.loader_workers must be an integer >= 0; got {self.loader_workers!r}"
            )
        if self.loader_thread and self.loader_workers:
            raise ConfigError(
                "train.speed.loader_thread: read ahead in a thread or in loader_workers "
                f"processes, not both (loader_workers is {self.loader_workers})"
            )
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ConfigError(
                f"train.speed.compile '{self.compile}' unknown; known: {', '.join(COMPILE_MODES)}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Speed:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"train.speed: unknown switch '{unknown[0]}'; known: "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**values)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    # ----- applying them ------------------------------------------------------------------
    def apply_backends(self, device: torch.device) -> None:
        """Process-wide flags (TF32); set on CUDA only, where they act."""
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    def apply_layout(self, method: nn.Module) -> None:
        """channels_last weights (4-D parameters and buffers; others are untouched)."""
        if self.channels_last:
            method.to(memory_format=torch.channels_last)

    def apply_compile(self, method: nn.Module) -> None:
        """Compile each top-level network in place; state_dict keys stay as they were."""
        if self.compile is None:
            return
        for child in method.children():
            if any(True for _ in child.parameters()):
                child.compile(mode=self.compile)

    def apply_fused(self, method: Any) -> list[str]:
        """Switch Adam/AdamW optimisers to the fused kernel; names of those left as they are.

        Applied after any resume too, since loading an optimiser's state restores its saved
        param_groups (and with them the saved `fused` flag).
        """
        if not self.fused_adam:
            return []
        skipped = []
        for name, opt in method.optimizers().items():
            if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
                skipped.append(f"{name} ({type(opt).__name__})")
                continue
            if any(g.get("differentiable") or g.get("capturable") for g in opt.param_groups):
                skipped.append(f"{name} (differentiable/capturable)")
                continue
            for group in opt.param_groups:
                group["fused"], group["foreach"] = True, False
                for p in group["params"]:  # fused keeps `step` on the parameter's device
                    state = opt.state.get(p, {})
                    if torch.is_tensor(state.get("step")):
                        state["step"] = state["step"].to(p.device, torch.float32)
        return skipped

    def to_batch(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A batch tensor in the layout the switches ask for."""
        if tensor is not None and self.channels_last and tensor.dim() == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor
