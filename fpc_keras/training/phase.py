"""One training phase: its checkpoints, resume, validation score, early stopping and history; the callback that
runs at each epoch's end."""
from __future__ import annotations

import contextlib
import csv
import io
import time
from pathlib import Path
from typing import Callable, Iterator

import keras
import tensorflow as tf

from ..io import atomic_path, atomic_write_json, atomic_write_text, read_json
from .averaging import averaged_weights


Progress = Callable[[str], None]


Validate = Callable[[], tuple[float, float, str]]  # -> (score to maximise, loss to break ties, score name)


class Phase:
    """One training phase: checkpoints in its own folder, resume, validation macro-F1, early stopping.

    An epoch is better when its validation macro-F1 is higher, or equal with a lower validation log-loss (small
    validation sets often tie at the same F1). `floor`: (F1, -loss) to beat before anything counts as best
    (phase 2 must beat phase 1's best). `keep_last`: every epoch is kept as best (the recipe ships the last one), its
    validation score still recorded, and nothing stops early.
    """

    def __init__(self, name: str, folder: Path, patience: int, history: Path, progress: Progress):
        self.name, self.folder, self.patience, self.history, self.progress = name, folder, patience, history, progress
        self.floor = (-1.0, -float("inf"))
        self.keep_last = False
        self.state = {"epoch": -1, "best_score": -1.0, "best_loss": float("inf"), "best_epoch": -1, "wait": 0,
                      "seconds": 0.0, "done": False}
        self._since: float | None = None  # while a timed block runs: when its time was last added to `seconds`

    def best_key(self) -> tuple[float, float]:
        return max((self.state["best_score"], -self.state["best_loss"]), self.floor)

    def resume(self) -> keras.Model | None:
        """The last checkpoint (with its optimizer state) where a previous run of this config stopped."""
        state_file = self.folder / "state.json"
        if not (state_file.is_file() and (self.folder / "last.keras").is_file()):
            return None
        self.state.update(read_json(state_file))
        done = "finished" if self.state["done"] else f"{self.state['epoch'] + 1} epoch(s) done"
        self.progress(f"      {self.name}: resuming from {self.folder / 'last.keras'} ({done})")
        return keras.saving.load_model(self.folder / "last.keras")

    def best(self) -> keras.Model | None:
        path = self.folder / "best.keras"
        return keras.saving.load_model(path) if path.is_file() else None

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Adds the block's wall time to the phase's `seconds`: fitting, and the work the phase needs first
        (encoding the features a head trains on), without which a cached-feature run looks nearly free."""
        self._since = time.perf_counter()
        try:
            yield
        finally:
            self._tick()
            self._since = None

    def _tick(self) -> None:
        """Add the time since the last tick to `seconds`: every state written mid-phase carries the time spent so
        far, so a run killed and resumed reports the whole cost of its training, not only the resumed part."""
        if self._since is not None:
            now = time.perf_counter()
            self.state["seconds"] += now - self._since
            self._since = now

    def fit(self, model: keras.Model, data: tf.data.Dataset, epochs: int, validate: Validate | None,
            class_weight: dict | None = None, steps_per_epoch: int | None = None) -> None:
        self.progress(f"      {self.name}: epochs {self.state['epoch'] + 2}..{epochs}")
        callback = EpochCallback(self, model, validate)
        with self.timed():
            model.fit(data, epochs=epochs, initial_epoch=self.state["epoch"] + 1, verbose=2, shuffle=False,
                      class_weight=class_weight, callbacks=[callback], steps_per_epoch=steps_per_epoch)
        self.state["done"] = True
        self._write_state()

    def save_best(self, model: keras.Model, epoch: int, score: float, loss: float) -> bool:
        """Keep the epoch as best.keras where it beats the best so far; True if it did (the state is written by
        `save_last`)."""
        if not self.keep_last and (score, -loss) <= self.best_key():
            return False
        with atomic_path(self.folder / "best.keras", suffix=".keras") as tmp:
            model.save(tmp)
        self.state.update(best_score=score, best_loss=loss, best_epoch=epoch)
        return True

    def save_last(self, model: keras.Model, epoch: int, improved: bool, score: float, loss: float, logs: dict,
                  score_name: str | None = "macro_f1") -> bool:
        """Record an epoch (after `save_best`); returns True when early stopping should end the phase.
        `score_name` None: no validation (a final fit), so the history gets no validation columns."""
        self.state["wait"] = 0 if improved else self.state["wait"] + 1
        with atomic_path(self.folder / "last.keras", suffix=".keras") as tmp:
            model.save(tmp)
        self.state["epoch"] = epoch
        self._append_history(epoch, {**logs, "val_loss": loss, f"val_{score_name}": score} if score_name else logs)
        self._write_state()
        return self.state["wait"] >= self.patience

    def _write_state(self) -> None:
        self._tick()
        atomic_write_json(self.folder / "state.json", self.state)

    def _append_history(self, epoch: int, logs: dict) -> None:
        rows = list(csv.DictReader(self.history.open())) if self.history.is_file() else []
        rows = [r for r in rows if r.get("phase", "phase1") != self.name or int(r["epoch"]) < epoch + 1]
        rows.append({"phase": self.name, "epoch": epoch + 1, **{k: f"{float(v):.6f}" for k, v in logs.items()}})
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history, buffer.getvalue())


def phase_summary(*phases: Phase) -> dict:
    """Epochs, best epoch, best score and loss and seconds of each phase that ran (the card's `phases`)."""
    return {p.name: {k: p.state[k] for k in ("epoch", "best_epoch", "best_score", "best_loss", "seconds")}
            for p in phases if p.state["epoch"] >= 0}


def kept_validation(phases: dict) -> tuple[float, float]:
    """(validation macro-F1, log-loss) of the model a run kept, from its card's `phases`: the last phase that kept
    an epoch (a phase 2 that never beat phase 1 kept none). (nan, nan) where no phase validated."""
    kept = [p for p in phases.values() if p.get("best_epoch", -1) >= 0]
    return (kept[-1]["best_score"], kept[-1]["best_loss"]) if kept else (float("nan"), float("nan"))


class EpochCallback(keras.callbacks.Callback):
    """Validates and checkpoints each epoch; with no validation (`validate` None: a final fit) every epoch is
    recorded as the best so far, so the phase keeps its last epoch."""

    def __init__(self, phase: Phase, fit_model: keras.Model, validate: Validate | None):
        super().__init__()
        self.phase, self.fit_model, self.validate = phase, fit_model, validate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with averaged_weights(self.fit_model):  # validated and kept as best with averaged weights, if averaging
            score, loss, name = self.validate() if self.validate else (float(epoch), 0.0, None)
            improved = self.phase.save_best(self.fit_model, epoch, score, loss)
        stop = self.phase.save_last(self.fit_model, epoch, improved, score, loss, logs or {}, name)
        if name is None:
            self.phase.progress(f"      {self.phase.name} epoch {epoch + 1}: no validation split (final fit)")
            return
        self.phase.progress(f"      {self.phase.name} epoch {epoch + 1}: val {name} {score:.4f}, loss "
                            f"{loss:.4f} (best {self.phase.best_key()[0]:.4f})")
        if stop:
            self.phase.progress(f"      early stop: no val {name} gain for {self.phase.patience} epochs")
            self.model.stop_training = True
