"""``python tests/kill_after_save.py STEP [recipes/run.py flags]``: run the launcher's ``main`` and
SIGKILL this process right after the checkpoint at global step STEP is saved (a crash that leaves
no chance to clean up, at a known point)."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import TrainerCallback  # noqa: E402

from freeze_policies.training.trainer import FreezeTrainer  # noqa: E402
from recipes.launcher.main import main  # noqa: E402


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    step, argv = int(sys.argv[1]), sys.argv[2:]
    build = FreezeTrainer.__init__

    def init(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.add_callback(KillAfterSave(step))  # after FreezeScheduleCallback: runs last

    FreezeTrainer.__init__ = init
    main(argv)
