"""The trainer's collaborators: what `minigpt.train.Trainer` delegates so its loop stays short.

Read `minigpt/train.py` first; these are the pieces it calls.

- :mod:`minigpt.training.history`: the run as data (`History`) and the progress bar (`ProgressLog`);
- :mod:`minigpt.training.loggers`: TensorBoard / Weights & Biases loggers fed from History rows;
- :mod:`minigpt.training.resume`: what `Trainer.save` writes and how a run resumes exactly;
- :mod:`minigpt.training.guard`: the NaN guard and `TrainingDiverged`;
- :mod:`minigpt.training.rng`: random-number state for exact resume;
- :mod:`minigpt.training.distributed`: torchrun helpers and device placement (no-ops on one process);
- :mod:`minigpt.training.interrupt`: Ctrl-C / SIGTERM as "stop at the next step boundary";
- :mod:`minigpt.training.runconfig`: config files for ``minigpt train --config``.
"""
