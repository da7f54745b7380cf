"""Where a training step spends its time: generation, reference log-probs, policy forward, labelling, the rest.

Wraps the core file's functions with timers (nothing in bilevel_rlhf.py changes) and trains the embedded task's SFT
model for a few steps per design. "backward + optimizer + rest" is the step time minus the timed phases.

    python benchmarks/profile_step.py                 # 40 steps per design, tiny GPT-2 on CPU
    python benchmarks/profile_step.py --n-embd 256 --n-layer 4 --vocab 50257    # a larger policy, GPT-2's vocabulary

Prints a markdown table (milliseconds per step and share of the step).
"""

import argparse
import os
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bilevel_rlhf as br  # noqa: E402

PHASES = ("generation", "reference log-probs", "policy forward", "labelling", "backward + optimizer + rest")


def instrument(times: dict, ref_model) -> None:
    """Replace the module's sampler, log-prob helper and labelers with timed versions."""
    sample, logps, implicit, oracle = br.sample, br.sequence_logps, br.implicit_reward_label, br.oracle_label

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            times[phase] += time.perf_counter() - t0
            return out
        return wrapper

    br.sample = timed("generation", sample)
    br.implicit_reward_label = timed("labelling", implicit)
    br.oracle_label = timed("labelling", oracle)

    def sequence_logps(model, *args):
        phase = "reference log-probs" if model is ref_model else "policy forward"
        return timed(phase, logps)(model, *args)
    br.sequence_logps = sequence_logps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--designs", default="online-dpo,sail-pr,mix")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--n-embd", type=int, default=None, help="a fresh (untrained) policy of this width")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary of the fresh policy (e.g. GPT-2's 50257)")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    task_args = br.validate(br.Args(quick=True, max_new_tokens=opts.max_new_tokens))
    reference, tok, rows, eval_rows = br.build_embedded_task(task_args, torch.device("cpu"))
    if opts.n_embd:  # throughput only: an untrained policy of another size (and vocabulary)
        reference = br.build_tiny_gpt2(tok, n_layer=opts.n_layer, n_embd=opts.n_embd)
        if opts.vocab:
            config = type(reference.config)(**{**reference.config.to_dict(), "vocab_size": opts.vocab})
            reference = type(reference)(config)
    lines = ["| design | " + " | ".join(PHASES) + " | step (ms) |", "|" + " --- |" * (len(PHASES) + 2)]
    for design in opts.designs.split(","):
        args = br.validate(br.Args(design=design, steps=opts.steps + 1, eval_every=0, eval_prompts=1, warmup_steps=0,
                                   pr_fraction=1.0 if design in ("online-dpo", "sail-pr") else 0.3,
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

        original = (br.sample, br.sequence_logps, br.implicit_reward_label, br.oracle_label)
        instrument(times, ref)
        history = br.train(args, policy, ref, tok, rows, br.gold_reward, eval_rows[:1], log=log)
        br.sample, br.sequence_logps, br.implicit_reward_label, br.oracle_label = original
        measured = history[1:-1]  # steps 2 .. N; timing/samples_per_s excludes evaluation
        step = sum(args.batch_size / m["timing/samples_per_s"] for m in measured) / len(measured)
        per_step = {k: v / len(measured) for k, v in steady.items()}
        per_step["backward + optimizer + rest"] = max(0.0, step - sum(per_step.values()))
        cells = [f"{1000 * per_step.get(p, 0.0):.1f} ({100 * per_step.get(p, 0.0) / step:.0f}%)" for p in PHASES]
        step_ms = 1000 * step
        lines.append(f"| {design} | " + " | ".join(cells) + f" | {step_ms:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
