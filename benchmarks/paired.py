"""Paired comparisons of designs, and the power of a study that makes them (numpy only).

The data. Every design of a study is trained with the same seeds and evaluated on the same prompts with the same
sampling seeds (bilevel_rlhf.evaluate), so a metric of design A and of design B are two arrays of shape (seeds,
prompts) whose cells match: cell (i, j) is seed i's model answering prompt j. The comparison is on their difference
d = a − b, whose mean over the cells estimates the difference of the designs.

The model. A cell of d is d_ij = δ + s_i + p_j + e_ij: a training seed's effect s_i (variance σ_s²), a prompt's effect
p_j (σ_p²) and the rest e_ij (σ_e²: the seed-by-prompt interaction and the evaluation's sampling noise), all
independent, seeds and prompts each a sample of their population. Then the mean of d over S seeds and P prompts has

    Var(mean) = σ_s²/S + σ_p²/P + σ_e²/(S·P).

Pairing removes what the designs share: a hard prompt, a reference sample with a high score (every design's win rate
is against the same reference sample), and, where two designs follow the same seed closely, most of the seed's
effect (the same data order and the same sampling seeds make similar policies sample the same tokens).

The interval (`paired_difference`): a two-way bootstrap. Each of n_boot draws resamples the seeds and, independently,
the prompts, with replacement, the same indices for both designs (so the pairing is kept), and takes the mean of d
over the resampled cells; the 95% interval is the 2.5% and 97.5% quantiles of those means (percentile interval).
The two-sided p-value is the share of bootstrap means on the other side of 0 from the estimate, doubled: the test
that this interval inverts (p < α exactly when the 1 − α percentile interval excludes 0, up to the draws'
granularity), so the table's p and interval never disagree; it is (k + 1)/(n_boot + 1) with k the count, never 0.

Its assumptions and limits:
- Seeds and prompts are exchangeable samples of their populations, and the mean is near normal (its sampling
  distribution is what the bootstrap reproduces; differences of win indicators over 40+ prompts are close enough).
- For crossed factors no bootstrap is exact (McCullagh 2000, "Resampling and exchangeable arrays"). This one's
  variance is about (1 − 1/S)(σ_s² + σ_e²/P)/S + (1 − 1/P)(σ_p² + σ_e²/S)/P + (1 − 1/S)(1 − 1/P)σ_e²/(S·P): it counts
  σ_e² up to three times, so where the residual dominates the interval is conservative (wider than it needs to be),
  and where the seed or the prompt effect dominates it is a little narrow, by the factor 1 − 1/S (or 1 − 1/P).
- With 3 seeds that factor is 2/3, only 10 distinct multisets of seeds exist, and the seed variance comes from 3
  values (2 degrees of freedom) while the percentile interval acts as if it were known. Where the seed effect
  dominates, the nominal 95% interval covers the true difference in only about 75% of studies (a test measures it),
  and the p-values are too small. With 3 seeds, read the interval as a description. A test that holds its level at
  few seeds is `paired_t`: a t test on the S seeds' mean differences (S − 1 degrees of freedom, the prompts taken
  as fixed); it is the test that the power calculation sizes, and it needs more than 3 seeds to detect much.
- A single seed makes the interval one over prompts only: it says nothing about other training seeds.

Several designs compared with one baseline: `holm` adjusts the p-values (Holm 1979). It controls the chance of any
false claim among the m comparisons at α whatever their dependence (they share the baseline); Bonferroni would too,
with less power, and methods that assume independence or positive dependence are not needed for m ≤ 5.

Planning (`variance_components`, `detectable_difference`, `required_size`): from pilot data, the two-way analysis of
variance (one cell per seed and prompt) estimates σ_s², σ_p², σ_e² by the method of moments:
MS_seed = P·Σ_i(d̄_i· − d̄)²/(S−1), MS_prompt = S·Σ_j(d̄_·j − d̄)²/(P−1),
MS_res = Σ_ij(d_ij − d̄_i· − d̄_·j + d̄)²/((S−1)(P−1)); σ_e² = MS_res, σ_s² = (MS_seed − MS_res)/P,
σ_p² = (MS_prompt − MS_res)/S (negative values set to 0). A two-sided z test at level α' = α/m (Holm's first step:
the worst case for one comparison among m) has power 1 − β against a true difference

    δ = (z_{1 − α'/2} + z_{1 − β}) · SE,   SE = sqrt(σ_s²/S + σ_p²/P + σ_e²/(S·P)),

z the standard normal quantiles (the far tail's share of the power neglected). Where SE itself is estimated from the
S seeds, the test is a t test on S − 1 degrees of freedom and δ = λ·SE with λ the shift at which its power is 1 − β
(the noncentral t, `t_test_power`; the usual shortcut (t_{1 − α'/2} + t_{1 − β})·SE falls 3-8 points of power short
at 3-6 seeds, with m = 3). `required_size` inverts δ for the number of seeds or of prompts.

    python benchmarks/paired.py --power benchmarks/results/study_real_pilot.json   # the pilot of the real-model study

prints the calculation of docs/study.md's section on paired comparisons from the study's per-seed results (and the
runs' per-prompt arrays, where they hold them).
"""

import argparse
import dataclasses
import json
import math
import statistics

import numpy as np

# ------------------------------------------------------------------------------------------------------------------
# Distributions (numpy and the standard library only): the normal's quantile, Student t's and chi-square's


def normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def t_cdf(x: float, df: int) -> float:
    """Student t's distribution function for an integer df, in closed form (Abramowitz & Stegun 26.7.3-4):
    P(|T| < |x|) is a finite series in θ = atan(|x|/√df)."""
    theta = math.atan(abs(x) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin θ · (1 + ½cos²θ + (1·3)/(2·4)cos⁴θ + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    else:  # (2/π)(θ + sin θ cos θ (1 + (2/3)cos²θ + ...)), (df − 1)/2 terms
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + s * math.cos(theta) * total)
    return 0.5 + math.copysign(inside / 2, x)


def chi2_cdf(x: float, df: int) -> float:
    """The chi-square distribution function: the regularized lower incomplete gamma P(df/2, x/2) by its series."""
    if x <= 0:
        return 0.0
    a, z = df / 2, x / 2
    term = total = 1 / a
    n = 0
    while term > 1e-16 * total:
        n += 1
        term *= z / (a + n)
        total += term
    return min(1.0, total * math.exp(a * math.log(z) - z - math.lgamma(a)))


def _invert(cdf, p: float, lo: float, hi: float) -> float:
    """The x with cdf(x) = p, by bisection on a bracket [lo, hi] that is widened until it holds p."""
    while cdf(hi) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def t_quantile(p: float, df: int) -> float:
    return _invert(lambda x: t_cdf(x, df), p, -1e3, 1e3) if df else normal_quantile(p)


def chi2_quantile(p: float, df: int) -> float:
    return _invert(lambda x: chi2_cdf(x, df), p, 0.0, 10.0 * df + 10)


# ------------------------------------------------------------------------------------------------------------------
# The comparison


def paired_difference(a, b, n_boot: int = 10000, alpha: float = 0.05, seed: int = 0) -> dict:
    """The mean of a − b over seeds and prompts (arrays of shape (seeds, prompts), cell (i, j) the same seed and
    prompt in both), its 1 − alpha interval by the two-way paired bootstrap and the two-sided bootstrap p-value for a
    difference of 0 (the module's docstring). The bootstrap's own RNG is seeded: the same input, the same output."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired_difference: arrays of shape (seeds, prompts) expected, got {d.shape}")
    seeds, prompts = d.shape
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=n_boot)  # (B, S): draws of each seed
    prompt_counts = rng.multinomial(prompts, np.full(prompts, 1 / prompts), size=n_boot)  # (B, P)
    means = ((seed_counts @ d) * prompt_counts).sum(axis=1) / (seeds * prompts)  # (B,): the resampled cells' means
    estimate = float(d.mean())
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    other_side = min((means <= 0).sum(), (means >= 0).sum())
    return {"difference": estimate, "low": float(low), "high": float(high), "se": float(means.std()),
            "p": min(1.0, 2 * (other_side + 1) / (n_boot + 1)), "seeds": seeds, "prompts": prompts}


def paired_t(a, b, alpha: float = 0.05) -> dict:
    """The seed-level test that the power calculation sizes: each seed's mean difference over the prompts, a t
    test on seeds − 1 degrees of freedom (prompts fixed; valid at few seeds where the bootstrap is not)."""
    d = (np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean(axis=1)  # (seeds,)
    if len(d) < 2:
        raise ValueError("paired_t: at least 2 seeds")
    se = d.std(ddof=1) / math.sqrt(len(d))
    half = t_quantile(1 - alpha / 2, len(d) - 1) * se
    if se > 0:
        p = 2 * (1 - t_cdf(abs(d.mean()) / se, len(d) - 1))
    else:  # every seed the same difference
        p = 1.0 if d.mean() == 0 else 0.0
    return {"difference": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half),
            "p": float(p), "seeds": len(d)}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest p times (m − i + 1), made monotone, capped at 1. A
    comparison is significant at α after Holm where its adjusted p is ≤ α."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


# ------------------------------------------------------------------------------------------------------------------
# Planning


@dataclasses.dataclass
class Components:
    """Variances of the crossed model d_ij = δ + s_i + p_j + e_ij (the module's docstring)."""
    seed: float  # σ_s²: between training seeds
    prompt: float  # σ_p²: between prompts
    residual: float  # σ_e²: seed × prompt interaction and sampling noise

    def var_mean(self, seeds: int, prompts: int) -> float:
        return self.seed / seeds + self.prompt / prompts + self.residual / (seeds * prompts)


def variance_components(d) -> Components:
    """σ_s², σ_p², σ_e² of an array of shape (seeds, prompts) (one design's metric, or two designs' difference) by
    the two-way analysis of variance without replication; negative estimates are set to 0."""
    d = np.asarray(d, dtype=float)
    seeds, prompts = d.shape
    if seeds < 2 or prompts < 2:
        raise ValueError(f"variance_components: at least 2 seeds and 2 prompts, got {d.shape}")
    grand, by_seed, by_prompt = d.mean(), d.mean(axis=1, keepdims=True), d.mean(axis=0, keepdims=True)
    ms_seed = prompts * ((by_seed - grand) ** 2).sum() / (seeds - 1)
    ms_prompt = seeds * ((by_prompt - grand) ** 2).sum() / (prompts - 1)
    ms_res = ((d - by_seed - by_prompt + grand) ** 2).sum() / ((seeds - 1) * (prompts - 1))
    return Components(seed=max(0.0, (ms_seed - ms_res) / prompts), prompt=max(0.0, (ms_prompt - ms_res) / seeds),
                      residual=float(ms_res))


def t_test_power(shift: float, df: int, level: float) -> float:
    """The power of a two-sided t test at `level` on df degrees of freedom against a true mean `shift` standard
    errors from 0 (the noncentral t): E over W = sqrt(χ²_df) of Φ(shift − c·W/√df) + Φ(−shift − c·W/√df), c the
    critical value, integrated numerically over W's density w^(df−1)·exp(−w²/2) / (2^(df/2−1)·Γ(df/2))."""
    c = t_quantile(1 - level / 2, df)
    w = np.linspace(0, math.sqrt(df) + 12, 4001)[1:]
    density = np.exp((df - 1) * np.log(w) - w ** 2 / 2 - (df / 2 - 1) * math.log(2) - math.lgamma(df / 2))
    phi = np.vectorize(lambda x: 0.5 * math.erfc(-x / math.sqrt(2)))
    scale = c * w / math.sqrt(df)
    return float(np.sum(density * (phi(shift - scale) + phi(-shift - scale))) * (w[1] - w[0]))


def detectable_difference(c: Components, seeds: int, prompts: int, alpha: float = 0.05, m: int = 1,
                          power: float = 0.8, t: bool = False) -> float:
    """The true difference that a two-sided test at level alpha/m detects with probability `power` with `seeds` ×
    `prompts` cells: (z(1 − alpha/(2m)) + z(power)) · sqrt(Var(mean)) for a z test; with t=True, the shift (in
    standard errors) at which a t test on seeds − 1 df has that power (`t_test_power`), times the standard error."""
    se = math.sqrt(c.var_mean(seeds, prompts))
    level = alpha / m
    if not t:
        return (normal_quantile(1 - level / 2) + normal_quantile(power)) * se
    if seeds < 2:
        raise ValueError("detectable_difference: a t test needs at least 2 seeds")
    lo, hi = 0.0, 2 * (t_quantile(1 - level / 2, seeds - 1) + t_quantile(power, seeds - 1))
    for _ in range(40):  # the power grows with the shift: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_test_power(mid, seeds - 1, level) < power else (lo, mid)
    return hi * se


def required_size(c: Components, delta: float, seeds: int = None, prompts: int = None, alpha: float = 0.05,
                  m: int = 1, power: float = 0.8, t: bool = False, limit: int = 100000):
    """The fewest seeds (given `prompts`) or prompts (given `seeds`) at which `delta` is detectable; None where no
    number up to `limit` reaches it (more prompts cannot remove the seed variance, nor more seeds the prompts')."""
    if (seeds is None) == (prompts is None):
        raise ValueError("required_size: give the number of seeds or of prompts, and get the other")

    def detectable(n: int, with_t: bool) -> float:
        return detectable_difference(c, *((n, prompts) if seeds is None else (seeds, n)), alpha, m, power, with_t)
    n = 2 if t and seeds is None else 1
    while n <= limit and detectable(n, False) > delta:  # the z test's size first: the t test needs at least as many
        n += 1
    while n <= limit and t and detectable(n, True) > delta:
        n += 1
    return n if n <= limit else None


# ------------------------------------------------------------------------------------------------------------------
# The power of the real-model study, from its results file (python benchmarks/paired.py --power FILE)

# The two-hour study's designs: name -> (the pilot's design whose wall time it takes, the relative cost of its step).
# k = 4 samples per PR prompt doubles a step's sampling and scoring; generation is about 40% of a step
# (docs/performance.md), so its step costs about 1.4 of k = 2's.
# A design that the study ran takes its own wall time.
PLANNED = {"online-dpo": ("online-dpo", 1.0), "sail-pr": ("sail-pr", 1.0), "mix": ("mix", 1.0),
           "sail-pp": ("sail-pp", 1.0), "online-dpo-k4": ("online-dpo", 1.4), "dpo": ("dpo", 1.0)}


def by_seed(runs: list[dict], design: str, key: str) -> np.ndarray:
    """A design's values of `key` (a number, or a per-prompt list), ordered by seed."""
    found = sorted((r["seed"], r[key]) for r in runs if r["design"] == design)
    return np.array([v for _, v in found], dtype=float)


def power_report(path: str, target: str = "sail-pr", baseline: str = "online-dpo", delta: float = 0.05,
                 hours: float = 2.0, alpha: float = 0.05, power: float = 0.8, confidence: float = 0.8,
                 fixed_s: float = 15.0, eval_steps: float = 2.0) -> str:
    """The power calculation of docs/study.md from a pilot study's results (study_real.py's JSON: each run's final
    metrics, seed and wall time). Every run of the plan has the pilot's steps and evaluation prompts; it costs
    `fixed_s` (start, loading) + its steps + its evaluations, one evaluation of the pilot's prompts costing
    `eval_steps` steps (the demo's logged timings: about 2). Where the runs hold per-prompt arrays ("per_prompt")
    the prompt effect is estimated from them; without, the plan is conditional on the pilot's prompts."""
    study = json.load(open(path))
    runs, options = study["runs"], study["options"]
    designs = list(dict.fromkeys(r["design"] for r in runs))
    seeds, steps, jobs = len(by_seed(runs, baseline, "seed")), options["steps"], options["jobs"]
    prompts = len(runs[0]["per_prompt"]["gold/win_rate"]) if "per_prompt" in runs[0] else 40  # demo_eval.jsonl's
    lines = [f"The study: {len(designs)} designs × {seeds} seeds × {prompts} evaluation prompts × {steps} steps. Goal: "
             f"detect {delta:.3f} in win rate between {target} and {baseline}, two-sided, α = {alpha} with Holm "
             f"over the designs compared with {baseline} (level α/m), power {power}."]
    out = lines.append

    # 1. the spread over seeds, at the pilot's prompts
    wins = {d: by_seed(runs, d, "gold/win_rate") for d in designs}
    gold = {d: by_seed(runs, d, "gold/reward") for d in designs}
    rate = float(np.mean(list(wins.values())))
    out(f"1. A design's win rate over seeds: SD {math.sqrt(np.mean([v.var(ddof=1) for v in wins.values()])):.4f} "
        f"(pooled over the designs, {len(designs) * (seeds - 1)} df). Evaluation noise alone allows up to "
        f"{math.sqrt(rate * (1 - rate) / prompts):.4f} (a win indicator's variance ≤ p(1 − p) = "
        f"{rate * (1 - rate):.3f} at the mean win rate {rate:.3f}, over {prompts} prompts).")
    out(f"   Each design's difference to {baseline}: mean, SD over seeds ({seeds - 1} df):")
    for d in designs:
        if d != baseline:
            w, g = wins[d] - wins[baseline], gold[d] - gold[baseline]
            out(f"   {d:>12s}: win rate {w.mean():+.4f}, SD {w.std(ddof=1):.4f}; gold reward {g.mean():+.4f}, "
                f"SD {g.std(ddof=1):.4f}")
    table = np.array([wins[d] for d in designs])
    interaction = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + table.mean()
    typical = math.sqrt(2 * (interaction ** 2).sum() / ((len(designs) - 1) * (seeds - 1)))
    out(f"   Two designs taken at random (2 × the design × seed interaction's mean square, "
        f"{(len(designs) - 1) * (seeds - 1)} df): SD {typical:.4f}.")

    # 2. the planning value: an upper confidence limit of the pilot's SD (Browne 1995)
    df = seeds - 1

    def planning_sd(values: dict) -> tuple[float, float]:
        point = float((values[target] - values[baseline]).std(ddof=1))
        return point, point * math.sqrt(df / chi2_quantile(1 - confidence, df))
    point, upper = planning_sd(wins)
    out(f"2. Planning SD of the {target} − {baseline} difference of one seed: the {confidence:.0%} upper "
        f"confidence limit of the pilot's, {point:.4f} × sqrt({df} / χ²({1 - confidence:.2f}; {df} df)) = "
        f"{upper:.4f}.")
    comp = Components(seed=upper ** 2, prompt=0.0, residual=0.0)
    if all("per_prompt" in r for r in runs if r["design"] in (target, baseline)):
        def cells(design: str) -> np.ndarray:  # (seeds, prompts): the win indicators (ties half)
            return np.array([r["per_prompt"]["gold/win_rate"] for r in sorted(runs, key=lambda r: r["seed"])
                             if r["design"] == design], dtype=float)
        c = variance_components(cells(target) - cells(baseline))
        comp = Components(seed=max(0.0, upper ** 2 - c.residual / prompts), prompt=c.prompt, residual=c.residual)
        out(f"   From the per-prompt arrays: σ_p² = {c.prompt:.5f}, σ_e² = {c.residual:.5f}; planned with σ_s² = "
            f"{comp.seed:.5f} (the planning SD's square less σ_e²/{prompts}).")
    else:
        out(f"   No per-prompt data: the seed-level SD at these {prompts} prompts is all the plan knows. It holds for "
            "these prompts (a prompt effect on the difference, σ_p², adds σ_p²/P once prompts are resampled), and "
            "it takes all of it as seed variance, which more prompts would not reduce.")

    # 3. the cost of a run, from the pilot's wall times
    wall = {d: float(np.mean(by_seed(runs, d, "wall_s"))) for d in designs}
    overhead = max(0.0, study["seconds"] - sum(r["wall_s"] for r in runs) / jobs)
    every = options["eval_every"] or steps  # 0: after the last step only
    evals = 1 + math.ceil(steps / every)  # the reference's, before training, then every N steps

    def run_s(name: str) -> float:  # a planned run: evaluated before training and at the end only
        design, factor = (name, 1.0) if name in wall else PLANNED[name]
        step = (wall[design] - fixed_s) / (steps + evals * eval_steps)
        return fixed_s + steps * step * factor + 2 * eval_steps * step
    out(f"3. Cost: a pilot run took {fixed_s:g} s fixed + {steps} steps + {evals} evaluations of {eval_steps:g} "
        f"steps each; {jobs} runs at a time; the study's own work (offline pairs, the reference's evaluation) "
        f"{overhead:.0f} s. A planned run evaluates before training and at the end only (--eval-every {steps}): "
        + ", ".join(f"{n} {run_s(n):.0f} s" for n in PLANNED if n in wall or PLANNED[n][0] in wall) + ".")

    # 4. the plans
    def detect(sd: float, n: int, m: int) -> float:
        return detectable_difference(Components(sd ** 2, 0, 0), n, prompts, alpha, m, power, t=True)
    out(f"4. Seeds × {prompts} prompts × {steps} steps for a t test on seeds − 1 df, with the planning SD:")
    plans = [[baseline, target, "mix", "sail-pp", "online-dpo-k4"], [baseline, target, "mix", "sail-pp"],
             [baseline, target, "mix", "sail-pp", "online-dpo-k4", "dpo"], [baseline, target]]
    within, kept = [], []
    for names in plans:
        names = [n for n in dict.fromkeys(names) if n in PLANNED and (n in wall or PLANNED[n][0] in wall)]
        kept.append(names)
        if names in kept[:-1]:  # the same designs as a plan above, where the study lacks some of a plan's
            within.append(within[kept.index(names)])
            continue
        m = len(names) - 1
        per_seed_s = sum(run_s(n) for n in names) / jobs
        need = required_size(comp, delta, prompts=prompts, alpha=alpha, m=m, power=power, t=True)
        n = int((hours * 3600 - overhead) // per_seed_s)
        within.append(n)
        can = detectable_difference(comp, n, prompts, alpha, m, power, t=True) if n >= 2 else math.nan
        needs = (f"needs {need} seeds ({(overhead + need * per_seed_s) / 60:.0f} min)" if need else
                 f"is out of reach at {prompts} prompts (their σ_p²/P alone is too much)")
        out(f"   {', '.join(names)} (m = {m}): {delta:.3f} {needs}; {hours:g} h give {n} seeds "
            f"({(overhead + n * per_seed_s) / 60:.0f} min), which detect {can:.3f}.")

    # 5. what else the numbers say
    m_pilot, m_plan, n_plan = len(designs) - 1, len(kept[1]) - 1, within[1]
    g_point, g_upper = planning_sd(gold)
    out(f"5. The study itself ({seeds} seeds, m = {m_pilot}) detects {detect(upper, seeds, m_pilot):.3f} "
        f"({detect(point, seeds, m_pilot):.3f} at the point estimate). With {n_plan} seeds and m = {m_plan}: "
        f"{detect(point, n_plan, m_plan):.3f} at the point estimate {point:.4f}, {detect(typical, n_plan, m_plan):.3f}"
        f" at the SD of two designs taken at random; in gold reward (planning SD {g_upper:.4f} from {g_point:.4f}), "
        f"{detect(g_upper, n_plan, m_plan):.3f}.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--power", metavar="FILE", required=True, help="a study's results JSON (study_real.py's)")
    parser.add_argument("--target", default="sail-pr", help="the design whose difference the study must detect")
    parser.add_argument("--baseline", default="online-dpo", help="the design every other is compared with")
    parser.add_argument("--delta", type=float, default=0.05, help="the win-rate difference to detect")
    parser.add_argument("--hours", type=float, default=2.0, help="the study's time budget on the pilot's machine")
    opts = parser.parse_args()
    print(power_report(opts.power, opts.target, opts.baseline, opts.delta, opts.hours))


if __name__ == "__main__":
    main()
