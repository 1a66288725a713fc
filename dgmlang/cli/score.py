"""`dgm score`: the log-likelihood of each row, and an outlier flag."""
from __future__ import annotations

from dgmlang.cli.runs import open_run_on, outlier_threshold
from dgmlang.cli.shared import CHUNK_ROWS, check_budget, output_paths, row_values, say, score_rows, write_atomic


def cmd_score(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, validate, write_csv

    outputs = output_paths(args.output, (".csv", ".npz"))
    model, run, info = open_run_on(args)
    threshold, origin = outlier_threshold(args.threshold, run, info)
    ir = model.ir
    check_budget(f"--num-samples {args.num_samples} for {CHUNK_ROWS} rows at a time",
                 CHUNK_ROWS * args.num_samples * row_values(ir))
    data = read_data(args.data, ir)
    validate(ir, data, str(args.data), purpose="log_prob", facts=model.facts, dtype=model.model.dtype)
    scores = score_rows(model, data, num_samples=args.num_samples, seed=args.seed, quiet=args.quiet, desc="score",
                        source=str(args.data))
    columns = {"row": np.arange(len(scores)), "log_prob": scores}
    if threshold is not None:
        columns["outlier"] = (scores < threshold).astype(int)
    for out in outputs:
        with write_atomic(out) as temporary:
            if out.suffix.lower() == ".csv":
                write_csv(temporary, columns, {k: () for k in columns})
            else:
                np.savez(temporary, **columns)
        say(f"wrote {out}")
    say(f"{len(scores)} rows: mean log-likelihood {scores.mean():.4g}, lowest {scores.min():.4g}")
    if threshold is None:
        say(f"outliers: {origin}")
    else:
        say(f"outliers: {int(columns['outlier'].sum())} rows below {threshold:.4g} ({origin})")
    return 0
