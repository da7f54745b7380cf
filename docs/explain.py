"""
The three terms of SAIL's gradient, on a policy small enough to list every example: `python docs/explain.py`.

ALGORITHM.md §5 writes the gradient of the objective J as three expectations over one example (x, y1, y2, z):

    ∇J = E[ −∇ℓ(Δ_θ) ]                      (1) the DPO gradient, on every example
       + E[ −ℓ · ∇log q_θ(y1, y2 | x) ]     (2) the response term: where the policy drew the pair (PP, PR)
       + E[ −ℓ · ∇log P_θ(z | x, y1, y2) ]  (3) the label term: where the policy labelled the pair (DP, PP)

Here the policy has one prompt and three one-token responses (good, ok, bad): pi_θ(y|x) = softmax(θ)[y], θ being
three logits. Every rollout of one example can then be listed with its probability, and an expectation is a finite
sum. For each design the script sums P(rollout) · ∇(the loss of `rollout_loss`, which the training loop calls) and
prints vectors of three numbers, the gradient with respect to the logits of good, ok and bad:

    (1), (2), (3)  each term alone: (1) is the step with every coefficient at 0; (2) and (3) are the step with only
                   `sail_loss`'s response coefficient, or only its label coefficient, at 1, minus (1)
    sum            the step as training runs it, with every coefficient c at 1 (online-dpo's is 0 by definition)
    ∇J             the gradient of J, written out from ALGORITHM.md §3 (not from the code) and differentiated

All are in the sign of ∇J, the direction in which a step moves θ (backward() computes minus them, the gradient of a
loss). `max |sum − target|` compares the sum with what §5 says the step estimates: (1 − c)·g_0 + c·∇J for each source
with its c, that is ∇J where c = 1 and g_0 where c = 0 (online DPO: the gradient with the data held at the current
policy, whose estimate is term (1)). A SAIL design's last line does the same at its default coefficients (0.2 to 0.3).
The differences are float64 rounding, about 1e-17. Things to notice: online-dpo's sum misses term (2), so it is not ∇J;
on self-labelled pairs term (1) is zero under the DPO loss (ALGORITHM.md §4), so sail-dp's and sail-pp's term (1) is
the offline share's alone; and the defaults follow mostly g_0.
"""

import contextlib
import itertools
import os
import sys
import tempfile
from types import SimpleNamespace
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import bilevel_rlhf as br  # noqa: E402

f64 = torch.float64
RESPONSES = ("good", "ok", "bad")  # one token each: token ids 0, 1, 2
THETA = torch.tensor([0.3, 0.8, -0.4], dtype=f64)  # the policy's logits, away from the reference's
THETA_REF = torch.tensor([0.0, 0.2, 0.3], dtype=f64)  # pi_ref = softmax(THETA_REF)
SCORE = torch.tensor([1.0, 0.0, -1.0], dtype=f64)  # the oracle's s(x, y): good > ok > bad
CHOSEN, REJECTED = 0, 2  # the dataset's one pair, of the offline and DP examples: good ≻ bad
SAMPLED = list(itertools.product(range(3), repeat=2))  # every (y1, y2) of two samples of pi_θ, in sample order
BETA = 1.0  # not the default 0.1, where (2) and (3) are small beside (1): (3) and PP's (2) scale as β², (1) as β


class Logits(torch.nn.Module):
    """A causal LM as rollout_loss calls it, whose next-token logits are θ in every context: pi_θ(y|x) = softmax(θ)."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())

    def forward(self, input_ids, logits_to_keep, **kwargs):
        return SimpleNamespace(logits=self.theta.expand(len(input_ids), logits_to_keep, -1))  # (N, keep, V)


def rollouts(args):
    """Every one-example rollout that make_rollout can draw, with its probability: (probability, Rollout) pairs."""
    pi = THETA.softmax(-1)
    for source, route in enumerate(br.route_probs(args)):
        dataset = source in (br.OFFLINE, br.DP)  # the stored pair, or two samples of pi_θ with q = pi_θ(y1) pi_θ(y2)
        for y1, y2 in [(CHOSEN, REJECTED)] if dataset else SAMPLED:
            q = 1.0 if dataset else float(pi[y1] * pi[y2])
            # the rollout's uniform breaks the oracle's ties (y1 wins below ½) and orders a self-labelled pair, whose
            # loss under --self-labels expect is E_z ℓ in either order: which half it falls in is all that matters
            for uniform in (0.25, 0.75):
                pair, z = torch.tensor([[0, 1]]), torch.tensor([True])  # (y1, y2) with the dataset's label: y1 wins
                if source == br.PR:  # the oracle picks the pair (k = 2: both samples) and labels it, as in training
                    pair, z, _, _ = br.oracle_label(SCORE[[y1, y2]][None], args.oracle_label, torch.tensor([uniform]))
                yield route * q * 0.5, br.Rollout(
                    source=torch.tensor([source]), prompt_ids=torch.tensor([[0]]), prompt_mask=torch.tensor([[1]]),
                    responses=[[y1], [y2]], example=torch.tensor([0, 0]), pair=pair, z=z,
                    uniforms=torch.tensor([uniform], dtype=f64))


def step(args, only=None):
    """The expected update −Σ P(rollout) ∇ rollout_loss(rollout), in the sign of ∇J. rollout_loss gives sail_loss one
    coefficient per source for both terms; only="response" (or "label") hands it a sail_loss that zeroes the other."""
    policy, ref = Logits(THETA), Logits(THETA_REF).requires_grad_(False)
    real = br.sail_loss

    def one_term(*logps, response_coef, label_coef, **kwargs):
        return real(*logps, response_coef=response_coef * (only == "response"),
                    label_coef=label_coef * (only == "label"), **kwargs)
    with mock.patch.object(br, "sail_loss", one_term) if only else contextlib.nullcontext():
        for probability, rollout in rollouts(args):
            loss, _ = br.rollout_loss(args, policy, ref, rollout, pad_id=0, amp_dtype=torch.float32)
            (-probability * loss).backward()  # accumulates in policy.theta.grad
    return policy.theta.grad


def objective_gradients(args):
    """∇J and g_0 by source, (4, V) each. J is written from ALGORITHM.md §3 with the DPO loss, −ℓ = log σ(βΔ):

        J_s = route_s · Σ_{y1, y2} q_θ(y1, y2) · Σ_z P_θ(z | y1, y2) · log σ(βΔ_θ(y_w, y_l)),

    g_0 is its gradient with the data's probabilities q_θ · P_θ held fixed (detached): only ℓ is differentiated."""
    def J(theta, frozen):
        def hold(probability):  # for g_0 the data's probability is a constant (a float already is one)
            return probability.detach() if frozen and torch.is_tensor(probability) else probability
        pi, log_ratio = theta.softmax(-1), theta.log_softmax(-1) - THETA_REF.log_softmax(-1)  # (V,) each
        by_source = []
        for source, route in enumerate(br.route_probs(args)):
            dataset, total = source in (br.OFFLINE, br.DP), 0.0
            for y1, y2 in [(CHOSEN, REJECTED)] if dataset else SAMPLED:
                q = 1.0 if dataset else pi[y1] * pi[y2]
                delta = log_ratio[y1] - log_ratio[y2]  # Δ_θ(y1, y2)
                if source in (br.DP, br.PP):  # P(y1 ≻ y2): the policy's Bradley-Terry model, σ(βΔ)
                    p1 = torch.sigmoid(args.beta * delta)
                elif source == br.PR:  # the oracle's argmax, ties ½
                    p1 = (SCORE[y1] > SCORE[y2]) + 0.5 * (SCORE[y1] == SCORE[y2])
                else:  # offline: the dataset's label
                    p1 = 1.0
                total = total + hold(q * p1) * F.logsigmoid(args.beta * delta) \
                    + hold(q * (1 - p1)) * F.logsigmoid(-args.beta * delta)  # z: y1 wins, or y2 wins
            by_source.append(route * total)
        return torch.stack(by_source)  # (4,)
    return [torch.autograd.functional.jacobian(lambda theta: J(theta, frozen), THETA) for frozen in (False, True)]


def gradients(design):
    """The numbers printed for one design: vectors (V,) in the sign of ∇J, the routes and the c's by source."""
    flags = ["--design", design, "--beta", str(BETA), "--revkl-coef", "0", "--output-dir", tempfile.gettempdir()]
    default = br.parse_args(flags)  # validated as a run's (the output folder is only checked); the rest as the core's
    sail = br.parse_args(flags + ["--dp-coef", "1", "--pp-coef", "1", "--pr-coef", "1"])  # SAIL as derived
    grad_J, g_0 = objective_gradients(default)  # (4, V) each

    def target(args):  # what the step estimates (ALGORITHM.md §5): (1 − c)·g_0 + c·∇J, each source with its c
        c = torch.tensor(br.source_coefs(args), dtype=f64)[:, None]  # (4, 1)
        return ((1 - c) * g_0 + c * grad_J).sum(0)
    term1 = step(br.parse_args(flags + ["--dp-coef", "0", "--pp-coef", "0", "--pr-coef", "0"]))
    return dict(term1=term1, term2=step(sail, "response") - term1, term3=step(sail, "label") - term1, sum=step(sail),
                grad_J=grad_J.sum(0), g_0=g_0.sum(0), target=target(sail), default_step=step(default),
                default_target=target(default), route=br.route_probs(default), c=br.source_coefs(sail),
                default_c=br.source_coefs(default))


def main():
    print(f"One prompt, three one-token responses ({', '.join(RESPONSES)}); pi_θ = softmax(θ), θ = {THETA.tolist()};\n"
          f"pi_ref = softmax({THETA_REF.tolist()}); oracle scores {SCORE.tolist()}; the dataset's pair: "
          f"{RESPONSES[CHOSEN]} ≻ {RESPONSES[REJECTED]}.\nThe core's defaults: --loss dpo, --self-labels expect, "
          f"--oracle-label argmax, the fractions; and --beta {BETA:g},\n--revkl-coef 0 (no KL penalty), --baseline loo "
          "(b = 0: one example). Each vector is a gradient with respect to θ,\nin the sign of ∇J: the direction of a "
          "step (the docstring says more).")
    show = lambda v: "  ".join(f"{round(x, 5) + 0.0:+.5f}" for x in v.tolist())  # noqa: E731 (+ 0.0: no −0)
    print(f"\n{'':32}" + "  ".join(f"{name:>8}" for name in RESPONSES))
    for design in br.DESIGNS:
        g = gradients(design)
        present = [s for s in range(4) if g["route"][s]]
        coefs = lambda c: ", ".join(f"{br.SOURCES[s]} {c[s]:g}" for s in present[1:])  # noqa: E731 (offline: none)
        print(f"{design}: " + ", ".join(f"{br.SOURCES[s]} {g['route'][s]:.0%}" for s in present) +
              (f"; c: {coefs(g['c'])}" if len(present) > 1 else "; no coefficient"))
        for label, key in (("(1)  E[−∇ℓ(Δ)]", "term1"), ("(2)  E[−ℓ ∇log q_θ]", "term2"),
                           ("(3)  E[−ℓ ∇log P_θ(z)]", "term3"), ("sum  −E[∇ rollout_loss]", "sum"),
                           ("∇J   autograd of J", "grad_J")):
            print(f"  {label:30}{show(g[key])}")
        error = float((g["sum"] - g["target"]).abs().max())
        if torch.equal(g["target"], g["grad_J"]):
            print(f"  max |sum − target| = {error:.1e}   (target = ∇J)")
        else:  # online DPO: c = 0, the target is g_0
            print(f"  max |sum − target| = {error:.1e}   (target = g_0: c = 0; max |sum − ∇J| = "
                  f"{float((g['sum'] - g['grad_J']).abs().max()):.1e}, what online DPO misses)")
        if coefs(g["default_c"]) != coefs(g["c"]):  # the SAIL designs: below 1 by default
            print(f"  step at the default c ({coefs(g['default_c'])}): {show(g['default_step'])};  max |step − "
                  f"target| = {float((g['default_step'] - g['default_target']).abs().max()):.1e}")
        print()


if __name__ == "__main__":
    main()
