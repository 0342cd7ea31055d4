"""Does the readout likelihood describe hard-mode data of a sample?  The score at the truth over noise seeds.

For a well-specified likelihood the score (∂(−log L)/∂θ at the true parameters) has mean 0 and covariance V equal
to the expected Fisher information F (calibration/fisher.py).  V > F means the fitted values scatter more than the
likelihood's curvature (the fit's σ) says: by about √(V_ii/F_ii) for one parameter, in general the sandwich
F⁻¹VF⁻¹.  This script draws ``--seeds`` hard-mode targets with noise from ``--input`` at the parameters of
``--detector`` (a detector YAML: the truth), takes the relaxed model's likelihood gradient at the truth for each
(autograd through the simulator, one forward pass), and prints mean/SE, diag(V)/diag(F), the eigenvalues of
F^-½VF^-½ (all 1 when V = F), σ from F and from the sandwich.

    python -m calibration.scripts.score_spread --input steep.h5 --detector secret.yaml \\
        --params lifetime tran_diff long_diff --seeds 16 --out score_spread.json

``--split`` also splits the score into the likelihood's count term (−Σ log P(N = n)) and its value term (the
readouts' densities) and compares each with its own part of F (a misspecified part shows as its own V/F ≠ 1).

Targets are the hard front end's hits (as `sparsetpc simulate --mode hard --noise` writes them); every event
of the input, no selection cuts.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from calibration._io import write_json


PROG = "python -m calibration.scripts.score_spread"


def main(argv=None) -> int:
    from sparsetpc.cli.errors import OneLineParser, run_guarded
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="edep-sim segments HDF5")
    parser.add_argument("--detector", help="detector YAML whose physics parameters are the truth (default module 0)")
    parser.add_argument("--params", nargs="+", default=["lifetime", "tran_diff", "long_diff"])
    parser.add_argument("--seeds", type=int, default=16, help="noise seeds 1..N")
    parser.add_argument("--clock-phases", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--split", action="store_true",
                        help="also V/F of the count term and of the value term separately")
    parser.add_argument("--out", help="JSON report")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    return run_guarded(PROG, lambda: _run(args), debug=args.debug)


def _check_arguments(args) -> None:
    """Refuse, before any work, values that cannot work (one line, exit 2 through run_guarded)."""
    import sparsetpc as st
    from sparsetpc.cli.errors import UsageError, check_output_path
    if args.seeds < 2:
        raise UsageError(f"--seeds {args.seeds}: the score's covariance needs at least 2 noise seeds")
    for option, value in (("--clock-phases", args.clock_phases), ("--threads", args.threads)):
        if value < 1:
            raise UsageError(f"{option} {value}: must be at least 1")
    known = st.Params.nominal().names()
    unknown = [name for name in args.params if name not in known]
    if unknown:
        raise UsageError(f"--params: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if len(set(args.params)) != len(args.params):
        raise UsageError(f"--params: a parameter is given twice ({' '.join(args.params)})")
    if args.out:
        check_output_path(args.out, inputs=[args.input, args.detector], option="--out")


def _run(args) -> int:
    _check_arguments(args)
    import torch
    import sparsetpc as st
    from calibration.fisher import expected_fisher
    from calibration.losses import HitsLoss
    from sparsetpc.electronics import FrontEnd
    from sparsetpc.segments import load_segments
    torch.set_num_threads(args.threads)
    detector = st.Detector.from_larnd_yaml(args.detector) if args.detector else st.Detector.default()
    truth = st.Params.nominal(dtype=torch.float64, **detector.nominal_parameters)
    segments = load_segments(args.input, cuts=st.Cuts.none(), dtype=torch.float64)
    front_end = FrontEnd(tick=detector.tick, clock_phases=args.clock_phases)
    names = list(args.params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        information = expected_fisher(segments, truth, names, detector=detector, front_end=front_end)
        fisher = information.matrix
        leaf = st.Params.nominal(dtype=torch.float64, **detector.nominal_parameters)
        leaf.requires_grad_(names)
        guess = st.simulate(segments, detector, leaf, mode="relaxed", front_end=front_end)
        loss_fn = HitsLoss("likelihood")
        leaves = [getattr(leaf, n) for n in names]
        count_fn = HitsLoss("likelihood", terms="count")
        scores, losses, count_scores = [], [], []
        for seed in range(1, args.seeds + 1):
            target = st.simulate(segments, detector, truth, mode="hard", noise=True, seed=seed)
            loss = loss_fn(guess, target, n_units=1)                        # the total −log L
            grads = torch.autograd.grad(loss, leaves, retain_graph=True)
            scores.append([float(g) for g in grads])
            if args.split:
                count_grads = torch.autograd.grad(count_fn(guess, target, n_units=1), leaves, retain_graph=True)
                count_scores.append([float(g) for g in count_grads])
            losses.append(float(loss))
            print(f"seed {seed:3d}  -log L {losses[-1]:10.2f}  score " + " ".join(f"{n} {g:+.3e}" for n, g in
                                                                             zip(names, scores[-1])), flush=True)
    scores = np.array(scores)
    covariance = np.cov(scores, rowvar=False).reshape(len(names), len(names))
    mean = scores.mean(axis=0)
    standard_error = np.sqrt(np.diag(covariance) / len(scores))
    inverse = np.linalg.inv(fisher)
    scale = 1.0 / np.sqrt(np.diag(fisher))
    root = np.linalg.cholesky(fisher * np.outer(scale, scale))
    whitened = np.linalg.inv(root) @ (covariance * np.outer(scale, scale)) @ np.linalg.inv(root).T
    sigma_fisher = np.sqrt(np.diag(inverse))
    sigma_sandwich = np.sqrt(np.diag(inverse @ covariance @ inverse))
    values = {n: float(getattr(truth, n)) for n in names}
    report = {"input": args.input, "detector": args.detector, "params": names, "truth": values,
              "seeds": args.seeds, "clock_phases": args.clock_phases,
              "neg_log_likelihood_at_truth": {"mean": float(np.mean(losses)), "sd": float(np.std(losses, ddof=1))},
              "score_mean_over_standard_error": dict(zip(names, (mean / standard_error).tolist())),
              "variance_over_fisher": dict(zip(names, (np.diag(covariance) / np.diag(fisher)).tolist())),
              "whitened_eigenvalues": np.linalg.eigvalsh(whitened).tolist(),
              "sigma_fisher_percent": {n: 100 * s / abs(values[n]) for n, s in zip(names, sigma_fisher)},
              "sigma_sandwich_percent": {n: 100 * s / abs(values[n]) for n, s in zip(names, sigma_sandwich)},
              "fisher": fisher.tolist(), "score_covariance": covariance.tolist(), "scores": scores.tolist(),
              "wall_s": time.perf_counter() - start}
    if args.split:
        parts = {"count": (np.array(count_scores), information.count_term),
                 "value": (scores - np.array(count_scores), information.mean_term + information.covariance_term)}
        report["split"] = {}
        for label, (part, part_fisher) in parts.items():
            part_covariance = np.cov(part, rowvar=False).reshape(len(names), len(names))
            report["split"][label] = {
                "variance_over_fisher": dict(zip(names, (np.diag(part_covariance) / np.diag(part_fisher)).tolist())),
                "share_of_fisher": dict(zip(names, (np.diag(part_fisher) / np.diag(fisher)).tolist())),
                "score_mean_over_standard_error": dict(zip(names, (part.mean(0) / np.sqrt(
                    np.diag(part_covariance) / len(part))).tolist()))}
    print(f"-log L at the truth: mean {report['neg_log_likelihood_at_truth']['mean']:.1f}, "
          f"sd {report['neg_log_likelihood_at_truth']['sd']:.1f} over {args.seeds} seeds")
    for n in names:
        print(f"{n:>10}: mean score / SE {report['score_mean_over_standard_error'][n]:+6.2f}   V/F "
              f"{report['variance_over_fisher'][n]:6.2f}   sigma: Fisher {report['sigma_fisher_percent'][n]:7.3g} %, "
              f"sandwich {report['sigma_sandwich_percent'][n]:7.3g} %")
    print("eigenvalues of F^-1/2 V F^-1/2:", " ".join(f"{e:.2f}" for e in report["whitened_eigenvalues"]))
    for label, part in report.get("split", {}).items():
        print(f"{label} term: " + "   ".join(f"{n} V/F {part['variance_over_fisher'][n]:.2f} (share of F "
                                              f"{part['share_of_fisher'][n]:.2f})" for n in names))
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
