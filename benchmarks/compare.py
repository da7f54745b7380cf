"""What the designs do on the embedded task: gold reward against KL, every design and the ablations, several seeds.

Every run aligns the same SFT reference (built once) on the same offline pairs for the same number of steps and
pairs per step, so budgets match: steps × batch size preference pairs per run. Online designs additionally ask the
oracle for labels of their own samples (counted in the `oracle labels` column). Each run is evaluated every
--eval-every steps on the same evaluation prompts; the points along training give one curve per method.

    python benchmarks/compare.py --jobs 2                  # every part in one table (3 seeds)
    python benchmarks/compare.py --jobs 2 --part designs   # one part: designs, ablations, penalty, labels, oracle
    python benchmarks/compare.py --quick                   # a smaller task, 1 seed, 120 steps

Writes benchmarks/results/compare[_quick][_PART][_bf16].{json,md,png} (the plot only when matplotlib is installed),
each run's numbers the same whether its part runs alone or with the others (every run is its own process and seeds).

Paired comparisons: every run also stores its final evaluation per prompt (gold reward, win rate, KL: one more
evaluation after training, which reproduces the last one exactly), and a part that holds the --baseline (online-dpo)
gets a second table: each other method's difference to it, with a 95% interval by the paired bootstrap over seeds
and prompts and Holm-adjusted p-values (benchmarks/paired.py).
"""

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import sys
import time

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bilevel_rlhf as br  # noqa: E402
import paired  # noqa: E402

# name -> Args overrides. The paper's values: γ = 0.3 (PR), c_PP = 0.2 (PP), ρ = 0.2 (DP); fractions g = 0.3, p = 0.3,
# r = 0.4; β = 0.1. A name whose settings resolve to the same Args as an earlier one (a default spelled out) is run
# once and reported under both names.
METHODS = {
    "dpo": {"design": "dpo"},
    "ipo": {"design": "dpo", "loss": "ipo"},
    "slic": {"design": "dpo", "loss": "slic"},
    "online-dpo": {"design": "online-dpo"},
    "sail-pr": {"design": "sail-pr"},
    "sail-pp": {"design": "sail-pp"},
    "sail-dp": {"design": "sail-dp"},
    "mix": {"design": "mix"},
}
LAMBDAS = (0.0, 0.01, 0.1, 1.0)  # the RevKL sweep
SAMPLES = (2, 4, 8)  # --num-samples k: PR pairs are the best and the worst of k samples
ABLATIONS = {
    "ipo-token": {"design": "dpo", "loss": "ipo-token"},
    "sail-pr γ=1": {"design": "sail-pr", "pr_coef": 1.0},
    "sail-pp c=0": {"design": "sail-pp", "pp_coef": 0.0},
    "sail-pp c=1": {"design": "sail-pp", "pp_coef": 1.0},
    "sail-dp ρ=0": {"design": "sail-dp", "dp_coef": 0.0},
    "sail-dp ρ=1": {"design": "sail-dp", "dp_coef": 1.0},
    "sail-pr T=0.9": {"design": "sail-pr", "temperature": 0.9},
    "online-dpo T=0.9": {"design": "online-dpo", "temperature": 0.9},
    **{f"{d} {mode} labels": {"design": d, "self_labels": mode} for d in ("sail-pp", "sail-dp", "mix")
       for mode in ("sample", "expect")},
    **{f"{d} λ={lam:g}": {"design": d, "revkl_coef": lam} for d in ("sail-pr", "sail-pp", "sail-dp", "mix")
       for lam in LAMBDAS},
    "mix r,p,g=0.4,0.3,0.3": {"design": "mix", "dp_fraction": 0.4, "pp_fraction": 0.3, "pr_fraction": 0.3},
    "mix r,p,g=0.24,0.18,0.18": {"design": "mix", "dp_fraction": 0.24, "pp_fraction": 0.18, "pr_fraction": 0.18},
    **{f"sail-pr oracle {rule}": {"design": "sail-pr", "oracle_label": rule} for rule in ("argmax", "sample")},
    **{f"{d} k={k}": {"design": d, "num_samples": k} for d in ("online-dpo", "sail-pr") for k in SAMPLES},
}
# The grid in named parts (--part), each its own table and plot panel: title -> the names it reports.
PARTS = {
    "designs": ("designs at their defaults", list(METHODS)),
    "ablations": ("coefficients of the bilevel terms, temperature, IPO per token",
                  [n for n in ABLATIONS if "λ=" not in n and "labels" not in n and "r,p,g" not in n
                   and "oracle" not in n and " k=" not in n]),
    "penalty": ("the RevKL weight λ", [n for n in ABLATIONS if "λ=" in n]),
    "labels": ("self-labels sampled or in expectation; mix fractions",
               [n for n in ABLATIONS if "labels" in n or "r,p,g" in n]),
    "oracle": ("the oracle's label rule", [n for n in ABLATIONS if "oracle" in n]),
    "samples": ("k samples per PR prompt, the pair the best and the worst", [n for n in ABLATIONS if " k=" in n]),
}


def sample_statistics(policy, tok, eval_rows, args) -> dict:
    """Degeneration checks on one sample per eval prompt: length, distinct bigrams, how often EOS is reached. At
    temperature 1, without top-p/top-k, as the evaluation samples: statistics of pi_θ, whatever the run sampled at."""
    args = dataclasses.replace(args, temperature=1.0, top_p=1.0, top_k=0)
    prompt_ids, prompt_mask = br.encode_prompts(tok, [r["prompt"] for r in eval_rows], args.max_prompt_length, "cpu")
    ys = br.sample(policy, tok, prompt_ids, prompt_mask, n=1, seed=99, args=args)
    bigrams = [tuple(y[i:i + 2]) for y in ys for i in range(len(y) - 1)]
    return {"samples/length": float(np.mean([len(y) for y in ys])),
            "samples/distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
            "samples/ended": float(np.mean([len(y) > 0 and y[-1] == tok.eos_token_id for y in ys]))}


def resolve(overrides, seed, steps, eval_every, n_eval, lr=None) -> br.Args:
    return br.validate(br.Args(seed=seed, steps=steps, eval_every=eval_every, eval_prompts=n_eval, output_dir="unused",
                               lr=lr, **overrides))


TASK = {}  # the reference, tokenizer, rows and eval rows: built once, before the worker processes fork


def run(job) -> dict:
    name, args = job
    reference, tok, rows, eval_rows = TASK["reference"], TASK["tok"], TASK["rows"], TASK["eval_rows"]
    torch.set_num_threads(TASK["threads"])
    seed = args.seed
    policy = br.build_tiny_gpt2(tok)
    policy.load_state_dict(reference.state_dict())
    ref = br.make_reference(policy, torch.float32)
    t0 = time.perf_counter()
    history = br.train(args, policy, ref, tok, rows, br.gold_reward, eval_rows, amp_dtype=TASK["amp_dtype"])
    wall = time.perf_counter() - t0
    curve = [{"step": m["step"], **{k[5:]: m[k] for k in m if k.startswith("eval/")}} for m in history
             if "eval/gold/reward" in m]
    final = curve[-1]
    per_prompt = {}  # the final evaluation again, per prompt: deterministic, so it is the one that train() logged
    policy.eval()
    again = br.evaluate(policy, ref, tok, eval_rows, br.gold_reward, args, TASK["amp_dtype"], per_prompt=per_prompt,
                        during="the per-prompt evaluation")
    policy.train()
    assert all(again[k] == final[k] for k in again), f"{name} seed {seed}: {again} is not the final evaluation {final}"
    oracle_labels = round(sum(m["route/pr"] for m in history) * args.batch_size * args.grad_accum)
    return {"method": name, "seed": seed, "args": dataclasses.asdict(args), "wall_s": wall, "curve": curve,
            "gold/reward": final["gold/reward"], "per_prompt": per_prompt,
            "gold/win_rate": final["gold/win_rate"], "objective/kl": final["objective/kl"],
            "oracle_labels": oracle_labels, "oracle_queries": oracle_labels * args.num_samples,
            **sample_statistics(policy, tok, eval_rows, args),
            "steps": [{k: m[k] for k in ("step", "loss", "grad_norm", "kl/samples", "kl/penalty")
                       if k in m} for m in history]}


def summarize(results: list[dict], names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        runs = [r for r in results if r["method"] == name]
        row = {"method": name, "seeds": len(runs)}
        for key in ("gold/reward", "gold/win_rate", "objective/kl", "wall_s", "oracle_labels", "samples/length",
                    "samples/distinct_2"):
            values = np.array([r[key] for r in runs], dtype=float)
            row[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
        rows.append(row)
    return rows


def markdown(rows: list[dict], reference: dict) -> str:
    lines = ["| method | gold reward | win rate vs ref | KL to ref | wall time (s) | oracle labels | length "
             "| distinct-2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| reference (SFT) | {reference['gold/reward']:.3f} | 0.500 | 0.000 | | | "
             f"{reference['samples/length']:.1f} | {reference['samples/distinct_2']:.3f} |"]
    for r in rows:
        def cell(key, fmt="{:.3f}"):
            mean, std = r[key]
            return fmt.format(mean) + (" ± " + fmt.format(std) if r["seeds"] > 1 else "")
        lines.append(f"| {r['method']} | {cell('gold/reward')} | {cell('gold/win_rate')} | {cell('objective/kl')} | "
                     f"{cell('wall_s', '{:.0f}')} | {r['oracle_labels'][0]:.0f} | {cell('samples/length', '{:.1f}')} | "
                     f"{cell('samples/distinct_2')} |")
    return "\n".join(lines)


def equal_queries(results: list[dict], names: list[str], steps: int) -> str:
    """The samples part read at equal oracle queries: a run of k samples at step steps·2/k (its evaluation there; the
    schedule is constant after the warm-up, so that is where a run of steps·2/k steps would end) against k = 2 at the
    end, with its wall time prorated to those steps."""
    lines = ["At equal oracle queries (a run of k samples read at step 2/k of the budget):", "",
             "| method | step | oracle queries | gold reward | win rate vs ref | KL to ref | wall time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        runs = [r for r in results if r["method"] == name]
        step = steps * 2 // runs[0]["args"]["num_samples"]
        points = [next(p for p in r["curve"] if p["step"] == step) for r in runs]

        def cell(values, fmt="{:.3f}"):
            return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values, ddof=1))}" if len(values) > 1 else \
                fmt.format(values[0])
        lines.append(f"| {name} | {step} | {np.mean([r['oracle_queries'] * step / steps for r in runs]):.0f} | "
                     + " | ".join(cell([p[key] for p in points]) for key in ("gold/reward", "gold/win_rate",
                                                                              "objective/kl"))
                     + f" | {cell([r['wall_s'] * step / steps for r in runs], '{:.0f}')} |")
    return "\n".join(lines)


def paired_table(results: list[dict], names: list[str], baseline: str, n_boot: int = 10000) -> tuple[str, list]:
    """Each of `names`' difference to `baseline` in gold reward and win rate, paired by seed and evaluation prompt:
    the mean, its 95% interval by the two-way bootstrap, the p-value Holm-adjusted over the methods compared (per
    metric; benchmarks/paired.py). Runs without per-prompt values (from an older JSON by --reuse) are left out, and
    said so; so are names that are the baseline's own runs. Returns the markdown and the rows for the JSON."""
    base = [r for r in results if r["method"] == baseline]
    if not all("per_prompt" in r for r in base):
        return (f"No paired comparison with {baseline}: its runs hold no per-prompt values (--reuse of an older "
                "JSON)."), []
    keys = ("gold/reward", "gold/win_rate")
    rows, left_out, same = [], [], []
    for name in names:
        runs = [r for r in results if r["method"] == name]
        if name == baseline or not runs:
            continue
        if not all("per_prompt" in r for r in runs):
            left_out.append(name)
            continue
        assert [r["seed"] for r in runs] == [r["seed"] for r in base], (name, baseline)
        if all(r.get("same_as", name) == b.get("same_as", baseline) for r, b in zip(runs, base)):
            same.append(name)  # a name whose Args resolve to the baseline's: one run, reported under both
            continue
        arrays = {k: (np.array([r["per_prompt"][k] for r in runs]), np.array([r["per_prompt"][k] for r in base]))
                  for k in keys}
        rows.append({"method": name, **{k: paired.paired_difference(a, b, n_boot) for k, (a, b) in arrays.items()}})
    for k in keys:
        for row, p in zip(rows, paired.holm([row[k]["p"] for row in rows])):
            row[k]["p_holm"] = float(p)
    seeds, prompts = len(base), len(base[0]["per_prompt"][keys[0]])
    lines = [f"Paired with {baseline}: each method's difference to it on the same {seeds} seed(s) and {prompts} "
             f"evaluation prompts; 95% interval by the bootstrap over seeds and prompts ({n_boot} draws); p-values "
             f"Holm-adjusted over the {len(rows)} method(s) compared, per metric (benchmarks/paired.py)."
             + (" One seed: the intervals are over prompts only, not over training seeds." if seeds == 1 else
                f" With {seeds} seeds the intervals are too narrow where the seeds vary most: a description more "
                "than a test." if seeds < 5 else ""), "",
             f"| method | gold reward − {baseline} | 95% interval | p (Holm) | win rate − {baseline} | 95% interval "
             "| p (Holm) | significant at 0.05 after Holm |",
             "| --- | ---: | --- | ---: | ---: | --- | ---: | --- |"]
    for row in rows:
        cells = [f"{row[k]['difference']:+.3f} | [{row[k]['low']:+.3f}, {row[k]['high']:+.3f}] | "
                 f"{row[k]['p_holm']:.3f}" for k in keys]
        significant = [label for k, label in zip(keys, ("gold reward", "win rate")) if row[k]["p_holm"] <= 0.05]
        lines.append(f"| {row['method']} | {' | '.join(cells)} | {', '.join(significant) or 'no'} |")
    if same:
        lines += ["", f"Not compared: {', '.join(same)} (the same runs as {baseline})."]
    if left_out:
        lines += ["", f"Not compared: {', '.join(left_out)} (runs without per-prompt values, taken by --reuse from "
                  "an older JSON)."]
    return "\n".join(lines), rows


def plot(results: list[dict], names: list[str], reference: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -r benchmarks/requirements.txt)")
        return False
    panels = [(title, [n for n in part if n in names]) for title, part in PARTS.values()]
    panels = [(title, part) for title, part in panels if part]
    rows, cols = (1, 1) if len(panels) == 1 else (-(-len(panels) // 2), 2)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 5.5 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colours, markers = plt.get_cmap("tab20").colors, "os^vD<>pPXh*"
    for ax, (title, curve_names) in zip(axes.flat, panels):
        ax.scatter([0], [reference["gold/reward"]], color="black", marker="*", s=120, label="reference (SFT)", zorder=3)
        for i, name in enumerate(curve_names):  # every curve its own colour and marker
            curves = [r["curve"] for r in results if r["method"] == name]
            kl = np.mean([[0.0] + [p["objective/kl"] for p in c] for c in curves], axis=0)
            gold = np.mean([[reference["gold/reward"]] + [p["gold/reward"] for p in c] for c in curves], axis=0)
            ax.plot(kl, gold, "-", color=colours[i % len(colours)], marker=markers[i % len(markers)], markersize=4,
                    label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("KL(π_θ ‖ π_ref), nats per sequence")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("gold reward (mean over seeds, a point per evaluation)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller task, 1 seed, 120 steps")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3, 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 300, 120 with --quick)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of every run (default: the core's)")
    parser.add_argument("--part", choices=list(PARTS), default=None, help="one part of the grid, in its own files "
                        "(compare_PART.*; default: every part, in compare.*): " + "; ".join(
                            f"{name}: {title}" for name, (title, _) in PARTS.items()))
    parser.add_argument("--oracle-label", choices=("argmax", "sample"), default=None, help="the oracle's label rule of "
                        "every run that does not set its own (default: the core's)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods and ablations (their names "
                        "in the table)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the tiny model gains little from "
                        "more, and timings do not suffer from other jobs' threads)")
    parser.add_argument("--reuse", default=None, help="a compare .json written by the same core code: runs whose "
                        "resolved Args (every field stored there) and seed match one of its runs are taken from it "
                        "instead of being trained again (e.g. after a default changed to a value the grid had run)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="autocast dtype of the training "
                        "runs (bf16: as a --model run on a CPU with AMX; the reference is held in fp32 either way)")
    parser.add_argument("--baseline", default="online-dpo", help="the method that the paired tables compare every "
                        "other of its part with (a part without it has none)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in its own process with --threads "
                        "threads (results do not depend on it; wall times do)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    seeds = opts.seeds or (1 if opts.quick else 3)
    steps = opts.steps or (120 if opts.quick else 300)
    eval_every = max(1, steps // 6)
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    name = "compare_quick" if opts.quick else "compare" if opts.lr is None else f"compare_lr{opts.lr}"
    name += (f"_{opts.part}" if opts.part else "") + ("_bf16" if opts.dtype == "bf16" else "")
    if opts.methods or opts.first_seed:  # a partial run never overwrites the full one
        name += f"_seeds{opts.first_seed}-{opts.first_seed + seeds - 1}" + ("_subset" if opts.methods else "")
    out = os.path.join(results_dir, name)
    os.makedirs(os.path.dirname(out), exist_ok=True)

    t0 = time.perf_counter()
    task_args = br.validate(br.Args(quick=opts.quick))
    reference, tok, rows, eval_rows = br.build_embedded_task(task_args, torch.device("cpu"))
    reference.eval()
    ref_eval = br.evaluate(reference, reference, tok, eval_rows, br.gold_reward, task_args)
    ref_eval.update(sample_statistics(reference, tok, eval_rows, task_args))
    names = [n for part, (_, part_names) in PARTS.items() if opts.part in (None, part) for n in part_names]
    if opts.methods:
        unknown = [n for n in opts.methods if n not in names]
        if unknown:
            parser.error(f"unknown method(s) {unknown}: choose from {names}")
        names = [n for n in names if n in opts.methods]
    TASK.update(reference=reference, tok=tok, rows=rows, eval_rows=eval_rows, threads=opts.threads,
                amp_dtype=torch.bfloat16 if opts.dtype == "bf16" else torch.float32)
    jobs, same_as = [], {}  # one run per distinct (Args, seed); names that resolve to an earlier one's Args reuse it
    for seed in range(opts.first_seed, opts.first_seed + seeds):  # seeds outermost: a partial run covers every method
        first_name = {}
        for name in names:
            overrides = {**({"oracle_label": opts.oracle_label} if opts.oracle_label else {}),
                         **{**METHODS, **ABLATIONS}[name]}
            every = steps // 12 if name in PARTS["samples"][1] else eval_every  # an evaluation at steps·2/k too,
            args = resolve(overrides, seed, steps, every, len(eval_rows), opts.lr)  # where k costs 2's budget
            key = json.dumps(dataclasses.asdict(args), sort_keys=True)
            if key in first_name:
                same_as[(name, seed)] = first_name[key]
            else:
                first_name[key] = name
                jobs.append((name, args))
    results = {}
    stored = json.load(open(opts.reuse))["results"] if opts.reuse else []
    for name, args in list(jobs):
        new = dataclasses.asdict(args)
        unread = {"self_labels"} if args.design in ("dpo", "online-dpo", "sail-pr") else set()  # no self-labels there
        match = next((r for r in stored if r["seed"] == args.seed
                      and all(new.get(k) == v for k, v in r["args"].items() if k not in unread)), None)
        if match:
            results[(name, args.seed)] = {**match, "method": name, "reused_from": opts.reuse}
            jobs.remove((name, args))
    reused = len(results)
    print(f"{reused} runs reused from {opts.reuse}, {len(jobs)} to train" if opts.reuse else "", flush=True)
    with multiprocessing.get_context("fork").Pool(opts.jobs) as pool:
        for r in pool.imap(run, jobs):
            results[(r["method"], r["seed"])] = r
            print(f"[{time.perf_counter() - t0:5.0f} s] {r['method']:24s} seed {r['seed']}: gold "
                  f"{r['gold/reward']:.3f}, win {r['gold/win_rate']:.3f}, KL {r['objective/kl']:.3f}, "
                  f"{r['wall_s']:.0f} s", flush=True)
    for (name, seed), first in same_as.items():
        results[(name, seed)] = {**results[(first, seed)], "method": name, "same_as": first}
    results = [results[(name, seed)] for seed in range(opts.first_seed, opts.first_seed + seeds) for name in names]

    table = markdown(summarize(results, names), ref_eval)
    samples = [n for n in names if n in PARTS["samples"][1]]
    table += "\n\n" + equal_queries(results, samples, steps) if samples else ""
    comparisons = {}
    for part, (title, part_names) in PARTS.items():  # a paired table for each part that holds the baseline
        part_names = [n for n in part_names if n in names]
        if opts.baseline in part_names and len(part_names) > 1:
            text, comparisons[part] = paired_table(results, part_names, opts.baseline)
            table += "\n\n" + ("" if opts.part else f"Part {part} ({title}). ") + text
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores ({opts.threads} torch "
               f"thread(s)), torch {torch.__version__}, transformers {transformers.__version__}, Python "
               f"{platform.python_version()}")
    command = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    header = (f"Generated by `{command}`" + (f" (part {opts.part}: {PARTS[opts.part][0]})" if opts.part else "")
              + f". {'Quick mode: ' if opts.quick else ''}{steps} steps × 16 pairs per run in {opts.dtype}, "
              f"learning rate {opts.lr or br.validate(br.Args()).lr}, oracle labels "
              f"{opts.oracle_label or br.Args().oracle_label} "
              f"(where a row does not set its own), {seeds} seed(s) from seed {opts.first_seed}, "
              f"{len(eval_rows)} eval prompts; mean ± standard deviation over seeds. Machine: {machine}. "
              f"Total {time.perf_counter() - t0:.0f} s" + (f"; {reused} runs taken from {opts.reuse} (--reuse)"
                                                           if opts.reuse else "") + ".")
    with open(out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    with open(out + ".json", "w") as f:
        json.dump({"reference": ref_eval, "results": results, "steps": steps, "seeds": seeds, "machine": machine,
                   "part": opts.part, "command": command, "paired": {"baseline": opts.baseline, **comparisons}}, f)
    plotted = plot(results, names, ref_eval, out + ".png")
    print("\n" + header + "\n\n" + table)
    print(f"\nwrote {out}.md, {out}.json" + (f", {out}.png" if plotted else ""))


if __name__ == "__main__":
    main()
