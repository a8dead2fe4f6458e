"""sat_report: the tables stage 04 writes, from a fixed list of per-checkpoint results, byte for byte what
04_eval.py wrote before its tables moved out (commit 6dc7b55): results.md/.csv, per_run.csv, comparisons.md/.csv,
plus the columns of the attacks added since (PGD-200 through the smooth backward, APGD-T; AutoAttack in
per_run.csv), empty ('—' or '') for these results that lack them, and the comparisons' columns added since
(seeds paired where both sides ran the same ones, the verdicts after Holm, the Monte Carlo error).
Results made up by hand: 8 test images, two ReLU seeds, two SiLU seeds, one ReLU with a smooth gradient for the
attacker, one standard-trained ReLU; masking flags on two runs."""
import importlib

import sat_report

ev = importlib.import_module("04_eval")


def result(act, sg, seed, clean, pgd200, worst, flags=(), attack="pgd-1", per_image=None):
    r = {"run": f"digits_{act}_s{seed}", "dataset": "digits", "model": "digitsnet", "act": act, "smooth_grad": sg,
         "train_attack": attack, "seed": seed, "eps_px": 64.0, "n": 8, "clean": clean, "fgsm": 0.5,
         "pgd1": 0.6, "pgd10": 0.5, "pgd50": 0.45, "pgd200": pgd200, "apgd_ce": 0.4, "apgd_dlr": 0.375,
         "square": 0.375, "worst": worst, "flags": list(flags), "params": {"fgsm": "eps=64/255", "pgd200": "steps=200"}}
    if per_image:   # which of the 8 test images the run got right, by metric
        r["per_image"] = per_image
    return r


RESULTS = [
    result("relu", "none", 0, 0.875, 0.5, 0.375, per_image={"clean": "11111110", "pgd200": "11110000", "worst": "11100000"}),
    result("relu", "none", 1, 1.0, 0.625, 0.5, ["independent: apgd_ce 40.0% < PGD-200 62.5%"],
           per_image={"clean": "11111111", "pgd200": "11111000", "worst": "11110000"}),
    result("silu", "none", 0, 0.75, 0.375, 0.25, ["steps: PGD-200 37.5% > PGD-50 25.0%", "eps: 50.0% at eps 512/255, chance is 10%"],
           per_image={"clean": "11111100", "pgd200": "11100000", "worst": "11000000"}),
    result("silu", "none", 1, 0.875, 0.5, 0.375, per_image={"clean": "11111110", "pgd200": "11110000", "worst": "11100000"}),
    result("relu", "attacker", 0, 1.0, 0.75, 0.625, per_image={"clean": "11111111", "pgd200": "11111100", "worst": "11111000"}),
    result("relu", "none", 0, 1.0, 0.0, 0.0, attack="none"),
]

RESULTS_MD = """\
| configuration | seeds | clean % | PGD-200 % | worst-case % | PGD-200 smooth-backward % | APGD-CE % | APGD-DLR % | APGD-T % | Square % | paper clean % (ImageNet) | paper PGD-200 % (ImageNet) | masking flags |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| digits relu standard training | 1 | 100.0 | 0.0 | 0.0 | — | 40.0 | 37.5 | — | 37.5 | — | — | — |
| digits relu | 2 | 93.8 ± 8.8 | 56.2 ± 8.8 | 43.8 ± 8.8 | — | 40.0 ± 0.0 | 37.5 ± 0.0 | — | 37.5 ± 0.0 | 68.8 | 33.0 | independent (1/2 seeds) |
| digits relu (smooth grad: attacker) | 1 | 100.0 | 75.0 | 62.5 | — | 40.0 | 37.5 | — | 37.5 | 68.3 | 34.5 | — |
| digits silu | 2 | 81.2 ± 8.8 | 43.8 ± 8.8 | 31.2 ± 8.8 | — | 40.0 ± 0.0 | 37.5 ± 0.0 | — | 37.5 ± 0.0 | 69.7 | 42.3 | eps (1/2 seeds); steps (1/2 seeds) |
"""

RESULTS_CSV = """\
configuration,seeds,clean %,PGD-200 %,worst-case %,PGD-200 smooth-backward %,APGD-CE %,APGD-DLR %,APGD-T %,Square %,paper clean % (ImageNet),paper PGD-200 % (ImageNet),masking flags,eps,n_test
digits relu standard training,1,100.0,0.0,0.0,—,40.0,37.5,—,37.5,—,—,—,64/255,8
digits relu,2,93.8 ± 8.8,56.2 ± 8.8,43.8 ± 8.8,—,40.0 ± 0.0,37.5 ± 0.0,—,37.5 ± 0.0,68.8,33.0,independent (1/2 seeds),64/255,8
digits relu (smooth grad: attacker),1,100.0,75.0,62.5,—,40.0,37.5,—,37.5,68.3,34.5,—,64/255,8
digits silu,2,81.2 ± 8.8,43.8 ± 8.8,31.2 ± 8.8,—,40.0 ± 0.0,37.5 ± 0.0,—,37.5 ± 0.0,69.7,42.3,eps (1/2 seeds); steps (1/2 seeds),64/255,8
"""

PER_RUN_CSV = """\
run,dataset,model,act,smooth_grad,train_attack,seed,eps_px,n,clean,fgsm,pgd1,pgd10,pgd50,pgd200,pgd200_sg,apgd_ce,apgd_dlr,apgd_t,square,autoattack,worst,flags,attack_parameters,checkpoint,epochs
digits_relu_s0,digits,digitsnet,relu,none,pgd-1,0,64.0,8,0.875,0.5,0.6,0.5,0.45,0.5,,0.4,0.375,,0.375,,0.375,,fgsm: eps=64/255 | pgd200: steps=200,,
digits_relu_s1,digits,digitsnet,relu,none,pgd-1,1,64.0,8,1.0,0.5,0.6,0.5,0.45,0.625,,0.4,0.375,,0.375,,0.5,independent: apgd_ce 40.0% < PGD-200 62.5%,fgsm: eps=64/255 | pgd200: steps=200,,
digits_silu_s0,digits,digitsnet,silu,none,pgd-1,0,64.0,8,0.75,0.5,0.6,0.5,0.45,0.375,,0.4,0.375,,0.375,,0.25,"steps: PGD-200 37.5% > PGD-50 25.0%; eps: 50.0% at eps 512/255, chance is 10%",fgsm: eps=64/255 | pgd200: steps=200,,
digits_silu_s1,digits,digitsnet,silu,none,pgd-1,1,64.0,8,0.875,0.5,0.6,0.5,0.45,0.5,,0.4,0.375,,0.375,,0.375,,fgsm: eps=64/255 | pgd200: steps=200,,
digits_relu_s0,digits,digitsnet,relu,attacker,pgd-1,0,64.0,8,1.0,0.5,0.6,0.5,0.45,0.75,,0.4,0.375,,0.375,,0.625,,fgsm: eps=64/255 | pgd200: steps=200,,
digits_relu_s0,digits,digitsnet,relu,none,none,0,64.0,8,1.0,0.5,0.6,0.5,0.45,0.0,,0.4,0.375,,0.375,,0.0,,fgsm: eps=64/255 | pgd200: steps=200,,
"""

COMPARISONS_MD = """\
| configuration | vs | seeds | test images | clean Δ (95% CI) | PGD-200 Δ (95% CI) | worst case Δ (95% CI) | clean verdict | PGD-200 verdict | worst case verdict | clean after Holm | PGD-200 after Holm | worst case after Holm | Monte Carlo error | paper Δ |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| digits silu | digits relu | 2 vs 2, paired | 8 | -12.5 [-37.5, +0.0] | -12.5 [-37.5, +0.0] | -12.5 [-37.5, +0.0] | undecided | undecided | undecided | undecided | undecided | undecided | ±0.31 | +9.3 (ImageNet PGD-200) |
| digits relu (smooth grad: attacker) | digits relu | 1 vs 2 | 8 | +6.2 [+0.0, +25.0] | +18.8 [+0.0, +50.0] | +18.8 [+0.0, +50.0] | one seed: no verdict | one seed: no verdict | one seed: no verdict | — | — | — | ±0.62 | +1.5 (ImageNet PGD-200) |
"""

COMPARISONS_CSV = """\
configuration,vs,seeds,test images,clean Δ (95% CI),PGD-200 Δ (95% CI),worst case Δ (95% CI),clean verdict,PGD-200 verdict,worst case verdict,clean after Holm,PGD-200 after Holm,worst case after Holm,Monte Carlo error,paper Δ
digits silu,digits relu,"2 vs 2, paired",8,"-12.5 [-37.5, +0.0]","-12.5 [-37.5, +0.0]","-12.5 [-37.5, +0.0]",undecided,undecided,undecided,undecided,undecided,undecided,±0.31,+9.3 (ImageNet PGD-200)
digits relu (smooth grad: attacker),digits relu,1 vs 2,8,"+6.2 [+0.0, +25.0]","+18.8 [+0.0, +50.0]","+18.8 [+0.0, +50.0]",one seed: no verdict,one seed: no verdict,one seed: no verdict,—,—,—,±0.62,+1.5 (ImageNet PGD-200)
"""


def csv_bytes(text):   # the csv module ends its rows with \r\n
    return text.replace("\n", "\r\n").encode()


def test_results_tables_are_what_04_wrote(tmp_path):
    md = sat_report.write_tables(sat_report.aggregate(RESULTS), tmp_path)
    assert md + "\n" == RESULTS_MD
    assert (tmp_path / "results.md").read_bytes() == RESULTS_MD.encode()
    assert (tmp_path / "results.csv").read_bytes() == csv_bytes(RESULTS_CSV)


def test_per_run_csv_is_what_04_wrote(tmp_path):
    sat_report.write_per_run(RESULTS, tmp_path, ev.PGD_STEPS)
    assert (tmp_path / "per_run.csv").read_bytes() == csv_bytes(PER_RUN_CSV)


def test_comparisons_are_what_04_wrote(tmp_path):
    md = sat_report.write_comparisons(*ev.comparison_table(ev.compare_with_relu(RESULTS)), tmp_path)
    assert md + "\n" == COMPARISONS_MD
    assert (tmp_path / "comparisons.md").read_bytes() == COMPARISONS_MD.encode()
    assert (tmp_path / "comparisons.csv").read_bytes() == csv_bytes(COMPARISONS_CSV)


def test_stage_04_still_offers_what_notebooks_call():
    for name in ["aggregate", "fmt", "paper_numbers", "PAPER_TABLE1", "PAPER_FIGURE3", "comparison_table", "compare_with_relu",
                 "evaluate_model", "masking_flags", "bootstrap_diff", "verdict", "PGD_STEPS", "EPS_FACTORS", "TOL_STEPS",
                 "TOL_FGSM", "TOL_INDEP", "TOL_CHANCE", "main"]:
        assert hasattr(ev, name), name
    assert ev.aggregate is sat_report.aggregate and ev.fmt(0.5, float("nan")) == "50.0"
