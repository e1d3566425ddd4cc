"""Training checkpoints that a rerun of the same command resumes from (``torch.distributed.checkpoint``).

A long trainer (PPO, Quark, SFT-like fine-tuning, the reward model, DPO) given a :class:`Checkpoints`
saves, every ``every`` steps, everything its next step depends on: the trained models' and the
optimizer's state dicts as DCP shards (each rank writes its own; a run with another process count
can read them, DCP reshards), and the small rest (scheduler, step, log so far, random generators,
KL controller, prompt stream) pickled by rank 0. A checkpoint is complete when rank 0 has written
its ``COMPLETE`` file, after every rank finished writing; only complete ones are loaded, the newest
first, and a checkpoint that fails to load is skipped with one line saying why. The last ``keep``
complete checkpoints stay; a finished run removes its folder.

Where: the stage names the folder, outside its declared outputs (an interrupted stage keeps none of
those), keyed by a hash of everything that decides the run (params section, input files, process
count is not part of it): ``afarm.stages._cli.checkpoints``. The library knows nothing of stages.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from afarm import distributed

COMPLETE = "COMPLETE"  # written by rank 0 last: the checkpoint is whole


def run_key(*parts: Any) -> str:
    """A short hash of ``parts`` (JSON-able: a config as a dict, input paths with their sizes and times)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_stamps(paths) -> list:
    """(path, size, mtime_ns) of every file under ``paths``: what identifies the inputs of a run cheaply."""
    out = []
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return out


@dataclass
class Checkpoints:
    folder: Path  # this run's checkpoints: <folder>/step_<n>/
    every: int  # steps between two checkpoints (0: never)
    keep: int = 2

    def due(self, step: int, last: int) -> bool:
        """Save after ``step`` (1-based)? Every ``every`` steps, never after the last (the stage saves its outputs)."""
        return self.every > 0 and step % self.every == 0 and step < last

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.glob("step_*") if (p / COMPLETE).is_file() and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def save(self, step: int, modules: dict[str, torch.nn.Module], optimizer, rest: dict) -> None:
        """Write checkpoint ``step`` (every rank calls this): DCP shards of ``modules`` and ``optimizer``,
        ``rest`` (rank 0's picklable state) and each rank's random state; then drop the oldest beyond ``keep``."""
        import torch.distributed.checkpoint as dcp

        path = self.folder / f"step_{step}"
        if distributed.is_main():
            shutil.rmtree(path, ignore_errors=True)  # a partial one from an interrupted save
            path.mkdir(parents=True)
        distributed.barrier()
        dcp.save(_state(modules, optimizer), checkpoint_id=str(path / "dcp"), no_dist=distributed.world_size() == 1)
        with open(path / f"rng.rank{distributed.rank()}.pt", "wb") as f:
            torch.save({"torch": torch.get_rng_state()}, f)
        if distributed.is_main():
            with open(path / "rest.pkl", "wb") as f:
                pickle.dump(rest, f)
        distributed.barrier()  # every rank has written its shards
        if distributed.is_main():
            (path / COMPLETE).write_text(f"step {step}\n")
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()

    def restore(self, modules: dict[str, torch.nn.Module], optimizer) -> tuple[int, dict] | None:
        """Load the newest complete checkpoint that loads into ``modules`` and ``optimizer``; return (step,
        rank 0's ``rest``, on every rank), or None (start from scratch). Every rank calls this."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
        from torch.distributed.checkpoint.state_dict import set_state_dict

        candidates = distributed.broadcast_object([str(p) for p in reversed(self.complete())] if distributed.is_main() else None)
        for candidate in map(Path, candidates):
            state = _state(modules, optimizer)
            try:
                dcp.load(state, checkpoint_id=str(candidate / "dcp"), no_dist=distributed.world_size() == 1)
                with open(candidate / "rest.pkl", "rb") as f:
                    rest = pickle.load(f)
                ok = True
            except (Exception, CheckpointException) as err:  # noqa: BLE001 - an unreadable checkpoint is skipped, never half-loaded
                ok = False
                cause = next(iter(getattr(err, "failures", {}).values()), None)  # DCP wraps each rank's exception
                cause = getattr(cause, "exception", cause) or err
                reason = f"{type(cause).__name__}: {' '.join(str(cause).split())[:200]}"
            if not all(distributed.all_gather_objects(ok)):
                if distributed.is_main():
                    print(f"checkpoint {candidate.resolve()} is unreadable, skipped ({reason if not ok else 'another rank failed'})", file=sys.stderr)
                continue
            set_state_dict(_joint(modules), optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
            rng_file = candidate / f"rng.rank{distributed.rank()}.pt"
            if rng_file.is_file():  # absent when resumed with more processes than saved it
                torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
            step = int(candidate.name[5:])
            if distributed.is_main():
                print(f"resuming from checkpoint {candidate.resolve()} (step {step})", file=sys.stderr)
            return step, rest
        return None

    def finish(self) -> None:
        """The run completed: remove its checkpoints."""
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(self.folder, ignore_errors=True)


def _joint(modules: dict[str, torch.nn.Module]) -> torch.nn.Module:
    """One module holding every trained module (as the optimizer sees their parameters)."""
    if len(modules) == 1:
        return next(iter(modules.values()))
    return torch.nn.ModuleDict(modules)


def _state(modules: dict[str, torch.nn.Module], optimizer) -> dict:
    """The trained modules' and the optimizer's state dicts, sharded as they are held (DCP's input)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(_joint(modules), optimizer)
    return {"model": model, "optimizer": optim}


def rng_states(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in generators.items()}


def set_rng_states(generators: dict[str, torch.Generator], states: dict[str, torch.Tensor]) -> None:
    for name, g in generators.items():
        g.set_state(states[name])


__all__ = ["COMPLETE", "Checkpoints", "file_stamps", "rng_states", "run_key", "set_rng_states"]
