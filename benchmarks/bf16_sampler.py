"""bf16 on the CPU, piece by piece, on SmolLM2-135M-Instruct with LoRA r 16 (adapters given random weights, as after
training): `generate()` of 24 new tokens for 16 rows (8 chat prompts x 2 samples) through `bilevel_rlhf.sample` in
fp32 and under bf16 autocast (which samples from the bf16 copy, its rewrite included), a forward and backward of the
sequence log-probs of those rows in fp32 and under bf16 autocast, the copy's rewrite alone, and the reference's
forward (`reference_logprobs`, no adapters) held in fp32 under bf16 autocast against held in bf16; best of --repeats,
the variants interleaved; with the 1-minute load average before and after (docs/performance.md, bf16 on the CPU).

    python benchmarks/bf16_sampler.py [--threads 1] [--repeats 2]
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bilevel_rlhf as br  # noqa: E402
from demo import convert_once  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    load0 = os.getloadavg()
    policy, tok = br.load_policy(convert_once(os.path.join(os.path.dirname(HERE), "runs", "smollm2-135m-instruct")),
                                 "cpu")
    policy = br.add_lora(policy, br.Args(lora_r=16))
    with torch.no_grad():
        for name, w in policy.named_parameters():
            if "lora_B" in name:
                w.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    args, cpu = br.Args(max_new_tokens=24, batch_size=8), torch.device("cpu")
    prompts = [br.render_prompt(tok, [{"role": "user", "content": f"Write a short review of film number {i}."}])
               for i in range(8)]
    ids, mask = br.encode_prompts(tok, prompts, 256, "cpu")

    def generate(dtype):
        with br.autocast(cpu, dtype):
            return br.sample(policy, tok, ids, mask, n=2, seed=0, args=args)

    batch = br.join(ids.repeat(2, 1), mask.repeat(2, 1), generate(torch.float32), tok.pad_token_id)
    generate(torch.bfloat16)  # builds the copy once (not timed: transformers initialises a new model)

    def forward_backward(dtype):
        policy.zero_grad(set_to_none=True)
        with br.autocast(cpu, dtype):
            logps = br.sequence_logps(policy, *batch)
        logps.sum().backward()

    refs = {dtype: br.make_reference(br.AdaptersOff(policy), dtype) for dtype in (torch.float32, torch.bfloat16)}

    def reference(held):
        with br.autocast(cpu, torch.bfloat16):
            br.reference_logprobs(refs[held], *batch)

    variants = {"generate fp32": lambda: generate(torch.float32), "generate bf16": lambda: generate(torch.bfloat16),
                "forward+backward fp32": lambda: forward_backward(torch.float32),
                "forward+backward bf16": lambda: forward_backward(torch.bfloat16),
                "rewrite the bf16 copy": lambda: br.make_reference(policy, torch.bfloat16,
                                                                   into=policy.__dict__["_bf16_sampler"]),
                "reference, fp32 held": lambda: reference(torch.float32),
                "reference, bf16 held": lambda: reference(torch.bfloat16)}
    best = {}
    for _ in range(opts.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    copy_mib = sum(w.numel() * w.element_size() for w in policy.__dict__["_bf16_sampler"].parameters()) / 2 ** 20
    print(f"{opts.threads} thread(s), best of {opts.repeats}; load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}; "
          f"the bf16 copy: {copy_mib:.0f} MiB")
    for name, seconds in best.items():
        print(f"  {name:24s} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
