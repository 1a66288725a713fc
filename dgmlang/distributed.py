"""Data-parallel training on `torch.distributed`: N processes share each step's minibatch.

`fit` asks `current()` for the process group it runs in (None outside one, or in a group of
one process). Inside a group, every process holds the whole model and the whole data set;
at every step the global minibatch (the next ``batch_size`` rows of the epoch's shuffled
order, the same on every process: rank 0 draws it and broadcasts it) is split into N
contiguous pieces of ``ceil(B/N)`` rows, one per process, so the union of the pieces is the
one-process batch (no padding). Each process computes its loss with the usual whole-data
scaling (locals times ``W / n_r``, W the data set's size, n_r its rows), then `ProcessGroup.reduce`
all-reduces the global batch size ``B = sum n_r`` and weights the process's gradient by
``n_r * N / B`` before averaging the gradients over the N processes: each process's local
sum is thus scaled by ``N * W / B`` and its global terms by weights averaging to one, so the
averaged gradient is the one-process gradient of the B rows — a ragged last batch included.
A process whose piece is empty (a last batch of fewer than N rows) computes a stand-in row
with weight zero and still takes part in every all-reduce.

Every collective starts with a check-in: an all-reduce of ``(failed, rows, loss * rows,
stop)``. A process that fails (`ProcessGroup.fail`) checks in with ``failed = 1`` and sends
its message; the others, at their next check-in, raise a `DGMTrainingError` naming the
process and its message, so no process waits forever in an all-reduce. A process asked to
stop (`fit`'s ``should_stop``: a SIGINT or SIGTERM in `dgm fit`) says so at its step's
check-in, and every process sets `ProcessGroup.stopping` there, so all stop after the same
step. Only rank 0 writes files (`writes_files`), checkpoints included.

Rank 0 draws from the random stream a single process would use (the one a checkpoint
stores); every other process restarts its own stream at every step from the seed rank 0
began with, its rank and the step's number (`own_random_stream`), so a resumed run draws
on every process what the uninterrupted run drew.

`launch` runs a `dgm` command line in N processes through `torch.distributed.run`; under
`torchrun`, `join_from_environment` starts the process group from the launcher's
environment (gloo, or nccl for a model on a CUDA device).

>>> current() is None  # no process group started in this process
True
>>> split_sizes(29, 2), split_sizes(3, 4)
((15, 14), (1, 1, 1, 0))
>>> step_seed(0, 1, 5) == step_seed(0, 1, 5) != step_seed(0, 2, 5)
True
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from dgmlang.errors import DGMError, DGMTrainingError, DGMUsageError

__all__ = ["ProcessGroup", "current", "join_from_environment", "launched", "launch", "shared_failures",
           "split_sizes", "step_seed", "writes_files"]


def split_sizes(rows: int, processes: int) -> tuple[int, ...]:
    """How many of a global batch's `rows` each of `processes` takes: contiguous pieces of
    ``ceil(rows / processes)``, the last ones shorter or empty."""
    piece = math.ceil(rows / processes)
    return tuple(max(0, min(piece, rows - rank * piece)) for rank in range(processes))


class ProcessGroup:
    """The default `torch.distributed` process group, as training uses it. Build it with
    `current()`."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        backend = str(dist.get_backend())
        self.device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                       else torch.device("cpu"))
        self.failed = False  # set once a failure has been shared (no second check-in for it)
        self.stopping = False  # set when a process asked the fit to stop (at a check-in)

    @property
    def writes_files(self) -> bool:
        """Whether this process writes the run's files (rank 0 only)."""
        return self.rank == 0

    # -------------------------------------------------------------- check-ins

    @contextlib.contextmanager
    def contact(self) -> Iterator[None]:
        """Around a collective: the error of a lost connection (a process that died) becomes a
        `DGMTrainingError`, with no attempt to tell the others (the launcher stops them)."""
        try:
            yield
        except RuntimeError as err:
            self.failed = True
            raise DGMTrainingError(
                f"process {self.rank} of {self.size} lost contact with the others "
                f"({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                hint="another process stopped or was killed: see its messages") from None

    def check_in(self, *, rows: int = 0, loss: float = 0.0, stop: bool = False) -> tuple[int, float]:
        """Tell the others this process is healthy (and whether it was asked to `stop`: any
        process asking sets `stopping` on all); returns the global batch size (the sum of
        `rows`) and the row-weighted loss sum. Raises when another process failed."""
        status = torch.tensor([0.0, float(rows), loss * rows, float(stop)], dtype=torch.float64,
                              device=self.device)
        with self.contact():
            dist.all_reduce(status)
        if status[0].item() > 0:
            self._raise_peer_failure()
        if status[3].item() > 0:
            self.stopping = True
        return int(status[1].item()), float(status[2].item())

    def fail(self, err: BaseException) -> None:
        """Tell the others this process failed with `err` (they raise at their next check-in).
        The caller raises `err` itself."""
        if self.failed:
            return
        self.failed = True
        status = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=self.device)
        with self.contact():
            dist.all_reduce(status)
            dist.all_gather_object([None] * self.size, _describe(err))

    def _raise_peer_failure(self) -> None:
        reports: list[Any] = [None] * self.size
        with self.contact():
            dist.all_gather_object(reports, None)
        self.failed = True
        rank, report = next((r, rep) for r, rep in enumerate(reports) if rep is not None)
        kind, message, hint = report
        raise DGMTrainingError(f"process {rank} of {self.size} failed: {message}"
                               + ("" if kind == "DGMTrainingError" else f" ({kind})"), hint=hint)

    # -------------------------------------------------------------- training

    def share_parameters(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Give every process rank 0's parameter values."""
        self.check_in()
        with torch.no_grad(), self.contact():
            for param in parameters:
                buffer = param.detach().to(self.device)
                dist.broadcast(buffer, src=0)
                if buffer.data_ptr() != param.data_ptr():
                    param.copy_(buffer)

    def epoch_order(self, n: int) -> torch.Tensor:
        """The shuffled order of an epoch, drawn by rank 0 (``torch.randperm(n)`` from its
        random stream) and the same on every process."""
        self.check_in()
        order = torch.randperm(n) if self.rank == 0 else torch.empty(n, dtype=torch.int64)
        buffer = order.to(self.device)
        with self.contact():
            dist.broadcast(buffer, src=0)
        return buffer.cpu()

    def shard(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This process's piece of a global batch `rows` and how many rows it counts: an
        empty piece becomes the batch's first row, counted zero (its gradient weighs nothing)."""
        sizes = split_sizes(len(rows), self.size)
        start = sum(sizes[: self.rank])
        mine = sizes[self.rank]
        if mine == 0:
            return rows[:1], 0
        return rows[start:start + mine], mine

    def reduce(self, named: Sequence[tuple[str, torch.nn.Parameter]], loss: float, *, rows: int,
               stop: Callable[[], bool] | None = None) -> float:
        """After the backward pass: check in (raising if another process failed; telling the
        others whether `stop()` asks this process to stop), then replace every gradient by
        the average over the processes of ``n_r * N / B`` times their gradients (B the
        all-reduced global batch size), which is the one-process gradient of the global
        batch. Returns the global batch's loss."""
        total_rows, loss_sum = self.check_in(rows=rows, loss=loss, stop=stop is not None and bool(stop()))
        grads = [param.grad for _, param in named if param.grad is not None]
        if grads:
            weight = rows * self.size / total_rows
            flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
            if weight != 1.0:
                flat.mul_(weight)
            with self.contact():
                dist.all_reduce(flat)
            flat.div_(self.size)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        return loss_sum / total_rows


def _describe(err: BaseException) -> tuple[str, str, str | None]:
    if isinstance(err, DGMError):
        return type(err).__name__, err.message, err.hint
    return type(err).__name__, str(err).splitlines()[0] if str(err) else type(err).__name__, None


def current() -> ProcessGroup | None:
    """The process group `fit` trains in: the default `torch.distributed` group when one is
    started and holds more than one process, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    # One object per group (it remembers a shared failure), found by the group's id: holding
    # the group itself would keep gloo's threads alive into interpreter shutdown (see `leave`).
    world = id(dist.group.WORLD)
    if _CURRENT.get("world") != world:
        _CURRENT.update(world=world, group=ProcessGroup())
    return _CURRENT["group"]


_CURRENT: dict[str, Any] = {}


def writes_files() -> bool:
    """Whether this process writes files: always outside a process group, rank 0 inside."""
    group = current()
    return group is None or group.writes_files


@contextlib.contextmanager
def shared_failures(group: ProcessGroup | None) -> Iterator[None]:
    """Around a training loop: an exception in this process is told to the others before it
    propagates, and a clean end is a check-in, so no process is left waiting for one that
    stopped. A no-op outside a group."""
    if group is None:
        yield
        return
    group.failed = group.stopping = False  # a failure or stop of an earlier fit is over
    try:
        yield
    except Exception as err:
        try:
            group.fail(err)
        except DGMTrainingError:
            pass  # the others are gone already; this process's own error is the one to report
        raise
    group.check_in()


def step_seed(seed: int, rank: int, number: int) -> int:
    """The seed process `rank` (not 0) restarts its random stream from before step `number`
    of a run that rank 0 began under `seed`: a hash of the three, below 2**63."""
    digest = hashlib.blake2b(f"dgmlang-step:{seed}:{rank}:{number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def own_random_stream(group: ProcessGroup | None) -> Iterator[Callable[[int], None]]:
    """Give every process but rank 0 its own random streams for the block, so their pieces of
    a batch get independent draws; rank 0 keeps its stream, the one a single process would
    use. Yields ``restart(number)``, called before step `number`: on a process other than
    rank 0 it seeds the stream with `step_seed` (rank 0's initial seed, shared once here,
    the rank, the number), so what it draws at a step depends on nothing before the step and
    a resumed run draws what the uninterrupted one drew. A no-op outside a group and on
    rank 0 (whose random state a checkpoint stores)."""
    if group is None:
        yield lambda number: None
        return
    base = torch.tensor([torch.initial_seed() % 2**63], dtype=torch.int64, device=group.device)
    with group.contact():
        dist.broadcast(base, src=0)
    if group.rank == 0:
        yield lambda number: None
        return
    seed, rank = int(base.item()), group.rank

    def restart(number: int) -> None:
        torch.manual_seed(step_seed(seed, rank, number))

    with torch.random.fork_rng(devices=[]):
        yield restart


# ------------------------------------------------------------------ launching


def launched() -> bool:
    """Whether this process was started by `torch.distributed.run` (torchrun)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_from_environment(*, device: Any = None) -> ProcessGroup | None:
    """Under torchrun, start the process group from its environment (nccl for a CUDA
    `device`, gloo otherwise) and return it; None when not launched or when the group has
    one process."""
    if not launched() or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    if not dist.is_initialized():
        backend = "gloo"
        if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
            backend = "nccl"
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    return current()


def leave() -> None:
    """End this process's part in the process group (when one is started), and drop the
    reference `current` keeps to it: a group left to be freed while the interpreter shuts
    down can abort the process (gloo's threads then find no interpreter: SIGABRT, "terminate
    called without an active exception", seen in about one `dgm fit --nproc 2` in five)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT.clear()


def launch(module: str, argv: Sequence[str], processes: int) -> int:
    """Run ``python -m module *argv`` in `processes` processes on this machine through
    `torch.distributed.run` (a free port on localhost); the exit status of rank 0, or of the
    first process that failed."""
    if not isinstance(processes, int) or processes < 1:
        raise DGMUsageError(f"the number of processes must be a whole number of at least 1, not {processes!r}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    config = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", module])
    config.training_script_args = list(argv)  # as given: not parsed as the launcher's options
    # the machine's cores shared out, unless the user chose a thread count
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    # the launcher's own log lines go: a worker's failure is reported by the worker itself
    quiet = {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
             if name.startswith("torch.distributed") and isinstance(logger, logging.Logger)}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(config)
    except ChildFailedError as err:
        # a process killed by a signal (not the launcher's SIGTERM) first: the others only
        # lost contact with it; else one that printed its error
        rank, first = min(err.failures.items(), key=lambda item: (
            not (item[1].exitcode < 0 and item[1].exitcode != -signal.SIGTERM), item[1].timestamp, item[0]))
        if first.exitcode > 0:
            return first.exitcode  # the process printed its error
        raise DGMTrainingError(f"process {rank} of {processes} was killed ({first.signal_name()}); "
                               "the others were stopped", hint="out of memory is a common cause") from None
    except SignalException as err:  # Ctrl-C or a kill: the workers were stopped with it
        return 128 + int(err.sigval)
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
    return 0
