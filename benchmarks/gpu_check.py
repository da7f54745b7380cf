"""Throughput and memory of the core file on a GPT-2-small-sized policy (124M parameters, random init), against its
goals (docs/performance.md), and side by side with TRL's OnlineDPOTrainer on the same GPU. Writes one JSON summary;
called by benchmarks/gpu_check.sh after the CUDA tests. Three parts (--parts):

  generation  the sampler with the static KV cache (transformers compiles its decoding step into CUDA graphs) against
              the dynamic one (eager), at --gen-prompts prompts x 2 samples x --response-tokens new tokens, bf16
              autocast: tokens/s (median of 3 after a warm-up that compiles), the compilations and CUDA-graph
              recordings of each call (both must stay flat after the warm-up: torch and transformers fall back to slow
              paths past their limits), and the time per decoding step against the memory-bandwidth bound (the
              weights' bytes / the GPU's bandwidth). Goal: static >= 5x dynamic.
  memory      for each batch (--pairs), precision (bf16 autocast, fp32) and gradient checkpointing (off, on): a
              synthetic training step built from the core functions (policy and reference log-probs of 2B sequences,
              sail_loss with both bilevel terms on, backward, clipping, fused AdamW on CUDA), pairs/s and peak GPU
              memory; and the dynamic sampler's tokens/s as before. Goal: the peak at 32 pairs, bf16, no
              checkpointing, >= 30% below the one measured before logits_to_keep (BEFORE_PEAK_MIB).
  trl         bilevel_rlhf.train (online-dpo, every pair sampled and labelled by the same Python reward) against TRL's
              OnlineDPOTrainer with its default (gradient checkpointing on) and with checkpointing off: the same
              policy, prompts, batch, new-token budget, learning rate, steps and precision; samples/s over steps
              2..N, peak GPU memory; each in a process of its own. Goal: this project >= 2x TRL's best.
  llama8b     a Llama-architecture model of about 8B parameters built from a config on the meta device
              (random weights, nothing downloaded; fp32 frozen base weights as the core loads them), LoRA r = 64 on
              every linear layer, bf16 autocast, gradient checkpointing: --llama-steps SAIL-PR steps of
              bilevel_rlhf.train (--llama-pairs pairs, 64 + 64 tokens); peak GPU memory and seconds per step.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --tiny --device cpu --pairs 2 --gen-prompts 2 --prompt-tokens 8 \
        --response-tokens 8 --steps 2 --trl-pairs 2 --trl-steps 3 --out /tmp/gpu_check.json  # smoke run of the script
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bilevel_rlhf as br  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")


# Before logits_to_keep: the peak of the memory part on a lent H100, when the step held (2B, T, V) logits and their
# fp32 copy; 32 pairs, 128 + 128 tokens (docs/performance.md, benchmarks/results/gpu_check.json)
BEFORE_PEAK_MIB = {(32, "bfloat16", False): 26783.3, (32, "float32", False): 30927.1, (8, "bfloat16", False): 8191.1,
                   (8, "float32", False): 9219.9, (32, "bfloat16", True): 15157.0, (8, "bfloat16", True): 5288.2}
# peak memory bandwidth in bytes/s, from the vendors' data sheets, by a substring of torch.cuda.get_device_name()
BANDWIDTH = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12))
RECORDINGS = [0]  # CUDA graphs recorded by torch.compile's cudagraph trees (mode="reduce-overhead")


def count_cudagraph_recordings():
    """Count every CUDA-graph recording: a replayed graph is recorded once; a re-record means changed inputs."""
    from torch._inductor import cudagraph_trees

    record = getattr(cudagraph_trees.CUDAGraphTreeManager, "record_function", None)
    if record is None:  # another torch: not counted
        RECORDINGS[0] = None
        return

    def counting(self, *args, **kwargs):
        RECORDINGS[0] += 1
        return record(self, *args, **kwargs)
    cudagraph_trees.CUDAGraphTreeManager.record_function = counting


def compile_counts() -> dict:
    from torch._dynamo.utils import counters

    return {"dynamo_graphs": counters["stats"]["unique_graphs"], "cudagraph_recordings": RECORDINGS[0],
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def gpt2(opts, device, vocab_size=50257, **config):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    size = dict(n_layer=2, n_embd=64, n_head=4) if opts.tiny else dict(n_layer=12, n_embd=768, n_head=12)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, **size, **config)).to(device)  # fp32 master weights


def generation(opts, device, amp_dtype) -> dict:
    """Static against dynamic KV cache: tokens/s, compilations, CUDA-graph recordings, the bandwidth bound."""
    policy = gpt2(opts, device)
    tok = SimpleNamespace(pad_token_id=50256, eos_token_id=50256)
    B, P, R = opts.gen_prompts, opts.prompt_tokens, opts.response_tokens
    prompt_ids = torch.randint(0, 50000, (B, P), device=device)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[: B // 2, : P // 4] = 0
    out = {"prompts": B, "samples_per_prompt": 2, "new_tokens": R, "dtype": str(amp_dtype).replace("torch.", "")}
    for mode in ("off", "on"):
        args = br.validate(br.Args(max_new_tokens=R, output_dir="unused", max_prompt_length=P, batch_size=B,
                                   static_cache=mode, device=str(device)))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = []
        with br.autocast(device, amp_dtype):
            for seed in range(4):  # a warm-up (it compiles), then the median of 3
                sync(device)
                t0 = time.perf_counter()
                ys = br.sample(policy, tok, prompt_ids, prompt_mask, n=2, seed=seed, args=args)
                sync(device)
                runs.append({"s": time.perf_counter() - t0, "tokens": sum(map(len, ys)),
                             "decoding_steps": max(map(len, ys)), **compile_counts()})
        timed = sorted(runs[1:], key=lambda r: r["tokens"] / r["s"])[1]
        out[{"off": "dynamic", "on": "static"}[mode]] = {
            "tokens_per_s": timed["tokens"] / timed["s"], "ms_per_decoding_step": 1e3 * timed["s"] /
            timed["decoding_steps"], "warmup_s": runs[0]["s"], "peak_mib": peak_mib(device), "calls": runs,
            "compiled_again_after_warmup": any(r["dynamo_graphs"] != runs[0]["dynamo_graphs"] or
                                               r["cudagraph_recordings"] != runs[0]["cudagraph_recordings"]
                                               for r in runs[1:])}
    out["static_vs_dynamic"] = out["static"]["tokens_per_s"] / out["dynamic"]["tokens_per_s"]
    out["goal_5x_met"] = out["static_vs_dynamic"] >= 5
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    bandwidth = opts.bandwidth_tbs * 1e12 if opts.bandwidth_tbs else next((b for k, b in BANDWIDTH if k in name), None)
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())  # fp32 master weights, read every step
    if bandwidth:  # the bound: every decoding step reads all the weights once (the KV cache is small next to them)
        bound_ms = 1e3 * weights / bandwidth
        out["bandwidth_bound"] = {
            "bandwidth_tb_per_s": bandwidth / 1e12, "weight_bytes": weights, "ms_per_step_fp32_weights": bound_ms,
            "ms_per_step_bf16_weights": bound_ms / 2,
            "fraction_static": bound_ms / out["static"]["ms_per_decoding_step"],
            "fraction_dynamic": bound_ms / out["dynamic"]["ms_per_decoding_step"]}
    return out


def measure(opts, device, amp_dtype, checkpointing: bool, pairs: int) -> dict:
    policy = gpt2(opts, device)
    ref = br.make_reference(policy, amp_dtype)
    if checkpointing:
        br.enable_gradient_checkpointing(policy)
    tok = SimpleNamespace(pad_token_id=50256, eos_token_id=50256)  # all the sampler needs of a tokenizer
    B, P, R = pairs, opts.prompt_tokens, opts.response_tokens
    args = br.validate(br.Args(max_new_tokens=R, output_dir="unused", max_prompt_length=P, device=str(device),
                               static_cache="off"))  # the dynamic cache, as before (the generation part compares)
    prompt_ids = torch.randint(0, 50000, (B, P), device=device)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[: B // 2, : P // 4] = 0  # some left padding, as in real batches

    # generation: two samples per prompt, KV cache on (also under checkpointing: the sampler switches to eval mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    with br.autocast(device, amp_dtype):
        br.sample(policy, tok, prompt_ids, prompt_mask, n=2, seed=0, args=args)  # warm-up
        for seed in range(1, 4):  # the median of 3
            sync(device)
            t0 = time.perf_counter()
            ys = br.sample(policy, tok, prompt_ids, prompt_mask, n=2, seed=seed, args=args)
            sync(device)
            rates.append(sum(len(y) for y in ys) / (time.perf_counter() - t0))
    generation_peak = peak_mib(device)

    # training: a synthetic step over the same prompts and fixed-length responses
    responses = [torch.randint(0, 50000, (R,)).tolist() for _ in range(2 * B)]
    seqs = br.join(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), responses, tok.pad_token_id)  # (2B, P + R)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=device.type == "cuda")  # as train() makes it
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    policy.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(opts.steps + 1):
        sync(device)
        t0 = time.perf_counter()
        with br.autocast(device, amp_dtype):
            policy_logps = br.sequence_logps(policy, *seqs)  # (2B,)
            with torch.no_grad():
                ref_logps = br.sequence_logps(ref, *seqs)  # (2B,)
        losses, _, _ = br.sail_loss(policy_logps[:B], policy_logps[B:], ref_logps[:B], ref_logps[B:], beta=0.1,
                                    response_coef=0.3, label_coef=0.2, log_q=policy_logps[:B] + policy_logps[B:],
                                    policy_labeled=torch.ones(B, dtype=torch.bool, device=device))
        scaler.scale(losses.mean()).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step:  # step 0 is a warm-up
            times.append(time.perf_counter() - t0)
    return {"pairs": B, "dtype": str(amp_dtype).replace("torch.", ""), "gradient_checkpointing": checkpointing,
            "generation_tokens_per_s": sorted(rates)[1], "generation_peak_mib": generation_peak,
            "train_pairs_per_s": B * len(times) / sum(times), "train_peak_mib": peak_mib(device),
            "train_peak_mib_before": BEFORE_PEAK_MIB.get((B, str(amp_dtype).replace("torch.", ""), checkpointing)),
            "logits_mib": 2 * B * (R + 1) * 50257 * (2 if amp_dtype != torch.float32 else 4) / 2**20,
            "parameters_m": sum(p.numel() for p in policy.parameters()) / 1e6}


def word_tokenizer(vocab_size: int):
    """A whitespace word-level tokenizer with one word per id of GPT-2's vocabulary (no download): w0, w1, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 2)} | {"<pad>": vocab_size - 2, "<eos>": vocab_size - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def even_word_share(prompts, completions, **kwargs) -> list[float]:
    """The oracle of both trainers, a cheap Python reward: the share of words with an even number."""
    return [sum(w[-1] in "02468" for w in c.split()) / max(1, len(c.split())) for c in completions]


def trl_worker(opts, method: str, device) -> dict:
    """One trainer in this process: samples/s over steps 2..N (step 1 compiles and warms up) and the peak memory."""
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    V, B, P, R, N = 50257, opts.trl_pairs, opts.prompt_tokens, opts.response_tokens, opts.trl_steps
    tok = word_tokenizer(V)
    policy = gpt2(opts, device, vocab_size=V, bos_token_id=V - 1, eos_token_id=V - 1, pad_token_id=V - 2)
    ref = br.make_reference(policy, amp_dtype)  # bf16 on CUDA, as main() makes it, for both trainers
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(V - 2)}" for _ in range(P)) for _ in range(B * N)]  # P tokens each
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if method == "this-project":
        args = br.validate(br.Args(design="online-dpo", pr_fraction=1.0, steps=N, batch_size=B, max_new_tokens=R,
                                   max_prompt_length=P, lr=opts.lr, warmup_steps=0, eval_every=0, eval_prompts=1,
                                   oracle_label="argmax", output_dir="unused", device=str(device)))
        br.evaluate = lambda *args, **kwargs: {}  # train() evaluates after the last step: not measured here
        rows = [{"prompt": p, "raw_prompt": p, "chosen": None, "rejected": None} for p in prompts]
        history = br.train(args, policy, ref, tok, rows, even_word_share, rows[:1], amp_dtype)
        step_s = [B / m["timing/samples_per_s"] for m in history]  # timing/samples_per_s counts pairs
        settings = {"static_cache": args.static_cache, "gradient_checkpointing": False, **compile_counts()}
    else:
        import datasets
        from transformers import TrainerCallback
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        class StepTimer(TrainerCallback):  # on_step_begin -> on_step_end, as benchmarks/bench_trl.py times TRL
            def __init__(self):
                self.steps, self.t0 = [], 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                sync(device)
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync(device)
                self.steps.append(time.perf_counter() - self.t0)
        checkpointing = {} if method == "trl-default" else {"gradient_checkpointing": False}
        config = OnlineDPOConfig(
            output_dir=tempfile.mkdtemp(prefix="gpu_check_trl_"), report_to="none", max_steps=N,
            per_device_train_batch_size=B, gradient_accumulation_steps=1, learning_rate=opts.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1,
            loss_type="sigmoid", max_new_tokens=R, max_length=P + R, temperature=1.0, top_p=1.0, top_k=0,
            use_vllm=False, use_cpu=device.type == "cpu", bf16=amp_dtype == torch.bfloat16, fp16=False,
            save_strategy="no", eval_strategy="no", logging_steps=N, disable_tqdm=True,
            train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0, **checkpointing)
        timer = StepTimer()
        trainer = OnlineDPOTrainer(model=policy, ref_model=ref, reward_funcs=even_word_share, args=config,
                                   train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                                   processing_class=tok, callbacks=[timer])
        trainer.train()
        step_s = timer.steps
        settings = {"gradient_checkpointing": config.gradient_checkpointing, "optim": str(config.optim),
                    "generation_use_cache": trainer.generation_config.use_cache}
    return {"method": method, "pairs": B, "steps": N, "dtype": str(amp_dtype).replace("torch.", ""),
            "samples_per_s": 2 * B * (len(step_s) - 1) / sum(step_s[1:]), "step_s": step_s,
            "peak_mib": peak_mib(device), **settings}


def versus_trl(opts) -> dict:
    """This project against TRL's default and TRL without checkpointing, each in a process of its own."""
    runs = {}
    for method in ("this-project", "trl-default", "trl-no-checkpointing"):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--trl-worker", method],
                              capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("TRL_WORKER ")]
        if proc.returncode or not lines:
            runs[method] = {"error": f"exit code {proc.returncode}: " + "\n".join(proc.stderr.splitlines()[-8:])}
        else:
            runs[method] = json.loads(lines[-1][len("TRL_WORKER "):])
        print(json.dumps(runs[method])[:2000], flush=True)
    trl = [r for m, r in runs.items() if m != "this-project" and "samples_per_s" in r]
    out = {"runs": runs}
    if trl and "samples_per_s" in runs["this-project"]:
        best = max(trl, key=lambda r: r["samples_per_s"])
        out.update({"best_trl": best["method"], "vs_best_trl": runs["this-project"]["samples_per_s"] /
                    best["samples_per_s"]})
        out["goal_2x_met"] = out["vs_best_trl"] >= 2
    return out


def llama8b(opts, device) -> dict:
    """SAIL-PR steps with LoRA on a ~8B Llama built from a config: does the paper's largest setting fit one GPU?"""
    from transformers import LlamaConfig, LlamaForCausalLM

    size = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256)  # Llama-3-8B's shapes
    if opts.tiny:
        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512)
    with torch.device("meta"):
        policy = LlamaForCausalLM(LlamaConfig(**size, max_position_embeddings=256, tie_word_embeddings=False))
    policy = policy.to_empty(device=device)  # memory only: random weights, small enough to keep logits finite
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)  # matrices ~ N(0, 0.02²), RMSNorm weights 1
    policy.model.rotary_emb = type(policy.model.rotary_emb)(policy.config).to(device)  # to_empty left it empty
    n_params = sum(p.numel() for p in policy.parameters())
    tok = br.build_tokenizer()
    args = br.validate(br.Args(model="llama", dataset="x", reward_fn="x:x", design="sail-pr", pr_fraction=1.0,
                               steps=opts.llama_steps, warmup_steps=0, batch_size=opts.llama_pairs, max_new_tokens=64,
                               max_prompt_length=64, eval_every=0, eval_prompts=1, output_dir="unused", lora_r=64,
                               lora_alpha=16, lr=1e-4, gradient_checkpointing=True, device=str(device)))
    policy = br.add_lora(policy, args)
    br.enable_gradient_checkpointing(policy)
    ref = br.AdaptersOff(policy)
    rng = random.Random(0)
    rows = [{"prompt": p, "raw_prompt": p, "chosen": None, "rejected": None}
            for p in (" ".join(rng.choice(br.TASK_WORDS) for _ in range(64)) for _ in range(4 * opts.llama_pairs))]
    amp_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    history = br.train(args, policy, ref, tok, rows, br.gold_reward, rows[:1], amp_dtype)
    sync(device)
    return {"params": n_params, "trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
            "pairs": opts.llama_pairs, "steps": len(history), "peak_gpu_mib": peak_mib(device),
            "seconds_per_step": (time.perf_counter() - t0) / len(history), "loss": [m["loss"] for m in history],
            "dtype": str(amp_dtype)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: a smoke run of this script")
    parser.add_argument("--parts", default="generation,memory,trl,llama8b", help="comma-separated subset of the parts")
    parser.add_argument("--llama-pairs", type=int, default=4, help="llama8b part: pairs per step (2 samples each)")
    parser.add_argument("--llama-steps", type=int, default=3, help="llama8b part: SAIL-PR steps")
    parser.add_argument("--pairs", type=int, nargs="+", default=[32],
                        help="memory part: pairs (prompts) per step; each value is measured")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="memory part: timed steps after a warm-up")
    parser.add_argument("--gen-prompts", type=int, default=32, help="generation part: prompts (2 samples each)")
    parser.add_argument("--trl-pairs", type=int, default=32, help="trl part: prompts per step (2 samples each)")
    parser.add_argument("--trl-steps", type=int, default=6, help="trl part: steps per trainer (the first is not timed)")
    parser.add_argument("--lr", type=float, default=1e-6, help="trl part: the learning rate of both trainers")
    parser.add_argument("--bandwidth-tbs", type=float, default=None,
                        help="the GPU's memory bandwidth in TB/s (default: looked up by the GPU's name)")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda":
        count_cudagraph_recordings()
    if opts.trl_worker:
        print("TRL_WORKER " + json.dumps(trl_worker(opts, opts.trl_worker, device)), flush=True)
        return
    dtypes = [torch.float32]
    if device.type == "cuda":
        dtypes.insert(0, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    parts = opts.parts.split(",")
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "command": " ".join(["python"] + sys.argv), "settings": vars(opts)}
    t0 = time.perf_counter()
    if "generation" in parts:
        summary["generation"] = generation(opts, device, dtypes[0])
        print(json.dumps(summary["generation"], default=str)[:3000], flush=True)
    if "memory" in parts:
        summary["results"] = []
        for pairs in opts.pairs:
            for amp_dtype in dtypes:
                for checkpointing in (False, True):
                    summary["results"].append(measure(opts, device, amp_dtype, checkpointing, pairs))
                    print(json.dumps(summary["results"][-1]), flush=True)
        goal = [r for r in summary["results"] if r["train_peak_mib_before"] and not r["gradient_checkpointing"]]
        summary["memory_goal"] = [{"pairs": r["pairs"], "dtype": r["dtype"], "peak_mib": r["train_peak_mib"],
                                   "before_mib": r["train_peak_mib_before"],
                                   "reduction": 1 - r["train_peak_mib"] / r["train_peak_mib_before"],
                                   "goal_30pct_met": r["train_peak_mib"] <= 0.7 * r["train_peak_mib_before"]}
                                  for r in goal]
    if "trl" in parts:
        summary["versus_trl"] = versus_trl(opts)
    if "llama8b" in parts:
        summary["llama8b_lora"] = llama8b(opts, device)
        print(json.dumps(summary["llama8b_lora"]), flush=True)
    summary["wall_s"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"wrote {opts.out} ({summary['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
