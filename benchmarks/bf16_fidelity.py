"""How far each bf16 path is from pi_θ in fp32, on a trained LoRA adapter (a demo run's `adapter/` folder): the mean
per-token KL(π_θ in fp32 ‖ π_θ under bf16 autocast, adapters unmerged), the same against the bf16 copy that `sample`
draws from (adapters merged in fp32, rounded once), and, for scale, KL(π_θ ‖ π_ref) in fp32; on one sample of the
policy for each of the first --prompts evaluation prompts of the demo, 24 tokens each (docs/study.md, bf16 and fp32).

    python benchmarks/bf16_fidelity.py runs/demo-bf16-s2      # a folder written by benchmarks/demo.py (demo_dtypes.py)
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

import bilevel_rlhf as br  # noqa: E402
from demo import EVAL, convert_once  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="an output folder of benchmarks/demo.py (it holds adapter/)")
    p.add_argument("--prompts", type=int, default=8)
    opts = p.parse_args()
    torch.set_num_threads(1)
    base, tok = br.load_policy(convert_once(os.path.join(os.path.dirname(HERE), "runs", "smollm2-135m-instruct")),
                               "cpu")
    policy = PeftModel.from_pretrained(base, os.path.join(opts.run, "adapter")).eval()
    prompts = [json.loads(line)["prompt"] for line in open(EVAL)][:opts.prompts]
    ids, mask = br.encode_prompts(tok, [br.render_prompt(tok, p) for p in prompts], 256, "cpu")
    batch = br.join(ids, mask, br.sample(policy, tok, ids, mask, n=1, seed=0, args=br.Args(max_new_tokens=24)),
                    tok.pad_token_id)  # (N, T), (N, T), (N, R)
    cpu, response = torch.device("cpu"), batch[2].bool()

    def logprobs(model, dtype):  # (N, R, V), fp32
        with torch.no_grad(), br.autocast(cpu, dtype):
            return br.response_logits(model, *batch).float().log_softmax(-1)

    def kl(a, b):  # KL(a ‖ b) at each response position, averaged
        return float((a.exp() * (a - b)).sum(-1)[response].mean())

    fp32 = logprobs(policy, torch.float32)
    rows = {"bf16 autocast, adapters unmerged (the training forward)": logprobs(policy, torch.bfloat16),
            "the bf16 copy, adapters merged (the sampler)": logprobs(br.make_reference(policy, torch.bfloat16),
                                                                     torch.bfloat16)}
    print(f"{opts.run}: mean per-token KL over {int(response.sum())} response positions")
    for name, lp in rows.items():
        print(f"  KL(π_θ fp32 ‖ {name}): {kl(fp32, lp):.5f}")
    print(f"  KL(π_θ ‖ π_ref), fp32, for scale: {kl(fp32, logprobs(br.AdaptersOff(policy), torch.float32)):.5f}")


if __name__ == "__main__":
    main()
