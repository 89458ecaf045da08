"""PlasticCore: gradients, each trace rule against hand-written formulas, the core contract."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from hebbgym.agents.plastic import CoreOutput, CoreState, PlasticConfig, PlasticCore

RULES = ("decay", "oja", "clip", "none")
NEUROMODS = ("none", "simple", "retroactive")
MODULATIONS = ("scalar", "neuron")
ALPHAS = ("connection", "scalar")


def _valid_variants() -> list[dict[str, str]]:
    variants = []
    for rule, neuromod, modulation, alpha in itertools.product(
        RULES, NEUROMODS, MODULATIONS, ALPHAS
    ):
        kw = {"rule": rule, "neuromod": neuromod, "modulation": modulation, "alpha": alpha}
        try:
            PlasticConfig(1, 1, **kw)
        except ValueError:
            continue
        variants.append(kw)
    return variants


VARIANTS = _valid_variants()


def _variant_id(kw: dict[str, str]) -> str:
    return "-".join(kw.values())


def test_the_valid_variants_are_exactly_the_documented_ones() -> None:
    # 3 rules x none, 3 rules x simple, clip x retroactive, none x none; x 2 modulations x 2 alphas.
    assert len(VARIANTS) == (3 + 3 + 1 + 1) * 2 * 2
    assert {(v["rule"], v["neuromod"]) for v in VARIANTS} == {
        ("decay", "none"),
        ("oja", "none"),
        ("clip", "none"),
        ("none", "none"),
        ("decay", "simple"),
        ("oja", "simple"),
        ("clip", "simple"),
        ("clip", "retroactive"),
    }


def _random_state(core: PlasticCore, batch: int, gen: torch.Generator) -> CoreState:
    """A non-zero state, so that one or two steps exercise every term of the rules."""
    zero = core.initial_state(batch)

    def rand(t: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * (2 * torch.rand(t.shape, generator=gen, dtype=t.dtype) - 1)

    return CoreState(
        h=rand(zero.h, 0.8),
        c=zero.c,
        hebb=rand(zero.hebb, 0.5),
        eligibility=rand(zero.eligibility, 0.5),
    )


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_gradcheck_inputs_state_and_all_parameters(variant: dict[str, str]) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    # clip_value far above any trace reached here: clamp is not differentiable at its bound.
    cfg = PlasticConfig(3, 4, clip_value=20.0, **variant)
    core = PlasticCore(cfg).double()
    with torch.no_grad():
        # Larger than the defaults, so the plastic terms weigh in the finite differences.
        if core.alpha is not None:
            core.alpha.uniform_(0.2, 0.6)
        if core.eta is not None:
            core.eta.fill_(0.3)
    x = torch.randn(3, 2, 3, dtype=torch.float64, generator=gen)
    state = _random_state(core, 2, gen)
    # Differentiate w.r.t. the input, the (non-empty parts of the) initial state, every parameter.
    leaves = {"x": x, "h": state.h, "hebb": state.hebb, "eligibility": state.eligibility}
    leaves = {k: v for k, v in leaves.items() if v.numel() > 0}
    leaves.update({f"param:{k}": v for k, v in core.named_parameters()})
    keys = list(leaves)
    inputs = tuple(v.detach().clone().requires_grad_(True) for v in leaves.values())

    def run(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        v = dict(zip(keys, values, strict=True))
        start = CoreState(
            v["h"], state.c, v.get("hebb", state.hebb), v.get("eligibility", state.eligibility)
        )
        params = {k.removeprefix("param:"): t for k, t in v.items() if k.startswith("param:")}
        out, final = functional_call(core, params, (v["x"], start))
        outputs = (out.h, out.m, final.hebb, final.eligibility)
        return tuple(o for o in outputs if o.numel() > 0)

    # Every input and parameter must reach the outputs: one with no gradient is dead weight.
    grads = torch.autograd.grad(sum(o.sum() for o in run(*inputs)), inputs, allow_unused=True)
    dead = [k for k, g in zip(keys, grads, strict=True) if g is None or not g.any()]
    assert not dead
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_through_a_saturated_clip() -> None:
    """Where the clamp is active the trace is constant: gradients through it are zero."""
    torch.manual_seed(0)
    cfg = PlasticConfig(3, 4, rule="clip", neuromod="simple", clip_value=0.05)
    core = PlasticCore(cfg).double()
    state = core.initial_state(2)
    # Far beyond the bound: every entry stays clipped whatever M_t does (|M outer| < 1).
    state = state._replace(h=torch.full_like(state.h, 0.5), hebb=torch.full_like(state.hebb, 3.0))
    # One step: 3 + M_t outer_t lies in (2, 4), clipped to 0.05 (a later step would start
    # from 0.05, inside the bound).
    x = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(x):
        return core(x, state)[1].hebb

    assert torch.equal(run(x), torch.full_like(state.hebb, 0.05))
    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(run(x).sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------------------------------------
# Each rule against an independent, element-by-element reference
# ---------------------------------------------------------------------------------------------


def _set_known_parameters(core: PlasticCore) -> dict[str, np.ndarray]:
    """Deterministic, hand-chosen small values (a pattern, not random), returned as numpy."""
    n, i = core.hidden_size, core.input_size
    values = {
        "w_in": np.array([[0.3 * math.sin(1 + a + 2 * b) for b in range(n)] for a in range(i)]),
        "w": np.array([[0.4 * math.cos(2 + 3 * a - b) for b in range(n)] for a in range(n)]),
        "bias": np.array([0.1 * (b - 1) for b in range(n)]),
    }
    if core.alpha is not None:
        values["alpha"] = (
            np.array([[0.5 + 0.1 * a - 0.2 * b for b in range(n)] for a in range(n)])
            if core.alpha.dim() == 2
            else np.array(0.7)
        )
    if core.eta is not None:
        values["eta"] = np.array(0.35)
    if core.modulator is not None:
        k = core.modulator_size
        values["modulator.weight"] = np.array(
            [[0.9 * math.sin(3 * a + b) for b in range(n)] for a in range(k)]
        )
        values["modulator.bias"] = np.array([0.2 - 0.3 * a for a in range(k)])
    params = dict(core.named_parameters())
    assert set(params) == set(values)
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(torch.from_numpy(value))
    return values


def _reference(cfg: PlasticConfig, p: dict[str, np.ndarray], x, h0, hebb0, e0):
    """The equations of the docstring, one scalar at a time, for a single episode."""
    n, i_size = cfg.hidden_size, cfg.input_size
    h_prev, hebb, e = list(h0), [list(r) for r in hebb0], [list(r) for r in e0]
    hs, ms, hebbs, es = [], [], [], []
    for x_t in x:
        h = []
        for j in range(n):
            total = p["bias"][j]
            for k in range(i_size):
                total += x_t[k] * p["w_in"][k, j]
            for i in range(n):
                weight = p["w"][i, j]
                if cfg.rule != "none":
                    a = p["alpha"] if p["alpha"].ndim == 0 else p["alpha"][i, j]
                    weight += a * hebb[i][j]
                total += h_prev[i] * weight
            h.append(math.tanh(total))
        m = []
        for k in range(cfg.modulator_size):
            total = p["modulator.bias"][k]
            for j in range(n):
                total += p["modulator.weight"][k, j] * h[j]
            m.append(math.tanh(total))
        new_hebb = [[0.0] * n for _ in range(n)]
        new_e = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if cfg.rule == "none":
                    continue
                old = hebb[i][j]
                if cfg.neuromod == "none":
                    factor = p["eta"]
                else:
                    factor = m[0] if cfg.modulation == "scalar" else m[j]
                if cfg.neuromod == "retroactive":
                    value = old + factor * e[i][j]
                    new_e[i][j] = (1 - p["eta"]) * e[i][j] + p["eta"] * h_prev[i] * h[j]
                elif cfg.rule == "decay":
                    value = (1 - p["eta"]) * old + factor * h_prev[i] * h[j]
                elif cfg.rule == "oja":
                    value = old + factor * h[j] * (h_prev[i] - h[j] * old)
                else:
                    value = old + factor * h_prev[i] * h[j]
                if cfg.rule == "clip":
                    value = min(max(value, -cfg.clip_value), cfg.clip_value)
                new_hebb[i][j] = value
        h_prev, hebb, e = h, new_hebb, new_e
        hs.append(h)
        ms.append(m)
        hebbs.append(hebb)
        es.append(e)
    return np.array(hs), np.array(ms).reshape(len(x), -1), np.array(hebbs), np.array(es)


HAND_CASES = [
    {"rule": "decay", "neuromod": "none"},
    {"rule": "oja", "neuromod": "none"},
    {"rule": "clip", "neuromod": "none"},
    {"rule": "clip", "neuromod": "none", "clip_value": 0.3},  # the clamp bites
    {"rule": "none", "neuromod": "none"},
    {"rule": "decay", "neuromod": "simple", "alpha": "scalar"},
    {"rule": "decay", "neuromod": "simple", "modulation": "neuron"},
    {"rule": "oja", "neuromod": "simple"},
    {"rule": "oja", "neuromod": "simple", "modulation": "neuron"},
    {"rule": "clip", "neuromod": "simple", "clip_value": 0.3},
    {"rule": "clip", "neuromod": "simple", "modulation": "neuron", "alpha": "scalar"},
    {"rule": "clip", "neuromod": "retroactive"},
    {"rule": "clip", "neuromod": "retroactive", "modulation": "neuron", "clip_value": 0.3},
]


@pytest.mark.parametrize("case", HAND_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_two_steps_match_the_element_by_element_reference(case: dict) -> None:
    cfg = PlasticConfig(2, 3, **case)
    core = PlasticCore(cfg).double()
    p = _set_known_parameters(core)
    gen = torch.Generator().manual_seed(7)
    batch = 2
    state = _random_state(core, batch, gen)
    x = torch.randn(2, batch, 2, generator=gen, dtype=torch.float64)

    out, final = core(x, state, record_trace=True)

    for b in range(batch):
        e0 = state.eligibility[b].numpy() if cfg.neuromod == "retroactive" else np.zeros((3, 3))
        hebb0 = state.hebb[b].numpy() if cfg.rule != "none" else np.zeros((3, 3))
        hs, ms, hebbs, es = _reference(cfg, p, x[:, b].numpy(), state.h[b].numpy(), hebb0, e0)
        np.testing.assert_allclose(out.h[:, b].detach().numpy(), hs, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out.m[:, b].detach().numpy(), ms, rtol=1e-12, atol=1e-12)
        if cfg.rule == "none":
            assert out.hebb is None
            assert final.hebb.shape == (batch, 0, 0)
            continue
        np.testing.assert_allclose(out.hebb[:, b].detach().numpy(), hebbs, atol=1e-12)
        np.testing.assert_allclose(final.hebb[b].detach().numpy(), hebbs[-1], atol=1e-12)
        if cfg.neuromod == "retroactive":
            np.testing.assert_allclose(final.eligibility[b].detach().numpy(), es[-1], atol=1e-12)
        else:
            assert final.eligibility.shape == (batch, 0, 0)
    if "clip_value" in case:
        # The case must really exercise the clamp, or it tests nothing more than clip=1.
        assert (out.hebb.abs() == cfg.clip_value).any()


def test_decay_rule_on_numbers_worked_out_by_hand() -> None:
    """One neuron, one input, decay rule with eta = 0.5, from h_0 = 0.5 and Hebb_0 = 0.2."""
    core = PlasticCore(PlasticConfig(1, 1, rule="decay", neuromod="none")).double()
    with torch.no_grad():
        core.w_in.fill_(0.5)
        core.w.fill_(0.0)
        core.bias.fill_(0.0)
        core.alpha.fill_(1.0)
        core.eta.fill_(0.5)
    state = CoreState(
        h=torch.tensor([[0.5]], dtype=torch.float64),
        c=torch.zeros(1, 0, dtype=torch.float64),
        hebb=torch.tensor([[[0.2]]], dtype=torch.float64),
        eligibility=torch.zeros(1, 0, 0, dtype=torch.float64),
    )
    x = torch.tensor([[[1.0]], [[-1.0]]], dtype=torch.float64)
    out, _ = core(x, state, record_trace=True)
    # h_1 = tanh(0.5 * 1 + 0.5 * (0 + 1 * 0.2)) = tanh(0.6)
    h1 = math.tanh(0.6)
    # Hebb_1 = 0.5 * 0.2 + 0.5 * 0.5 * h_1
    hebb1 = 0.1 + 0.25 * h1
    # h_2 = tanh(0.5 * -1 + h_1 * hebb1); Hebb_2 = 0.5 * Hebb_1 + 0.5 * h_1 h_2
    h2 = math.tanh(-0.5 + h1 * hebb1)
    hebb2 = 0.5 * hebb1 + 0.5 * h1 * h2
    assert out.h.flatten().tolist() == pytest.approx([0.537049566998, h2], abs=1e-12)
    assert h1 == pytest.approx(0.537049566998, abs=1e-12)
    assert out.hebb.flatten().tolist() == pytest.approx([hebb1, hebb2], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_shapes_zero_start_and_split_sequences(variant: dict[str, str]) -> None:
    torch.manual_seed(3)
    cfg = PlasticConfig(3, 5, **variant)
    core = PlasticCore(cfg).double()
    with torch.no_grad():
        if core.alpha is not None:
            core.alpha.fill_(0.5)
    t, b, n = 6, 2, 5
    k = {"none": 0}.get(cfg.neuromod, 1 if cfg.modulation == "scalar" else n)
    assert (core.input_size, core.hidden_size, core.modulator_size) == (3, n, k)
    x = torch.randn(t, b, 3, dtype=torch.float64)

    start = core.initial_state(b)
    trace = n if cfg.rule != "none" else 0
    elig = n if cfg.neuromod == "retroactive" else 0
    assert [tuple(s.shape) for s in start] == [(b, n), (b, 0), (b, trace, trace), (b, elig, elig)]
    assert all(s.dtype == torch.float64 and not s.any() for s in start)

    out, final = core(x, record_trace=True)
    assert isinstance(out, CoreOutput) and isinstance(final, CoreState)
    assert out.h.shape == (t, b, n)
    assert out.m.shape == (t, b, k)
    assert [tuple(s.shape) for s in final] == [tuple(s.shape) for s in start]
    torch.testing.assert_close(final.h, out.h[-1], rtol=0, atol=0)
    if cfg.rule == "none":
        assert out.hebb is None
    else:
        assert out.hebb.shape == (t, b, n, n)
        torch.testing.assert_close(final.hebb, out.hebb[-1], rtol=0, atol=0)
        # h_0 = 0 and E_0 = 0, so the first step cannot change the trace, later ones must.
        assert not out.hebb[0].any()
        assert out.hebb[-1].abs().min() > 0
    assert core(x, record_trace=False)[0].hebb is None

    # state=None is the initial state; splitting the sequence changes nothing.
    torch.testing.assert_close(core(x, start)[0].h, out.h, rtol=0, atol=0)
    first, mid = core(x[:2])
    second, end = core(x[2:], mid)
    torch.testing.assert_close(torch.cat([first.h, second.h]), out.h, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.cat([first.m, second.m]), out.m, rtol=1e-14, atol=1e-14)
    for a, c in zip(end, final, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-14, atol=1e-14)

    # step() is what forward() runs.
    h1, m1, s1 = core.step(x[0], start)
    torch.testing.assert_close(h1, out.h[0], rtol=0, atol=0)
    torch.testing.assert_close(m1, out.m[0], rtol=0, atol=0)
    torch.testing.assert_close(s1.h, h1, rtol=0, atol=0)


def test_batch_elements_are_independent_episodes() -> None:
    torch.manual_seed(0)
    core = PlasticCore(PlasticConfig(3, 4, neuromod="retroactive")).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    out, final = core(x)
    alone, alone_final = core(x[:, 1:2])
    torch.testing.assert_close(out.h[:, 1:2], alone.h, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(final.hebb[1:2], alone_final.hebb, rtol=1e-14, atol=1e-14)


def test_state_reset_zeros_only_finished_episodes_and_detach_cuts_the_graph() -> None:
    torch.manual_seed(0)
    core = PlasticCore(PlasticConfig(2, 3, neuromod="retroactive"))
    _, state = core(torch.randn(4, 3, 2))
    reset = state.reset(torch.tensor([False, True, False]))
    for before, after in zip(state, reset, strict=True):
        if before.numel() == 0:
            continue
        assert not after[1].any()
        torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
        assert before[1].abs().sum() > 0
    detached = state.detach()
    assert state.hebb.requires_grad and not any(t.requires_grad for t in detached)


def test_parameter_counts_follow_the_documented_convention() -> None:
    i, n = 16, 100

    def count(**kw) -> int:
        return sum(p.numel() for p in PlasticCore(PlasticConfig(i, n, **kw)).parameters())

    base = i * n + n * n + n  # w_in, w, bias
    assert count(rule="none", neuromod="none") == base
    assert count(rule="decay", neuromod="none") == base + n * n + 1  # alpha, eta
    assert count(rule="clip", neuromod="none", alpha="scalar") == base + 1 + 1
    assert count() == base + n * n + (n + 1)  # simple clip: alpha, modulator; no eta
    assert count(rule="decay") == base + n * n + 1 + (n + 1)  # decay keeps its 1 - eta
    assert count(neuromod="retroactive") == base + n * n + 1 + (n + 1)
    assert count(neuromod="retroactive", modulation="neuron") == base + n * n + 1 + n * (n + 1)


def test_initialisation_matches_the_documented_ranges() -> None:
    torch.manual_seed(0)
    core = PlasticCore(PlasticConfig(16, 64, eta_init=0.05, neuromod="retroactive"))
    bound = 1 / 8
    for p in (core.w_in, core.w, core.bias):
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
    assert core.alpha.min() >= 0 and core.alpha.max() < 0.01 and core.alpha.max() > 0.009
    assert core.eta.item() == pytest.approx(0.05)
    with torch.no_grad():
        core.w.zero_()
        core.eta.zero_()
    core.reset_parameters()
    assert core.w.abs().max() > 0 and core.eta.item() == pytest.approx(0.05)


BAD_CONFIGS = [
    ({"input_size": 0}, "input_size"),
    ({"hidden_size": -3}, "hidden_size"),
    ({"hidden_size": 2.5}, "hidden_size"),
    ({"hidden_size": True}, "hidden_size"),
    ({"rule": "hebb"}, "rule"),
    ({"neuromod": "full"}, "neuromod"),
    ({"modulation": "vector"}, "modulation"),
    ({"alpha": "matrix"}, "alpha"),
    ({"eta_init": -0.1}, "eta_init"),
    ({"eta_init": 1.5}, "eta_init"),
    ({"eta_init": float("nan")}, "eta_init"),
    ({"clip_value": 0.0}, "clip_value"),
    ({"clip_value": float("inf")}, "clip_value"),
    ({"rule": "none", "neuromod": "simple"}, "rule='none'"),
    ({"rule": "none", "neuromod": "retroactive"}, "rule='none'"),
    ({"rule": "decay", "neuromod": "retroactive"}, "only defined for rule='clip'"),
    ({"rule": "oja", "neuromod": "retroactive"}, "only defined for rule='clip'"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CONFIGS)
def test_invalid_configs_raise_value_error_naming_the_field(changes: dict, message: str) -> None:
    kw = {"input_size": 3, "hidden_size": 4, **changes}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PlasticConfig(**kw)


def test_bad_inputs_and_states_raise_value_error() -> None:
    core = PlasticCore(PlasticConfig(3, 4))
    with pytest.raises(ValueError, match="T, B, 3"):
        core(torch.zeros(2, 3))  # a [B, I] batch, not a sequence
    with pytest.raises(ValueError, match="T, B, 3"):
        core(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="state.h"):
        core(torch.zeros(2, 1, 3), core.initial_state(2))
    with pytest.raises(ValueError, match="config"):
        PlasticCore({"input_size": 3, "hidden_size": 4})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        core.initial_state(0)
