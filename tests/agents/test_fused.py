"""The fused plastic core (hebbgym.agents.fused) against the reference autograd implementation.

Every comparison runs the same parameters through ``implementation="reference"`` and the fused
path, in float64, and compares outputs, final states and the gradients of every parameter, of
the input sequence and of the initial state. Both fused kernel sets are tested: ``native`` (C++,
skipped where no compiler is found) and ``torch`` (ATen ops).
"""

from __future__ import annotations

import math

import pytest
import torch

from hebbgym.agents import fused
from hebbgym.agents.plastic import (
    CoreOutput,
    CoreState,
    PlasticConfig,
    PlasticCore,
    play,
)
from tests.agents.test_plastic import VARIANTS  # every valid rule/neuromod/... combination

RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(autouse=True)
def _one_thread():
    """These sizes are far too small to gain from threads, and on a busy machine a parallel
    region can wait a whole scheduler time slice for its second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


KERNELS = ("native", "torch")


def _variant_id(kw: dict[str, str]) -> str:
    return "-".join(kw.values())


def _need_kernels(kernels: str) -> None:
    if kernels == "native" and not fused.native_kernels_available():
        pytest.skip("native kernels unavailable (no C++ compiler)")


def _core(
    variant: dict[str, str],
    sizes: tuple[int, int] = (3, 5),
    clip_value: float = 0.35,
    seed: int = 0,
    strength: float = 1.0,
    **core_kw,
) -> PlasticCore:
    """A float64 core with plasticity strong enough to matter (and to hit the clip bound).

    ``strength < 1`` tames it for long episodes: at full strength the dynamics are chaotic,
    and rounding differences (1e-16) grow past the tolerance within some 15 steps.
    """
    torch.manual_seed(seed)
    core = PlasticCore(PlasticConfig(*sizes, clip_value=clip_value, **variant), **core_kw)
    core = core.double()
    with torch.no_grad():
        if core.alpha is not None:
            core.alpha.uniform_(0.3 * strength, 0.9 * strength)
        if core.eta is not None:
            core.eta.fill_(0.4)
        if core.modulator is not None:
            core.modulator.weight.mul_(1.0 + 3.0 * strength)
    return core


def _start(core: PlasticCore, batch: int, seed: int = 1) -> CoreState:
    """A non-zero initial state whose tensors require grad (zero-size fields stay as they are)."""
    gen = torch.Generator().manual_seed(seed)
    zero = core.initial_state(batch)

    def leaf(t: torch.Tensor, scale: float) -> torch.Tensor:
        if t.numel() == 0:
            return t
        value = scale * (2 * torch.rand(t.shape, generator=gen, dtype=t.dtype) - 1)
        return value.requires_grad_(True)

    return CoreState(leaf(zero.h, 0.8), zero.c, leaf(zero.hebb, 0.3), leaf(zero.eligibility, 0.3))


def _loss(hs: torch.Tensor, ms: torch.Tensor, state: CoreState) -> torch.Tensor:
    """Weights every output differently, so that no gradient is a plain sum."""
    loss = (hs * torch.linspace(-1, 1, hs.numel(), dtype=hs.dtype).view_as(hs)).sum()
    loss = loss + (ms**2).sum() * 0.7 + (state.h**3).sum()
    if state.hebb.numel():
        loss = loss + (state.hebb * state.hebb.detach().sign()).sum() + (state.hebb**2).sum()
    if state.eligibility.numel():
        loss = loss + 0.5 * (state.eligibility**2).sum()
    return loss


def _run_steps(core: PlasticCore, x: torch.Tensor, start: CoreState, reset_at=None):
    """``core.step`` once per time step, as training does; ``reset_at``: {t: done mask}."""
    state, hs, ms, traces = start, [], [], []
    for t in range(x.shape[0]):
        if reset_at and t in reset_at:
            state = state.reset(reset_at[t])
        h, m, state = core.step(x[t], state)
        hs.append(h)
        ms.append(m)
        traces.append(state.hebb)
    return torch.stack(hs), torch.stack(ms), state, traces


def _run_sequence(core: PlasticCore, x: torch.Tensor, start: CoreState):
    out, state = core(x, start)
    return out.h, out.m, state, None


def _results(core, implementation, kernels, runner, x, start, **kw):
    """Outputs, final state and gradients w.r.t. parameters, ``x`` and the initial state."""
    core.implementation = implementation
    if implementation == "fused":
        core.kernels = kernels
    core.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    start = CoreState(*(t.detach().clone().requires_grad_(t.requires_grad) for t in start))
    hs, ms, state, traces = runner(core, x, start, **kw)
    _loss(hs, ms, state).backward()
    grads = {f"param:{n}": p.grad for n, p in core.named_parameters()}
    grads["x"] = x.grad
    grads.update(
        {f"start:{n}": t.grad for n, t in zip(start._fields, start, strict=True) if t.requires_grad}
    )
    outputs = {
        "h": hs,
        "m": ms,
        **{f"final:{n}": t for n, t in zip(state._fields, state, strict=True)},
    }
    return outputs, grads, traces


def _assert_same(reference: tuple, candidate: tuple) -> None:
    (ref_out, ref_grads, _), (out, grads, _) = reference, candidate
    for name, expected in ref_out.items():
        torch.testing.assert_close(out[name], expected, rtol=RTOL, atol=ATOL, msg=name)
    assert grads.keys() == ref_grads.keys()
    for name, expected in ref_grads.items():
        got = grads[name]
        if expected is None or got is None:
            # A parameter that does not reach the loss: both must agree it gets nothing.
            assert (expected is None or not expected.any()) and (got is None or not got.any()), name
            continue
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL, msg=name)


# ---------------------------------------------------------------------------------------------
# Equality with the reference: every variant, step by step and over a sequence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_steps_match_the_reference_in_outputs_and_every_gradient(variant, kernels) -> None:
    _need_kernels(kernels)
    # checkpoint_interval=4 over 11 steps: checkpoints, chained steps and replays all occur.
    core = _core(variant, checkpoint_interval=4)
    x = torch.randn(11, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    start = _start(core, 3)
    reference = _results(core, "reference", kernels, _run_steps, x, start)
    candidate = _results(core, "fused", kernels, _run_steps, x, start)
    _assert_same(reference, candidate)
    if variant["rule"] == "clip":
        # The case must exercise the clamp (saturated entries), or it tests nothing of it.
        traces = torch.stack(reference[2])
        assert (traces.abs() == 0.35).any()
        assert (traces.abs() < 0.35).any()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_forward_over_a_sequence_matches_the_reference(variant, kernels) -> None:
    _need_kernels(kernels)
    core = _core(variant, sizes=(2, 6), seed=3)
    x = torch.randn(10, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    start = _start(core, 2, seed=5)
    reference = _results(core, "reference", kernels, _run_sequence, x, start)
    _assert_same(reference, _results(core, "fused", kernels, _run_sequence, x, start))


SIZE_VARIANTS = [
    {"rule": "clip", "neuromod": "simple", "modulation": "scalar", "alpha": "connection"},
    {"rule": "clip", "neuromod": "retroactive", "modulation": "neuron", "alpha": "scalar"},
    {"rule": "oja", "neuromod": "simple", "modulation": "neuron", "alpha": "connection"},
    {"rule": "decay", "neuromod": "none", "modulation": "scalar", "alpha": "connection"},
]
# (input size, hidden size, batch, steps, checkpoint interval): N = 1, N not a multiple of the
# kernels' row blocks or vector widths, a single step, an interval longer than the episode.
SIZES = [(1, 1, 1, 3, 2), (3, 13, 4, 9, 1), (5, 33, 2, 7, 3), (2, 7, 5, 1, 16), (4, 18, 3, 20, 16)]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "I{}-N{}-B{}-T{}-k{}".format(*s))
@pytest.mark.parametrize("variant", SIZE_VARIANTS, ids=_variant_id)
def test_matches_the_reference_at_several_sizes(variant, sizes, kernels) -> None:
    _need_kernels(kernels)
    i, n, batch, steps, interval = sizes
    core = _core(variant, (i, n), 0.3, checkpoint_interval=interval, strength=0.3)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(steps, batch, i, dtype=torch.float64, generator=gen)
    start = _start(core, batch, seed=n)
    reference = _results(core, "reference", kernels, _run_steps, x, start)
    _assert_same(reference, _results(core, "fused", kernels, _run_steps, x, start))
    reference = _results(core, "reference", kernels, _run_sequence, x, start)
    _assert_same(reference, _results(core, "fused", kernels, _run_sequence, x, start))


# ---------------------------------------------------------------------------------------------
# The clamp: the gradient must follow the reference's semantics exactly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("neuromod", ["simple", "none", "retroactive"])
def test_clip_gradient_at_and_beyond_the_bound_is_exactly_the_references(neuromod, kernels):
    """``torch.clamp`` passes the gradient where ``-c <= U <= c``, bounds included. With
    ``h_{t-1} = 0`` (and ``E = 0``) the first update adds exactly nothing, so ``U = Hebb_0``
    hits the bound exactly where ``Hebb_0 = +-c``; beyond it the gradient must be zero."""
    _need_kernels(kernels)
    c = 0.3
    variant = {"rule": "clip", "neuromod": neuromod, "modulation": "scalar", "alpha": "connection"}
    core = _core(variant, sizes=(2, 4), clip_value=c)
    start = core.initial_state(2)
    pattern = [-c, c, 0.5, 2, -3, c, 0, -c, 1.5, -0.2, c, -c, 4, 0.9, -c, c]
    pattern = [v if abs(v) == c else v * c for v in pattern]  # +-c exactly, others scaled
    hebb0 = torch.tensor(pattern, dtype=torch.float64).view(1, 4, 4).repeat(2, 1, 1)
    hebb0 = hebb0.requires_grad_(True)
    start = start._replace(hebb=hebb0)
    x = torch.randn(2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    results = {}
    for implementation in ("reference", "fused"):
        core.implementation = implementation
        core.kernels = kernels
        core.zero_grad(set_to_none=True)
        h0 = hebb0.detach().clone().requires_grad_(True)
        _, _, final, _ = _run_steps(core, x[:1], start._replace(hebb=h0))
        (final.hebb * torch.arange(1.0, 17.0, dtype=torch.float64).view(4, 4)).sum().backward()
        results[implementation] = (final.hebb.detach(), h0.grad, core.alpha.grad)
    ref, got = results["reference"], results["fused"]
    assert torch.equal(got[0], ref[0])
    assert torch.equal(got[1], ref[1])  # the mask, bound included, bit for bit
    torch.testing.assert_close(got[2], ref[2], rtol=RTOL, atol=ATOL)
    mask = (hebb0.abs() <= c).to(torch.float64)
    assert torch.equal(ref[1] == 0, mask == 0)  # the case covers both sides of the bound


@pytest.mark.parametrize("kernels", KERNELS)
def test_saturated_clip_gives_zero_gradient_through_the_trace(kernels) -> None:
    _need_kernels(kernels)
    core = _core({"rule": "clip", "neuromod": "simple"}, sizes=(3, 4), clip_value=0.05)
    core.kernels = kernels
    state = core.initial_state(2)
    state = state._replace(h=torch.full_like(state.h, 0.5), hebb=torch.full_like(state.hebb, 3.0))
    x = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    hebb = core(x, state)[1].hebb
    assert torch.equal(hebb, torch.full_like(hebb, 0.05))
    (grad,) = torch.autograd.grad(hebb.sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------------------------------------
# Episodes as training runs them: resets, partial and repeated backward, in-place edits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize(
    "variant",
    [
        {"rule": "clip", "neuromod": "simple"},
        {"rule": "clip", "neuromod": "retroactive", "modulation": "neuron"},
        {"rule": "decay", "neuromod": "none", "alpha": "scalar"},
    ],
    ids=_variant_id,
)
def test_reset_of_finished_episodes_mid_batch_matches_the_reference(variant, kernels) -> None:
    _need_kernels(kernels)
    core = _core(variant, checkpoint_interval=3)
    x = torch.randn(10, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    start = _start(core, 3)
    resets = {4: torch.tensor([False, True, False]), 7: torch.tensor([True, False, True])}
    reference = _results(core, "reference", kernels, _run_steps, x, start, reset_at=resets)
    candidate = _results(core, "fused", kernels, _run_steps, x, start, reset_at=resets)
    _assert_same(reference, candidate)
    # A reset episode starts from empty traces (h_{t-1} = 0: the first update adds nothing).
    traces = candidate[2]
    assert traces[3][1].any() and not traces[4][1].any()


@pytest.mark.parametrize("kernels", KERNELS)
def test_partial_and_repeated_backward_match_the_reference(kernels) -> None:
    """Gradients of an early output only (later steps never run backward), and several
    backward passes over one graph (``retain_graph``), as gradcheck and analysis code do."""
    _need_kernels(kernels)
    variant = {"rule": "clip", "neuromod": "retroactive", "modulation": "scalar"}
    core = _core(variant, checkpoint_interval=4)
    x = torch.randn(9, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    start = _start(core, 2)
    grads = {}
    for implementation in ("reference", "fused"):
        core.implementation = implementation
        core.kernels = kernels
        hs, _, state, traces = _run_steps(core, x, start)
        params = list(core.parameters())
        targets = [hs[5].sum(), traces[6].pow(2).sum(), hs[2].sum(), state.hebb.sum()]
        grads[implementation] = [
            torch.autograd.grad(t, params + [start.hebb], retain_graph=True, allow_unused=True)
            for t in targets
        ]
        # The same target twice: the rebuilt traces must not be stale nor consumed.
        again = torch.autograd.grad(
            targets[1], params + [start.hebb], retain_graph=True, allow_unused=True
        )
        for a, b in zip(again, grads[implementation][1], strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
    for ref_grads, fused_grads in zip(grads["reference"], grads["fused"], strict=True):
        for ref, got in zip(ref_grads, fused_grads, strict=True):
            if ref is None:
                assert got is None or not got.any()
            else:
                torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kernels", KERNELS)
def test_trace_edited_in_place_between_steps_is_used_as_edited(kernels) -> None:
    """An in-place change of the trace (under no_grad) between two steps: the fused path must
    notice it (version counter) and differentiate what was really computed, like the
    reference, instead of rebuilding the unedited trace."""
    _need_kernels(kernels)
    core = _core({"rule": "clip", "neuromod": "simple"}, checkpoint_interval=8)
    x = torch.randn(6, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    start = _start(core, 2)

    def edited(core, x, start):
        state, hs, ms = start, [], []
        for t in range(x.shape[0]):
            h, m, state = core.step(x[t], state)
            if t == 2:
                with torch.no_grad():
                    state.hebb.mul_(-0.5)
            hs.append(h)
            ms.append(m)
        return torch.stack(hs), torch.stack(ms), state, None

    reference = _results(core, "reference", kernels, edited, x, start)
    _assert_same(reference, _results(core, "fused", kernels, edited, x, start))


def test_step_and_sequence_of_the_fused_path_agree_exactly() -> None:
    core = _core({"rule": "clip", "neuromod": "retroactive"}, sizes=(3, 9))
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    start = _start(core, 4)
    with torch.no_grad():
        steps = _run_steps(core, x, start)
        sequence = _run_sequence(core, x, start)
    for a, b in zip(steps[:2], sequence[:2], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(steps[2], sequence[2], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernels", KERNELS)
def test_traces_rebuilt_for_backward_are_the_forward_ones_bit_for_bit(kernels) -> None:
    """What backward replays from a checkpoint is exactly what forward computed: the clamp's
    mask and every product of backward see the forward's values, not approximations."""
    _need_kernels(kernels)
    for variant in VARIANTS:
        if variant["rule"] == "none":
            continue
        core = _core(variant, sizes=(2, 11), checkpoint_interval=6, kernels=kernels)
        x = torch.randn(8, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        state = _start(core, 3)
        outputs = []
        for t in range(x.shape[0]):
            _, _, state = core.step(x[t], state)
            outputs.append((state.hebb, state.eligibility))
        for t, (hebb, elig) in enumerate(outputs):
            node = hebb.grad_fn
            assert node.depth == t % 6  # checkpoints at steps 0 and 6, chained steps between
            rebuilt = fused._output_traces(node)
            assert torch.equal(rebuilt[0], hebb), (variant, t)
            if variant["neuromod"] == "retroactive":
                assert torch.equal(rebuilt[1], elig), (variant, t)


def test_float32_and_two_threads_match_the_reference() -> None:
    """The training dtype, at a size where the native kernels split the batch over threads."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.manual_seed(0)
        # 8 x 96 x 96 trace elements: above the kernels' threshold for going parallel.
        core = PlasticCore(PlasticConfig(5, 96, neuromod="retroactive", modulation="neuron"))
        assert fused._PARALLEL_GRAIN <= 8 * 96 * 96
        with torch.no_grad():
            core.alpha.uniform_(0.1, 0.5)
        x = torch.randn(8, 8, 5)
        start = _start(core, 8)
        for runner in (_run_steps, _run_sequence):
            reference = _results(core, "reference", "auto", runner, x, start)
            candidate = _results(core, "fused", "auto", runner, x, start)
            for name, expected in reference[0].items():
                torch.testing.assert_close(candidate[0][name], expected, rtol=1e-4, atol=1e-5)
            for name, expected in reference[1].items():
                torch.testing.assert_close(candidate[1][name], expected, rtol=1e-3, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kernels", KERNELS)
def test_gradcheck_of_chained_steps(kernels) -> None:
    """Finite differences through a chain of steps with checkpoints every two steps."""
    _need_kernels(kernels)
    variant = {"rule": "clip", "neuromod": "retroactive", "modulation": "neuron"}
    core = _core(variant, sizes=(2, 3), clip_value=20.0, checkpoint_interval=2, kernels=kernels)
    start = _start(core, 2)
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (x, *start[:1], *start[2:]))

    def run(x, h, hebb, elig):
        state, hs = CoreState(h, start.c, hebb, elig), []
        for t in range(x.shape[0]):
            h_t, _, state = core.step(x[t], state)
            hs.append(h_t)
        return torch.stack(hs), state.hebb, state.eligibility

    assert torch.autograd.gradcheck(run, inputs, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Memory: what is kept for backward
# ---------------------------------------------------------------------------------------------


def _saved_bytes(core: PlasticCore, steps: int, batch: int, reset_at: int = -1) -> tuple[int, int]:
    """Bytes of distinct non-parameter storages saved for backward over an episode run step by
    step (with a reset of episode 0 before step ``reset_at``), and how many of them are
    trace-sized (``[B, N, N]``)."""
    params = {p.untyped_storage().data_ptr() for p in core.parameters()}
    seen: dict[int, int] = {}
    trace_bytes = batch * core.hidden_size**2 * 8

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(steps, batch, core.input_size, dtype=torch.float64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        state = core.initial_state(batch)
        total = 0
        for t in range(steps):
            if t == reset_at:
                state = state.reset(torch.arange(batch) == 0)
            h, m, state = core.step(x[t], state)
            total = total + h.sum() + m.sum()
    (total + state.hebb.sum()).backward()
    return sum(seen.values()), sum(1 for b in seen.values() if b >= trace_bytes)


@pytest.mark.parametrize(
    "variant",
    [
        {"rule": "clip", "neuromod": "simple"},
        {"rule": "clip", "neuromod": "retroactive"},
        {"rule": "decay", "neuromod": "none"},
    ],
    ids=_variant_id,
)
def test_fused_step_saves_a_fraction_of_what_the_reference_saves(variant) -> None:
    steps, batch = 48, 4
    core = _core(variant, sizes=(8, 32))
    core.implementation = "reference"
    ref_bytes, ref_traces = _saved_bytes(core, steps, batch)
    core.implementation = "fused"
    fused_bytes, fused_traces = _saved_bytes(core, steps, batch)
    # The reference keeps two to four [B, N, N] tensors per step; the fused path only the
    # checkpoints (every 16 steps, two tensors each when retroactive) plus [B, N] vectors.
    assert ref_traces >= 2 * steps - 1
    per_checkpoint = 2 if variant["neuromod"] == "retroactive" else 1
    assert fused_traces <= per_checkpoint * math.ceil(steps / core.checkpoint_interval)
    assert fused_bytes <= 0.1 * ref_bytes, (fused_bytes, ref_bytes)


@pytest.mark.parametrize(
    "variant",
    [
        {"rule": "clip", "neuromod": "simple"},
        {"rule": "clip", "neuromod": "retroactive"},
        {"rule": "oja", "neuromod": "none", "alpha": "scalar"},
    ],
    ids=_variant_id,
)
def test_fused_sequence_saves_only_its_checkpoints_of_the_traces(variant) -> None:
    steps, batch = 48, 4
    core = _core(variant, sizes=(8, 32))
    params = {p.untyped_storage().data_ptr() for p in core.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(steps, batch, core.input_size, dtype=torch.float64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, state = core(x)
    (out.h.sum() + state.hebb.sum()).backward()
    assert core.alpha.grad is not None
    # ceil(48 / 7) = 7 checkpoints (twice with an eligibility trace), the initial traces, and
    # the [T, B, N] activations: a small fraction of the 2 to 4 traces per step of the reference.
    traces = 2 if variant["neuromod"] == "retroactive" else 1
    trace_bytes = batch * 32 * 32 * 8
    vector_bytes = (2 * steps + 1) * batch * 32 * 8 + x.numel() * 8
    expected = traces * (math.ceil(steps / fused.sequence_checkpoint_interval(steps)) + 1)
    assert sum(seen.values()) <= expected * trace_bytes + vector_bytes
    assert sum(seen.values()) >= (expected - traces) * trace_bytes  # the checkpoints are kept


def test_checkpoints_follow_the_interval_and_the_breaks_of_the_chain() -> None:
    variant = {"rule": "clip", "neuromod": "simple"}
    core = _core(variant, sizes=(8, 32), checkpoint_interval=1000)
    chained, chained_traces = _saved_bytes(core, 30, 4)
    assert chained_traces == 1  # only the initial state: every later trace is rebuilt
    _, reset_traces = _saved_bytes(core, 30, 4, reset_at=12)
    assert reset_traces == 2  # a reset breaks the chain: the state after it is saved
    core = _core(variant, sizes=(8, 32), checkpoint_interval=1)
    every, every_traces = _saved_bytes(core, 30, 4)
    assert every_traces == 30
    assert every > chained


# ---------------------------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------------------------


def test_fused_is_the_default_and_the_reference_is_selectable() -> None:
    core = PlasticCore(PlasticConfig(3, 4))
    assert core.implementation == "fused" and core.kernels == "auto"
    assert core.checkpoint_interval == fused.DEFAULT_CHECKPOINT_INTERVAL
    core.implementation = "reference"
    h, m, state = core.step(torch.randn(2, 3), core.initial_state(2))
    assert h.grad_fn is not None and "Fused" not in type(h.grad_fn).__name__
    assert "implementation='reference'" in repr(core)


def test_bad_implementation_kernels_and_interval_raise_value_error() -> None:
    cfg = PlasticConfig(3, 4)
    with pytest.raises(ValueError, match="implementation"):
        PlasticCore(cfg, implementation="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="implementation"):
        PlasticCore(cfg).implementation = "compiled"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="kernels"):
        PlasticCore(cfg, kernels="cuda")  # type: ignore[arg-type]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="checkpoint_interval"):
            PlasticCore(cfg, checkpoint_interval=bad)  # type: ignore[arg-type]
    core = PlasticCore(cfg, kernels="native").half()
    with pytest.raises(ValueError, match="float32 or float64"):
        core.step(torch.randn(2, 3).half(), core.initial_state(2))


def test_native_kernels_build_without_the_vector_math_library(tmp_path, monkeypatch) -> None:
    """Where libmvec is missing (other libcs, other CPUs) the kernels are built with the scalar
    tanh instead, and compute the same to rounding."""
    _need_kernels("native")
    monkeypatch.setenv("HEBBGYM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fused, "_VECTOR_MATH_FLAGS", (("-DHG_LIBMVEC", "-lno_such_library"), ()))
    scalar_tanh = fused._build_native()
    assert [p.name for p in tmp_path.iterdir()] == [
        next(tmp_path.glob("plastic_kernels_*.so")).name
    ]
    # A fresh module state: these kernels for the test, the usual ones back afterwards.
    monkeypatch.setattr(fused, "_state", {"lib": scalar_tanh, "malloc": True})
    core = _core({"rule": "clip", "neuromod": "simple"}, kernels="native")
    x = torch.randn(6, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    start = _start(core, 2)
    reference = _results(core, "reference", "native", _run_sequence, x, start)
    _assert_same(reference, _results(core, "fused", "native", _run_sequence, x, start))


def test_torch_kernels_run_where_native_ones_cannot() -> None:
    """``kernels="auto"`` falls back to the torch kernels for other dtypes (here bfloat16)."""
    core = PlasticCore(PlasticConfig(3, 4)).to(torch.bfloat16)
    out, state = core(torch.randn(5, 2, 3, dtype=torch.bfloat16))
    out.h.float().sum().backward()
    assert state.hebb.dtype == torch.bfloat16 and core.alpha.grad is not None


@pytest.mark.parametrize("kernels", KERNELS)
def test_non_contiguous_inputs_and_states_match_the_reference(kernels) -> None:
    """Views (a strided state, a transposed and strided input) are read as what they are, in
    forward and in backward: gradients reach the tensors they are views of."""
    _need_kernels(kernels)
    core = _core({"rule": "clip", "neuromod": "retroactive", "modulation": "neuron"})
    start = _start(core, 3)
    gen = torch.Generator().manual_seed(12)
    results = {}
    for implementation in ("reference", "fused"):
        core.implementation = implementation
        core.kernels = kernels
        core.zero_grad(set_to_none=True)
        wide_h = torch.cat([start.h, start.h], dim=1).detach().requires_grad_(True)
        wide_x = torch.randn(3, 7, 6, dtype=torch.float64, generator=gen).requires_grad_(True)
        gen.manual_seed(12)
        h, x = wide_h[:, ::2], wide_x.transpose(0, 1)[:, :, ::2]  # [3, 5], [7, 3, 3]
        assert not h.is_contiguous() and not x.is_contiguous()
        out, state = core(x, start._replace(h=h))
        _loss(out.h, out.m, state).backward()
        results[implementation] = (
            out.h.detach(),
            wide_h.grad,
            wide_x.grad,
            *(p.grad for p in core.parameters()),
        )
    for ref, got in zip(results["reference"], results["fused"], strict=True):
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kernels", KERNELS)
def test_mixed_dtypes_are_refused_like_the_reference(kernels) -> None:
    """The native kernels read raw memory: a float32 input to a float64 core must be an error
    (as in the reference's matrix products), never a silent misreading."""
    _need_kernels(kernels)
    core = _core({"rule": "clip", "neuromod": "simple"}, kernels=kernels)
    x = torch.randn(4, 3, 3)  # float32
    core.implementation = "reference"
    with pytest.raises(RuntimeError):
        core(x)
    core.implementation = "fused"
    message = "share one dtype and device; got torch.float32 on cpu, torch.float64 on cpu"
    expected = (TypeError, message) if kernels == "native" else (RuntimeError, "Double|Float")
    with pytest.raises(expected[0], match=expected[1]):
        core(x)
    with torch.no_grad(), pytest.raises(expected[0], match=expected[1]):
        core.step(x[0], core.initial_state(3))


def test_a_state_of_the_wrong_size_is_refused_by_name() -> None:
    _need_kernels("native")
    core = _core({"rule": "clip", "neuromod": "retroactive"}, kernels="native")
    state = core.initial_state(3)
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    bad = {
        "hebb": state._replace(hebb=torch.zeros(3, 4, 4, dtype=torch.float64)),
        "eligibility": state._replace(eligibility=torch.zeros(2, 5, 5, dtype=torch.float64)),
    }
    for name, wrong in bad.items():
        with pytest.raises(ValueError, match=rf"state\.{name} must have shape \["):
            core(x, wrong)
        with torch.no_grad(), pytest.raises(ValueError, match=rf"state.{name} must have shape"):
            core.step(x[0], wrong)


@pytest.mark.parametrize(
    "variant",
    [
        {"rule": "clip", "neuromod": "simple"},
        {"rule": "clip", "neuromod": "retroactive", "modulation": "neuron"},
        {"rule": "oja", "neuromod": "none", "alpha": "scalar"},
    ],
    ids=_variant_id,
)
def test_replay_of_a_played_sequence_is_the_sequence_bit_for_bit(variant, monkeypatch) -> None:
    """An episode played step by step without a graph, then replayed from its record: the
    same outputs and exactly the same gradients as the sequence forward and backward, without
    computing the forward again."""
    _need_kernels("native")
    core = _core(variant, sizes=(3, 9), strength=0.5)
    x = torch.randn(17, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert set(core.replay_checkpoints(17)) == {0, 5, 10, 15}  # ceil(sqrt(17)) = 5
    played = play(core, x)
    kept = played.states
    assert set(kept) == {0, 5, 10, 15}

    def gradients(out: CoreOutput) -> list[torch.Tensor]:
        loss = (
            out.h * torch.linspace(-1, 1, out.h.numel(), dtype=out.h.dtype).view_as(out.h)
        ).sum()
        return torch.autograd.grad(loss + (out.m**2).sum(), list(core.parameters()))

    expected_out = core(x)[0]
    expected = gradients(expected_out)
    calls = []
    original = fused._native_sequence
    monkeypatch.setattr(
        fused, "_native_sequence", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    replayed = core.replay(x, played)
    assert not calls  # no forward computed again
    assert torch.equal(replayed.h, expected_out.h) and torch.equal(replayed.m, expected_out.m)
    for got, want in zip(gradients(replayed), expected, strict=True):
        assert torch.equal(got, want)
    assert played.h.grad_fn is None  # the caller's record is left as it was
    with pytest.raises(ValueError, match=r"states missing before steps \[10\]"):
        core.replay(x, played._replace(states={k: v for k, v in kept.items() if k != 10}))
