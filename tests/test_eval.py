"""Stage 04: worst case <= every attack, masking flags on a deliberately masked model and not on an honest
one, the tables and figures from a tiny run (paper columns exact), one-line errors."""
import csv
import importlib

import pytest
import torch
import torch.nn as nn

import sat_cli
import sat_data
import sat_files
import sat_models

ev = importlib.import_module("04_eval")
FAST = dict(square_queries=200, apgd_steps=20)


@pytest.fixture(scope="session")   # once per worker, whatever runs in between
def test_set():
    x, y = sat_data.digits_tensors("test")
    return x[:200], y[:200]


@pytest.fixture(scope="session")   # once per worker, whatever runs in between
def honest(trained_digits, test_set):
    model, path = trained_digits
    x, y = test_set
    return ev.evaluate_model(model, x, y, 64 / 255, 10, **FAST)


def test_worst_case_below_each_attack(honest):
    attacks = ["fgsm", "pgd1", "pgd10", "pgd50", "pgd200", "apgd_ce", "apgd_dlr", "square", "apgd_t", "pgd200_sg"]
    assert all(honest["worst"] <= honest[a] for a in attacks)
    assert honest["pgd200"] <= honest["fgsm"]
    assert honest["worst"] < honest["clean"]
    assert "steps=200" in honest["params"]["pgd200"] and "eps=64/255" in honest["params"]["pgd200"]


def test_honest_model_raises_no_steps_eps_or_single_step_flag(honest):
    assert not [f for f in honest["flags"] if f.startswith(("steps", "eps", "single-step"))], honest["flags"]


class SaturatedLogits(nn.Module):
    """Gradient masking on purpose: logits x 1e4 saturate the softmax, so the cross-entropy gradient is
    exactly 0 for every correctly classified input and PGD cannot move; the decision is unchanged."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * 1e4


def test_masked_model_is_flagged(trained_digits, test_set):
    model, _ = trained_digits
    x, y = test_set
    r = ev.evaluate_model(SaturatedLogits(model).eval(), x, y, 64 / 255, 10, **FAST)
    assert r["clean"] > 0.9
    assert any(f.startswith("independent") for f in r["flags"]), r["flags"]
    assert r["square"] < r["pgd200"] - 0.1   # the gradient-free attack sees through it


def test_tables_and_figures_from_a_tiny_run(trained_digits, tmp_path, capsys):
    _, path = trained_digits
    runs = tmp_path / "runs"
    (runs / "03_adv_train" / "digits_relu_s0").mkdir(parents=True)
    (runs / "03_adv_train" / "digits_relu_s0" / "final.pt").write_bytes(open(path, "rb").read())
    out = tmp_path / "eval"
    ev.main(["--runs", str(runs), "--out", str(out), "--limit", "100", "--square-queries", "50", "--apgd-steps", "10"])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1 and rows[0]["configuration"] == "digits relu"
    assert rows[0]["paper clean % (ImageNet)"] == "68.8" and rows[0]["paper PGD-200 % (ImageNet)"] == "33.0"
    assert float(rows[0]["worst-case %"]) <= float(rows[0]["PGD-200 %"])
    for name in ["results.md", "per_run.csv", "figure3_acc_vs_robust.png", "robust_vs_steps.png", "robust_vs_eps.png"]:
        assert (out / name).stat().st_size > 100, name
    assert "steps=200" in (out / "per_run.csv").read_text()
    ev.main(["--runs", str(runs), "--out", str(out), "--limit", "100", "--square-queries", "50", "--apgd-steps", "10"])
    assert "cache" in capsys.readouterr().out          # the second run reuses the per-checkpoint results


def test_paper_columns_hold_paper_md_numbers():
    assert ev.PAPER_TABLE1 == {"none": (68.8, 33.0), "attacker": (68.3, 34.5), "optimizer": (69.4, 35.8), "both": (68.9, 36.9)}
    assert ev.PAPER_FIGURE3 == {"relu": (68.8, 33.0), "psoftplus": (68.8, 38.7), "softplus": (68.4, 40.0),
                                "smoothrelu": (69.4, 40.3), "elu": (69.2, 41.7), "gelu": (70.0, 41.7), "silu": (69.7, 42.3)}


def run_cli(capsys, args):
    with pytest.raises(SystemExit) as e:
        sat_cli.run_cli(ev.main, args)
    return e.value.code, capsys.readouterr().err.strip()


def test_no_checkpoints_names_the_stage_to_run(tmp_path, capsys):
    code, err = run_cli(capsys, ["--runs", str(tmp_path), "--out", str(tmp_path / "e")])
    assert code == 2 and "03_adv_train.py" in err and len(err.splitlines()) == 1
    code, err = run_cli(capsys, ["--runs", str(tmp_path / "missing")])
    assert code == 2 and "run the earlier stages first" in err


def test_model_from_checkpoint_is_the_trained_model(trained_digits, test_set, tmp_path):
    """Built on the meta device and given the checkpoint's tensors: the same outputs as the model that was saved,
    nothing left on the meta device; and weights of another width are one error line, not a shape traceback."""
    model, path = trained_digits
    loaded, ckpt = sat_models.model_from_checkpoint(path)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    x, _ = test_set
    assert torch.equal(loaded(x[:50]), model.eval()(x[:50]))
    misfit = dict(ckpt, config={**ckpt["config"], "width": ckpt["config"].get("width", 16) * 2})
    torch.save(misfit, tmp_path / "misfit.pt")
    with pytest.raises(sat_cli.UserError, match="does not fit its own config: Error"):
        sat_models.model_from_checkpoint(str(tmp_path / "misfit.pt"))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "tampered"])
def test_corrupt_checkpoint_refused(trained_digits, tmp_path, capsys, kind):
    _, path = trained_digits
    data = open(path, "rb").read()
    bad = tmp_path / "runs" / "x" / "final.pt"
    bad.parent.mkdir(parents=True)
    if kind == "garbage":
        bad.write_bytes(b"\x00garbage" * 10)
    elif kind == "truncated":
        bad.write_bytes(data[: len(data) // 3])
    else:   # a pickle that would run code on load: weights_only=True must refuse it
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))
        torch.save({"format": sat_files.CHECKPOINT_FORMAT, "model": Evil(), "config": {}}, bad)
    code, err = run_cli(capsys, ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "e")])
    assert code == 2 and "unreadable" in err and len(err.splitlines()) == 1, err


def test_eps_zero_is_refused(trained_digits, capsys, tmp_path):
    code, err = run_cli(capsys, ["--eps", "0", "--runs", str(tmp_path)])
    assert code == 2 and "--eps must be a finite number in (0, 255]" in err and len(err.splitlines()) == 1
    model, _ = trained_digits
    x, y = sat_data.digits_tensors("test")
    with pytest.raises(ValueError, match="eps"):
        ev.evaluate_model(model, x[:10], y[:10], 0.0, 10, **FAST)


def test_normalised_inputs_are_refused_at_the_entry(trained_digits, test_set):
    """pgd itself no longer reads tensor values (a GPU sync per step); evaluate_model checks once where data enters."""
    model, _ = trained_digits
    x, y = test_set
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ev.evaluate_model(model, (x[:8] - 0.3) / 0.4, y[:8], 64 / 255, 10, **FAST)


def test_pyautoattack_warnings_are_one_line_per_checkpoint(capsys):
    """pyautoattack's own check, as APGD-T calls it on a masked model, warns once per batch and points to a
    flags_doc.md nobody has: stage 04 prints one line with the count and the page's address; other warnings pass."""
    import warnings

    import sat_eval_run
    from pyautoattack import checks
    with pytest.warns(UserWarning, match="not pyautoattack's") as passed_on, warnings.catch_warnings():
        warnings.simplefilter("default")   # the interpreter's own filter: each warning once per place
        with sat_eval_run.autoattack_warnings("digits_relu_s0"):
            for _ in range(3):
                checks.check_zero_gradients(torch.zeros(2, 5))
                warnings.warn("not pyautoattack's")
    assert [str(w.message) for w in passed_on] == ["not pyautoattack's"]   # passed on once, as without the wrapper
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("digits_relu_s0: pyautoattack's checks warned 3 times (first: there are 2 "
                                                   "points with zero gradient!"), err
    assert "https://github.com/fra31/auto-attack/blob/master/flags_doc.md" in err
