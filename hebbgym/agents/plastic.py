"""Differentiable Hebbian plasticity with neuromodulation ("Backpropamine"), as one module.

Every variant (plain RNN, plastic, simply or retroactively neuromodulated) is the same
:class:`PlasticCore` with a different :class:`PlasticConfig`, so that comparisons between
variants differ only in the rule, never in incidental code.

All recurrent cores of hebbgym (this one and the baselines in :mod:`hebbgym.agents.baselines`)
share one contract, :class:`RecurrentCore`, so the learner can swap them freely:

* ``core.initial_state(batch_size) -> CoreState``
* ``core(x, state=None, record_trace=False) -> (CoreOutput, CoreState)`` with ``x`` of
  shape ``[T, B, I]``
* ``core.step(x_t, state) -> (h_t, m_t, CoreState)`` for one time step
* ``core.replay_checkpoints(T)`` and ``core.replay(x, played) -> CoreOutput``: the graph of
  an episode that was played step by step without one (see :class:`PlayedSequence`)
* attributes ``input_size``, ``hidden_size`` and ``modulator_size``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, get_args

import torch
from torch import Tensor, nn

from hebbgym.agents.fused import (
    DEFAULT_CHECKPOINT_INTERVAL,
    FusedSpec,
    Kernels,
    fused_sequence,
    fused_step,
    replay_checkpoints,
)

Rule = Literal["decay", "oja", "clip", "none"]
Neuromod = Literal["none", "simple", "retroactive"]
Modulation = Literal["scalar", "neuron"]
AlphaKind = Literal["connection", "scalar"]
Implementation = Literal["fused", "reference"]

__all__ = [
    "AlphaKind",
    "CoreOutput",
    "CoreState",
    "Implementation",
    "Modulation",
    "Neuromod",
    "PlasticConfig",
    "PlasticCore",
    "PlayedSequence",
    "RecurrentCore",
    "Rule",
    "play",
]


class CoreState(NamedTuple):
    """The recurrent state a core carries from one step (or one call) to the next.

    Every core uses the same four fields so the learner never needs to know which core it
    holds; a field a core does not use is a zero-size tensor (``c`` of shape ``[B, 0]``,
    traces of shape ``[B, 0, 0]``). All fields start at zero at the start of an episode.

    Attributes:
        h: hidden activations, ``[B, N]``.
        c: LSTM cell state, ``[B, N]`` for :class:`~hebbgym.agents.baselines.LSTMCore`,
            else ``[B, 0]``.
        hebb: Hebbian trace, ``[B, N, N]`` indexed ``[batch, pre, post]``, else ``[B, 0, 0]``.
        eligibility: eligibility trace of retroactive neuromodulation, ``[B, N, N]``,
            else ``[B, 0, 0]``.
    """

    h: Tensor
    c: Tensor
    hebb: Tensor
    eligibility: Tensor

    def detach(self) -> CoreState:
        """Cut the graph, e.g. between truncated-BPTT segments of one episode."""
        return CoreState(*(t.detach() for t in self))

    def reset(self, done: Tensor) -> CoreState:
        """Zero the state of the batch elements where ``done`` (``[B]``, bool) is true.

        A new episode must start with empty traces: the whole point of the task is that
        what was learnt within one episode does not carry over to the next. Multiplying
        (rather than indexing) keeps the batch intact and stops gradients into the old
        episode.
        """
        keep = (~done.to(torch.bool)).to(self.h.dtype)
        return CoreState(*(t * keep.view(-1, *([1] * (t.dim() - 1))) for t in self))


class CoreOutput(NamedTuple):
    """What a core produces for a sequence of ``T`` steps.

    Attributes:
        h: hidden activations after each step, ``[T, B, N]``.
        m: neuromodulator outputs ``M_t``, ``[T, B, K]`` (``K = 0`` when not modulated).
        hebb: Hebbian trace after each step, ``[T, B, N, N]``, only with ``record_trace=True``
            on a core that has a trace; otherwise ``None``.
    """

    h: Tensor
    m: Tensor
    hebb: Tensor | None


class PlayedSequence(NamedTuple):
    """What a core computed while an input sequence was played step by step from its initial
    state without a graph (as a rollout plays an episode), kept so that differentiating the
    sequence afterwards (:meth:`PlasticCore.replay`) need not compute its forward again.

    Attributes:
        h: ``[T, B, N]``, the ``h_t`` of the played steps.
        m: ``[T, B, K]``, their ``M_t``.
        states: the :class:`CoreState` *before* each step that ``core.replay_checkpoints(T)``
            named (``{}`` for a core that names none).
        final: the state after the last step.
    """

    h: Tensor
    m: Tensor
    states: dict[int, CoreState]
    final: CoreState


class RecurrentCore(Protocol):
    """The contract every hebbgym core (plastic, RNN, LSTM) satisfies."""

    input_size: int
    hidden_size: int
    modulator_size: int

    def initial_state(self, batch_size: int) -> CoreState: ...

    def step(self, x_t: Tensor, state: CoreState) -> tuple[Tensor, Tensor, CoreState]: ...

    def replay_checkpoints(self, steps: int) -> range: ...

    def replay(self, x: Tensor, played: PlayedSequence) -> CoreOutput: ...

    def __call__(
        self, x: Tensor, state: CoreState | None = None, record_trace: bool = False
    ) -> tuple[CoreOutput, CoreState]: ...


def _check_choice(name: str, value: object, literal: object) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_real(name: str, value: object, low: float, high: float, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be finite and in {bracket}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class PlasticConfig:
    """Which plastic core to build; see :class:`PlasticCore` for the equations.

    Attributes:
        input_size: ``I``, features per time step.
        hidden_size: ``N``, recurrent neurons.
        rule: how the Hebbian trace is updated: ``"decay"``, ``"oja"``, ``"clip"``, or
            ``"none"`` (no trace at all: a plain tanh RNN with a single bias).
        neuromod: ``"none"`` (a learned constant rate ``eta``), ``"simple"`` (the network's
            own output ``M_t`` gates the trace update) or ``"retroactive"`` (``M_t`` turns an
            eligibility trace into Hebbian change; ``rule="clip"`` only).
        modulation: ``"scalar"``, one ``M_t`` per step, or ``"neuron"``, one per post-synaptic
            neuron. Ignored when ``neuromod="none"``.
        alpha: ``"connection"``, a plasticity coefficient per connection, or ``"scalar"``,
            one shared by all. Ignored when ``rule="none"``.
        eta_init: initial learned rate ``eta`` (for the rules and eligibility traces that use
            it), in ``[0, 1]``.
        clip_value: bound of the trace for ``rule="clip"``, ``> 0``.
    """

    input_size: int
    hidden_size: int
    rule: Rule = "clip"
    neuromod: Neuromod = "simple"
    modulation: Modulation = "scalar"
    alpha: AlphaKind = "connection"
    eta_init: float = 0.01
    clip_value: float = 1.0

    def __post_init__(self) -> None:
        _check_positive_int("input_size", self.input_size)
        _check_positive_int("hidden_size", self.hidden_size)
        _check_choice("rule", self.rule, Rule)
        _check_choice("neuromod", self.neuromod, Neuromod)
        _check_choice("modulation", self.modulation, Modulation)
        _check_choice("alpha", self.alpha, AlphaKind)
        _check_real("eta_init", self.eta_init, 0.0, 1.0, low_open=False)
        _check_real("clip_value", self.clip_value, 0.0, math.inf, low_open=True)
        if self.rule == "none" and self.neuromod != "none":
            raise ValueError(
                f"neuromod={self.neuromod!r} needs a Hebbian trace to modulate, "
                "but rule='none' has none; use neuromod='none' or another rule"
            )
        if self.neuromod == "retroactive" and self.rule != "clip":
            raise ValueError(
                f"neuromod='retroactive' is only defined for rule='clip', got rule={self.rule!r}"
            )

    @property
    def plastic(self) -> bool:
        """Whether the core has a Hebbian trace (and the coefficients ``alpha``)."""
        return self.rule != "none"

    @property
    def uses_eta(self) -> bool:
        """Whether the learned rate ``eta`` appears in the equations.

        Simple neuromodulation replaces ``eta`` by ``M_t`` in the increment, so only the decay
        rule (whose ``1 - eta`` forgetting factor stays) keeps it; a parameter that never
        reaches the loss would only inflate parameter counts and get no gradient.
        """
        if not self.plastic:
            return False
        return self.neuromod != "simple" or self.rule == "decay"

    @property
    def modulator_size(self) -> int:
        """``K``: 0 without neuromodulation, 1 for a scalar ``M_t``, ``N`` per neuron."""
        if self.neuromod == "none":
            return 0
        return 1 if self.modulation == "scalar" else self.hidden_size

    def replace(self, **changes: object) -> PlasticConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


class PlasticCore(nn.Module):
    """A recurrent tanh network whose recurrent weights change within an episode.

    Each connection ``i -> j`` (pre-synaptic ``i``, post-synaptic ``j``) has a fixed weight
    ``W[i, j]``, learned by gradient descent across episodes, plus a plastic part
    ``alpha[i, j] * Hebb[i, j]`` where the Hebbian trace ``Hebb`` is *not* a parameter: it
    starts at zero in every episode and follows a local rule driven by activity, so the
    network can store what it meets during an episode (Miconi et al., "Differentiable
    plasticity", 2018; "Backpropamine", 2019). With ``B`` the batch and row vectors::

        h_t     = tanh(x_t W_in + h_{t-1} (W + alpha * Hebb_{t-1}) + b)
        outer_t = h_{t-1}^T h_t                    outer_t[b, i, j] = h_{t-1}[b, i] h_t[b, j]

    Rules without neuromodulation (``neuromod="none"``), with a learned scalar ``eta``:

    * ``decay``: ``Hebb_t = (1 - eta) Hebb_{t-1} + eta outer_t``
    * ``oja``:   ``Hebb_t = Hebb_{t-1} + eta h_t[j] (h_{t-1}[i] - h_t[j] Hebb_{t-1}[i, j])``
    * ``clip``:  ``Hebb_t = clamp(Hebb_{t-1} + eta outer_t, -clip_value, clip_value)``
    * ``none``:  no trace; a plain tanh RNN.

    Neuromodulation lets the network decide *when* to learn: a head (``nn.Linear(N, K)``)
    reads the new hidden state, ``M_t = tanh(h_t W_m^T + b_m)``, of size ``K = 1``
    (``modulation="scalar"``) or ``K = N`` (``"neuron"``; ``M_t[b, j]`` scales column ``j``,
    the post-synaptic neuron).

    * ``simple``: ``M_t`` replaces ``eta`` as the factor of the increment:
      decay ``(1 - eta) Hebb + M_t outer_t``; oja ``Hebb + M_t h_t (h_{t-1} - h_t Hebb)``;
      clip ``clamp(Hebb + M_t outer_t)``.
    * ``retroactive`` (``rule="clip"`` only): ``M_t`` converts an eligibility trace of past
      coincidences into Hebbian change, so a reward can credit what happened before it::

          E_t    = (1 - eta) E_{t-1} + eta outer_t
          Hebb_t = clamp(Hebb_{t-1} + M_t E_{t-1}, -clip_value, clip_value)

    Two implementations compute these equations (same parameters, same results to rounding):

    * ``"fused"`` (default): :mod:`hebbgym.agents.fused`, one autograd Function per sequence
      for :meth:`forward` (and one per step for :meth:`step` with a graph), with a
      hand-written backward that keeps no ``[B, N, N]`` tensor per step: traces are
      checkpointed and rebuilt in backward. Over a sequence, 5x to 7x faster than the
      reference on CPU with 4 % of its memory (docs/performance.md).
    * ``"reference"``: :meth:`reference_step`, the equations in plain autograd ops; the
      specification the fused path is tested against.

    Args:
        config: the variant to build, see :class:`PlasticConfig`.
        implementation: ``"fused"`` or ``"reference"``; also a settable attribute.
        checkpoint_interval: steps of :meth:`step` per saved trace on the fused path (memory
            about ``T / k + k`` traces for a ``T``-step episode, ``k`` this interval).
        kernels: the fused path's kernels: ``"native"`` (C++, compiled on first use and
            cached), ``"torch"`` (ATen ops) or ``"auto"`` (native when they can be built and
            the tensors are float32/float64 on CPU).

    Inputs: x, state, record_trace
        * **x**: ``[T, B, I]``, the input sequence.
        * **state**: a :class:`CoreState` from :meth:`initial_state` or a previous call;
          ``None`` (default) starts a new episode with zero activations and traces.
        * **record_trace**: also return the trace after each step (for visualisation).

    Outputs: (output, state)
        * **output**: :class:`CoreOutput` with ``h`` ``[T, B, N]``, ``m`` ``[T, B, K]`` and
          ``hebb`` ``[T, B, N, N]`` (``None`` unless ``record_trace`` and ``rule != "none"``).
        * **state**: :class:`CoreState` after the last step: ``h`` ``[B, N]``, ``c``
          ``[B, 0]``, ``hebb`` ``[B, N, N]`` (``[B, 0, 0]`` for ``rule="none"``),
          ``eligibility`` ``[B, N, N]`` (``[B, 0, 0]`` unless retroactive).

    Attributes:
        w_in: ``[I, N]``, input weights (``x_t @ w_in``).
        w: ``[N, N]``, fixed recurrent weights, ``w[i, j]`` from pre ``i`` to post ``j``.
        bias: ``[N]``.
        alpha: ``[N, N]`` (``alpha="connection"``) or ``[]`` (``"scalar"``); ``None`` for
            ``rule="none"``.
        eta: ``[]``, the learned rate; ``None`` where the equations do not use it
            (``rule="none"``, and simple neuromodulation with ``oja`` or ``clip``).
        modulator: ``nn.Linear(N, K)``, the head producing ``M_t``; ``None`` without
            neuromodulation.
        implementation: ``"fused"`` or ``"reference"``, which code :meth:`step` and
            :meth:`forward` run.
    """

    def __init__(
        self,
        config: PlasticConfig,
        implementation: Implementation = "fused",
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
        kernels: Kernels = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(config, PlasticConfig):
            raise ValueError(f"config must be a PlasticConfig, got {type(config).__name__}")
        self.config = config
        self.implementation = implementation
        self._fused_spec = FusedSpec.from_config(config, checkpoint_interval, kernels)
        self.input_size = config.input_size
        self.hidden_size = config.hidden_size
        self.modulator_size = config.modulator_size
        n, i = config.hidden_size, config.input_size
        self.w_in = nn.Parameter(torch.empty(i, n))
        self.w = nn.Parameter(torch.empty(n, n))
        self.bias = nn.Parameter(torch.empty(n))
        if config.plastic:
            shape = (n, n) if config.alpha == "connection" else ()
            self.alpha = nn.Parameter(torch.empty(shape))
        else:
            self.register_parameter("alpha", None)
        if config.uses_eta:
            self.eta = nn.Parameter(torch.empty(()))
        else:
            self.register_parameter("eta", None)
        self.modulator = nn.Linear(n, self.modulator_size) if self.modulator_size else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``nn.RNN`` does (``U(-1/sqrt(N), 1/sqrt(N))``), ``alpha`` small.

        A small ``alpha`` (``0.01 U[0, 1)``) starts the network close to a plain RNN, so
        plasticity grows only as far as it helps.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in (self.w_in, self.w, self.bias):
                p.uniform_(-bound, bound)
            if self.alpha is not None:
                self.alpha.uniform_(0.0, 1.0).mul_(0.01)
            if self.eta is not None:
                self.eta.fill_(self.config.eta_init)
        if self.modulator is not None:
            self.modulator.reset_parameters()

    @property
    def implementation(self) -> Implementation:
        """``"fused"`` (default) or ``"reference"``: which code :meth:`step` and :meth:`forward`
        run. Both compute the same equations with the same parameters."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: Implementation) -> None:
        _check_choice("implementation", value, Implementation)
        self._implementation = value

    @property
    def checkpoint_interval(self) -> int:
        """Steps of the fused :meth:`step` per saved trace."""
        return self._fused_spec.checkpoint_interval

    @property
    def kernels(self) -> Kernels:
        """The fused path's kernels: ``"auto"``, ``"native"`` or ``"torch"``."""
        return self._fused_spec.kernels

    @kernels.setter
    def kernels(self, value: Kernels) -> None:
        self._fused_spec = FusedSpec.from_config(self.config, self.checkpoint_interval, value)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"input_size={c.input_size}, hidden_size={c.hidden_size}, rule={c.rule!r}, "
            f"neuromod={c.neuromod!r}, modulation={c.modulation!r}, alpha={c.alpha!r}, "
            f"implementation={self.implementation!r}"
        )

    def initial_state(self, batch_size: int) -> CoreState:
        """Zero activations and traces: the state at the start of an episode."""
        _check_positive_int("batch_size", batch_size)
        n = self.hidden_size
        trace = n if self.config.plastic else 0
        elig = n if self.config.neuromod == "retroactive" else 0
        kw = {"device": self.w.device, "dtype": self.w.dtype}
        return CoreState(
            h=torch.zeros(batch_size, n, **kw),
            c=torch.zeros(batch_size, 0, **kw),
            hebb=torch.zeros(batch_size, trace, trace, **kw),
            eligibility=torch.zeros(batch_size, elig, elig, **kw),
        )

    def step(self, x_t: Tensor, state: CoreState) -> tuple[Tensor, Tensor, CoreState]:
        """One time step: ``x_t`` ``[B, I]`` -> ``h_t`` ``[B, N]``, ``M_t`` ``[B, K]``, state.

        Runs :func:`~hebbgym.agents.fused.fused_step` or :meth:`reference_step`, following
        :attr:`implementation`. Pass the returned state straight to the next call: the fused
        path then keeps the trace of only one step in ``checkpoint_interval`` for backward
        (any other state, e.g. after :meth:`CoreState.reset`, is simply saved).
        """
        if self._implementation == "reference":
            return self.reference_step(x_t, state)
        h, m, hebb, elig = fused_step(self, self._fused_spec, x_t, state)
        return h, m, CoreState(h=h, c=state.c, hebb=hebb, eligibility=elig)

    def reference_step(self, x_t: Tensor, state: CoreState) -> tuple[Tensor, Tensor, CoreState]:
        """One time step in plain autograd ops: the reference implementation of the equations,
        which the fused path must match (same signature as :meth:`step`)."""
        cfg = self.config
        h_prev, hebb, elig = state.h, state.hebb, state.eligibility
        pre = x_t @ self.w_in + h_prev @ self.w + self.bias
        if cfg.plastic:
            # h_{t-1} (alpha * Hebb_{t-1}), batched: [B, 1, N] @ [B, N, N]. A scalar alpha
            # factors out, sparing one [B, N, N] temporary.
            h_row = h_prev.unsqueeze(1)
            if self.alpha.dim() == 0:
                pre = pre + self.alpha * torch.bmm(h_row, hebb).squeeze(1)
            else:
                pre = pre + torch.bmm(h_row, self.alpha * hebb).squeeze(1)
        h = torch.tanh(pre)

        if self.modulator is not None:
            m = torch.tanh(self.modulator(h))
        else:
            m = h.new_zeros(h.shape[0], 0)

        if cfg.plastic:
            # Every [B, N, N] temporary is kept for backward, once per step, and allocating
            # them dominates the cost; so the factors are folded into the small [B, 1, N] post-
            # synaptic vector and each product into one addcmul. Broadcasting: h_pre is
            # [B, N, 1] (pre index i), h_post and the factors are [B, 1, N] or [B, 1, 1]
            # (post index j); M_t as [B, 1, K] scales all connections (K = 1) or column j.
            h_pre = h_prev.unsqueeze(2)
            h_post = h.unsqueeze(1)
            m_cols = m.unsqueeze(1)
            if cfg.neuromod == "retroactive":
                # Hebb + M_t E_{t-1}, then E_t = (1 - eta) E_{t-1} + eta outer_t.
                hebb = torch.addcmul(hebb, m_cols, elig)
                elig = torch.addcmul((1.0 - self.eta) * elig, h_pre, self.eta * h_post)
            else:
                # The factor of the increment: eta, or M_t under simple neuromodulation.
                rate = m_cols if cfg.neuromod == "simple" else self.eta
                rate_post = rate * h_post  # [B, 1, N]: rate * h_t[j]
                if cfg.rule == "decay":
                    # (1 - eta) Hebb + rate h_{t-1}[i] h_t[j]
                    hebb = torch.addcmul((1.0 - self.eta) * hebb, h_pre, rate_post)
                elif cfg.rule == "oja":
                    # Hebb + rate h_t[j] (h_{t-1}[i] - h_t[j] Hebb)
                    #   = Hebb (1 - rate h_t[j]^2) + h_{t-1}[i] (rate h_t[j])
                    hebb = torch.addcmul(hebb * (1.0 - rate_post * h_post), h_pre, rate_post)
                else:  # clip: Hebb + rate h_{t-1}[i] h_t[j]
                    hebb = torch.addcmul(hebb, h_pre, rate_post)
            if cfg.rule == "clip":
                hebb = torch.clamp(hebb, -cfg.clip_value, cfg.clip_value)
        return h, m, CoreState(h=h, c=state.c, hebb=hebb, eligibility=elig)

    def replay_checkpoints(self, steps: int) -> range:
        """The steps (of an episode of ``steps``) whose incoming state a
        :class:`PlayedSequence` must keep for :meth:`replay`: the fused native sequence's
        checkpoints, or none where the replay recomputes the forward anyway."""
        if self._implementation != "fused" or not self.config.plastic:
            return range(0)
        return replay_checkpoints(self._fused_spec, self.w, steps)

    def replay(self, x: Tensor, played: PlayedSequence) -> CoreOutput:
        """:meth:`forward` of ``x`` from the initial state, with its graph, for a sequence
        that was just played step by step without a graph with the same parameters: on the
        fused native path the played activations and checkpointed traces are the forward's
        (bit for bit), so only the backward remains to be computed."""
        _check_sequence(x, self.input_size)
        if not self.replay_checkpoints(x.shape[0]):
            return self(x)[0]
        hs, ms, _, _ = fused_sequence(
            self, self._fused_spec, x, self.initial_state(x.shape[1]), played
        )
        return CoreOutput(h=hs, m=ms, hebb=None)

    def forward(
        self, x: Tensor, state: CoreState | None = None, record_trace: bool = False
    ) -> tuple[CoreOutput, CoreState]:
        """Run the sequence ``x`` (``[T, B, I]``) from ``state`` (a new episode if ``None``)."""
        _check_sequence(x, self.input_size)
        if state is None:
            state = self.initial_state(x.shape[1])
        else:
            _check_state(state, x.shape[1], self.hidden_size)
        if self._implementation == "fused" and not record_trace:
            hs, ms, hebb, elig = fused_sequence(self, self._fused_spec, x, state)
            final = CoreState(h=hs[-1], c=state.c, hebb=hebb, eligibility=elig)
            return CoreOutput(h=hs, m=ms, hebb=None), final
        hs, ms, traces = [], [], []
        for x_t in x.unbind(0):
            h, m, state = self.step(x_t, state)
            hs.append(h)
            ms.append(m)
            if record_trace:
                traces.append(state.hebb)
        hebb = torch.stack(traces) if record_trace and self.config.plastic else None
        return CoreOutput(h=torch.stack(hs), m=torch.stack(ms), hebb=hebb), state


def play(core: RecurrentCore, x: Tensor) -> PlayedSequence:
    """``x`` (``[T, B, I]``) played step by step from the initial state without a graph, with
    what ``core.replay(x, played)`` needs kept (a rollout does the same between env steps)."""
    keep = set(core.replay_checkpoints(x.shape[0]))
    with torch.no_grad():
        state, hs, ms, kept = core.initial_state(x.shape[1]), [], [], {}
        for t in range(x.shape[0]):
            if t in keep:
                kept[t] = state
            h, m, state = core.step(x[t], state)
            hs.append(h)
            ms.append(m)
    return PlayedSequence(torch.stack(hs), torch.stack(ms), kept, state)


def _check_sequence(x: Tensor, input_size: int) -> None:
    """Refuse inputs that are not ``[T, B, I]``: a ``[B, I]`` batch would silently be read as
    ``B`` time steps of a single episode."""
    if x.dim() != 3 or x.shape[2] != input_size or x.shape[0] == 0:
        raise ValueError(f"x must have shape [T, B, {input_size}] with T >= 1, got {list(x.shape)}")


def _check_state(state: CoreState, batch_size: int, hidden_size: int) -> None:
    if tuple(state.h.shape) != (batch_size, hidden_size):
        raise ValueError(
            f"state.h must have shape [{batch_size}, {hidden_size}] to match x, "
            f"got {list(state.h.shape)}"
        )
