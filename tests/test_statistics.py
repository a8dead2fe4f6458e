"""The statistics of stage 04's comparison with ReLU: pairing by seed, Holm, the Monte Carlo guard, masking flags
on image counts, and verdicts that do not depend on the bootstrap's own seed (on a committed study)."""
import dataclasses
import os

import numpy as np
import pytest
import torch

import sat_stats
from conftest import ROOT, stage


def test_holm_matches_the_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> made non-decreasing: 0.06 for the last
    assert np.allclose(sat_stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert sat_stats.holm([0.5]) == [0.5] and max(sat_stats.holm([0.9, 0.8])) <= 1.0


def test_p_values_and_the_guard():
    reps = np.linspace(0.001, 0.02, 1000)            # all above 0, all within +-3 points
    p_diff, p_equal = sat_stats.p_values(reps, 0.03)
    assert p_diff == 0.0 and p_equal == 0.0
    ev = stage("04_eval")
    assert ev.verdict(0.001, 0.02) == "better"
    assert ev.verdict(0.001, 0.02, guard=0.002) == "equal"   # an end within the guard of 0 is not "better"
    assert ev.verdict(-0.05, -0.01, guard=0.002) == "worse"


def test_paired_bootstrap_is_narrower_when_seeds_share_their_noise():
    rng = np.random.default_rng(0)
    seed_effect = rng.random((8, 1)) < 0.5           # a seed that is good for one activation is good for the other
    base = rng.random((8, 400)) < 0.6
    b = base | seed_effect & (rng.random((8, 400)) < 0.3)
    a = b.copy()
    a[:, :8] = True                                   # a is right on 8 more images, for every seed
    ev = stage("04_eval")
    _, lo_u, hi_u = ev.bootstrap_diff(a, b, reps=4000, paired=False)
    d, lo_p, hi_p = ev.bootstrap_diff(a, b, reps=4000, paired=True)
    assert hi_p - lo_p < 0.5 * (hi_u - lo_u) and lo_p <= d <= hi_p


def test_every_activation_of_a_seed_starts_from_the_same_weights_and_random_stream(train_mod):
    """What the seed-paired bootstrap assumes: the same seed gives every digits configuration the same initial
    weights and the same later random draws (the data order depends on (seed, epoch) alone)."""
    import sat_models
    from sat_seeds import seed_everything
    first = None
    for act, sg in [("relu", "none"), ("relu", "attacker"), ("silu", "none"), ("gelu", "none"), ("psoftplus", "none"),
                    ("softplus", "none"), ("smoothrelu", "none"), ("elu", "none")]:
        cfg = train_mod.preset_config("digits", act=act, smooth_grad=sg, seed=3)
        seed_everything(cfg.seed)
        model = sat_models.build_model(dataclasses.asdict(cfg))
        weights = [p.detach().clone() for n, p in model.named_parameters() if "alpha" not in n and "beta" not in n]
        got = (weights, torch.rand(4))
        if first is None:
            first = got
        assert len(got[0]) == len(first[0]) and all(torch.equal(x, y) for x, y in zip(got[0], first[0])), act
        assert torch.equal(got[1], first[1]), act


def test_masking_flags_count_images_not_rounded_percentages():
    ev = stage("04_eval")
    r = {"n": 500, "pgd1": 0.9, "pgd10": 0.85, "pgd50": 0.8, "pgd200": float(np.float32(0.796)), "fgsm": 0.9,
         "eps_curve": {"256": 0.0}, "apgd_t": float(np.float32(0.766))}   # exactly 15 of 500 images: 3.0 points
    assert ev.masking_flags(r, 10) == []
    r["apgd_t"] = float(np.float32(0.764))                              # 16 images: over the tolerance
    assert [f.split(":")[0] for f in ev.masking_flags(r, 10)] == ["independent"]


def test_verdicts_do_not_depend_on_the_bootstrap_seed():
    """The committed comparisons (bootstrap seed 0) give the same verdicts, before and after Holm, with two other
    bootstrap seeds; the Monte Carlo error stays under 0.2 points; the seeds are paired."""
    import csv
    import sat_report
    ev = stage("04_eval")
    folder = os.path.join(ROOT, "results", "fashionmnist_val")
    with open(os.path.join(folder, "comparisons.csv"), newline="") as f:
        committed = [(r["configuration"], h, r[f"{h} verdict"], r[f"{h} after Holm"]) for r in csv.DictReader(f)
                     for h in ev.COMPARED.values()]
    results = sat_report.results_from_files(folder)
    for seed in (1, 2):
        rows = ev.compare_with_relu(results, seed=seed)
        assert [(row["configuration"], h, row[k][3], row[k][6]) for row in rows for k, h in ev.COMPARED.items()] == committed
        assert all(row[k][4] < 0.002 for row in rows for k in ev.COMPARED)
        assert all(", paired" in row["seeds"] for row in rows)


def test_a_run_copied_under_runs_is_one_warning_line(capsys):
    """Two checkpoints of one configuration and seed (a run folder copied or renamed under --runs): stage 04's
    comparison says so in one stderr line naming both (it would count the run as two seeds, unpaired), and still
    compares. The committed studies have no such pair; final.pt and best.pt of one run are not one."""
    import sat_report
    ev = stage("04_eval")
    for study in os.listdir(os.path.join(ROOT, "results")):
        sat_report.warn_of_repeated_seeds(sat_report.results_from_files(os.path.join(ROOT, "results", study)))
    assert capsys.readouterr().err == ""
    results = [r for r in sat_report.results_from_files(os.path.join(ROOT, "results", "digits_eps32"))
               if r["act"] in ("relu", "silu") and r["smooth_grad"] == "none" and r["seed"] < 3]
    relu = next(r for r in results if r["act"] == "relu" and r["seed"] == 1)
    copy = {**relu, "run": "digits_relu_copy_s1"}
    rows = ev.compare_with_relu(results + [copy])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "digits relu, seed 1" in err[0]
    assert relu["run"] in err[0] and "digits_relu_copy_s1" in err[0]
    assert [row["seeds"] for row in rows] == ["3 vs 4"]   # the copy counted (unpaired), as the warning says
