"""RNN/LSTM baselines behind the core contract, and parameter matching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hebbgym.agents.baselines import LSTMCore, RNNCore, count_parameters, matched_hidden_size
from hebbgym.agents.plastic import CoreOutput, CoreState, PlasticConfig, PlasticCore

CORES = {"rnn": RNNCore, "lstm": LSTMCore}


@pytest.mark.parametrize("kind", CORES)
def test_contract_shapes(kind: str) -> None:
    torch.manual_seed(0)
    core = CORES[kind](3, 5)
    assert (core.input_size, core.hidden_size, core.modulator_size) == (3, 5, 0)
    start = core.initial_state(2)
    cell = 5 if kind == "lstm" else 0
    assert [tuple(s.shape) for s in start] == [(2, 5), (2, cell), (2, 0, 0), (2, 0, 0)]
    assert all(not s.any() for s in start)

    out, final = core(torch.randn(4, 2, 3), record_trace=True)
    assert isinstance(out, CoreOutput) and isinstance(final, CoreState)
    assert out.h.shape == (4, 2, 5)
    assert out.m.shape == (4, 2, 0)
    assert out.hebb is None
    assert [tuple(s.shape) for s in final] == [tuple(s.shape) for s in start]
    torch.testing.assert_close(final.h, out.h[-1], rtol=0, atol=0)
    if kind == "lstm":
        assert final.c.abs().min() > 0


@pytest.mark.parametrize("kind", CORES)
def test_state_chaining_equals_one_call(kind: str) -> None:
    torch.manual_seed(1)
    core = CORES[kind](3, 6).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    whole, end = core(x)
    torch.testing.assert_close(core(x, core.initial_state(2))[0].h, whole.h, rtol=0, atol=0)
    first, mid = core(x[:3])
    second, end2 = core(x[3:], mid)
    torch.testing.assert_close(torch.cat([first.h, second.h]), whole.h, rtol=1e-13, atol=1e-13)
    for a, b in zip(end2, end, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    # One step at a time, as when acting in an environment.
    state = core.initial_state(2)
    steps = []
    for x_t in x:
        h_t, m_t, state = core.step(x_t, state)
        assert m_t.shape == (2, 0)
        steps.append(h_t)
    torch.testing.assert_close(torch.stack(steps), whole.h, rtol=1e-13, atol=1e-13)
    if kind == "lstm":
        # The cell state is really carried: dropping it changes what follows.
        dropped = mid._replace(c=torch.zeros_like(mid.c))
        assert (core(x[3:], dropped)[0].h - second.h).abs().max() > 1e-3


def test_rnn_core_computes_the_tanh_recurrence() -> None:
    torch.manual_seed(2)
    core = RNNCore(3, 4).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64)
    state = core.initial_state(2)._replace(h=h)
    out, _ = core(x, state)
    r = core.rnn
    for t in range(3):
        h = torch.tanh(x[t] @ r.weight_ih_l0.T + r.bias_ih_l0 + h @ r.weight_hh_l0.T + r.bias_hh_l0)
        torch.testing.assert_close(out.h[t], h, rtol=1e-12, atol=1e-12)


def test_state_follows_dtype_and_bad_inputs_raise() -> None:
    core = LSTMCore(3, 4).double()
    assert all(s.dtype == torch.float64 for s in core.initial_state(1))
    with pytest.raises(ValueError, match="T, B, 3"):
        core(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="state.h"):
        core(torch.zeros(1, 2, 3, dtype=torch.float64), core.initial_state(3))
    with pytest.raises(ValueError, match="hidden_size"):
        RNNCore(3, 0)


def test_count_parameters_on_known_modules() -> None:
    linear = nn.Linear(3, 4)
    assert count_parameters(linear) == 3 * 4 + 4
    assert count_parameters(nn.Sequential(linear, nn.Tanh(), linear)) == 16  # shared: once
    assert count_parameters(nn.Tanh()) == 0
    i, n = 16, 139
    assert count_parameters(RNNCore(i, n)) == n * i + n * n + 2 * n
    assert count_parameters(LSTMCore(i, n)) == 4 * (n * i + n * n + 2 * n)


def test_matched_hidden_size_is_the_exact_argmin() -> None:
    # A cheap core with n^2 + n parameters, and 2 heads: total n^2 + 3n + 2.
    def total(n: int) -> int:
        return n * n + n + 2 * (n + 1)

    for target in (1, 5, 6, 100, 999, 1000, 12345, 10**6):
        best = min(range(1, 1100), key=lambda n: (abs(total(n) - target), n))
        assert matched_hidden_size(lambda n: nn.Linear(n, n), target, head_outputs=2) == best
    # A tie between n = 2 (12) and n = 3 (20) for 16 goes to the smaller.
    assert matched_hidden_size(lambda n: nn.Linear(n, n), 16, head_outputs=2) == 2
    with pytest.raises(ValueError, match="max_hidden_size"):
        matched_hidden_size(lambda n: nn.Linear(n, n), 10**6, 2, max_hidden_size=100)
    with pytest.raises(ValueError, match="target_parameters"):
        matched_hidden_size(lambda n: nn.Linear(n, n), 0, 2)


def test_matched_baselines_have_the_budget_of_a_modulated_core() -> None:
    """The Backpropamine maze: 16 inputs, 4 actions + 1 value; modulated plastic N = 100."""
    heads = 5
    plastic = PlasticCore(PlasticConfig(16, 100, rule="clip", neuromod="simple"))
    target = count_parameters(plastic) + heads * (100 + 1)
    assert target == 22306

    for make, expected in (
        (lambda n: RNNCore(16, n), 138),
        (lambda n: LSTMCore(16, n), 66),
        (lambda n: PlasticCore(PlasticConfig(16, n, rule="decay", neuromod="none")), 100),
    ):
        n = matched_hidden_size(make, target, heads)
        assert n == expected
        matched = count_parameters(make(n)) + heads * (n + 1)
        assert abs(matched - target) / target < 0.03
        # Closest: one neuron more or less is no better.
        for other in (n - 1, n + 1):
            assert abs(count_parameters(make(other)) + heads * (other + 1) - target) >= abs(
                matched - target
            )
