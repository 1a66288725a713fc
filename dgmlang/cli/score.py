"""`dgm score`: the log-likelihood of each row, and an outlier flag."""
from __future__ import annotations

from dgmlang.cli.runs import open_run, outlier_threshold
from dgmlang.cli.shared import output_paths, score_rows


def cmd_score(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, validate, write_csv

    outputs = output_paths(args.output, (".csv", ".npz"))
    model, run, info = open_run(args.run)
    threshold, origin = outlier_threshold(args.threshold, run, info)
    ir = model.ir
    data = read_data(args.data, ir)
    validate(ir, data, str(args.data), purpose="log_prob")
    scores = score_rows(model, data, num_samples=args.num_samples, seed=args.seed, quiet=args.quiet, desc="score")
    columns = {"row": np.arange(len(scores)), "log_prob": scores}
    if threshold is not None:
        columns["outlier"] = (scores < threshold).astype(int)
    for out in outputs:
        if out.suffix.lower() == ".csv":
            write_csv(out, columns, {k: () for k in columns})
        else:
            np.savez(out, **columns)
        print(f"wrote {out}")
    print(f"{len(scores)} rows: mean log-likelihood {scores.mean():.4g}, lowest {scores.min():.4g}")
    if threshold is None:
        print(f"outliers: {origin}")
    else:
        print(f"outliers: {int(columns['outlier'].sum())} rows below {threshold:.4g} ({origin})")
    return 0
