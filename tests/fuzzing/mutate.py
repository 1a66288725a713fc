"""A mutation fuzzer for model text: nothing but a `DGMError` may reach a user.

Mutants are made from every `examples/*.dgm` and `tests/programs/{good,bad}/*.dgm` by one to
three random operators (characters, tokens and lines deleted, inserted, duplicated and
swapped; lines spliced from another seed; numbers replaced by extremes; keywords,
distribution names and odd unicode inserted). Two stages:

* check: each mutant is compiled (`dgmlang.compile`, model construction included) in a worker
  process. A case that uses more than `CHECK_CPU_S` seconds of CPU is itself a failure; one
  that runs away is stopped by `RLIMIT_CPU` and the worker is restarted.
* run: a seeded sample of the accepted mutants goes through `fit(steps=2)`, `sample`,
  `log_prob` and `invert` (also with half the entries hidden, by resampling and by Gibbs
  chains) on 4 simulated rows with 8 samples (budget `RUN_CPU_S`).

Any exception other than a `DGMError` is an escape, reported with the mutant's text and its
traceback. Run it by hand for figures::

    .venv/bin/python tests/fuzzing/mutate.py --mutants 10000 --runs 300
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
CHECK_CPU_S = 2.0
RUN_CPU_S = 20.0
ROWS, SAMPLES, STEPS = 4, 8, 2
#: Gibbs chains' warm-up and exact sweeps in a run (invert's defaults: 20 and 100). The fuzzer
#: looks for escapes, which the first sweeps meet as well as the last; the full length only
#: multiplies the time: a model with a global runs one batch of chains per posterior draw, and
#: 8 x 120 sweeps of constraints_shown took 19-20 s of CPU, at the edge of `RUN_CPU_S`.
SWEEPS = (5, 10)


def seed_files() -> list[Path]:
    """Every example and golden program, in a fixed order."""
    programs = ROOT / "tests" / "programs"
    return sorted(ROOT.glob("examples/*.dgm")) + sorted(programs.glob("good/*.dgm")) + sorted(
        programs.glob("bad/*.dgm"))


def seeds() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in seed_files()]


# ------------------------------------------------------------------ operators

TOKEN = re.compile(r"\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\w+|\*\*|\S|\s+")
NUMBER = re.compile(r"(?<![\w.])(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
EXTREMES = ["0", "-1", "1e-400", "1e400", str(2**31), str(2**63), "9" * 400, "1e-320", "1e300",
            "1e38", "3.5e38", "0.0", "1e-45", str(2**63 - 1), str(2**62), "1000000", "65536",
            "100000000", "-0.0", "2147483648"]
WORDS = ["model", "data", "input", "latent", "global", "param", "const", "let", "net", "guide",
         "hidden", "family", "channels", "activation", "real", "int", "positive", "unit",
         "simplex", "normal", "delta", "flow", "Normal", "Binomial", "Bernoulli", "Categorical",
         "Poisson", "Gamma", "Beta", "Dirichlet", "StudentT", "NegativeBinomial", "LogNormal",
         "Exponential", "Uniform", "HalfNormal", "Laplace", "mlp", "deconv", "onehot", "zeros",
         "ones", "concat", "matmul", "dot", "sum", "mean", "softmax", "log_softmax", "exp",
         "log", "sigmoid", "~", "=", "**", "[", "]", "(", ")", ",", ":", "{", "}", "-", "*",
         "/", "+", "#"]
ODD = ["\x00", "\ufeff", "\u200b", "\u200f", "\u202e", "\u200e", "\u2028", "\r", "\t", "\x0c",
       "\u00e9", "\u0301", "\U0001f600", "\uff10", "\u0660", "\\", "'", '"', "\x7f", "\ud800"]
CHARS = "()[]{},:=~*+-/._# \n0123456789abxyzAZ" + "".join(ODD[:6])


def _pos(rng: random.Random, text: str) -> int:
    return rng.randrange(len(text) + 1)


def char_delete(text, rng, corpus):
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + text[i + 1:]


def char_insert(text, rng, corpus):
    i = _pos(rng, text)
    return text[:i] + rng.choice(CHARS) + text[i:]


def char_duplicate(text, rng, corpus):
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + text[i] * rng.choice([2, 2, 3, 50]) + text[i + 1:]


def char_swap(text, rng, corpus):
    if len(text) < 2:
        return text
    i, j = sorted(rng.sample(range(len(text)), 2))
    if rng.random() < 0.5:
        j = min(i + 1, len(text) - 1)
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def _solid(tokens: list[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if not t.isspace()]


def token_delete(text, rng, corpus):
    tokens = _tokens(text)
    solid = _solid(tokens)
    if solid:
        del tokens[rng.choice(solid)]
    return "".join(tokens)


def token_insert(text, rng, corpus):
    tokens = _tokens(text)
    donor = [t for t in _tokens(rng.choice(corpus)) if not t.isspace()] or ["x"]
    tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(["", " "]) + rng.choice(donor) + " ")
    return "".join(tokens)


def token_duplicate(text, rng, corpus):
    tokens = _tokens(text)
    solid = _solid(tokens)
    if solid:
        i = rng.choice(solid)
        tokens.insert(i, tokens[i] + rng.choice(["", " "]))
    return "".join(tokens)


def token_swap(text, rng, corpus):
    tokens = _tokens(text)
    solid = _solid(tokens)
    if len(solid) >= 2:
        if rng.random() < 0.5:
            k = rng.randrange(len(solid) - 1)
            i, j = solid[k], solid[k + 1]
        else:
            i, j = rng.sample(solid, 2)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(tokens)


def line_delete(text, rng, corpus):
    lines = text.split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def line_insert(text, rng, corpus):
    lines = text.split("\n")
    donor = rng.choice(corpus).split("\n")
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(donor))
    return "\n".join(lines)


def line_duplicate(text, rng, corpus):
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines[i:i + 1] = [lines[i]] * rng.choice([2, 2, 3, 10])
    return "\n".join(lines)


def line_swap(text, rng, corpus):
    lines = text.split("\n")
    if len(lines) >= 2:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def splice(text, rng, corpus):
    """A run of lines replaced by a run of lines from another seed."""
    lines = text.split("\n")
    donor = rng.choice(corpus).split("\n")
    i = rng.randrange(len(lines))
    j = min(len(lines), i + rng.randint(0, 4))
    a = rng.randrange(len(donor))
    b = min(len(donor), a + rng.randint(1, 5))
    lines[i:j] = donor[a:b]
    return "\n".join(lines)


def number_extreme(text, rng, corpus):
    numbers = list(NUMBER.finditer(text))
    if not numbers:
        return char_insert(text, rng, corpus)
    m = rng.choice(numbers)
    return text[:m.start()] + rng.choice(EXTREMES) + text[m.end():]


def word_insert(text, rng, corpus):
    tokens = _tokens(text)
    i = rng.randrange(len(tokens) + 1)
    tokens.insert(i, rng.choice([" ", ""]) + rng.choice(WORDS) + rng.choice([" ", "", "(", "\n"]))
    return "".join(tokens)


def odd_unicode(text, rng, corpus):
    i = _pos(rng, text)
    odd = rng.choice(ODD)
    if odd == "\ud800":  # a lone surrogate cannot be encoded; keep the text a str anyway
        odd = "\udcff" if rng.random() < 0.5 else "\ufffd"
    return text[:i] + odd + text[i:]


OPERATORS: dict[str, Callable] = {f.__name__: f for f in [
    char_delete, char_insert, char_duplicate, char_swap,
    token_delete, token_insert, token_duplicate, token_swap,
    line_delete, line_insert, line_duplicate, line_swap,
    splice, number_extreme, word_insert, odd_unicode,
]}


@dataclasses.dataclass(frozen=True)
class Mutant:
    index: int
    seed: str
    operators: tuple[str, ...]
    text: str


def mutants(count: int, seed: int = 0) -> Iterator[Mutant]:
    """`count` mutants, the same ones for the same `seed`: every seed file in turn, the
    programs that check (examples, good) three times as often as the bad ones; one to three
    random operators each, mostly one."""
    rng = random.Random(seed)
    sources = seeds()
    corpus = [text for _, text in sources]
    rotation = [s for s in sources if "/bad/" not in s[0]] * 3 + [s for s in sources if "/bad/" in s[0]]
    names = list(OPERATORS)
    for index in range(count):
        name, text = rotation[index % len(rotation)]
        ops = tuple(rng.choice(names) for _ in range(rng.choice([1, 1, 1, 1, 2, 3])))
        for op in ops:
            text = OPERATORS[op](text, rng, corpus)
        yield Mutant(index, name, ops, text)


# ------------------------------------------------------------------ the worker


def _innermost_dgmlang_frame(tb) -> str:
    """`path:function` of the innermost frame inside the dgmlang package, else of the last."""
    import traceback

    frames = traceback.extract_tb(tb)
    package = str(ROOT / "dgmlang")
    inside = [f for f in frames if f.filename.startswith(package)] or frames[-1:]
    if not inside:
        return "?"
    frame = inside[-1]
    return f"{os.path.relpath(frame.filename, ROOT)}:{frame.name}"


def compile_all(text: str) -> list:
    """Every model of `text`, compiled (the model and guide built)."""
    import dgmlang
    from dgmlang.frontend import check_source

    models = check_source(text, "<string>")
    if len(models) == 1:
        return [dgmlang.compile(text)]
    return [dgmlang.compile(text, model=m.ir.name) for m in models]


def run_model(m, progress: Callable[[str], None] = lambda step: None) -> list[str]:
    """fit(steps=2), sample, log_prob and invert (complete, and with half the entries hidden:
    resampling and Gibbs chains) on 4 rows simulated from the model;
    `progress` is told each step's name before it starts. The steps that raised a DGMError."""
    import torch

    from dgmlang import gibbs
    from dgmlang.errors import DGMError
    from dgmlang.testing import simulate

    gibbs.WARMUP_SWEEPS, gibbs.GIBBS_SWEEPS = SWEEPS

    progress("simulate")
    sim = simulate(m, ROWS, seed=0)
    inputs = {k: v for k, v in sim.data.items() if k in m.ir.names("input")}
    steps = [
        ("fit", lambda: m.fit(sim.data, steps=STEPS, batch_size=ROWS, progress=False, seed=0)),
        ("sample", lambda: m.sample(SAMPLES, inputs={k: v[:1].expand(SAMPLES, *v.shape[1:])
                                          for k, v in inputs.items()} if inputs else None, seed=0)),
        ("log_prob", lambda: m.log_prob(sim.data, num_samples=SAMPLES, seed=0)),
        ("invert", lambda: m.invert(sim.data, num_samples=SAMPLES, seed=0)),
        ("invert with gaps", lambda: m.invert(sim.data, mask=gaps, num_samples=SAMPLES, seed=0)),
        ("invert with gaps, gibbs", lambda: m.invert(sim.data, mask=gaps, num_samples=SAMPLES, seed=0,
                                                     method="gibbs")),
    ]
    hide = torch.Generator().manual_seed(1)  # every other entry of every data variable, at random
    gaps = {k: torch.rand(tuple(v.shape), generator=hide) < 0.5 for k, v in sim.data.items()
            if k in m.ir.names("data")}
    refused = []
    for name, step in steps:  # each on its own: a DGMError from one (a refusal) skips no other
        progress(name)
        try:
            step()
        except DGMError:
            refused.append(name)
    return refused


def _one_case(stage: str, text: str, progress: Callable[[str], None] = lambda step: None):
    """('rejected'|'accepted'|'ran', None) or ('escape', (type, frame, traceback))."""
    import traceback

    from dgmlang.errors import DGMError

    try:
        progress("compile")
        models = compile_all(text)
        if stage == "check":
            return "accepted", None
        refused = [step for m in models for step in run_model(m, progress)]
        return "ran", refused
    except DGMError:
        return ("rejected" if stage == "check" else "ran"), ["simulate"]
    except RecursionError as err:  # noqa: F841 - an escape like any other, but keep its text short
        return "escape", ("RecursionError", "?", "RecursionError: maximum recursion depth exceeded")
    except BaseException as err:  # noqa: BLE001 - every non-DGM exception is what we look for
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return "escape", (type(err).__name__, _innermost_dgmlang_frame(err.__traceback__),
                          "".join(traceback.format_exception(err))[-4000:])


def _worker(conn) -> None:
    import resource
    import warnings

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]  # only the soft limit moves
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import dgmlang  # noqa: F401 - imported before the first case is timed

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        stage, text, budget = message
        used = time.process_time()
        # A runaway case is stopped by the kernel (SIGXCPU) a little after its budget.
        limit = int(used + budget) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
        outcome, detail = _one_case(stage, text, lambda step: conn.send(("step", step)))
        cpu = time.process_time() - used
        conn.send((outcome, detail, cpu))


@dataclasses.dataclass
class Failure:
    stage: str  # "check" or "run"
    kind: str  # "escape", "slow" or "crash"
    mutant: Mutant
    exception: str = ""
    frame: str = ""
    traceback: str = ""
    cpu: float = 0.0

    @property
    def signature(self) -> tuple[str, str, str]:
        """Stable across runs: the stage, the exception type (or 'slow'/'crash') and the
        innermost dgmlang frame."""
        return (self.stage, self.exception or self.kind, self.frame)

    def report(self) -> str:
        head = (f"[{self.stage}] {self.kind} {self.exception} at {self.frame} "
                f"(mutant {self.mutant.index} of {self.mutant.seed} by {'+'.join(self.mutant.operators)}, "
                f"{self.cpu:.1f} s CPU)")
        return f"{head}\n--- mutant text ---\n{self.mutant.text!r}\n--- traceback ---\n{self.traceback}"


@dataclasses.dataclass
class Figures:
    mutants: int = 0
    rejected: int = 0
    accepted: int = 0
    runs: int = 0
    refusals: dict = dataclasses.field(default_factory=dict)  # run step -> runs it raised a DGMError in
    failures: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    restarts: int = 0

    def summary(self) -> str:
        by_sig: dict = {}
        for f in self.failures:
            by_sig.setdefault(f.signature, []).append(f)
        lines = [f"{self.mutants} mutants: {self.rejected} DGMError, {self.accepted} accepted; "
                 f"{self.runs} runs (DGMError by step: {self.refusals}); {len(self.failures)} failures in {len(by_sig)} signatures; "
                 f"{self.restarts} worker restarts; {self.seconds:.0f} s"]
        for sig, fs in by_sig.items():
            lines.append(f"  {len(fs)} x {sig}")
        return "\n".join(lines)


class Worker:
    """One worker process, restarted when a case runs away or kills it."""

    def __init__(self):
        self.context = multiprocessing.get_context("spawn")
        self.process = None
        self.restarts = -1
        self.start()

    def start(self) -> None:
        self.stop()
        parent, child = self.context.Pipe()
        self.conn = parent
        self.process = self.context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.restarts += 1

    def stop(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                try:
                    self.conn.send(None)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.process.close()
            self.conn.close()
        self.process = None

    def case(self, stage: str, text: str, budget: float, wall: float):
        """(outcome, detail, cpu); outcome 'dead' when the process died or ran past `wall`,
        with the step it was in as detail."""
        self.step = "compile"
        deadline = time.monotonic() + wall
        try:
            self.conn.send((stage, text, budget))
            while self.conn.poll(max(0.0, deadline - time.monotonic())):
                message = self.conn.recv()
                if message[0] != "step":
                    return message
                self.step = message[1]
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        code = self.process.exitcode
        self.start()
        return "dead", (code, self.step), budget


def fuzz(n_mutants: int, n_runs: int, *, seed: int = 0, check_cpu: float = CHECK_CPU_S,
         run_cpu: float = RUN_CPU_S, log: Callable[[str], None] | None = None) -> Figures:
    """Check `n_mutants` mutants, then run a seeded `n_runs` of the accepted ones."""
    start = time.monotonic()
    figures = Figures()
    worker = Worker()
    accepted: list[Mutant] = []
    try:
        for mutant in mutants(n_mutants, seed):
            figures.mutants += 1
            outcome, detail, cpu = worker.case("check", mutant.text, check_cpu, 60 + 10 * check_cpu)
            failure = _failure("check", outcome, detail, cpu, check_cpu, mutant)
            if failure is not None:
                figures.failures.append(failure)
                if log:
                    log(failure.report())
            elif outcome == "accepted":
                figures.accepted += 1
                accepted.append(mutant)
            else:
                figures.rejected += 1
        rng = random.Random(seed + 1)
        chosen = rng.sample(accepted, min(n_runs, len(accepted)))
        for mutant in chosen:
            figures.runs += 1
            outcome, detail, cpu = worker.case("run", mutant.text, run_cpu, 60 + 5 * run_cpu)
            failure = _failure("run", outcome, detail, cpu, run_cpu, mutant)
            if outcome == "ran":
                for step in detail:
                    figures.refusals[step] = figures.refusals.get(step, 0) + 1
            if failure is not None:
                figures.failures.append(failure)
                if log:
                    log(failure.report())
    finally:
        worker.stop()
    figures.restarts = worker.restarts
    figures.seconds = time.monotonic() - start
    return figures


def _failure(stage, outcome, detail, cpu, budget, mutant) -> Failure | None:
    if outcome == "escape":
        exception, frame, tb = detail
        return Failure(stage, "escape", mutant, exception, frame, tb, cpu)
    if outcome == "dead":
        code, step = detail
        kind = "slow" if code in (-24, None) else "crash"  # -24: SIGXCPU
        return Failure(stage, kind, mutant, "", f"step {step}",
                       f"worker process ended in step {step} (exit code {code})", cpu)
    if cpu > budget:
        return Failure(stage, "slow", mutant, "", "", f"{cpu:.1f} s of CPU, over {budget} s", cpu)
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    figures = fuzz(args.mutants, args.runs, seed=args.seed,
                   log=None if args.quiet else lambda s: print(s, "\n", flush=True))
    print(figures.summary())
    return 1 if figures.failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    from fuzzing.mutate import main as _main  # the worker must import this module by name

    sys.exit(_main())
