"""Training pipeline: dense statistics → GMP phase → mitigation phase, with checkpoints.

Where each part lives: ``config`` (:class:`TrainConfig`), ``loop`` (:class:`Trainer`, the
phases), ``batching`` (the epoch's order and batches), ``checkpoint`` (files, RNG state),
``faults`` (NaN / Inf steps), ``history`` (``history.json`` / ``.csv``), ``distributed``
(ranks), ``dense`` (training a dense model from scratch, for the experiment's cache).

:class:`Trainer` runs, for one :class:`TrainConfig`::

    dense training (optional, ``dense_epochs``; skip it by passing a trained model)
    dense statistics on train and test (once, eval mode, before any pruning)
    sparse phase, epoch e = 0 .. pruning_epochs + mitigation_epochs - 1:
        GMP prunes at the start of the epoch when due (cubic schedule, end at e = pruning_epochs)
        constraints active from e = pruning_epochs on (the GMP phase is NFT)
        SGD steps (method.step → backward → step → re-apply masks), step LR decay at 60/80/90%
        evaluation on train and test: accuracy, loss, Ψ_PW, max ψ, fraction within ε
    history → ``history.json`` / ``history.csv`` in ``output_dir``; checkpoint ``last.ckpt``
    (the one before it kept as ``prev.ckpt``)

Data: ``train_set`` is a map-style dataset of ``(inputs, target, group)`` samples (a
``TensorDataset`` is indexed in whole batches, without a DataLoader). Epoch ``e``'s order is
``randperm`` of a ``torch.Generator`` seeded by ``(seed, e)``, so the data order is a pure
function of the config and a resumed run sees exactly the batches an uninterrupted one would.

Checkpoints hold everything the rest of the run depends on: weights and masks, optimizer and
LR scheduler, the method's state (multipliers, dual optimizer, replay buffers), the GMP
schedule position, epoch / batch counters, dense statistics, history, and the RNG states
(torch CPU and CUDA, ``random``, numpy). They are written atomically (temporary file in the
same folder, fsync, ``os.replace``) with a SHA-256 of the payload in a header, so a
truncated or corrupted file raises :class:`CheckpointError`. With
``checkpoint_every_steps`` a run can also resume mid-epoch, exactly. Each save, once the
new file is written, moves the old ``last.ckpt`` to ``prev.ckpt``; ``fit(resume=True)`` falls
back to ``prev.ckpt`` (with a warning naming the bad file) when ``last.ckpt`` is missing,
truncated or corrupted.

Faults: every step checks its loss, the multipliers and the gradient norm; a NaN / Inf stops
the run with :class:`NonFiniteError` after checkpointing the state before that step
(``on_nonfinite="stop"``), or the step is undone and counted in the history
(``on_nonfinite="skip"``). Before training, the output folder must take a probe file and
have room for a few checkpoints; a failed write raises :class:`OutputError` naming the file.

Data-parallel (``torch.distributed`` initialised, world size W > 1): every rank takes its
contiguous 1/W slice of each global batch, gradients are averaged by
``DistributedDataParallel``, and constrained methods all-reduce their buffer statistics so
every rank holds the same multipliers; rank 0 writes files.
"""

from ceag._io import FolderInUseError, OutputError, check_output_dir
from ceag.train.batching import epoch_permutation
from ceag.train.checkpoint import CheckpointError, last_saved, load_checkpoint, save_checkpoint
from ceag.train.config import METHOD_NAMES, TrainConfig, check_device
from ceag.train.dense import fit_dense
from ceag.train.distributed import barrier, broadcast_from_main, rank_and_world
from ceag.train.faults import NonFiniteError
from ceag.train.loop import Trainer, train

__all__ = [
    "METHOD_NAMES",
    "CheckpointError",
    "FolderInUseError",
    "NonFiniteError",
    "OutputError",
    "TrainConfig",
    "Trainer",
    "barrier",
    "broadcast_from_main",
    "check_device",
    "check_output_dir",
    "epoch_permutation",
    "fit_dense",
    "last_saved",
    "load_checkpoint",
    "rank_and_world",
    "save_checkpoint",
    "train",
]
