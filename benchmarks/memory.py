"""What fits where: the peak memory of each training process, measured, and what it costs per parameter.

Full fine-tuning in one process, with DDP over 2 processes and with FSDP2 (--fsdp) over 2 and 4 processes (torchrun,
Gloo), and LoRA adapters (r = 64 on every linear layer, the paper's rank), each with and without gradient checkpointing, for two GPT-2 models built from a
config with random weights (nothing is downloaded): GPT-2 small (124M parameters) and a wider one (1024 wide, 12
layers, 204M). Each configuration runs in processes of its own: 2 optimizer steps of offline DPO through
bilevel_rlhf.train (4 pairs of 32 prompt + 32 response tokens per process), then the end-of-run evaluation; each
process reports its peak resident memory (ru_maxrss), everything included. The processes run with glibc's
MALLOC_MMAP_THRESHOLD_=65536: every block of 64 KiB or more is then mapped on its own and returned to the system when
freed, so the resident set follows the live tensors. With glibc's default, adaptive threshold, freed tensors stayed
in the heap and the same configuration peaked anywhere between 1,853 and 1,997 MiB from one run to the next; with it,
two runs agreed to 32 KiB.

The cost per parameter is the slope between the two sizes, (peak of the larger - peak of the smaller) / (the
difference in parameters): what does not grow with the model (Python, the libraries, the data) drops out; the
activations of this small batch grow with the width and stay in it. It is measured on CPU in float32. On CUDA the
reference is held in bf16 in bf16 runs (2 bytes per parameter less), AdamW defaults to its multi-tensor step
(foreach, CUDA only), which holds one more parameter-sized temporary at its peak (4 bytes more), and a real batch's
activations come on top.

With FSDP a process holds 1/N of the sharded state and, while it samples or evaluates, whole copies of the weights
(`gathered`): the cost per parameter is a + b/N; the runs with 2 and 4 processes give a and b, and the table's
largest models on 1 and 8 GPUs are 80 GiB / (a + b) and 80 GiB / (a + b/8).

    python benchmarks/memory.py            # 20 configurations, about 15 minutes on 2 CPU cores

writes benchmarks/results/memory.{json,md}.
"""

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"GPT-2 small": (768, 12), "GPT-2, 1024 wide": (1024, 12)}  # (n_embd, n_layer), GPT-2's vocabulary
MODES = [("full fine-tuning", 0, 1), ("full fine-tuning, DDP", 0, 2), ("full fine-tuning, FSDP", 0, 2),
         ("full fine-tuning, FSDP", 0, 4), ("LoRA r=64", 64, 1)]  # (name, LoRA rank, processes)
GIB = 2**30


def worker(spec: dict):
    """One process of one configuration: build, train 2 steps, write this rank's peak to spec["out"].rankN.json."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, os.path.dirname(HERE))
    import bilevel_rlhf as br

    torch.set_num_threads(1)
    br.setup_distributed(torch.device("cpu"))
    rank, _ = br.rank_and_world()
    torch.manual_seed(0)
    n_embd, n_layer = SIZES[spec["size"]]
    config = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_embd // 64, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    policy = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in policy.parameters())
    tok = br.build_tokenizer()  # word-level: the data uses the first 42 of the model's 50,257 token ids
    args = br.validate(br.Args(design="dpo", steps=2, warmup_steps=0, batch_size=4, max_new_tokens=32,
                               max_prompt_length=32, eval_every=0, eval_prompts=1, output_dir="unused",
                               lora_r=spec["lora_r"], lora_target_modules="all-linear"))
    if args.lora_r:
        policy = br.add_lora(policy, args)
    ref = br.AdaptersOff(policy) if args.lora_r else br.make_reference(policy, torch.float32)
    if spec["gc"]:
        br.enable_gradient_checkpointing(policy)
    if "FSDP" in spec["mode"]:
        policy, ref = br.shard(policy, torch.device("cpu"), torch.float32), br.shard(ref, torch.device("cpu"),
                                                                                       torch.float32)
    rng = random.Random(rank)

    def words() -> str:  # 32 random words of the embedded task: 32 tokens
        return " ".join(rng.choice(br.TASK_WORDS) for _ in range(32))
    rows = [{"prompt": p, "raw_prompt": p, "chosen": words(), "rejected": words()} for p in (words() for _ in range(64))]
    br.train(args, policy, ref, tok, rows, None, rows[:1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports KiB)
    with open(f"{spec['out']}.rank{rank}.json", "w") as f:
        json.dump({"params": n_params, "peak_bytes": peak}, f)


def run(spec: dict, processes: int, tmp: str) -> dict:
    spec = {**spec, "out": os.path.join(tmp, f"run{time.monotonic_ns()}")}
    script = [os.path.abspath(__file__), "--worker", json.dumps(spec)]
    cmd = ([sys.executable, *script] if processes == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *script])
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    ranks = [json.load(open(f"{spec['out']}.rank{r}.json")) for r in range(processes)]
    return {"params": ranks[0]["params"], "peak_bytes": max(r["peak_bytes"] for r in ranks),
            "seconds": time.perf_counter() - t0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "memory"))
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    import torch
    import transformers

    t0, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, lora_r, processes in MODES:
            for gc in (False, True):
                for size in SIZES:
                    r = run({"size": size, "lora_r": lora_r, "gc": gc, "mode": mode}, processes, tmp)
                    results.append({"mode": mode, "processes": processes, "gc": gc, "size": size, **r})
                    print(f"{mode}, {processes} process(es), checkpointing {'on' if gc else 'off'}, {size} "
                          f"({r['params'] / 1e6:.0f}M): peak {r['peak_bytes'] / 2**20:,.0f} MiB per process, "
                          f"{r['seconds']:.0f} s", flush=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, transformers "
               f"{transformers.__version__}, Python {platform.python_version()}; float32 on CPU, 1 thread per process")
    lines = [f"Machine: {machine}. Total {time.perf_counter() - t0:.0f} s.", "",
             "| mode | processes | gradient checkpointing | " + " | ".join(f"peak MiB per process, {s}" for s in SIZES)
             + " | bytes per parameter (slope) | largest model, 1 x 80 GiB | largest model, 8 x 80 GiB |",
             "| --- | --- | --- | " + "--- | " * len(SIZES) + "--- | --- | --- |"]
    def slope(mode, processes, gc):  # bytes per parameter
        small, large = [r for r in results if (r["mode"], r["processes"], r["gc"]) == (mode, processes, gc)]
        return (large["peak_bytes"] - small["peak_bytes"]) / (large["params"] - small["params"]), small, large

    for mode, _, processes in MODES:
        for gc in (False, True):
            cost, small, large = slope(mode, processes, gc)
            one = eight = cost  # every process holds the whole model: 8 GPUs fit what one does
            if "FSDP" in mode:  # cost(N) = a + b / N, from N = 2 and 4
                b = 4 * (slope(mode, 2, gc)[0] - slope(mode, 4, gc)[0])
                a = slope(mode, 2, gc)[0] - b / 2
                one, eight = a + b, a + b / 8
            lines.append(f"| {mode} | {processes} | {'on' if gc else 'off'} | {small['peak_bytes'] / 2**20:,.0f} | "
                         f"{large['peak_bytes'] / 2**20:,.0f} | {cost:.1f} | {80 * GIB / one / 1e9:.1f}B | "
                         f"{80 * GIB / eight / 1e9:.1f}B |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
