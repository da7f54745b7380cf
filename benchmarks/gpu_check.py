"""Throughput and memory of the core file's pieces on a GPT-2-small-sized policy (124M parameters, random init).

For each batch (--pairs: 8 and 32 prompts), precision (bf16 autocast, fp32) and gradient checkpointing (off, on):
generation tokens per second with the sampler (KV cache on, two samples per prompt, the median of 3), and training pairs per second of a synthetic step built from the core functions (policy and
reference log-probs of 2B sequences, sail_loss with both bilevel terms on, backward, clipping, AdamW), with the
peak GPU memory of each. Writes one JSON summary. Called by benchmarks/gpu_check.sh after the CUDA tests.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu_check.json    # smoke run of the script itself
"""

import argparse
import json
import os
import sys
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


def measure(opts, device, amp_dtype, checkpointing: bool, pairs: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    size = dict(n_layer=2, n_embd=64, n_head=4) if opts.tiny else dict(n_layer=12, n_embd=768, n_head=12)
    config = GPT2Config(vocab_size=50257, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **size)
    policy = GPT2LMHeadModel(config).to(device)  # fp32 master weights
    ref = br.make_reference(policy, amp_dtype)
    if checkpointing:
        br.enable_gradient_checkpointing(policy)
    tok = SimpleNamespace(pad_token_id=50256, eos_token_id=50256)  # all the sampler needs of a tokenizer
    B, P, R = pairs, opts.prompt_tokens, opts.response_tokens
    args = br.validate(br.Args(max_new_tokens=R, output_dir="unused", max_prompt_length=P, device=str(device)))
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
    seqs = br.join(prompt_ids, prompt_mask, responses, tok.pad_token_id)  # each (2B, P + R)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    on_policy = torch.ones(B, dtype=torch.bool, device=device)
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
                                    response_coef=0.3, label_coef=0.2, on_policy=on_policy, self_labeled=on_policy)
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
            "parameters_m": sum(p.numel() for p in policy.parameters()) / 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: a smoke run of this script")
    parser.add_argument("--pairs", type=int, nargs="+", default=[8, 32],
                        help="pairs (prompts) per step; each value is measured")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtypes = [torch.float32]
    if device.type == "cuda":
        dtypes.insert(0, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    results = []
    for pairs in opts.pairs:
        for amp_dtype in dtypes:
            for checkpointing in (False, True):
                results.append(measure(opts, device, amp_dtype, checkpointing, pairs))
                print(json.dumps(results[-1]), flush=True)
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "settings": vars(opts), "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
