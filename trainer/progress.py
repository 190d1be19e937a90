"""Progress reporting for a run: a console bar for people, status.json/events.jsonl for the UI.

Everything the loop wants to tell goes through RunReporter, so the loop never knows who is watching."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

STATUS_INTERVAL_S = 1.0  # status.json is rewritten at most this often (and always at phase changes and the end)


class RunReporter:
    def __init__(self, status=None, console: bool = True):
        self.status = status  # a trainer.jobs.StatusWriter, or None for a headless run
        self.console = console
        self.bar: tqdm | None = None
        self.total_steps = 0
        self.loss_avg: float | None = None
        self._rate: float | None = None
        self._last = (0.0, 0)  # (time, step) of the previous rate sample
        self._last_progress = 0.0  # when progress was last written (other status writes don't count)
        self.tensorboard = None  # a SummaryWriter once open_tensorboard() is called
        self.wandb = None  # a wandb run once open_wandb() is called (logging.wandb)
        self.current_phase = ("starting", "")  # (phase, its message): what a GPU out-of-memory names
        self.steps_done = 0

    def open_tensorboard(self, log_dir) -> None:
        """Loss, learning rate and samples as TensorBoard events (`tensorboard --logdir jobs/`)."""
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(log_dir=str(log_dir))

    def open_wandb(self, wandb_module, project: str, run_name: str, config: dict, log_dir) -> None:
        """The same scalars and samples to Weights & Biases. The caller imports wandb (only when the job
        asks for it: nothing is imported, let alone sent, otherwise)."""
        self._wandb_module = wandb_module
        self.wandb = wandb_module.init(project=project, name=run_name, config=config, dir=str(log_dir))

    def _scalars(self, step: int, **values: float) -> None:
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    # phases and messages -------------------------------------------------------------------------------
    def phase(self, name: str, **info) -> None:
        self.current_phase = (name, info.get("message", ""))
        self._status(phase=name, **info)
        self._event("phase", phase=name, **info)
        if self.console and self.bar is None:
            message = info.get("message")
            print(f"kiln: {name}" + (f": {message}" if message else ""), file=sys.stderr, flush=True)

    def warning(self, message: str) -> None:
        self._event("warning", message=message)
        self._print(f"kiln: warning: {message}")

    def info(self, message: str) -> None:
        self._print(f"kiln: {message}")

    def state(self, state: str, **fields) -> None:
        self._status(state=state, **fields)
        self._event("state", state=state, **fields)

    def saved(self, path, step: int, kind: str, outputs: list[str]) -> None:
        self._status(outputs=outputs)
        self._event("save", path=str(path), step=step, what=kind)
        self._print(f"kiln: saved {kind} {path}")

    def sample(self, path, step: int, prompt: str) -> None:
        self._status(latest_sample=str(path))
        self._event("sample", path=str(path), step=step, prompt=prompt)
        if self.tensorboard is not None:
            import numpy as np
            from PIL import Image

            with Image.open(path) as im:
                self.tensorboard.add_image(f"samples/{prompt[:60]}", np.asarray(im.convert("RGB")), step,
                                           dataformats="HWC")
        if self.wandb is not None:
            self.wandb.log({f"samples/{prompt[:60]}": self._wandb_module.Image(str(path), caption=prompt)},
                           step=step)

    def validation(self, step: int, loss: float, best: dict | None) -> None:
        """A validation loss (events kind "validation", beside the training loss in the UI's plot)."""
        self._status(validation_loss=loss, best_validation=best)
        self._event("validation", step=step, loss=loss, best=best)
        self._scalars(step, validation_loss=loss)
        self._print(f"kiln: step {step}: validation loss {loss:.5f}"
                    + (f" (best: step {best['step']}, {best['loss']:.5f})" if best else ""))

    def best_checkpoint(self, best: dict) -> None:
        """The checkpoint file of the best validation loss so far was just saved."""
        self._status(best_validation=best)

    # training progress ---------------------------------------------------------------------------------
    def start_training(self, start_step: int, total_steps: int, total_epochs: int) -> None:
        self.total_steps = total_steps
        self.current_phase, self.steps_done = ("training", ""), start_step
        self._last = (time.monotonic(), start_step)
        self._status(phase="training", step=start_step, total_steps=total_steps, total_epochs=total_epochs)
        if self.console:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, desc="training")

    def step(self, step: int, loss: float, lr: float, epoch: int) -> None:
        """`step` is the number of optimizer steps completed."""
        self.steps_done = step
        self.loss_avg = loss if self.loss_avg is None else 0.95 * self.loss_avg + 0.05 * loss
        now = time.monotonic()
        t0, s0 = self._last
        if now - t0 >= 1.0 and step > s0:
            rate = (step - s0) / (now - t0)
            self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
            self._last = (now, step)
        self._scalars(step, loss=loss, loss_avg=self.loss_avg, lr=lr)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{self.loss_avg:.4f}", lr=f"{lr:.2e}", epoch=epoch, refresh=False)
        if now - self._last_progress >= STATUS_INTERVAL_S or step >= self.total_steps:
            self._last_progress = now
            eta = (self.total_steps - step) / self._rate if self._rate else None
            fields = dict(step=step, epoch=epoch, loss=loss, loss_avg=self.loss_avg, lr=lr,
                          it_per_s=self._rate, eta_s=eta)
            self._status(**fields)
            self._event("progress", **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def finish(self) -> None:
        self.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    # plumbing -------------------------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        if not self.console:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def _status(self, **fields) -> None:
        if self.status is not None:
            self.status.update(**fields)

    def _event(self, kind: str, **data) -> None:
        if self.status is not None:
            self.status.event(kind, **data)
