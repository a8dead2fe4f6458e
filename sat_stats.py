"""Support module (a reader of the paper may skip it): what stage 04's comparison with ReLU adds to a bootstrap
interval so that a verdict survives a reviewer. The interval itself, and the verdict it gives, are in 04_eval.py.

- The Monte Carlo error of the interval's ends: the bootstrap is itself random. The replicates are split into
  batches, each batch gives its own interval, and the spread of their ends over sqrt(batches) estimates how far
  the whole run's ends would move with another bootstrap seed (batch means).
- A verdict is only stated when it is clear of its threshold by two Monte Carlo errors (`guard`): an interval end
  within 0.1 point of 0, say, would otherwise read "better" with one bootstrap seed and "equal" with another.
- p-values read off the same replicates: the difference (two-sided, "is it 0?") and the equivalence test
  ("is it within ±margin?", two one-sided tests), so that a family of verdicts can be corrected together.
- Holm's step-down correction (Holm 1979) over a family of comparisons (one study's configurations against ReLU,
  on one metric): the verdicts that still hold when every one of them is asked at once.
"""
import numpy as np

MC_BATCHES = 20   # batches of replicates for the Monte Carlo error of the interval's ends


def interval(reps, level=0.95):
    """The percentile interval of bootstrap replicates reps (1-d array): (low, high)."""
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(reps, [a, 100 - a])
    return float(lo), float(hi)


def mc_error(reps, level=0.95, batches=MC_BATCHES):
    """Monte Carlo standard error of the interval's ends (the larger of the two), by batch means."""
    ends = np.array([interval(part, level) for part in np.array_split(np.asarray(reps), batches)])
    return float(ends.std(0, ddof=1).max() / np.sqrt(batches))


def p_values(reps, margin):
    """(p of 'the difference is 0', p of 'the difference lies outside ±margin'), from the replicates: the first
    small means better or worse, the second small means equal (two one-sided tests)."""
    reps = np.asarray(reps)
    p_diff = min(1.0, 2 * min((reps <= 0).mean(), (reps >= 0).mean()))
    p_equal = min(1.0, 2 * max((reps <= -margin).mean(), (reps >= margin).mean()))
    return float(p_diff), float(p_equal)


def holm(p):
    """Holm-adjusted p-values of a family (same order as p): the k-th smallest is multiplied by (m - k + 1),
    and the adjusted values are made non-decreasing in that order."""
    p = np.asarray(p, float)
    adj, run = np.empty(len(p)), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        run = max(run, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = run
    return adj.tolist()


def claimed_p(verdict, p_diff, p_equal):
    """The p-value behind a verdict: better / worse rest on the difference test, equal on the equivalence test;
    an undecided verdict claims nothing (its smaller p enters the family all the same, as Holm requires)."""
    return p_diff if verdict in ("better", "worse") else p_equal if verdict == "equal" else min(p_diff, p_equal)


def judge(reps, margin, verdict, decided=True):
    """(low, high, verdict, Monte Carlo error, p-value) of one comparison from its bootstrap replicates; verdict is
    04's rule, asked to stay two Monte Carlo errors clear of its thresholds. decided=False (one seed a side): no
    verdict, and no p-value."""
    lo, hi = interval(reps)
    mc = mc_error(reps)
    if not decided:
        return lo, hi, "one seed: no verdict", mc, float("nan")
    v = verdict(lo, hi, margin, guard=2 * mc)
    return lo, hi, v, mc, claimed_p(v, *p_values(reps, margin))


def with_holm(family, metrics, alpha=0.05):
    """Each row's judgement per metric (a tuple ending in its p-value) gets one more entry: the verdict after Holm
    over the family, or 'undecided' where its adjusted p is not below alpha ('—' where nothing was decided)."""
    for k in metrics:
        claims = [i for i, row in enumerate(family) if row[k][-1] == row[k][-1]]   # NaN p: no verdict
        adjusted = dict(zip(claims, holm([family[i][k][-1] for i in claims])))
        for i, row in enumerate(family):
            v = row[k][3]
            row[k] += ((v if adjusted[i] < alpha and v != "undecided" else "undecided") if i in adjusted else "—",)
    return family
