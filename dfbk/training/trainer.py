"""The shared trainer: seeded loop, EMA, periodic/atomic checkpoints, exact resume, JSONL log.

Nobody subclasses it; a method plugs in through `Method.training_step`. Resume restores the
method (weights, optimisers, schedulers), the EMA, the step and every RNG state; batches are a
pure function of (seed, step) (`SliceBatcher`), so a resumed run continues bit-identically.
SIGTERM/SIGUSR1 (sent by SLURM before preemption or the time limit) save a checkpoint at the
next step boundary and exit with status 128 + signal (143 for SIGTERM, 138 for SIGUSR1), so a
requeued or retried job resumes; after SIGKILL a rerun resumes from the last periodic checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dfbk.data.loader import SliceBatcher
from dfbk.data.splits import read_split
from dfbk.data.store import SliceStore
from dfbk.errors import TrainingError
from dfbk.knowledge.cache import load_knowledge
from dfbk.methods.base import count_parameters
from dfbk.methods.registry import build_method, get_method_class
from dfbk.training.checkpoint import load_checkpoint, recipe, save_atomic
from dfbk.training.seeding import rng_state, seed_everything, set_rng_state


@dataclass
class TrainSpec:
    """One training job: dataset × direction × method × seed, and where things go."""

    dataset: str
    direction: str
    method: str
    seed: int
    store_dir: Path
    split_path: Path
    out_dir: Path  # rule outputs: model.pt, run.json, train_log.jsonl
    checkpoint_dir: Path  # not a rule output: last.pt survives failed jobs
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    module: str | None = None
    stage: str | None = (
        None  # an extra stage (e.g. ResViT's CNN pretraining) instead of the main one
    )
    init_from: Path | None = None  # model.pt of the previous stage
    checkpoint_every: int = 500
    device: str = "auto"
    amp: bool = True
    knowledge_path: Path | None = None  # cache written by `dfbk knowledge`
    knowledge: torch.Tensor | None = None
    knowledge_info: dict[str, Any] | None = None


def parse_direction(direction: str) -> tuple[str, str]:
    """'t1n-to-t2w' -> ('t1n', 't2w')."""
    parts = direction.split("-to-")
    if len(parts) != 2 or not all(parts):
        raise TrainingError(f"bad direction '{direction}': expected '<source>-to-<target>'")
    return parts[0], parts[1]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal = signum


class Trainer:
    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        seed_everything(spec.seed)
        self.device = pick_device(spec.device)
        source, target = parse_direction(spec.direction)
        self.store = SliceStore(spec.store_dir)
        self.contracts = {
            "source": self.store.contract(source),
            "target": self.store.contract(target),
        }
        self.method = self._build_method(spec)
        self.method.to(self.device)
        self.method.amp = spec.amp and self.device.type == "cuda"
        self.hparams = self.method.hparams
        split = read_split(spec.split_path)
        self.batcher = SliceBatcher(
            self.store,
            source,
            target,
            split["train"],
            int(self.hparams["batch_size"]),
            spec.seed,
            paired=self.method.paired,
        )
        net = self.method.ema_network()
        decay = self.hparams.get("ema_decay")
        self.ema = None
        if net is not None and decay:
            self.ema = AveragedModel(
                net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
            )
        self.step = 0
        self.stop = _StopFlag()
        spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.last_path = spec.checkpoint_dir / "last.pt"
        self.log_path = spec.checkpoint_dir / "train_log.jsonl"

    @staticmethod
    def _build_method(spec: TrainSpec):
        """Build the method; Knowledge Guidance methods get the cached embedding and its width."""
        overrides = dict(spec.overrides)
        emb = load_knowledge(spec.knowledge_path) if spec.knowledge_path else None
        cls = get_method_class(spec.method, spec.module)
        uses_knowledge = bool(cls.resolve_hparams(spec.preset, {}).get("kg"))
        if uses_knowledge:
            if emb is None or emb.tokens is None:
                raise TrainingError(
                    f"method '{spec.method}' uses Knowledge Guidance but no knowledge tokens were "
                    f"given ({spec.knowledge_path or 'no --knowledge file'}; encoder 'none'?)"
                )
            overrides.setdefault("knowledge_dim", emb.dim)
            spec.knowledge, spec.knowledge_info = emb.tokens, emb.info()
        return build_method(spec.method, spec.preset, overrides, spec.module, spec.stage)

    # ----- state --------------------------------------------------------------------------
    def _recipe(self) -> dict[str, Any]:
        return {
            **recipe(self.method, self.spec),
            **self.contracts,
            "knowledge": self.spec.knowledge_info,
        }

    def save_training_state(self) -> None:
        state = {
            **self._recipe(),
            "kind": "training-state",
            "step": self.step,
            "state": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.method.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.method.schedulers().items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
        }
        save_atomic(state, self.last_path)

    def try_resume(self) -> bool:
        if not self.last_path.exists():
            return False
        payload = load_checkpoint(self.last_path)
        if payload["method"] != self.method.name or payload["hparams"] != self.hparams:
            raise TrainingError(
                f"{self.last_path}: checkpoint was made with other settings "
                f"(method {payload['method']}, hparams differ); delete it to start over"
            )
        self.method.load_state_dict(payload["state"])
        for key, opt in self.method.optimizers().items():
            opt.load_state_dict(payload["optimizers"][key])
        for key, sched in self.method.schedulers().items():
            sched.load_state_dict(payload["schedulers"][key])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        set_rng_state(payload["rng"])
        self.step = int(payload["step"])
        self._truncate_log(self.step)
        return True

    def _truncate_log(self, step: int) -> None:
        """Drop log lines at or after `step` (written after the checkpoint we resume from)."""
        if not self.log_path.exists():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] < step]
        self.log_path.write_text("".join(ln + "\n" for ln in kept))

    # ----- the loop -----------------------------------------------------------------------
    def run(self) -> Path:
        """Train to `steps`, then write model.pt, run.json and the log into out_dir."""
        resumed = self.try_resume()
        if not resumed:
            self.log_path.write_text("")
            if self.spec.init_from is not None:
                self.method.init_from_stage(load_checkpoint(self.spec.init_from)["state"])
        self.stop.install()
        total = int(self.hparams["steps"])
        start_time = time.time()
        every = max(1, int(self.spec.checkpoint_every))
        self.method.train()
        with (
            open(self.log_path, "a") as log,
            tqdm(
                total=total,
                initial=self.step,
                desc=f"train {self.method.name}",
                mininterval=5,
                file=sys.stderr,
            ) as bar,
        ):
            while self.step < total:
                losses = self._one_step()
                log.write(
                    json.dumps({"step": self.step, "time": time.time() - start_time, **losses})
                    + "\n"
                )
                self.step += 1
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
                    log.flush()
                if self.step % every == 0 or self.stop.signal is not None:
                    log.flush()
                    self.save_training_state()
                if self.stop.signal is not None:
                    bar.write(
                        f"signal {self.stop.signal}: checkpoint saved at step {self.step} "
                        f"({self.last_path}); rerun to resume",
                        file=sys.stderr,
                    )
                    raise SystemExit(128 + self.stop.signal)  # 143 for SIGTERM, as if killed
        self.save_training_state()
        return self._finish(time.time() - start_time, resumed)

    def _one_step(self) -> dict[str, float]:
        batch = self.batcher.batch(self.step).to(self.device)
        if self.spec.knowledge is not None:
            batch.knowledge = self.spec.knowledge.to(self.device)
        losses = self.method.training_step(batch, self.step)
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise TrainingError(
                f"non-finite loss at step {self.step} ({bad}); training stopped, last good "
                f"checkpoint kept at {self.last_path}"
            )
        if self.ema is not None:
            self.ema.update_parameters(self.method.ema_network())
        return losses

    def _finish(self, wall_seconds: float, resumed: bool) -> Path:
        out = self.spec.out_dir
        out.mkdir(parents=True, exist_ok=True)
        n_parameters = count_parameters(self.method)
        if self.ema is not None:  # inference uses the averaged weights
            self.method.ema_network().load_state_dict(self.ema.module.state_dict())
        model = {
            **self._recipe(),
            "kind": "inference",
            "step": self.step,
            "state": self.method.state_dict(),
            "knowledge_embedding": self.spec.knowledge,
        }
        save_atomic(model, out / "model.pt")
        log_text = self.log_path.read_text()
        (out / "train_log.jsonl").write_text(log_text)
        info = {
            **{k: v for k, v in self._recipe().items() if k not in ("format", "format_version")},
            "describe": self.method.describe(),
            "n_parameters": n_parameters,
            "steps": self.step,
            "wall_seconds": round(wall_seconds, 2),
            "resumed": resumed,
            "device": str(self.device),
            "knowledge_encoder": (self.spec.knowledge_info or {}).get("encoder"),
        }
        from dfbk.data.io import write_text

        write_text(out / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        return out / "model.pt"


def train(spec: TrainSpec) -> Path:
    """Train one job to completion (resuming if a training state exists)."""
    return Trainer(spec).run()
