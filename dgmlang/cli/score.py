"""`dgm score`: the log-likelihood of each row, and an outlier flag."""
from __future__ import annotations

import warnings

from dgmlang.cli.runs import open_run_on, outlier_threshold
from dgmlang.cli.shared import CHUNK_ROWS, check_budget, output_paths, row_values, say, score_rows, write_atomic
from dgmlang.errors import DGMWarning


def cmd_score(args) -> int:
    import numpy as np

    from dgmlang.datafiles import observed_rows, read_observed, write_csv

    outputs = output_paths(args.output, (".csv", ".npz"))
    model, run, info = open_run_on(args)
    threshold, origin = outlier_threshold(args.threshold, run, info)
    ir = model.ir
    check_budget(f"--num-samples {args.num_samples} for {CHUNK_ROWS} rows at a time",
                 CHUNK_ROWS * args.num_samples * row_values(ir))
    data, masks = read_observed(args.data, args.mask, ir, purpose="log_prob", facts=model.facts,
                                dtype=model.model.dtype, labels=[step.latent for step in model.plan.labels])
    complete = observed_rows(data, masks, ir)
    scores = score_rows(model, data, num_samples=args.num_samples, seed=args.seed, quiet=args.quiet, desc="score",
                        source=str(args.data), masks=masks or None)
    columns = {"row": np.arange(len(scores)), "log_prob": scores}
    if threshold is not None:
        columns["outlier"] = (scores < threshold).astype(int)
    columns["complete"] = complete.astype(int)  # last: the columns before it are as they were
    incomplete = int((~complete).sum())
    if incomplete:
        warnings.warn(
            f"{incomplete} of {len(scores)} rows {'has' if incomplete == 1 else 'have'} missing entries "
            "(complete = 0): their log_prob is the "
            "log-likelihood of their observed entries only, higher or lower than a complete row's for reasons "
            "other than how typical the row is; do not compare it with complete rows' scores or with "
            "the outlier threshold", DGMWarning, stacklevel=1)
    for out in outputs:
        with write_atomic(out) as temporary:
            if out.suffix.lower() == ".csv":
                write_csv(temporary, columns, {k: () for k in columns})
            else:
                np.savez(temporary, **columns)
        say(f"wrote {out}")
    say(f"{len(scores)} rows: mean log-likelihood {scores.mean():.4g}, lowest {scores.min():.4g}"
        + (f" ({incomplete} row{'s' if incomplete > 1 else ''} incomplete)" if incomplete else ""))
    if threshold is None:
        say(f"outliers: {origin}")
    else:
        flagged = columns["outlier"].astype(bool)
        say(f"outliers: {int(flagged.sum())} rows below {threshold:.4g} ({origin})"
            + (f"; {int((flagged & complete).sum())} of them complete" if incomplete else ""))
    return 0
