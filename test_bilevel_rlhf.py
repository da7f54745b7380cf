"""Tests for bilevel_rlhf.py. Run with `make test` (or `.venv/bin/python -m pytest -q`).

1. The loss: hand-written formulas, exact enumeration of a tabular problem (ALGORITHM.md §7), the baseline.
2. Log-probs and the sampler: left padding, pad == eos, EOS truncation, the KV cache under checkpointing.
3. The training loop: bitwise reproducibility, every design runs.
4. The command line: a real subprocess run on a tiny GPT-2 saved to disk, with and without a reward model.
5. The embedded task improves the gold reward.
6. CUDA-only checks (skipped without a GPU).
"""

import itertools
import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import bilevel_rlhf as br

HERE = os.path.dirname(os.path.abspath(__file__))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------------------------------------------
# 1. The loss

f64 = torch.float64
LOSS_TYPES = ("dpo", "ipo", "slic")
ON_POLICY_SOURCES = (br.PP, br.PR)  # the pair was sampled from pi_θ: q depends on θ
SELF_LABELED_SOURCES = (br.DP, br.PP)  # the label was drawn from P_θ: P depends on θ


def pairwise_loss(delta, beta, loss_type):
    """ℓ(Δ) written independently of sail_loss (ALGORITHM.md §2)."""
    if loss_type == "dpo":
        return torch.log1p(torch.exp(-beta * delta))  # −log σ(βΔ)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    return torch.clamp(1 - beta * delta, min=0)  # slic


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
    )


def enumerate_outcomes(route):
    """Every single-example outcome (x, source, y1, y2, z) with route[source] > 0. z = True: y1 wins."""
    rows = [(x, s, y1, y2, z) for x, s, y1, y2, z in itertools.product(range(X), range(4), range(Y), range(Y), (1, 0))
            if route[s] > 0]
    x, s, y1, y2, z = torch.tensor(rows).T  # each (N,)
    z = z.bool()
    return SimpleNamespace(x=x, source=s, yw=torch.where(z, y1, y2), yl=torch.where(z, y2, y1), y1=y1, y2=y2, z=z,
                           on_policy=torch.isin(s, torch.tensor(ON_POLICY_SOURCES)),
                           self_labeled=torch.isin(s, torch.tensor(SELF_LABELED_SOURCES)))


def outcome_probs(theta, task, o, route):
    """Probability of each outcome, a differentiable function of θ: p(x) · p(source) · q(y1, y2) · P(z). Shape: (N,)."""
    logp = torch.log_softmax(theta, -1)  # (X, Y)
    q = torch.where(o.on_policy, (logp[o.x, o.y1] + logp[o.x, o.y2]).exp(), task.D[o.x, o.y1, o.y2])
    r = BETA * (logp - task.ref_logp)  # implicit reward r_θ
    p_y1 = torch.where(o.self_labeled, torch.sigmoid(r[o.x, o.y1] - r[o.x, o.y2]),
                       torch.sigmoid(task.score[o.x, o.y1] - task.score[o.x, o.y2]))
    return torch.tensor(route, dtype=f64)[o.source] / X * q * torch.where(o.z, p_y1, 1 - p_y1)


def logps(theta, task, o):
    """The four (N,) log-prob arguments of sail_loss for the outcomes o."""
    logp = torch.log_softmax(theta, -1)
    return logp[o.x, o.yw], logp[o.x, o.yl], task.ref_logp[o.x, o.yw], task.ref_logp[o.x, o.yl]


def exact_grad_J(task, o, route, loss_type):
    """∇J(θ) by autograd through the exact sum J(θ) = Σ_outcomes prob(θ) · (−ℓ(Δ_θ))."""
    theta = task.theta.clone().requires_grad_()
    pw, pl, rw, rl = logps(theta, task, o)
    J = (outcome_probs(theta, task, o, route) * -pairwise_loss((pw - rw) - (pl - rl), BETA, loss_type)).sum()
    return torch.autograd.grad(J, theta)[0]


def expected_surrogate_grad(task, o, route, loss_type, coef):
    """Σ_outcomes prob (a constant) · ∇ sail_loss(outcome): the expectation of the estimator. Batch = all outcomes."""
    theta = task.theta.clone().requires_grad_()
    losses, _, _ = br.sail_loss(*logps(theta, task, o), beta=BETA, loss_type=loss_type, response_coef=coef,
                                label_coef=coef, on_policy=o.on_policy, self_labeled=o.self_labeled, baseline="none")
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
    delta = (pw - rw) - (pl - rl)
    every = torch.ones(6, dtype=torch.bool)
    for beta in (0.1, 1.0):
        expected = {"dpo": torch.log(1 + torch.exp(-beta * delta)), "ipo": (delta - 1 / (2 * beta)) ** 2,
                    "slic": torch.maximum(1 - beta * delta, torch.zeros_like(delta))}
        for loss_type in LOSS_TYPES:
            plain = [t.clone().requires_grad_() for t in (pw, pl, rw, rl)]
            losses, chosen, rejected = br.sail_loss(*plain, beta=beta, loss_type=loss_type)
            torch.testing.assert_close(losses, expected[loss_type], rtol=0, atol=1e-12)
            torch.testing.assert_close(chosen, beta * (pw - rw), rtol=0, atol=1e-12)
            torch.testing.assert_close(rejected, beta * (pl - rl), rtol=0, atol=1e-12)

            # the bilevel terms are zero-valued surrogates: same values, different gradients
            bilevel = [t.clone().requires_grad_() for t in (pw, pl, rw, rl)]
            losses_b, _, _ = br.sail_loss(*bilevel, beta=beta, loss_type=loss_type, response_coef=1.0, label_coef=1.0,
                                          on_policy=every, self_labeled=every)
            torch.testing.assert_close(losses_b, expected[loss_type], rtol=0, atol=1e-12)
            grad_plain = torch.autograd.grad(losses.sum(), plain[:2])
            grad_bilevel = torch.autograd.grad(losses_b.sum(), bilevel[:2])
            assert max((a - b).abs().max() for a, b in zip(grad_plain, grad_bilevel)) > 1e-3


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("design", br.DESIGNS)  # "dpo" is the offline design
def test_exact_enumeration(design, loss_type):
    """c_resp = c_label = 1 and b = 0: the expected surrogate gradient is exactly −∇J (ALGORITHM.md §7)."""
    task, route = tabular_task(), route_of(design)
    o = enumerate_outcomes(route)
    assert sum(route) == pytest.approx(1.0)
    torch.testing.assert_close(outcome_probs(task.theta, task, o, route).sum(), torch.tensor(1.0, dtype=f64))
    if loss_type == "slic":  # both sides of the hinge occur, so neither branch is untested
        pw, pl, rw, rl = logps(task.theta, task, o)
        margin = BETA * ((pw - rw) - (pl - rl))
        assert (margin > 1).any() and (margin < 1).any()

    minus_grad_J = -exact_grad_J(task, o, route, loss_type)
    torch.testing.assert_close(expected_surrogate_grad(task, o, route, loss_type, 1.0), minus_grad_J,
                               rtol=0, atol=1e-10)

    # with the bilevel terms off (online DPO, c = 0) the estimator misses ∇ of q_θ and P_θ: biased, unless nothing
    # depends on θ (offline)
    plain = expected_surrogate_grad(task, o, route, loss_type, 0.0)
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
        def one_batch(pw, pl, rw, rl, on_policy, self_labeled):
            return br.sail_loss(pw, pl, rw, rl, beta=BETA, loss_type=loss_type, response_coef=1.0, label_coef=1.0,
                                on_policy=on_policy, self_labeled=self_labeled, baseline=baseline)[0]
        oij = SimpleNamespace(**{k: v[rows] for k, v in vars(o).items()})
        return torch.func.vmap(one_batch)(*logps(theta, task, oij), oij.on_policy, oij.self_labeled)

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
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        no_positions = (torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None])[..., 0]
                        * response_mask[:, 1:]).sum(1)
        assert (no_positions - batched).abs().max() > 1e-3


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
    assert widths[0] == prompt_ids.shape[1] and set(widths[1:]) == {1}
    assert model.training  # restored after sampling
    assert len(ys) == 6
    for y in ys:
        assert 1 <= len(y) <= 12
        assert tok.eos_token_id not in y[:-1]  # cut after the first EOS, which is kept
    assert any(y[-1] == tok.eos_token_id for y in ys) or all(len(y) == 12 for y in ys)
    # a rollout is replayable from its seed, and the seed matters
    assert br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=7, args=args) == ys
    assert br.sample(model, tok, prompt_ids, prompt_mask, n=2, seed=8, args=args) != ys


def test_labelers():
    g = torch.Generator().manual_seed(0)
    # Bradley-Terry draws follow σ(s1 − s2)
    s1, s2 = torch.full((20000,), 1.0), torch.zeros(20000)
    p_y1 = br.bradley_terry_label(s1, s2, g).float().mean().item()
    assert p_y1 == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.015)
    # argmax oracle: the higher score wins; ties are a coin flip, counted
    oracle = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    z, ties = br.oracle_label(oracle, ["p"] * 4, ["aa", "a", "b", "b"], ["a", "aa", "c", "d"], "argmax", g)
    assert z[:2].tolist() == [True, False] and ties == 2
    tie_wins = [br.oracle_label(oracle, ["p"] * 200, ["a"] * 200, ["b"] * 200, "argmax", g)[0].float().mean().item()
                for _ in range(5)]
    assert 0.4 < sum(tie_wins) / 5 < 0.6  # not "the first sample wins"
    # implicit reward labeler: P(y1 wins) = σ(β[(π1 − r1) − (π2 − r2)])
    policy, ref = torch.tensor([0.0] * 5000 + [-10.0] * 5000), torch.zeros(10000)  # rows [y1; y2], B = 5000
    p_y1 = br.implicit_reward_label(policy, ref, 0.2, g).float().mean().item()
    assert p_y1 == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=0.02)


# ----------------------------------------------------------------------------------------------------------------
# 3. The training loop

def toy_rows(n=32, seed=0):
    rng = random.Random(seed)
    return [{"prompt": p, "chosen": r, "rejected": br.random_review(rng)[1]} for p, r in
            (br.random_review(rng) for _ in range(n))]


def run_loop(seed, design="mix", steps=3, **overrides):
    model, tok = tiny_model(seed=123)
    ref = br.make_reference(model, torch.float32)
    overrides = {"warmup_steps": 1, **overrides}
    args = br.validate(br.Args(design=design, seed=seed, steps=steps, batch_size=8, grad_accum=2, eval_every=2,
                               eval_prompts=4, max_new_tokens=8, dp_fraction=0.3, pp_fraction=0.3,
                               pr_fraction=0.3, output_dir="unused", **overrides))
    history = br.train(args, model, ref, tok, toy_rows(), br.gold_reward, ["the plot", "it", "i", "the cast"])
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


def test_online_dpo_is_sail_pr_without_the_term():
    # NOTE: at θ = θ_ref every DPO loss is log 2, so the leave-one-out response term is exactly 0 on the first step
    _, model_online = run_loop(seed=0, design="online-dpo", steps=3, warmup_steps=0)
    _, model_sail0 = run_loop(seed=0, design="sail-pr", steps=3, warmup_steps=0, pr_coef=0.0)
    _, model_sail = run_loop(seed=0, design="sail-pr", steps=3, warmup_steps=0)
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
            f.write(json.dumps(row) + "\n")
    return root


def run_cli(*flags, cwd=None):
    return subprocess.run([sys.executable, os.path.join(HERE, "bilevel_rlhf.py"), *map(str, flags)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("design,extra", [("dpo", ["--loss", "ipo"]), ("mix", ["--gradient-checkpointing"])])
def test_command_line_on_a_saved_tiny_model(tiny_files, tmp_path, design, extra):
    from transformers import AutoModelForCausalLM

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
    (["--beta", "0"], "--beta"),
    (["--dtype", "fp16", "--device", "cpu"], "needs a CUDA device"),
])
def test_bad_flags_exit_2_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        br.parse_args(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# 5. The embedded task

def test_embedded_task_quick_improves_gold_reward(tmp_path):
    """Quick mode, seed 0: the aligned policy beats its reference by at least 0.5 gold reward (measured: about 1.1
    on 2 CPU cores) and wins more than 60% of the comparisons."""
    result = br.main(["--quick", "--steps", "60", "--eval-every", "0", "--eval-prompts", "128",
                      "--output-dir", str(tmp_path / "run")])
    before, after = result["before"], result["after"]
    assert before["gold/win_rate"] == 0.5 and before["objective/kl"] == 0.0  # the reference against itself
    assert after["gold/reward"] > before["gold/reward"] + 0.5
    assert after["gold/win_rate"] > 0.6
    assert (tmp_path / "run" / "config.json").exists() and (tmp_path / "run" / "tokenizer.json").exists()


def test_gold_reward():
    assert br.gold_reward(["the plot"], ["was great . i hated the film ."]) == [0.0]
    assert br.gold_reward(["the plot"], ["was very great . it was superb ."]) == [2.0]
    assert br.gold_reward(["it"], ["was dull ."]) == [-1.0]
    assert br.gold_reward(["the plot"], ["great great ."]) == [-1.0]  # broken grammar
    assert br.gold_reward(["the plot"], ["was great . it was"]) == [0.0]  # +1, and −1 for the unfinished sentence


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
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_mixed_precision_training(dtype):
    model, tok = tiny_model()
    model.cuda()
    ref = br.make_reference(model, dtype)
    before = [p.detach().clone() for p in model.parameters()]
    args = br.validate(br.Args(design="mix", steps=2, batch_size=8, eval_every=0, eval_prompts=4, max_new_tokens=8,
                               dp_fraction=0.3, pp_fraction=0.3, pr_fraction=0.3, lr=1e-3))
    history = br.train(args, model, ref, tok, toy_rows(), br.gold_reward, ["the plot", "it"], amp_dtype=dtype)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert next(model.parameters()).dtype == torch.float32
