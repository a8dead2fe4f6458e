"""The timing helpers the benchmarks share: alternate the compared variants, repeat after repeat, and read
their ratio off the back-to-back pairs."""
import statistics
import time

import sat_smoke


def interleaved(fns, repeats, inner=1, warmup=2):
    """Seconds per call of each function in `fns` (name -> fn). One repeat calls each fn `inner` times in a
    row, then moves on to the next fn; `repeats` such rounds. Returns name -> list of per-repeat timings.
    Under SAT_SMOKE=1 (the README command test, see sat_smoke.smoke_settings) each fn runs once: the figures mean nothing."""
    repeats, inner, warmup = sat_smoke.smoke_settings("benchmark", dict(repeats=repeats, inner=inner, warmup=warmup)).values()
    for fn in fns.values():
        for _ in range(warmup):   # first calls pay for allocator growth, kernel selection, lazy init
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t) / inner)
    return times


def ratio(times, a, b):
    """Median over repeats of time[a] / time[b]: each pair was measured back to back."""
    return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))


def spread(times, a, b):
    """'lo..hi' of the per-repeat ratios: how much the machine's load moved them."""
    rs = [ta / tb for ta, tb in zip(times[a], times[b])]
    return f"repeats {min(rs):.2f}..{max(rs):.2f}"
