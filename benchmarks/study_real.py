"""The study on a real model (`make study-real`): the six designs on SmolLM2-135M-Instruct, aligned toward VADER
sentiment on a CPU, at matched budgets, several seeds. The counterpart of benchmarks/compare.py's designs on the
embedded task, with the demo's model, oracle and prompts (benchmarks/demo.py).

1. The offline pairs: the reference (SmolLM2-135M-Instruct, the GGUF file dequantized) samples two pairs of answers
   per training prompt (benchmarks/demo_train.jsonl, 48 prompts) at temperature 1; VADER labels each pair, the higher
   compound score preferred (pairs with equal scores are dropped). Every design gets these pairs as its --dataset:
   dpo trains on them alone, the others on the share of examples their design routes offline, and sail-dp and mix
   relabel some of them with the policy's own preferences (ALGORITHM.md §4).
2. The runs: each design at its defaults (the core's fractions and coefficients, β = 0.1, `--oracle-label argmax`),
   LoRA r 16 on every linear layer, the same learning rate 3e-4 (the demo's, chosen on training prompts only), the
   same steps × pairs per step, so the same number of preference pairs per run; the online designs also ask the
   oracle to label their own samples (the `oracle labels` column counts every label a run used, the pairs' included).
   Each run is one process of `bilevel_rlhf.py` with one torch thread, --jobs of them at a time.
3. Evaluation: the 40 prompts of benchmarks/demo_eval.jsonl (disjoint from the training prompts), one sample each at
   temperature 1, before training and every --eval-every steps: the gold reward (VADER) of the policy's sample, the
   win rate against the reference's (the same seed, ties half), the Monte-Carlo KL(π_θ ‖ π_ref).

    python benchmarks/study_real.py --jobs 2        # 6 designs x 3 seeds (73 minutes on a 2-core CPU)
    python benchmarks/study_real.py --seeds 1       # one seed

A finished run is kept (runs/study-real/DESIGN-sSEED/result.json) and not trained again with the same flags (a
study stopped halfway goes on where it was); --fresh retrains all.
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
from demo import EVAL, REWARD_FN, TRAIN, convert_once  # noqa: E402

DESIGNS = ("dpo", "online-dpo", "sail-pr", "sail-pp", "sail-dp", "mix")
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


def run(design: str, seed: int, opts, model_dir: str, pairs: str) -> dict:
    """One run of bilevel_rlhf.py in its own process (one torch thread); its result from metrics.jsonl."""
    out = os.path.join(WORK, f"{design}-s{seed}")
    flags = ["--model", model_dir, "--dataset", pairs, "--eval-split", EVAL, "--reward-fn", REWARD_FN,
             "--design", design, "--oracle-label", "argmax", "--lora-r", "16", "--batch-size", str(opts.batch_size),
             "--max-new-tokens", str(opts.max_new_tokens), "--lr", str(opts.lr), "--steps", str(opts.steps),
             "--eval-every", str(opts.eval_every), "--seed", str(seed), "--output-dir", out, "--overwrite",
             "--save-every", "0", "--dtype", opts.dtype]
    done = os.path.join(out, "result.json")
    if os.path.isfile(done) and not opts.fresh and json.load(open(done))["flags"] == flags:
        return json.load(open(done))  # this run, finished before with the same flags
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    t0 = time.perf_counter()
    with open(os.path.join(WORK, f"{design}-s{seed}.log"), "w") as log:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "bilevel_rlhf.py"), *flags], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"study: {design} seed {seed} failed (exit {proc.returncode}); see {log.name}")
    wall = time.perf_counter() - t0
    history = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    curve = [{"step": m["step"], **{k[5:]: m[k] for k in m if k.startswith("eval/")}} for m in history
             if "eval/gold/reward" in m]
    online = sum(m.get("route/pr", 0.0) for m in history) * opts.batch_size
    result = {"design": design, "seed": seed, "flags": flags, "wall_s": wall, "curve": curve, **curve[-1],
              "online_labels": round(online)}
    with open(done, "w") as f:
        json.dump(result, f)
    for name in os.listdir(out):  # keep the metrics, drop the weights (the study needs only the numbers)
        path = os.path.join(out, name)
        if name not in ("metrics.jsonl", "args.json", "result.json"):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    print(f"{design:>10s} seed {seed}: gold {result['gold/reward']:.3f}, win rate {result['gold/win_rate']:.3f}, "
          f"KL {result['objective/kl']:.3f} ({wall:.0f} s)", flush=True)
    return result


def reference_metrics(model_dir: str, run_dir: str) -> dict:
    """The reference's evaluation, as every run computes it before training, with the settings of a run."""
    model, tok = br.load_policy(model_dir, "cpu")
    saved = json.load(open(os.path.join(run_dir, "args.json")))
    args = br.Args(**{k: v for k, v in saved.items() if k in br.Args.__dataclass_fields__})
    rows, _ = br.prepare_rows(br.read_preferences(EVAL, tok, "train"), tok, args.max_prompt_length,
                              args.max_new_tokens)
    with torch.inference_mode():
        return br.evaluate(model, model, tok, rows, br.load_reward_fn(REWARD_FN), args)


def plot(results: list[dict], reference: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -r benchmarks/requirements.txt)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours, markers = plt.get_cmap("tab10").colors, "os^vDP"
    for ax, key, label in ((axes[0], "gold/reward", "gold reward (VADER)"),
                           (axes[1], "gold/win_rate", "win rate against the reference")):
        ax.scatter([0], [reference[key] if key in reference else 0.5], color="black", marker="*", s=120,
                   label="reference", zorder=3)
        for i, design in enumerate(DESIGNS):
            curves = [r["curve"] for r in results if r["design"] == design]
            kl = np.mean([[0.0] + [p["objective/kl"] for p in c] for c in curves], axis=0)
            y = np.mean([[reference[key] if key in reference else 0.5] + [p[key] for p in c] for c in curves], axis=0)
            ax.plot(kl, y, "-", color=colours[i], marker=markers[i], markersize=5, label=design)
            for r in results:  # the final point of every seed
                if r["design"] == design:
                    ax.scatter([r["objective/kl"]], [r[key]], color=colours[i], marker=markers[i], s=14, alpha=0.4)
        ax.set_xlabel("KL(π_θ ‖ π_ref), nats per response")
        ax.set_ylabel(label + ", mean over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct toward VADER sentiment: a point per evaluation (faint: each seed's last)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--pairs-per-prompt", type=int, default=2, help="offline pairs sampled per training prompt")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each a process (results do not depend on it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--dtype", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="bilevel_rlhf's --dtype (default fp32: the documented table's; auto = bf16 on a CPU with AMX)")
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    p.add_argument("--fresh", action="store_true", help="train every run again (default: keep finished runs)")
    p.add_argument("--results", default=os.path.join(HERE, "results", "study_real"))
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    os.makedirs(WORK, exist_ok=True)
    model_dir = convert_once(os.path.join(ROOT, "runs", "smollm2-135m-instruct"))
    pairs = os.path.join(WORK, "pairs.jsonl")
    info = make_pairs(model_dir, pairs, opts.pairs_per_prompt, opts.max_new_tokens)
    print(f"offline pairs: {info}", flush=True)
    jobs = [(d, s) for s in range(opts.seeds) for d in opts.designs]
    with concurrent.futures.ThreadPoolExecutor(opts.jobs) as pool:
        results = list(pool.map(lambda job: run(*job, opts, model_dir, pairs), jobs))
    reference = reference_metrics(model_dir, os.path.join(WORK, f"{jobs[0][0]}-s{jobs[0][1]}"))
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()

    def cell(design, key, fmt="{:.3f}"):
        values = np.array([r[key] for r in results if r["design"] == design], dtype=float)
        return fmt.format(values.mean()) + (f" ± {fmt.format(values.std(ddof=1))}" if len(values) > 1 else "")
    versions = ", ".join(f"{m} {importlib.metadata.version(m)}" for m in ("torch", "transformers", "peft",
                                                                           "vaderSentiment"))
    command = "python benchmarks/study_real.py " + " ".join(sys.argv[1:])
    lines = [
        "# The designs on a real model: SmolLM2-135M-Instruct toward VADER sentiment",
        "",
        f"Generated by `{command.strip()}` (`make study-real`) in {seconds / 60:.0f} minutes: {len(opts.designs)} "
        f"designs × {opts.seeds} seeds, {opts.jobs} runs at a time, {opts.threads} torch thread(s) each. Machine: "
        f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU; 1-minute load "
        f"{load0[0]:.1f} before, {load1[0]:.1f} at the end. {versions}, Python {platform.python_version()}.",
        "",
        f"Every run: LoRA r 16 (all linear layers), {opts.steps} steps × {opts.batch_size} pairs × "
        f"{opts.max_new_tokens} new tokens, lr {opts.lr:g}, the design's default fractions and coefficients, "
        f"`--oracle-label argmax`. Offline pairs: {info['pairs']} pairs of the reference's samples on the 48 training "
        f"prompts labelled by VADER ({info['ties_dropped']} ties dropped). Evaluation: the 40 disjoint prompts of "
        "benchmarks/demo_eval.jsonl, one sample each at temperature 1, at the end of training (the plot: also before "
        "and halfway); mean ± standard deviation over seeds. Oracle labels: the offline pairs' plus the online "
        "samples' (PR examples).",
        "",
        "| design | gold reward (VADER) | win rate vs reference | KL (nats) | oracle labels | time per run (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| reference | {reference['gold/reward']:.3f} | 0.500 | 0.000 | | |",
    ] + [f"| {d} | {cell(d, 'gold/reward')} | {cell(d, 'gold/win_rate')} | {cell(d, 'objective/kl')} | "
         f"{info['pairs'] + np.mean([r['online_labels'] for r in results if r['design'] == d]):.0f} | "
         f"{cell(d, 'wall_s', '{:.0f}')} |" for d in opts.designs]
    os.makedirs(os.path.dirname(os.path.abspath(opts.results)), exist_ok=True)
    with open(opts.results + ".json", "w") as f:
        json.dump({"command": command, "seconds": seconds, "pairs": info, "reference": reference,
                   "options": vars(opts), "runs": results}, f, indent=1)
    if plot(results, reference, opts.results + ".png"):
        lines += ["", f"![gold reward and win rate against KL]({os.path.basename(opts.results)}.png)"]
    with open(opts.results + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {opts.results}.md, .json" + (", .png" if os.path.exists(opts.results + ".png") else ""))


if __name__ == "__main__":
    main()
