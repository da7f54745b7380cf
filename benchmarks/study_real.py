"""The study on a real model (`make study-real`): the designs on SmolLM2-135M-Instruct, aligned toward VADER sentiment
on a CPU and graded by a judge that is not the oracle, at matched budgets, several seeds, each compared prompt by
prompt with online DPO. The counterpart of benchmarks/compare.py's designs on the embedded task, with the demo's model,
oracle, judge and training prompts (benchmarks/demo.py).

1. The offline pairs: the reference (SmolLM2-135M-Instruct, the GGUF file dequantized) samples two pairs of answers
   per training prompt (benchmarks/demo_train.jsonl, 48 prompts) at temperature 1, in fp32; VADER labels each pair,
   the higher compound score preferred (pairs with equal scores are dropped). Every design gets these pairs as its
   --dataset: dpo trains on them alone, the others on the share of examples their design routes offline, and sail-dp
   and mix relabel some of them with the policy's own preferences (ALGORITHM.md §4).
2. The runs: by default online-dpo, sail-pr, mix, sail-pp and online-dpo-k4 (online DPO with `--num-samples 4`: its pair
   is the best and the worst of 4 samples that the oracle scores), the designs that the power calculation of
   docs/study.md sized the study for (dpo and sail-dp run on request: --designs), each at its defaults (the core's
   fractions and coefficients, β = 0.1, `--oracle-label argmax`), LoRA r 16 on every linear layer, the same learning
   rate 3e-4 (the demo's, chosen on training prompts only), the same steps × pairs per step, so the same number of
   preference pairs per run; the online designs also ask the oracle to label their own samples (the `oracle labels`
   column counts the labelled pairs a run was given, the offline pairs' included). Each run is one process of
   bilevel_rlhf with --threads torch threads, --jobs of them at a time, in --dtype (default auto: bf16 on a CPU with AMX
   units).
3. Evaluation, after the last step (and every --eval-every steps): one sample per prompt of --eval-prompts-file
   (default: the demo's 40, benchmarks/demo_eval.jsonl, none a training prompt) at temperature 1 from the policy and
   from the reference (the same seed), scored by the judge, the AFINN word list's valence per word
   (benchmarks/afinn_reward.py), which training never sees: its gold reward and the win rate against the reference's
   answer (ties half); the oracle's (VADER's) beside them; the Monte-Carlo KL(π_θ ‖ π_ref). Each prompt's values in the
   final evaluation are kept in the run's result.json; each design's difference to online DPO, paired by seed and
   prompt, comes from benchmarks/paired.py: paired_t, the t test on the seeds' mean differences that the power
   calculation sizes, and paired_difference, the bootstrap over seeds and prompts; holm adjusts each test's p-values
   over the designs compared.

    python benchmarks/study_real.py --jobs 2        # 5 designs × 8 seeds × 30 steps (2-core CPU with AMX: about 75 min)
    python benchmarks/study_real.py --seeds 1 --steps 2 --designs dpo online-dpo --work-dir runs/s --results runs/s/r
                                                    # a smoke run: its results outside benchmarks/results

A finished run is kept (WORK_DIR/DESIGN-sSEED/result.json) and not trained again with the same flags: a study stopped
halfway goes on where it was when run again; --fresh retrains all.
Writes benchmarks/results/study_real.{json,md,png} (the plot only when matplotlib is installed).
"""
import argparse
import concurrent.futures
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import bilevel_rlhf as br  # noqa: E402
from demo import EVAL, JUDGE_FN, REWARD_FN, TRAIN, convert_once  # noqa: E402

try:
    from paired import holm, paired_difference, paired_t  # noqa: E402  benchmarks/paired.py
except ImportError:
    holm = paired_difference = paired_t = None

DESIGNS = {  # the name in the tables: the core's --design and the variant's flags
    "dpo": ("dpo", []), "online-dpo": ("online-dpo", []), "online-dpo-k4": ("online-dpo", ["--num-samples", "4"]),
    "sail-pr": ("sail-pr", []), "sail-pp": ("sail-pp", []), "sail-dp": ("sail-dp", []), "mix": ("mix", [])}
BASELINE = "online-dpo"  # the paired table's differences are to this design
PLAN = ["online-dpo", "sail-pr", "mix", "sail-pp", "online-dpo-k4"]  # the designs that the power calculation sized
WORK = os.path.join(ROOT, "runs", "study-real")


def make_pairs(model_dir: str, path: str, pairs_per_prompt: int, max_new_tokens: int) -> dict:
    """The offline pairs: the reference's samples for every training prompt, labelled by VADER (higher score
    preferred, equal scores dropped), written as conversational rows to `path`."""
    prompts = [json.loads(line)["prompt"] for line in open(TRAIN)]
    model, tok = br.load_policy(model_dir, "cpu")
    args = br.validate(br.Args(max_new_tokens=max_new_tokens, batch_size=len(prompts), output_dir="unused"))
    ids, mask = br.encode_prompts(tok, [br.render_prompt(tok, p) for p in prompts], args.max_prompt_length, "cpu")
    with torch.inference_mode():
        ys = br.sample(model, tok, ids, mask, n=2 * pairs_per_prompt, seed=1234, args=args)  # [sample k of all]
    texts = [t.strip() for t in tok.batch_decode(ys, skip_special_tokens=True)]
    vader = br.load_reward_fn(REWARD_FN)
    scores = vader(prompts * 2 * pairs_per_prompt, texts)
    rows, ties = [], 0
    for k in range(pairs_per_prompt):
        for i, prompt in enumerate(prompts):
            a, b = (2 * k) * len(prompts) + i, (2 * k + 1) * len(prompts) + i
            if scores[a] == scores[b]:
                ties += 1
                continue
            win, lose = (a, b) if scores[a] > scores[b] else (b, a)
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": texts[win]}],
                         "rejected": [{"role": "assistant", "content": texts[lose]}]})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return {"pairs": len(rows), "ties_dropped": ties, "reference_samples_mean_vader": float(np.mean(scores))}


def worker(path: str, flags: list[str]) -> int:
    """One run, in the subprocess that `run` starts: bilevel_rlhf's command line, and each prompt's values in its first
    evaluation (the reference's, before training) and its last (the final model's) written to `path`. train() does not
    ask evaluate for them, so evaluate is wrapped to ask: they are the logged evaluation's own, not a second draw."""
    evaluations, evaluate = [], br.evaluate

    def recording(*args, **kwargs):
        evaluations.append({})
        return evaluate(*args, **{**kwargs, "per_prompt": evaluations[-1]})
    br.evaluate = recording
    code = br.cli(flags)
    if code == 0:
        with open(path, "w") as f:
            json.dump({"reference": evaluations[0], "final": evaluations[-1]}, f)
    return code


def run(name: str, seed: int, opts, model_dir: str, pairs: str, n_eval: int) -> dict:
    """One run of bilevel_rlhf in its own process; its result from metrics.jsonl, with each evaluation prompt's values
    in its final evaluation."""
    design, variant = DESIGNS[name]
    out = os.path.join(opts.work_dir, f"{name}-s{seed}")
    flags = ["--model", model_dir, "--dataset", pairs, "--eval-split", opts.eval_prompts_file, "--eval-prompts",
             str(n_eval), "--reward-fn", REWARD_FN, "--eval-reward-fn", JUDGE_FN, "--design", design, *variant,
             "--oracle-label", "argmax", "--lora-r", "16", "--batch-size", str(opts.batch_size),
             "--max-new-tokens", str(opts.max_new_tokens), "--lr", str(opts.lr), "--steps", str(opts.steps),
             "--eval-every", str(opts.eval_every), "--seed", str(seed), "--output-dir", out, "--overwrite",
             "--save-every", "0", "--dtype", opts.dtype]
    done = os.path.join(out, "result.json")
    if os.path.isfile(done) and not opts.fresh and json.load(open(done))["flags"] == flags:
        return {**json.load(open(done)), "kept": True}  # this run, finished before with the same flags
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    per_prompt = os.path.join(opts.work_dir, f"{name}-s{seed}.per_prompt.json")
    t0 = time.perf_counter()
    with open(os.path.join(opts.work_dir, f"{name}-s{seed}.log"), "w") as log:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", per_prompt, *flags], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"study: {name} seed {seed} failed (exit {proc.returncode}); see {log.name}")
    wall = time.perf_counter() - t0
    history = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    curve = [{"step": m["step"], **{k[5:]: m[k] for k in m if k.startswith("eval/")}} for m in history
             if "eval/gold/reward" in m]
    values = json.load(open(per_prompt))
    for key, v in values["final"].items():  # every prompt evaluated, and the same numbers as the logged evaluation
        assert len(v) == n_eval and abs(np.mean(v) - curve[-1][key]) < 1e-9, (name, seed, key, len(v))
    online = sum(m.get("route/pr", 0.0) for m in history) * opts.batch_size
    result = {"design": name, "seed": seed, "flags": flags, "wall_s": wall, "curve": curve, **curve[-1],
              "online_labels": round(online), "per_prompt": values["final"], "reference": values["reference"]}
    with open(done, "w") as f:
        json.dump(result, f)
    os.remove(per_prompt)
    for entry in os.listdir(out):  # keep the metrics, drop the weights (the study needs only the numbers)
        path = os.path.join(out, entry)
        if entry not in ("metrics.jsonl", "args.json", "result.json"):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    print(f"{name:>13s} seed {seed}: AFINN {result['gold/reward']:.3f}, win rate {result['gold/win_rate']:.3f}; "
          f"VADER {result['oracle/reward']:.3f}, {result['oracle/win_rate']:.3f}; KL {result['objective/kl']:.3f} "
          f"({wall:.0f} s)", flush=True)
    return result


def paired_table(results: list[dict], designs: list[str], n_boot: int = 10000) -> tuple[list[str], list[dict]]:
    """Each design's difference to BASELINE under the judge, paired by seed and evaluation prompt
    (benchmarks/paired.py), by two tests: the seed-level t test that the power calculation sizes (each seed's mean
    difference over the prompts, seeds − 1 df; it holds its level at few seeds), and the two-way bootstrap over seeds
    and prompts. Each test's p-values are Holm-adjusted over the designs compared, per metric; "significant" is the
    t test's verdict. Returns the markdown and the rows for the JSON."""
    if BASELINE not in designs or len(designs) < 2:
        return [f"No paired table: it compares each design with {BASELINE}, which this study did not run."], []

    def values(name: str, key: str) -> np.ndarray:  # (seeds, prompts), the seeds in order
        return np.array([r["per_prompt"][key] for r in sorted(results, key=lambda r: r["seed"]) if r["design"] == name])
    others = [d for d in designs if d != BASELINE]
    rows = [{"design": d, "metric": key, "t": paired_t(values(d, key), values(BASELINE, key)),
             "bootstrap": paired_difference(values(d, key), values(BASELINE, key), n_boot)}
            for key in ("gold/reward", "gold/win_rate") for d in others]
    for key in ("gold/reward", "gold/win_rate"):
        for test in ("t", "bootstrap"):
            same = [row for row in rows if row["metric"] == key]
            for row, p in zip(same, holm([row[test]["p"] for row in same])):
                row[test]["p_holm"] = float(p)
    lines = [f"| design − {BASELINE} | metric (AFINN) | difference | 95% interval, t test over seeds | p (Holm) | "
             "95% interval, bootstrap over seeds and prompts | p (Holm) | significant at 0.05 after Holm (t test) |",
             "| --- | --- | ---: | :---: | ---: | :---: | ---: | --- |"]
    for row in rows:
        t, boot = row["t"], row["bootstrap"]
        lines.append(f"| {row['design']} | {row['metric'][5:].replace('_', ' ')} | {t['difference']:+.3f} | "
                     f"[{t['low']:+.3f}, {t['high']:+.3f}] | {t['p_holm']:.3g} | [{boot['low']:+.3f}, "
                     f"{boot['high']:+.3f}] | {boot['p_holm']:.3g} | {'yes' if t['p_holm'] <= 0.05 else 'no'} |")
    return lines, rows


PLOTTED = (("gold/reward", "gold reward (AFINN, the judge)"), ("gold/win_rate", "win rate (AFINN)"),
           ("oracle/reward", "VADER's reward (the oracle)"))  # the plot's panels, against KL


def plot(results: list[dict], reference: dict, designs: list[str], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -r benchmarks/requirements.txt)")
        return False
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(6 * len(PLOTTED), 5))
    colours, markers = plt.get_cmap("tab10").colors, "os^vDPX"
    for ax, (key, label) in zip(axes, PLOTTED):
        ax.scatter([0], [reference[key]], color="black", marker="*", s=120, label="reference", zorder=3)
        for i, design in enumerate(designs):
            curves = [r["curve"] for r in results if r["design"] == design]
            kl = np.mean([[0.0] + [p["objective/kl"] for p in c] for c in curves], axis=0)
            y = np.mean([[reference[key]] + [p[key] for p in c] for c in curves], axis=0)
            ax.plot(kl, y, "-", color=colours[i], marker=markers[i], markersize=5, label=design)
            for r in results:  # the final point of every seed
                if r["design"] == design:
                    ax.scatter([r["objective/kl"]], [r[key]], color=colours[i], marker=markers[i], s=14, alpha=0.4)
        ax.set_xlabel("KL(π_θ ‖ π_ref), nats per response")
        ax.set_ylabel(label + ", mean over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct trained toward VADER, judged by AFINN: a point per evaluation (faint: each "
                 "seed's last)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    if sys.argv[1:2] == ["--worker"]:  # one run, in the subprocess that `run` starts
        sys.exit(worker(sys.argv[2], sys.argv[3:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1 of every design (default 8: the power "
                   "calculation's, docs/study.md)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every this many steps too (default 0: before training and after the last step)")
    p.add_argument("--eval-prompts-file", default=EVAL, help="the evaluation prompts (default: the demo's 40)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--pairs-per-prompt", type=int, default=2, help="offline pairs sampled per training prompt")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each a process (results do not depend on it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bilevel_rlhf's --dtype (auto: bf16 on a CPU with AMX units, else fp32)")
    p.add_argument("--designs", nargs="+", default=PLAN, choices=list(DESIGNS),
                   help=f"default: {' '.join(PLAN)} (the power calculation's; dpo and sail-dp on request)")
    p.add_argument("--fresh", action="store_true", help="train every run again (default: keep finished runs)")
    p.add_argument("--work-dir", default=WORK, help="the runs' folders (each run's weights are deleted when it ends)")
    p.add_argument("--results", default=os.path.join(HERE, "results", "study_real"))
    opts = p.parse_args()
    opts.eval_prompts_file, opts.work_dir = map(os.path.abspath, (opts.eval_prompts_file, opts.work_dir))  # run flags
    if paired_t is None:  # before hours of runs, not after them
        sys.exit("study: benchmarks/paired.py (paired_difference, holm) is missing: the paired table needs it")
    torch.set_num_threads(opts.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    os.makedirs(opts.work_dir, exist_ok=True)
    model_dir = convert_once(os.path.join(ROOT, "runs", "smollm2-135m-instruct"))
    precision = br.choose_precision(br.Args(model=model_dir, dtype=opts.dtype), torch.device("cpu"))[1]
    n_eval = sum(1 for line in open(opts.eval_prompts_file) if line.strip())
    pairs = os.path.join(opts.work_dir, "pairs.jsonl")
    info = make_pairs(model_dir, pairs, opts.pairs_per_prompt, opts.max_new_tokens)
    print(f"offline pairs: {info}; precision of the runs: {precision}", flush=True)
    jobs = [(d, s) for s in range(opts.seeds) for d in opts.designs]
    with concurrent.futures.ThreadPoolExecutor(opts.jobs) as pool:
        results = list(pool.map(lambda job: run(*job, opts, model_dir, pairs, n_eval), jobs))
    # the reference's evaluation, as every run made it before training (the same prompts, seeds and precision)
    reference = {k: float(np.mean(v)) for k, v in results[0]["reference"].items()}
    spread = max(abs(np.mean(v) - reference[k]) for r in results for k, v in r["reference"].items())
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()
    run_s, kept = sum(r["wall_s"] for r in results), sum(r.get("kept", False) for r in results)
    table, comparisons = paired_table(results, opts.designs)

    def cell(design, key, fmt="{:.3f}"):
        values = np.array([r[key] for r in results if r["design"] == design], dtype=float)
        return fmt.format(values.mean()) + (f" ± {fmt.format(values.std(ddof=1))}" if len(values) > 1 else "")
    versions = ", ".join(f"{m} {importlib.metadata.version(m)}" for m in ("torch", "transformers", "peft",
                                                                           "vaderSentiment", "afinn"))
    command = "python benchmarks/study_real.py " + " ".join(sys.argv[1:])
    columns = ("gold/reward", "gold/win_rate", "oracle/reward", "oracle/win_rate", "objective/kl")
    lines = [
        "# The designs on a real model: SmolLM2-135M-Instruct trained toward VADER, judged by AFINN",
        "",
        f"Generated by `{command.strip()}`" + (" (`make study-real`)" if sys.argv[1:] == ["--jobs", "2"] else "") +
        f" in {seconds / 60:.0f} minutes" + (
            f" ({kept} runs kept from an earlier invocation; the runs' own times sum to {run_s / 60:.0f} minutes, "
            f"{run_s / opts.jobs / 60:.0f} at {opts.jobs} at a time)" if kept else "") + f": {len(opts.designs)} "
        f"designs × {opts.seeds} seeds, {opts.jobs} runs at a time, {opts.threads} torch thread(s) each, precision "
        f"`--dtype {opts.dtype}`: {precision}. Machine: {os.cpu_count()}-core CPU "
        f"({platform.processor() or platform.machine()}), no GPU; 1-minute load {load0[0]:.1f} before, "
        f"{load1[0]:.1f} at the end. {versions}, Python {platform.python_version()}.",
        "",
        f"Every run: LoRA r 16 (all linear layers), {opts.steps} steps × {opts.batch_size} pairs × "
        f"{opts.max_new_tokens} new tokens, lr {opts.lr:g}, the design's default fractions and coefficients, "
        f"`--oracle-label argmax`; online-dpo-k4 is online-dpo with `--num-samples 4`. Offline pairs: {info['pairs']} "
        f"pairs of the reference's samples on the 48 training prompts labelled by VADER ({info['ties_dropped']} ties "
        f"dropped). Oracle (the training labels): VADER's compound score. Judge (gold): AFINN's valence per word, "
        f"which no run sees. Evaluation: the {n_eval} prompts of {os.path.relpath(opts.eval_prompts_file, ROOT)} "
        "(disjoint from the training prompts), one sample each at temperature 1, after the last step, its win rate "
        "against the reference's sample under the same seed (ties half); mean ± standard deviation over seeds. Oracle "
        "labels: the labelled pairs a run was given, the offline pairs' and the online examples' (PR)." + (
            f" NOTE: the reference's evaluation differs between runs by up to {spread:.2g}." if spread > 1e-9 else ""),
        "",
        "| design | gold reward (AFINN) | win rate (AFINN) | VADER reward | win rate (VADER) | KL (nats) | "
        "oracle labels | time per run (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| reference | {reference['gold/reward']:.3f} | 0.500 | {reference['oracle/reward']:.3f} | 0.500 | 0.000 "
        "| | |",
    ] + [f"| {d} | " + " | ".join(cell(d, k) for k in columns) + " | "
         f"{info['pairs'] + np.mean([r['online_labels'] for r in results if r['design'] == d]):.0f} | "
         f"{cell(d, 'wall_s', '{:.0f}')} |" for d in opts.designs] + [
        "",
        f"Each design against {BASELINE}, paired by seed and evaluation prompt ({opts.seeds} seeds × {n_eval} "
        "prompts; benchmarks/paired.py): the mean difference, its 95% interval and p by the t test on the seeds' "
        "mean differences and by the bootstrap over seeds and prompts, each p Holm-adjusted over the designs "
        "compared, per metric.",
        "",
    ] + table
    os.makedirs(os.path.dirname(os.path.abspath(opts.results)), exist_ok=True)
    with open(opts.results + ".json", "w") as f:
        json.dump({"command": command, "seconds": seconds, "precision": precision, "pairs": info,
                   "reference": reference, "options": vars(opts), "paired": comparisons, "runs": results}, f, indent=1)
    if plot(results, reference, opts.designs, opts.results + ".png"):
        lines += ["", f"![judge's and oracle's rewards against KL]({os.path.basename(opts.results)}.png)"]
    with open(opts.results + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {opts.results}.md, .json" + (", .png" if os.path.exists(opts.results + ".png") else ""))


if __name__ == "__main__":
    main()
