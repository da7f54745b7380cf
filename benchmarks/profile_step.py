"""Where a training step spends its time and how much memory it takes: generation, reference log-probs, policy
forward, labelling, the rest; and the peak resident memory of the process.

Wraps the core file's functions with timers (nothing in bilevel_rlhf.py changes) and trains the embedded task's SFT
model for a few steps per configuration, each in a process of its own, so that its peak memory (the high-water mark
of the resident set, ru_maxrss) is its own. "backward + optimizer + rest" is the step time minus the timed phases.
"training peak" is the peak minus the resident memory just before training starts (model, reference, optimizer not
yet allocated state, Python and the libraries excluded).

    python benchmarks/profile_step.py                 # 40 steps per design, tiny GPT-2 on CPU
    python benchmarks/profile_step.py --n-embd 256 --n-layer 4 --vocab 50257 --designs sail-pr --revkl 0,0.1
                                                      # a larger policy with GPT-2's vocabulary, the KL penalty off/on

Prints a markdown table (milliseconds per step and share of the step, memory in MiB).
"""

import argparse
import multiprocessing
import os
import resource
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bilevel_rlhf as br  # noqa: E402

PHASES = ("generation", "reference log-probs", "policy forward", "labelling", "backward + optimizer + rest")


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def instrument(times: dict, ref_model) -> None:
    """Replace the module's sampler, log-prob helper and labelers with timed versions."""
    sample, ref_logprobs, logits, implicit = (br.sample, br.reference_logprobs, br.response_logits,
                                              br.implicit_reward_label)

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            times[phase] += time.perf_counter() - t0
            return out
        return wrapper

    br.sample = timed("generation", sample)
    br.implicit_reward_label = timed("labelling", implicit)
    br.ask_oracle = timed("labelling", br.ask_oracle)
    br.reference_logprobs = timed("reference log-probs", ref_logprobs)
    br.response_logits = timed("policy forward", logits)  # the policy's forward to its logits (not the log-softmax)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--designs", default="online-dpo,sail-pr,mix")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--n-embd", type=int, default=None, help="a fresh (untrained) policy of this width")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary of the fresh policy (e.g. GPT-2's 50257)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--revkl", default=None, help="comma-separated λ values to run each design with (default: "
                        "each design's default)")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    task_args = br.validate(br.Args(quick=True, max_new_tokens=opts.max_new_tokens))
    reference, tok, rows, eval_rows = br.build_embedded_task(task_args, torch.device("cpu"))
    if opts.n_embd:  # throughput only: an untrained policy of another size (and vocabulary)
        reference = br.build_tiny_gpt2(tok, n_layer=opts.n_layer, n_embd=opts.n_embd)
        if opts.vocab:
            config = type(reference.config)(**{**reference.config.to_dict(), "vocab_size": opts.vocab})
            reference = type(reference)(config)
    configs = [(design, lam) for design in opts.designs.split(",")
               for lam in ([float(x) for x in opts.revkl.split(",")] if opts.revkl else [None])]
    lines = ["| design | λ | " + " | ".join(PHASES) + " | step (ms) | peak RSS (MiB) | training peak (MiB) |",
             "|" + " --- |" * (len(PHASES) + 5)]
    for design, lam in configs:  # each in a fresh process: ru_maxrss is per process
        queue = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(target=lambda: queue.put(profile(
            design, lam, reference, tok, rows, eval_rows, opts)))
        child.start()
        lines.append(queue.get())
        child.join()
        print(lines[-1], flush=True)
    print("\n".join(lines))


def profile(design, lam, reference, tok, rows, eval_rows, opts) -> str:
    args = br.validate(br.Args(design=design, steps=opts.steps + 1, eval_every=0, eval_prompts=1, warmup_steps=0,
                               pr_fraction=1.0 if design in ("online-dpo", "sail-pr") else None, revkl_coef=lam,
                               max_new_tokens=opts.max_new_tokens, output_dir="unused"))
    policy = type(reference)(reference.config)
    policy.load_state_dict(reference.state_dict())
    ref = br.make_reference(policy, torch.float32)
    times, steady = defaultdict(float), {}

    def log(metrics):  # keep the timers of steps 2 .. N: not the warm-up, not the last step's evaluation
        if metrics["step"] == 1:
            times.clear()
        if metrics["step"] == args.steps - 1:
            steady.update(times)

    instrument(times, ref)
    before = resident_mib()
    history = br.train(args, policy, ref, tok, rows, br.gold_reward, eval_rows[:1], log=log)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    measured = history[1:-1]  # steps 2 .. N; timing/samples_per_s excludes evaluation
    step = sum(args.batch_size / m["timing/samples_per_s"] for m in measured) / len(measured)
    per_step = {k: v / len(measured) for k, v in steady.items()}
    per_step["backward + optimizer + rest"] = max(0.0, step - sum(per_step.values()))
    cells = [f"{1000 * per_step.get(p, 0.0):.1f} ({100 * per_step.get(p, 0.0) / step:.0f}%)" for p in PHASES]
    return (f"| {design} | {args.revkl_coef:g} | " + " | ".join(cells) + f" | {1000 * step:.1f} | {peak:.0f} | "
            f"{peak - before:.0f} |")



if __name__ == "__main__":
    main()
