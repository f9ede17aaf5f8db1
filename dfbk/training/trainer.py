"""The shared trainer: seeded loop, EMA, periodic/atomic checkpoints, exact resume, JSONL log.

Nobody subclasses it; a method plugs in through `Method.training_step`. Resume restores the
method (weights, optimisers, schedulers), the EMA, the step and every RNG state; batches are a
pure function of (seed, step) (`SliceBatcher`), so a resumed run continues bit-identically.
It resumes only a `last.pt` whose fingerprint (data, split, seed, settings) equals this run's.
SIGTERM/SIGUSR1 (sent by SLURM before preemption or the time limit) save a checkpoint at the
next step boundary and exit with status 128 + signal (143 for SIGTERM, 138 for SIGUSR1), so a
requeued or retried job resumes; after SIGKILL a rerun resumes from the last periodic checkpoint.
One trainer at a time holds the checkpoint folder (`guard.FolderLock`), and a trainer started
by Snakemake stops when Snakemake does (`guard.stop_with_workflow`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dfbk.data.slices.loader import SliceBatcher, prefetched_batches
from dfbk.data.slices.splits import read_split
from dfbk.data.slices.store import SliceStore
from dfbk.errors import ConfigError, TrainingError
from dfbk.knowledge.cache import load_knowledge
from dfbk.methods.base import Batch, Knowledge, count_parameters
from dfbk.methods.registry import build_method, get_method_class
from dfbk.plan.schema import default
from dfbk.training import checkpoint as ckpt
from dfbk.training import distributed as ddp
from dfbk.training.environment import run_environment
from dfbk.training.flops import counted
from dfbk.training.guard import FolderLock, stop_with_workflow
from dfbk.training.logfile import append_line, flush_log, truncate_log, write_text_atomic
from dfbk.training.seeding import rng_state, seed_everything, set_rng_state
from dfbk.training.speed import Speed
from dfbk.training.validation import Validator, default_val_every

EVALUATED = ("last", "best")
NO_KNOWLEDGE = {"knowledge_tokens": None, "knowledge_mask": None}


@dataclass
class TrainSpec:
    """One training job: dataset × direction × method × seed, and where things go."""

    dataset: str
    direction: str
    method: str
    seed: int
    store_dir: Path
    split_path: Path
    out_dir: Path  # rule outputs: model.pt, best.pt, run.json, train_log.jsonl
    checkpoint_dir: Path  # not a rule output: last.pt survives failed jobs
    preset: str = field(default_factory=lambda: default("methods.*.preset"))
    overrides: dict[str, Any] = field(default_factory=dict)
    module: str | None = None
    stage: str | None = None  # an extra stage (e.g. ResViT's CNN pretraining)
    init_from: Path | None = None  # model.pt of the previous stage
    checkpoint_every: int = field(default_factory=lambda: default("train.checkpoint_every"))
    device: str = field(default_factory=lambda: default("train.device"))
    amp: bool = True
    knowledge_path: Path | None = None  # cache written by `dfbk knowledge`
    knowledge: Knowledge | None = None
    knowledge_info: dict[str, Any] | None = None
    val_every: int | None = None  # None: about 5 validations per run; 0: only at the end
    val_slices: int = field(default_factory=lambda: default("train.val_slices"))
    # which checkpoint becomes model.pt: "last" or "best" (validation SSIM)
    evaluate: str = field(default_factory=lambda: default("train.evaluate_checkpoint"))
    speed: dict[str, Any] = field(default_factory=dict)  # speed switches (training.speed)


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


def _copy(value: Any) -> Any:
    """A detached copy of a state_dict value: a tensor, or extra state such as an image pool."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


class Trainer:
    def __init__(self, spec: TrainSpec) -> None:
        if spec.evaluate not in EVALUATED:
            raise ConfigError(f"evaluate '{spec.evaluate}' unknown; known: last, best")
        self.spec = spec
        self.speed = Speed.from_dict(spec.speed)
        seed_everything(spec.seed)  # the same on every rank: every rank builds the same model
        self.world = ddp.world_from_env()
        self.device = ddp.rank_device(pick_device(spec.device), self.world)
        ddp.init(self.world, self.device)
        source, target = parse_direction(spec.direction)
        self.store = SliceStore(spec.store_dir)
        self.contracts = {
            "source": self.store.contract(source),
            "target": self.store.contract(target),
        }
        self.method = self._build_method(spec)
        self.method.to(self.device)
        if self.world.active:
            ddp.sync_batchnorm(self.method, self.world, self.device)
            ddp.broadcast_state(self.method, self.world)
            ddp.average_gradients(self.method, self.world)
            seed_everything(rank_seed(spec.seed, self.world.rank))  # own noise per rank
        self.method.amp = spec.amp and self.device.type == "cuda"
        self.speed.apply_backends(self.device)
        self.speed.apply_layout(self.method)
        self.hparams = self.method.hparams
        self._check_slice_size(spec)
        split = read_split(spec.split_path)
        # every slice trained or validated on must be what prepare wrote
        self.store.verify([*split["train"], *split["val"]], [source, target, "mask"])
        self.batcher = SliceBatcher(
            self.store,
            source,
            target,
            split["train"],
            int(self.hparams["batch_size"]),
            spec.seed,
            flip=self.hparams["augment"] == "hflip",
            paired=self.method.paired,
            patch_size=self.hparams["patch_size"],
            rank=self.world.rank,
            world=self.world.size,
        )
        self.validator = Validator(
            self.store, source, target, split["val"], spec.seed, spec.val_slices
        )
        total = int(self.hparams["steps"])
        self.val_every = default_val_every(total) if spec.val_every is None else spec.val_every
        net = self.method.ema_network()
        decay = self.hparams.get("ema_decay")
        self.ema = None
        if net is not None and decay:
            self.ema = AveragedModel(
                net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
            )
        self.speed.apply_compile(self.method)  # after the EMA copy: that one stays eager
        self.fused_skipped: list[str] = []
        self.step = 0
        self.best: dict[str, Any] = {"step": None, "val_ssim": None}
        self.flops: int | None = None
        self.stop = _StopFlag()
        self.last_path = spec.checkpoint_dir / "last.pt"
        self.best_path = spec.checkpoint_dir / "best.pt"
        self.log_path = spec.checkpoint_dir / "train_log.jsonl"
        self.init_payload = (
            ckpt.load_checkpoint(spec.init_from) if spec.init_from is not None else None
        )
        if self.init_payload is not None:
            ckpt.check_fingerprint(
                self.init_payload, spec.store_dir, spec.split_path, spec.init_from
            )
        self.fingerprint = self._fingerprint()

    @staticmethod
    def _build_method(spec: TrainSpec):
        """Build the method; Knowledge Guidance methods get the cached tokens and their width."""
        overrides = dict(spec.overrides)
        emb = load_knowledge(spec.knowledge_path) if spec.knowledge_path else None
        cls = get_method_class(spec.method, spec.module)
        uses_knowledge = bool(cls.resolve_hparams(spec.preset, {}).get("kg"))
        if uses_knowledge:
            knowledge = emb.as_knowledge() if emb is not None else None
            if knowledge is None:
                raise TrainingError(
                    f"method '{spec.method}' uses Knowledge Guidance but no knowledge tokens were "
                    f"given ({spec.knowledge_path or 'no --knowledge file'}; encoder 'none'?)"
                )
            overrides.setdefault("knowledge_dim", knowledge.dim)
            spec.knowledge, spec.knowledge_info = knowledge, emb.info()
        return build_method(spec.method, spec.preset, overrides, spec.module, spec.stage)

    def _check_slice_size(self, spec: TrainSpec) -> None:
        """The planner's slice-size rule (dfbk.methods.geometry.check_slice_size) on this store."""
        from dfbk.methods.geometry import check_slice_size, size_multiple

        check_slice_size(
            self.store.size,
            self.hparams.get("patch_size"),
            size_multiple(type(self.method), self.hparams),
            size_key=f"{self.store.root}: slice size",
            method=f"method '{self.method.name}' (preset '{spec.preset}')",
            patch_key="--overrides patch_size"
            if "patch_size" in spec.overrides
            else f"method '{self.method.name}' patch_size",
        )

    # ----- state --------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        """What the weights are trained on: resuming or evaluating on anything else is refused."""
        knowledge = self.spec.knowledge
        return {
            "dataset": self.spec.dataset,
            "direction": self.spec.direction,
            "seed": self.spec.seed,
            "method": self.method.name,
            "module": self.spec.module,
            "preset": self.spec.preset,
            "stage": self.spec.stage,
            "hparams": self.hparams,
            **ckpt.data_fingerprint(self.spec.store_dir, self.spec.split_path),
            "knowledge_sha256": None
            if knowledge is None
            else ckpt.tensors_identity(knowledge.tokens, knowledge.mask),
            "init_from_sha256": None
            if self.init_payload is None
            else self.init_payload[ckpt.HASH_KEY],
        }

    def _recipe(self) -> dict[str, Any]:
        return {
            **ckpt.recipe(self.method, self.spec),
            **self.contracts,
            "knowledge": self.spec.knowledge_info,
            "fingerprint": self.fingerprint,
        }

    def save_training_state(self) -> None:
        """Write last.pt (rank 0); every rank takes part, as each rank's RNG state is kept."""
        states = ddp.gather(rng_state(), self.world)
        if not self.world.is_main:
            return
        state = {
            **self._recipe(),
            "kind": "training-state",
            "step": self.step,
            "best": self.best,
            "train_flops_per_step": self.flops,
            "state": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.method.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.method.schedulers().items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": states[0],
            **({"rng_ranks": states} if self.world.active else {}),
        }
        ckpt.save_atomic(state, self.last_path)

    def try_resume(self) -> bool:
        if not self.last_path.exists():
            return False
        payload = ckpt.load_checkpoint(self.last_path)
        stored = payload.get("fingerprint")
        diff = ckpt.fingerprint_differences(stored or {}, self.fingerprint)
        if diff:
            raise TrainingError(
                f"{self.last_path}: checkpoint was trained on other data or settings "
                f"({'; '.join(diff)}); it is not reused — delete {self.spec.checkpoint_dir} "
                "to train from scratch"
            )
        with ckpt.fitting_weights(self.last_path):
            self.method.load_state_dict(payload["state"])
            for key, opt in self.method.optimizers().items():
                opt.load_state_dict(payload["optimizers"][key])
            for key, sched in self.method.schedulers().items():
                sched.load_state_dict(payload["schedulers"][key])
            if self.ema is not None:
                self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        ranks = payload.get("rng_ranks") or [payload["rng"]]
        if self.world.rank < len(ranks):  # a rank the saving run had: its exact RNG state
            set_rng_state(ranks[self.world.rank])
        else:  # resumed with more processes: a fresh stream fixed by (seed, rank, step)
            seed_everything(rank_seed(self.spec.seed, self.world.rank, self.step))
        self.best = dict(payload["best"])
        if self.best["step"] is not None and not self.best_path.exists():
            raise TrainingError(
                f"{self.best_path}: missing, though {self.last_path} records best step "
                f"{self.best['step']}; delete {self.spec.checkpoint_dir} to train from scratch"
            )
        self.flops = payload.get("train_flops_per_step")
        if self.world.is_main:
            truncate_log(self.log_path, self.step)
        return True

    # ----- the loop -----------------------------------------------------------------------
    def run(self) -> Path:
        """Train to `steps`, then write model.pt, best.pt, run.json and the log into out_dir."""
        if not self.world.is_main:  # rank 0 holds the folder for the whole job
            try:
                return self._run_locked()
            finally:
                ddp.shutdown()
        with FolderLock(self.spec.checkpoint_dir):
            for folder in (self.spec.checkpoint_dir, self.spec.out_dir):
                ckpt.remove_stale_temporaries(folder)
            stop_with_workflow()
            try:
                return self._run_locked()
            finally:
                ddp.shutdown()

    def _run_locked(self) -> Path:
        resumed = self.try_resume()
        main = self.world.is_main
        if not resumed and main:
            write_text_atomic(self.log_path, "")
            self.best_path.unlink(missing_ok=True)  # from a run that never checkpointed
        if not resumed and self.init_payload is not None:
            with ckpt.fitting_weights(self.spec.init_from):
                self.method.init_from_stage(self.init_payload["state"])
        if self.step == 0 and type(self.method).FITS_SPLIT:  # fitted from the split itself
            with torch.no_grad():
                self.method.fit_split(b.to(self.device) for b in self.batcher.split_batches())
        self.fused_skipped = self.speed.apply_fused(self.method)  # after the optimisers' state
        self.stop.install()
        total = int(self.hparams["steps"])
        start_time = time.time()
        every = max(1, int(self.spec.checkpoint_every))
        self.method.train()
        with (
            open(self.log_path if main else os.devnull, "a") as log,
            tqdm(
                total=total,
                initial=self.step,
                desc=f"train {self.method.name}",
                mininterval=5,
                file=sys.stderr,
                disable=not main,
            ) as bar,
        ):
            while self.step < total:
                losses = self._one_step()
                line = {"step": self.step, "time": time.time() - start_time, **losses}
                line.update({f"diag_{k}": float(v) for k, v in self.method.diagnostics().items()})
                self.step += 1
                validate = self.step == total or (
                    self.val_every and self.step % self.val_every == 0
                )
                if validate:  # on every rank (SyncBatchNorm in train mode is collective)
                    line.update(self._validate())
                if main:
                    append_line(log, self.log_path, json.dumps(line), flush=self.step % 50 == 0)
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
                # every rank stops at the same step, whichever of them got the signal
                self.stop.signal = ddp.any_signal(self.stop.signal, self.world)
                if self.step % every == 0 or self.stop.signal is not None:
                    if main:
                        flush_log(log, self.log_path)
                    self.save_training_state()
                if self.stop.signal is not None:
                    bar.write(
                        f"signal {self.stop.signal}: checkpoint saved at step {self.step} "
                        f"({self.last_path}); rerun to resume",
                        file=sys.stderr,
                    )
                    raise SystemExit(128 + self.stop.signal)  # 143 for SIGTERM, as if killed
        if self.step == 0:  # no step ran (steps: 0, e.g. identity): score once (every rank)
            self._validate()
        self.save_training_state()
        if not main:
            return self.spec.out_dir / "model.pt"  # written by rank 0
        return self._finish(time.time() - start_time, resumed)

    def _next_batch(self) -> Batch:
        """The batch of `self.step`, read ahead by `train.speed.loader_workers` processes or
        the `loader_thread`.

        The same batch either way (a pure function of seed and step); the read-ahead restarts
        wherever the step moves other than by one (a resume, a test setting it).
        """
        workers, thread = self.speed.loader_workers, self.speed.loader_thread
        if workers == 0 and not thread:
            return self.batcher.batch(self.step)
        if getattr(self, "_ahead", None) is None or self._ahead[0] != self.step:
            stream = prefetched_batches(
                self.batcher,
                self.step,
                int(self.hparams["steps"]),
                workers=workers,
                thread=thread,
                pin_memory=self.device.type == "cuda",
            )
            self._ahead = (self.step, stream)
        step, stream = self._ahead
        self._ahead = (step + 1, stream)
        return next(stream)

    def _one_step(self) -> dict[str, float]:
        batch = self._next_batch().to(self.device)
        batch.source, batch.target, batch.mask = (
            self.speed.to_batch(t) for t in (batch.source, batch.target, batch.mask)
        )
        if self.spec.knowledge is not None:
            batch.knowledge = self.spec.knowledge.to(self.device)
        if self.step == 0 and self.flops is None:  # the real step, counted (same numerics)
            losses, self.flops = counted(lambda: self.method.training_step(batch, 0))
        else:
            losses = self.method.training_step(batch, self.step)
        losses = ddp.mean_losses(losses, self.world)  # the global batch's losses on every rank
        ddp.average_buffers(self.method, self.world)
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise TrainingError(
                f"non-finite loss at step {self.step} ({bad}); training stopped, last good "
                f"checkpoint kept at {self.last_path}"
            )
        if self.ema is not None:
            self.ema.update_parameters(self.method.ema_network())
        return losses

    # ----- validation and outputs ---------------------------------------------------------
    def _inference_state(self) -> dict[str, torch.Tensor]:
        """The method's state with the EMA weights in place of the raw ones (used by inference)."""
        state = {k: _copy(v) for k, v in self.method.state_dict().items()}
        if self.ema is not None:
            net = self.method.ema_network()
            prefix = next(n for n, m in self.method.named_modules() if m is net)
            for key, value in self.ema.module.state_dict().items():
                state[f"{prefix}.{key}" if prefix else key] = _copy(value)
        return state

    def _validate(self) -> dict[str, float]:
        """Score the inference weights on the validation slices; keep best.pt by SSIM.

        The training state is restored afterwards whatever translate did (methods that infer
        in train mode, as pix2pix's released test script does, update BatchNorm statistics).
        """
        state = self._inference_state()
        saved = {k: _copy(v) for k, v in self.method.state_dict().items()}
        if self.ema is not None:
            self.method.load_state_dict(state)
        try:
            knowledge = None if self.spec.knowledge is None else self.spec.knowledge.to(self.device)
            metrics = self.validator.evaluate(self.method, knowledge)
        finally:
            self.method.load_state_dict(saved)
        best = self.best["val_ssim"]
        if math.isfinite(metrics["val_ssim"]) and (best is None or metrics["val_ssim"] > best):
            self.best = {"step": self.step, "val_ssim": metrics["val_ssim"]}
            if self.world.is_main:
                ckpt.save_atomic(self._model_payload(state, "best"), self.best_path)
        return metrics

    def _model_payload(self, state: dict[str, torch.Tensor], which: str) -> dict[str, Any]:
        knowledge = self.spec.knowledge
        return {
            **self._recipe(),
            "kind": "inference",
            "checkpoint": which,
            "step": self.step,
            "state": state,
            **(knowledge.to_payload() if knowledge else NO_KNOWLEDGE),
        }

    def _finish(self, wall_seconds: float, resumed: bool) -> Path:
        out = self.spec.out_dir
        out.mkdir(parents=True, exist_ok=True)
        last = self._model_payload(self._inference_state(), "last")
        best = ckpt.load_checkpoint(self.best_path) if self.best_path.exists() else None
        if best is None:
            raise TrainingError(
                f"{self.best_path}: no validation score was finite, so there is no best step"
            )
        evaluated = best if self.spec.evaluate == "best" else last
        ckpt.save_atomic(evaluated, out / "model.pt")
        ckpt.save_atomic(best, out / "best.pt")
        write_text_atomic(out / "train_log.jsonl", self.log_path.read_text())
        info = {
            **{k: v for k, v in self._recipe().items() if k not in ("format", "format_version")},
            "describe": self.method.describe(),
            "n_parameters": count_parameters(self.method),
            "train_flops_per_step": self.flops,
            "steps": self.step,
            "batch_size": int(self.hparams["batch_size"]),
            "patch_size": self.hparams["patch_size"],
            "augment": self.hparams["augment"],
            "paired": self.method.paired,
            "val_every": self.val_every,
            "val_slices": len(self.validator.indices),
            "evaluated_checkpoint": self.spec.evaluate,
            "evaluated_step": int(evaluated["step"]),
            "best_step": self.best["step"],
            "best_val_ssim": self.best["val_ssim"],
            "wall_seconds": round(wall_seconds, 2),
            "resumed": resumed,
            "device": str(self.device),
            "speed": {
                **self.speed.record(),
                "amp_bf16": self.method.amp,
                "fused_adam_skipped": self.fused_skipped,
            },
            "processes": self.world.size,  # data-parallel ranks (train.gpus); batch is global
            "knowledge_encoder": (self.spec.knowledge_info or {}).get("encoder"),
            "environment": run_environment(),  # commit, host, GPU: tags of the MLflow run
        }
        write_text_atomic(out / "run.json", json.dumps(info, indent=2, default=str) + "\n")
        return out / "model.pt"


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for rank `rank`'s own noise stream (ranks > 0; rank 0 keeps the run's seed)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def train(spec: TrainSpec) -> Path:
    """Train one job to completion (resuming if a training state exists)."""
    return Trainer(spec).run()
