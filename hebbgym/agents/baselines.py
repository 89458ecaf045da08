"""Non-plastic baselines (tanh RNN, LSTM) behind the :class:`~hebbgym.agents.plastic.PlasticCore`
contract, and the parameter matching that makes comparisons with them fair.

A plastic network has about twice the parameters of an RNN of the same width (``alpha`` is
``N x N``), so baselines are compared at equal parameter count, not equal width:
:func:`matched_hidden_size` finds the width that gives a baseline the same budget.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hebbgym.agents.plastic import (
    CoreOutput,
    CoreState,
    PlayedSequence,
    _check_positive_int,
    _check_sequence,
    _check_state,
)

__all__ = ["LSTMCore", "RNNCore", "count_parameters", "matched_hidden_size"]


class _TorchRecurrentCore(nn.Module):
    """Shared plumbing: wrap a one-layer ``nn.RNN``/``nn.LSTM`` (time-major) in the contract."""

    rnn: nn.RNN | nn.LSTM

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        _check_positive_int("input_size", input_size)
        _check_positive_int("hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.modulator_size = 0

    @property
    def _has_cell(self) -> bool:
        return isinstance(self.rnn, nn.LSTM)

    def initial_state(self, batch_size: int) -> CoreState:
        """Zero state: the start of an episode. Traces are ``[B, 0, 0]``: there are none."""
        _check_positive_int("batch_size", batch_size)
        p = self.rnn.weight_hh_l0
        kw = {"device": p.device, "dtype": p.dtype}
        n = self.hidden_size
        return CoreState(
            h=torch.zeros(batch_size, n, **kw),
            c=torch.zeros(batch_size, n if self._has_cell else 0, **kw),
            hebb=torch.zeros(batch_size, 0, 0, **kw),
            eligibility=torch.zeros(batch_size, 0, 0, **kw),
        )

    def forward(
        self, x: Tensor, state: CoreState | None = None, record_trace: bool = False
    ) -> tuple[CoreOutput, CoreState]:
        """Run ``x`` (``[T, B, I]``) from ``state``; ``record_trace`` is accepted for the shared
        contract, and ``hebb`` is always ``None`` since there is no trace."""
        del record_trace
        _check_sequence(x, self.input_size)
        if state is None:
            state = self.initial_state(x.shape[1])
        else:
            _check_state(state, x.shape[1], self.hidden_size)
        h0 = state.h.unsqueeze(0)
        if self._has_cell:
            out, (h_n, c_n) = self.rnn(x, (h0, state.c.unsqueeze(0)))
            c = c_n.squeeze(0)
        else:
            out, h_n = self.rnn(x, h0)
            c = state.c
        m = out.new_zeros(out.shape[0], out.shape[1], 0)
        new_state = CoreState(h=h_n.squeeze(0), c=c, hebb=state.hebb, eligibility=state.eligibility)
        return CoreOutput(h=out, m=m, hebb=None), new_state

    def step(self, x_t: Tensor, state: CoreState) -> tuple[Tensor, Tensor, CoreState]:
        """One time step: ``x_t`` ``[B, I]`` -> ``h_t`` ``[B, N]``, ``m_t`` ``[B, 0]``, state."""
        out, state = self(x_t.unsqueeze(0), state)
        return out.h[0], out.m[0], state

    def replay_checkpoints(self, steps: int) -> range:
        """None: the replay runs the sequence again (one ATen call, cheap for these cores)."""
        return range(0)

    def replay(self, x: Tensor, played: PlayedSequence) -> CoreOutput:
        """:meth:`forward` of ``x`` from the initial state; ``played`` is not needed."""
        del played
        return self(x)[0]


class RNNCore(_TorchRecurrentCore):
    """One-layer tanh ``nn.RNN``: the plastic core with ``alpha = 0``, except for its two biases.

    Parameters: ``N I + N N + 2 N``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh")


class LSTMCore(_TorchRecurrentCore):
    """One-layer ``nn.LSTM``; its cell state travels in ``CoreState.c``.

    Parameters: ``4 (N I + N N + 2 N)``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(input_size, hidden_size)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def matched_hidden_size(
    make_core: Callable[[int], nn.Module],
    target_parameters: int,
    head_outputs: int,
    max_hidden_size: int = 4096,
) -> int:
    """The hidden size ``N`` whose core plus linear heads ``N -> head_outputs`` (weights and
    biases) has the parameter count closest to ``target_parameters`` (the smaller ``N`` on a
    tie).

    ``make_core(N)`` must build a core whose parameter count does not decrease with ``N``
    (true of every core here), which allows a binary search. Example: the Backpropamine maze
    compares a modulated core of 100 neurons with ``RNNCore`` of about 139::

        target = count_parameters(plastic_core) + 5 * (100 + 1)  # 4 actions + 1 value
        n = matched_hidden_size(lambda n: RNNCore(16, n), target, head_outputs=5)
    """
    _check_positive_int("target_parameters", target_parameters)
    if isinstance(head_outputs, bool) or not isinstance(head_outputs, int) or head_outputs < 0:
        raise ValueError(f"head_outputs must be a non-negative integer, got {head_outputs!r}")
    _check_positive_int("max_hidden_size", max_hidden_size)

    cache: dict[int, int] = {}

    def total(n: int) -> int:
        if n not in cache:
            cache[n] = count_parameters(make_core(n)) + head_outputs * (n + 1)
        return cache[n]

    # Smallest n with total(n) >= target: double until past it, then bisect. Doubling keeps
    # the largest core built within twice the answer.
    high = 1
    while total(high) < target_parameters:
        if high >= max_hidden_size:
            raise ValueError(
                f"even hidden_size={high} has only {total(high)} parameters, fewer than "
                f"target_parameters={target_parameters}; raise max_hidden_size"
            )
        high = min(2 * high, max_hidden_size)
    low = high // 2 + 1 if high > 1 else 1
    while low < high:
        mid = (low + high) // 2
        if total(mid) >= target_parameters:
            high = mid
        else:
            low = mid + 1
    candidates = [n for n in (low - 1, low) if n >= 1]
    return min(candidates, key=lambda n: (abs(total(n) - target_parameters), n))
