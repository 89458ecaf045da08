"""Fused, memory-lean implementation of the plastic recurrence of :class:`PlasticCore`.

The reference (:meth:`PlasticCore.reference_step`) is written with ordinary autograd ops. For
every time step autograd then keeps several ``[B, N, N]`` tensors alive until the backward pass
(``alpha * Hebb`` for the recurrent product, the trace before the clamp, the clamped trace, the
eligibility trace...), and on CPU each of them is a fresh allocation that has to be paged in:
at ``B = 30, N = 100`` the allocations, not the arithmetic, dominate the run time.

This module replaces the step by one :class:`torch.autograd.Function` whose backward is
written by hand, so that nothing of size ``[B, N, N]`` is kept per step:

* **Saved per step**: only ``[B, N]``-sized tensors: the input ``x_t``, ``h_{t-1}``, ``h_t``,
  ``M_t`` (and, for a scalar ``alpha`` on the torch kernels, ``z_t = h_{t-1} Hebb_{t-1}``), plus
  the parameters.
* **Traces are checkpointed along the episode**: a step whose incoming trace is the output of
  the previous fused step (the usual case: ``state`` passed straight from one ``step`` to the
  next) does *not* save it; it keeps a link to the previous step's graph node instead. Every
  ``checkpoint_interval`` steps, and whenever the chain is broken (:meth:`CoreState.reset`,
  ``detach``, a state built by hand, an in-place change), the incoming trace is saved. In
  backward a step rebuilds its incoming trace by replaying the trace update forward from the
  nearest checkpoint, with exactly the forward's arithmetic (hence bit for bit its values),
  and leaves the traces it rebuilt on the way for the earlier steps of the segment, whose
  backward runs next. Traces kept: about ``T / k + k`` for an episode of ``T`` steps and
  ``k = checkpoint_interval``, instead of 2 to 4 per step; extra work: one trace update per
  step. The updates are not inverted to walk back: the clamp of ``rule="clip"`` loses
  information, and dividing by ``1 - eta`` would amplify rounding errors step after step.
* **Recomputed in backward**: the pre-clamp trace ``U_t`` (for the mask of the clamp) and the
  products of the gradient formulas below.

:func:`fused_sequence` is the same computation for a whole known input sequence (``forward``
of the core): one graph node for all ``T`` steps, a checkpoint every ``ceil(sqrt(T))`` steps.
This is what training differentiates: :func:`hebbgym.train.rollout.collect_rollout` plays an
episode without a graph, then replays its observations through the core in one call.

Two sets of kernels compute the ``[B, N, N]`` parts, chosen by :attr:`FusedSpec.kernels`:

* **native** (default where available): C++ (``plastic_kernels.cpp`` beside this module)
  compiled on first use with the system compiler (a few seconds, cached on disk) and called
  through ``ctypes``. The sequence kernels run every step of one batch element after the
  other, so that its ``[N, N]`` trace, trace gradient and the weights stay in the core's cache
  for the whole episode: forward in one call, backward in one call (segments in reverse, each
  replayed from its checkpoint), then four matrix products for ``W_in``, ``W``, ``b`` and
  ``x``. A single step's forward is the sequence kernel over one step (so steps and sequences
  agree bit for bit); its backward is one call over the batch. Parallel over the batch with
  OpenMP (the runtime torch itself loaded) on ``torch.get_num_threads()`` threads, above
  65536 trace elements (times steps); the result does not depend on the thread count beyond
  rounding of the parameter-gradient sums. ``tanh`` comes vectorised from glibc's libmvec
  where it exists.
* **torch**: the step's algorithm in ATen ops (used off CPU, for other dtypes, and where no
  compiler is found), a sequence being a chain of steps. About ten passes over ``[B, N, N]``
  per step instead of four.

Gradients of one step (batch index omitted; ``i`` pre-synaptic, ``j`` post-synaptic; ``G`` the
gradient reaching ``Hebb_t``, ``dh`` the one reaching ``h_t``)::

    forward   a = x W_in + h_{t-1} W + b + y,   y_j = sum_i h_{t-1,i} alpha_ij H_ij
              h = tanh(a),   M = tanh(h W_m^T + b_m)
              U = d * H + h_{t-1} (x) r     (decay: d = 1 - eta; oja: d_j = 1 - r_j h_j;
                                             clip: d = 1; r_j = rate_j h_j, rate = eta or M)
              Hebb_t = clamp(U, -c, c) for clip, U otherwise
    backward  G_u = G where -c <= U <= c (clamp's inclusive bounds), else 0
              dH = d * G_u;  dh_{t-1,i} += sum_j G_u,ij r_j;  dr_j = sum_i G_u,ij h_{t-1,i}
              decay: deta -= sum G_u * H;  oja: dd_j = sum_i G_u,ij H_ij; dr -= dd h; dh -= dd r
              r = rate h:  dh += dr rate,  drate = dr h (summed over what rate broadcasts on)
              dz = dM (1 - M^2);  dW_m = dz^T h;  db_m = sum dz;  dh += dz W_m
              da = dh (1 - h^2);  dW_in = x^T da;  dW = h_{t-1}^T da;  db = sum da
              dx = da W_in^T;  dh_{t-1} += da W^T + sum_j alpha_ij H_ij da_j
              dalpha_ij = sum_b h_{t-1,i} H_ij da_j;  dH_ij += alpha_ij h_{t-1,i} da_j

A scalar ``alpha`` gives ``y = alpha z``, ``dalpha = sum z da``. Retroactive neuromodulation
(``U = H + E * M``, ``E_t = (1 - eta) E + eta h_{t-1} (x) h``) gives ``dH = G_u``,
``dE = G_u * M + (1 - eta) G_E``, ``dM_j = sum_i G_u,ij E_ij`` (summed over ``j`` too for a
scalar ``M``), ``deta = sum G_E * (h_{t-1} (x) h - E)``, ``dh_j += eta sum_i h_{t-1,i} G_E,ij``
and ``dh_{t-1,i} += eta sum_j G_E,ij h_j``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from hebbgym.agents.plastic import PlasticConfig

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "replay_checkpoints",
    "FusedSpec",
    "Kernels",
    "fused_sequence",
    "fused_step",
    "native_kernels_available",
    "sequence_checkpoint_interval",
    "tune_malloc",
]

Kernels = Literal["auto", "native", "torch"]

DEFAULT_CHECKPOINT_INTERVAL = 8
"""Steps of :func:`fused_step` per saved trace. The traces kept, ``T / k + k`` for an episode
of ``T`` steps, are smallest at ``k = sqrt(T)`` (10 to 17 for the usual ``T = 100..300``); a
shorter interval costs a little memory (33 traces instead of 28 at ``T = 200``) and keeps the
traces rebuilt for backward closer in time to their use, hence in cache: measured faster."""


@dataclass(frozen=True)
class FusedSpec:
    """The static part of a plastic core: which equations and kernels, not parameter values.

    Attributes:
        plastic: the core has a Hebbian trace (``rule != "none"``).
        rule: ``"decay"``, ``"oja"``, ``"clip"`` or ``"none"``.
        neuromod: ``"none"``, ``"simple"`` or ``"retroactive"``.
        neuron_modulation: ``M_t`` has one value per post-synaptic neuron (else one, or none).
        scalar_alpha: ``alpha`` is one shared scalar (else one per connection).
        clip_value: bound of the trace for ``rule="clip"``.
        checkpoint_interval: steps of :func:`fused_step` per saved trace (``>= 1``).
        kernels: ``"native"`` (the C++ kernels of this module, compiled on first use),
            ``"torch"`` (the same algorithm in ATen ops) or ``"auto"`` (native where they can
            be built and the tensors are float32/float64 on CPU, else torch).
    """

    plastic: bool
    rule: str
    neuromod: str
    neuron_modulation: bool
    scalar_alpha: bool
    clip_value: float
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    kernels: Kernels = "auto"

    @classmethod
    def from_config(
        cls,
        config: PlasticConfig,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
        kernels: Kernels = "auto",
    ) -> FusedSpec:
        if isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int):
            raise ValueError(f"checkpoint_interval must be an integer, got {checkpoint_interval!r}")
        if checkpoint_interval < 1:
            raise ValueError(f"checkpoint_interval must be >= 1, got {checkpoint_interval}")
        if kernels not in get_args(Kernels):
            raise ValueError(f"kernels must be one of {list(get_args(Kernels))}, got {kernels!r}")
        return cls(
            plastic=config.plastic,
            rule=config.rule,
            neuromod=config.neuromod,
            neuron_modulation=config.neuromod != "none" and config.modulation == "neuron",
            scalar_alpha=config.alpha == "scalar",
            clip_value=float(config.clip_value),
            checkpoint_interval=checkpoint_interval,
            kernels=kernels,
        )

    @property
    def retroactive(self) -> bool:
        return self.neuromod == "retroactive"

    @property
    def modulated(self) -> bool:
        return self.neuromod != "none"

    def modulator_size(self, hidden_size: int) -> int:
        if not self.modulated:
            return 0
        return hidden_size if self.neuron_modulation else 1


class _Params(NamedTuple):
    """The parameters of one core, in the order the autograd Functions take them."""

    w_in: Tensor
    w: Tensor
    bias: Tensor
    alpha: Tensor | None
    eta: Tensor | None
    wm: Tensor | None
    bm: Tensor | None

    @classmethod
    def of(cls, core: Any) -> _Params:
        mod = core.modulator
        return cls(
            core.w_in,
            core.w,
            core.bias,
            core.alpha,
            core.eta,
            None if mod is None else mod.weight,
            None if mod is None else mod.bias,
        )


_N_PARAMS = len(_Params._fields)


class _Grads:
    """Gradients of one step w.r.t. its inputs and parameters (``None``: zero or not needed)."""

    __slots__ = ("x", "h_prev", "hebb", "elig", *_Params._fields)

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)

    def params(self) -> tuple[Tensor | None, ...]:
        return (self.w_in, self.w, self.bias, self.alpha, self.eta, self.wm, self.bm)


class _Out(NamedTuple):
    """What one forward step produces (``None`` where the variant has no such thing)."""

    h: Tensor
    m: Tensor | None
    z: Tensor | None  # h_{t-1} Hebb_{t-1}, kept for the gradient of a scalar alpha
    hebb: Tensor | None
    elig: Tensor | None


def _contiguous(t: Tensor | None) -> Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


# ---------------------------------------------------------------------------------------------
# Memory allocation
# ---------------------------------------------------------------------------------------------

_MALLOC_TRIM_THRESHOLD = 1 << 30
_MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value
_state: dict[str, Any] = {}


def tune_malloc() -> bool:
    """Keep freed ``[B, N, N]`` blocks in the process instead of giving them back to the OS.

    glibc serves a block of a megabyte or so with ``mmap``, or from the top of its heap, which
    it trims back as soon as twice that much is free there; so on CPU a fresh trace, or trace
    gradient, is paged in again and again, a fault per 4 KiB page, which costs more than the
    arithmetic on it. Fixing the mmap threshold at 32 MiB and the trim threshold at 1 GiB
    (``mallopt``) lets such blocks come from, and go back to, the heap. The process then keeps
    freed memory (up to 1 GiB on top of its heap) for reuse instead of returning it.

    Called once by the fused path on CPU (it helps every CPU tensor of the process, the
    reference path's included); a no-op off glibc or with ``HEBBGYM_TUNE_MALLOC=0``. Returns
    whether the settings are in effect.
    """
    if "malloc" not in _state:
        done = False
        if os.environ.get("HEBBGYM_TUNE_MALLOC", "1") != "0" and platform.system() == "Linux":
            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3
                done = bool(
                    libc.mallopt(m_mmap_threshold, _MALLOC_MMAP_THRESHOLD)
                    and libc.mallopt(m_trim_threshold, _MALLOC_TRIM_THRESHOLD)
                )
            except (OSError, AttributeError):
                done = False
        _state["malloc"] = done
    return _state["malloc"]


_local = threading.local()


def _scratch(slot: int, like: Tensor) -> Tensor:
    """A persistent, per-thread ``[B, N, N]`` buffer for temporaries that never leave a kernel
    of the torch path (the last shape asked for is kept per slot)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    key = (slot, like.dtype, like.device)
    buf = buffers.get(key)
    if buf is None or buf.shape != like.shape:
        buf = buffers[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    return buf


# ---------------------------------------------------------------------------------------------
# Parts shared by both kernel sets: the [B, N] products around the plastic ones
# ---------------------------------------------------------------------------------------------


def _activations(
    spec: FusedSpec, p: _Params, x: Tensor, h_prev: Tensor, plastic_in: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``h_t`` and ``M_t`` from the plastic input (``y``, or ``z`` for a scalar ``alpha``)."""
    pre = torch.addmm(p.bias, x, p.w_in).addmm_(h_prev, p.w)
    if plastic_in is not None:
        if spec.scalar_alpha:
            pre.addcmul_(plastic_in, p.alpha)
        else:
            pre.add_(plastic_in)
    h = pre.tanh_()
    m = torch.addmm(p.bm, h, p.wm.t()).tanh_() if spec.modulated else None
    return h, m


def _linear_grads(
    out: _Grads, p: _Params, x: Tensor, h_prev: Tensor, g_a: Tensor, g_hprev: Tensor, need_x: bool
) -> None:
    """Gradients through ``a = x W_in + h_{t-1} W + b`` (``g_hprev``: the other terms of
    ``dh_{t-1}``)."""
    out.x = g_a @ p.w_in.t() if need_x else None
    out.w_in = x.t() @ g_a
    out.w = h_prev.t() @ g_a
    out.bias = g_a.sum(0)
    out.h_prev = torch.addmm(g_hprev, g_a, p.w.t())


# ---------------------------------------------------------------------------------------------
# Torch kernels: the algorithm in ATen ops (any device and dtype)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _clamp_bounds(clip_value: float, dtype: torch.dtype) -> tuple[float, float]:
    """Bounds for ``hardtanh_backward`` that reproduce ``torch.clamp``'s gradient.

    ``clamp`` passes the gradient where ``-c <= U <= c`` (with ``c`` rounded to ``dtype``);
    ``hardtanh_backward(g, U, lo, hi)`` passes it where ``lo < U < hi``. With ``hi`` the next
    representable number above ``c`` both agree on every finite ``U``, in one fused pass (a
    boolean mask costs several passes on CPU). They differ only on a NaN trace.
    """
    c = torch.tensor(clip_value, dtype=dtype)
    hi = torch.nextafter(c, torch.tensor(math.inf, dtype=dtype)).item()
    return -hi, hi


def _rate_row(spec: FusedSpec, p: _Params, m: Tensor | None) -> Tensor:
    """The factor of the increment, broadcastable to ``[B, 1, N]``: ``M_t`` or ``eta``."""
    return m.unsqueeze(1) if spec.neuromod == "simple" else p.eta


def _torch_plastic_input(spec: FusedSpec, p: _Params, h_prev: Tensor, hebb: Tensor) -> Tensor:
    """``y_j = sum_i h_{t-1,i} alpha_ij Hebb_ij`` (``z_j = sum_i h_{t-1,i} Hebb_ij`` for a scalar
    ``alpha``)."""
    h_row = h_prev.unsqueeze(1)
    if spec.scalar_alpha:
        return torch.bmm(h_row, hebb).squeeze(1)
    plastic_w = torch.mul(p.alpha, hebb, out=_scratch(0, hebb))
    return torch.bmm(h_row, plastic_w).squeeze(1)


def _torch_pre_clamp(
    spec: FusedSpec,
    p: _Params,
    h_prev: Tensor,
    h: Tensor,
    m: Tensor | None,
    hebb: Tensor,
    elig: Tensor | None,
) -> Tensor:
    """The new trace before the clamp (the new trace itself for decay and oja), as a fresh
    tensor, with the reference's ops (in-place ``addcmul_`` is the same kernel)."""
    if spec.retroactive:
        return torch.addcmul(hebb, m.unsqueeze(1), elig)
    rate_post = _rate_row(spec, p, m) * h.unsqueeze(1)
    h_pre = h_prev.unsqueeze(2)
    if spec.rule == "decay":
        return torch.mul(hebb, 1.0 - p.eta).addcmul_(h_pre, rate_post)
    if spec.rule == "oja":
        return torch.mul(hebb, 1.0 - rate_post * h.unsqueeze(1)).addcmul_(h_pre, rate_post)
    return torch.addcmul(hebb, h_pre, rate_post)


def _torch_update(
    spec: FusedSpec,
    p: _Params,
    h_prev: Tensor,
    h: Tensor,
    m: Tensor | None,
    hebb: Tensor,
    elig: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    new = _torch_pre_clamp(spec, p, h_prev, h, m, hebb, elig)
    if spec.rule == "clip":
        new.clamp_(-spec.clip_value, spec.clip_value)
    new_elig = None
    if spec.retroactive:
        new_elig = torch.mul(elig, 1.0 - p.eta).addcmul_(
            h_prev.unsqueeze(2), (p.eta * h).unsqueeze(1)
        )
    return new, new_elig


def _row_times(matrix: Tensor, row: Tensor) -> Tensor:
    """``[B, N] -> [B, N]``: ``out[b, j] = sum_i row[b, i] matrix[b, i, j]``."""
    return torch.bmm(row.unsqueeze(1), matrix).squeeze(1)


def _times_col(matrix: Tensor, col: Tensor) -> Tensor:
    """``[B, N] -> [B, N]``: ``out[b, i] = sum_j matrix[b, i, j] col[b, j]``, as a row-vector
    product with the transposed matrix (MKL runs ``[B, N, N] @ [B, N, 1]`` several times
    slower than ``[B, 1, N] @ [B, N, N]``)."""
    return torch.bmm(col.unsqueeze(1), matrix.transpose(1, 2)).squeeze(1)


def _add(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)`` over everything, without a ``[B, N, N]`` temporary."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _torch_backward(
    spec: FusedSpec,
    p: _Params,
    x: Tensor,
    h_prev: Tensor,
    h: Tensor,
    m: Tensor | None,
    z: Tensor | None,
    hebb: Tensor | None,
    elig: Tensor | None,
    g_h: Tensor | None,
    g_m: Tensor | None,
    g_hebb: Tensor | None,
    g_elig: Tensor | None,
    need_trace_grads: bool,
    need_x: bool,
) -> _Grads:
    """The hand-derived backward of one step (module docstring) in ATen ops."""
    out = _Grads()
    g_hprev: Tensor | None = None
    g_mod: Tensor | None = g_m
    g_eta: Tensor | None = None
    # Gradients w.r.t. the incoming traces; once set they are fresh tensors of ours, which
    # later terms update in place.
    g_trace: Tensor | None = None
    g_etrace: Tensor | None = None

    if spec.plastic and (g_hebb is not None or g_elig is not None):
        h_row = h.unsqueeze(1)
        if g_hebb is not None:
            g_u = g_hebb
            if spec.rule == "clip":
                # The clamp's mask, from U recomputed exactly as in forward: G_u = G where
                # -c <= U <= c. Written over U, a fresh tensor, which becomes dHebb_{t-1}.
                lo, hi = _clamp_bounds(spec.clip_value, g_hebb.dtype)
                pre = _torch_pre_clamp(spec, p, h_prev, h, m, hebb, elig)
                g_u = torch.ops.aten.hardtanh_backward.grad_input(
                    g_hebb, pre, lo, hi, grad_input=pre
                )
            if spec.retroactive:
                # U = H + E * M: dH = G_u, dE = G_u * M, dM = sum_i G_u E (over j too if scalar).
                g_trace = g_u
                if need_trace_grads:
                    g_etrace = g_u * m.unsqueeze(1)
                prod = torch.mul(g_u, elig, out=_scratch(1, g_u))
                g_mod = _add(
                    g_mod, prod.sum(1) if spec.neuron_modulation else prod.sum((1, 2)).unsqueeze(1)
                )
            else:
                rate = _rate_row(spec, p, m)  # [B, 1, K] or []
                rate_post = rate * h_row  # r, [B, 1, N]
                g_hprev = _times_col(g_u, rate_post.squeeze(1))  # sum_j G_u,ij r_j
                g_r = _row_times(g_u, h_prev)  # sum_i G_u,ij h_{t-1,i}
                if spec.rule == "decay":
                    g_eta = -_flat_dot(g_u, hebb)
                    if need_trace_grads:
                        g_trace = g_u * (1.0 - p.eta)
                elif spec.rule == "oja":
                    # d_j = 1 - r_j h_j: dd_j = sum_i G_u,ij H_ij
                    g_d = torch.mul(g_u, hebb, out=_scratch(1, g_u)).sum(1)
                    g_r = g_r - g_d * h
                    g_h = _add(g_h, -g_d * rate_post.squeeze(1))
                    if need_trace_grads:
                        g_trace = g_u * (1.0 - rate_post * h_row)
                else:
                    g_trace = g_u
                # r = rate * h
                g_h = _add(g_h, g_r * (rate.squeeze(1) if rate.dim() else rate))
                g_rh = g_r * h
                if spec.neuromod == "simple":
                    g_mod = _add(
                        g_mod, g_rh if spec.neuron_modulation else g_rh.sum(1, keepdim=True)
                    )
                else:
                    g_eta = _add(g_eta, g_rh.sum())
        if g_elig is not None:
            # E_t = (1 - eta) E + eta h_{t-1} (x) h
            if need_trace_grads:
                if g_etrace is None:
                    g_etrace = g_elig * (1.0 - p.eta)
                else:
                    g_etrace.addcmul_(g_elig, 1.0 - p.eta)
            t_row = _row_times(g_elig, h_prev)  # sum_i h_{t-1,i} G_E,ij
            g_h = _add(g_h, p.eta * t_row)
            g_hprev = _add(g_hprev, p.eta * _times_col(g_elig, h))
            g_eta = _add(g_eta, (t_row * h).sum() - _flat_dot(g_elig, elig))

    if spec.modulated and g_mod is not None:
        g_z = g_mod * (1.0 - m * m)
        out.wm = g_z.t() @ h
        out.bm = g_z.sum(0)
        g_h = _add(g_h, g_z @ p.wm)

    if g_h is None:
        g_h = torch.zeros_like(h)
    g_a = g_h * (1.0 - h * h)
    if g_hprev is None:
        g_hprev = torch.zeros_like(h)

    if spec.plastic:
        if spec.scalar_alpha:
            # y = alpha z, z = h_{t-1} H
            out.alpha = (z * g_a).sum()
            g_hprev = g_hprev + p.alpha * _times_col(hebb, g_a)
            if need_trace_grads:
                if g_trace is None:
                    g_trace = h_prev.unsqueeze(2) * (p.alpha * g_a).unsqueeze(1)
                else:
                    g_trace.addcmul_(h_prev.unsqueeze(2), (p.alpha * g_a).unsqueeze(1))
        else:
            # outer_ij = h_{t-1,i} da_j: dalpha = sum_b outer * H, dH += alpha * outer
            outer = torch.mul(h_prev.unsqueeze(2), g_a.unsqueeze(1), out=_scratch(0, hebb))
            out.alpha = torch.mul(outer, hebb, out=_scratch(1, hebb)).sum(0)
            plastic_w = torch.mul(p.alpha, hebb, out=_scratch(1, hebb))
            g_hprev = g_hprev + _times_col(plastic_w, g_a)
            if need_trace_grads:
                if g_trace is None:
                    g_trace = outer * p.alpha
                else:
                    g_trace.addcmul_(p.alpha, outer)
    _linear_grads(out, p, x, h_prev, g_a, g_hprev, need_x)
    out.hebb = g_trace if need_trace_grads else None
    out.elig = g_etrace if need_trace_grads else None
    out.eta = g_eta
    return out


# ---------------------------------------------------------------------------------------------
# Native kernels: C++ compiled on first use, loaded with ctypes
# ---------------------------------------------------------------------------------------------

_NATIVE_SOURCE_FILE = Path(__file__).with_name("plastic_kernels.cpp")


_NATIVE_FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    # Sums may be reassociated (tree reductions of the row sums): 7 % faster, and still one
    # fixed order for a given build. The clamp's mask does not depend on it (explicit fma).
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    # No loop versions chosen at run time by how close two buffers lie in memory: a sum's
    # order would then depend on the heap layout, and two backward passes could differ.
    "--param=vect-max-version-for-alias-checks=0",
    "-fno-math-errno",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-std=c++17",
)
# Vectorised tanh from glibc's libmvec where it exists (x86-64 glibc >= 2.35), else scalar.
_VECTOR_MATH_FLAGS = (("-DHG_LIBMVEC", "-lmvec"), ())
_RULE_CODES = {"decay": 0, "oja": 1, "clip": 2}
_NEUROMOD_CODES = {"none": 0, "simple": 1, "retroactive": 2}


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: a cached library is only reused on the same CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = {ln for ln in f if ln.startswith(("model name", "flags"))}
        return "".join(sorted(lines))
    except OSError:
        return platform.processor() + platform.machine()


def _build_native() -> ctypes.CDLL:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    source_text = _NATIVE_SOURCE_FILE.read_text()
    key = hashlib.sha256(
        "\0".join([source_text, compiler, *_NATIVE_FLAGS, _cpu_fingerprint()]).encode()
    ).hexdigest()[:20]
    cache = Path(os.environ.get("HEBBGYM_CACHE_DIR", Path.home() / ".cache" / "hebbgym"))
    path = cache / f"plastic_kernels_{key}.so"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source = Path(tmp) / "plastic_kernels.cpp"
            source.write_text(source_text)
            built = Path(tmp) / "plastic_kernels.so"
            errors = []
            for extra in _VECTOR_MATH_FLAGS:
                defines = [f for f in extra if f.startswith("-D")]
                libraries = [f for f in extra if not f.startswith("-D")]
                result = subprocess.run(
                    [compiler, *_NATIVE_FLAGS, *defines, "-o", str(built), str(source), *libraries],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if result.returncode == 0:
                    break
                errors.append(result.stderr)
            else:
                raise RuntimeError(f"compiling the plastic kernels failed:\n{errors[-1]}")
            os.replace(built, path)  # atomic: concurrent builders never see a partial file
    return ctypes.CDLL(str(path))


def _native_library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call (a few seconds, then cached on disk under
    ``$HEBBGYM_CACHE_DIR`` or ``~/.cache/hebbgym``); ``None`` where they cannot be built or
    with ``HEBBGYM_NATIVE_KERNELS=0``. A failure is reported once, as a warning."""
    if "lib" not in _state:
        lib = None
        if os.environ.get("HEBBGYM_NATIVE_KERNELS", "1") != "0":
            try:
                lib = _build_native()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                warnings.warn(
                    f"hebbgym: native plastic kernels unavailable ({error}); "
                    "using the torch-op kernels",
                    RuntimeWarning,
                    stacklevel=3,
                )
        _state["lib"] = lib
    return _state["lib"]


def native_kernels_available() -> bool:
    """Whether the C++ kernels could be built and loaded (builds them on first call)."""
    return _native_library() is not None


_STEP_FIELDS = [
    ("B", ctypes.c_int64),
    ("N", ctypes.c_int64),
    ("K", ctypes.c_int64),
    ("rule", ctypes.c_int),
    ("neuromod", ctypes.c_int),
    ("scalar_alpha", ctypes.c_int),
    ("threads", ctypes.c_int),
    ("eta", None),  # the element type
    ("clip", None),
    *[(name, ctypes.c_void_p) for name in ("H", "E", "hp", "h", "m", "alpha", "wm")],
]


class _StepArgs32(ctypes.Structure):
    _fields_ = [(n, t or ctypes.c_float) for n, t in _STEP_FIELDS]


class _StepArgs64(ctypes.Structure):
    _fields_ = [(n, t or ctypes.c_double) for n, t in _STEP_FIELDS]


_ACCUMULATORS = ("acc_alpha", "acc_wm", "acc_bm", "acc_eta")  # C struct Accumulators<T>


def _pointer_fields(*names: str) -> list[tuple[str, Any]]:
    return [(name, ctypes.c_void_p) for name in names]


class _GradArgs(ctypes.Structure):  # C struct Grad<T>
    _fields_ = _pointer_fields("gH", "gE", "gh", "gm", "dH", "dE", "ga", "ghp", *_ACCUMULATORS)


_SEQUENCE_POINTERS = (
    "x", "w_in", "w", "bias", "bm", "h0", "H0", "E0", "hs", "ms", "H_end", "E_end", "H_ck", "E_ck",
)  # fmt: skip


def _sequence_fields(step_args: type) -> list[tuple[str, Any]]:
    """The fields of the C struct ``Sequence<T>``: a step, the sizes, the pointers."""
    return [
        ("step", step_args),
        *[(name, ctypes.c_int64) for name in ("steps", "I", "interval")],
        *_pointer_fields(*_SEQUENCE_POINTERS),
    ]


class _SequenceArgs32(ctypes.Structure):
    _fields_ = _sequence_fields(_StepArgs32)


class _SequenceArgs64(ctypes.Structure):
    _fields_ = _sequence_fields(_StepArgs64)


class _SequenceGradArgs(ctypes.Structure):  # C struct SequenceGrad<T>
    _fields_ = _pointer_fields("ghs", "gms", "gH", "gE", "ga", "gh0", "gH0", "gE0", *_ACCUMULATORS)


class _NativeFns(NamedTuple):
    args: type
    sequence_args: type
    update: Any
    backward: Any
    sequence_forward: Any
    sequence_backward: Any


def _native_fns(dtype: torch.dtype) -> _NativeFns:
    fns = _state.get(dtype)
    if fns is None:
        lib = _native_library()
        suffix = "f32" if dtype == torch.float32 else "f64"
        single = dtype == torch.float32
        fns = _NativeFns(
            _StepArgs32 if single else _StepArgs64,
            _SequenceArgs32 if single else _SequenceArgs64,
            *(
                getattr(lib, f"hg_{name}_{suffix}")
                for name in (
                    "update",
                    "backward",
                    "sequence_forward",
                    "sequence_backward",
                )
            ),
        )
        for f in fns[2:]:
            f.restype = None
        _state[dtype] = fns
    return fns


def _use_native(spec: FusedSpec, h_prev: Tensor) -> bool:
    """Whether a call runs the C++ kernels (decided in forward, kept for its backward)."""
    if h_prev.device.type == "cpu" and "malloc" not in _state:
        tune_malloc()
    if not spec.plastic or spec.kernels == "torch":
        return False
    supported = h_prev.device.type == "cpu" and h_prev.dtype in (torch.float32, torch.float64)
    if spec.kernels == "native":
        if not supported:
            raise ValueError("kernels='native' needs float32 or float64 tensors on CPU")
        if _native_library() is None:
            raise RuntimeError("kernels='native' but the native kernels could not be built")
        return True
    return supported and _native_library() is not None


def _vp(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_PARALLEL_GRAIN = 1 << 16


def _threads(hebb: Tensor, steps: int = 1) -> int:
    """Threads for a kernel over ``steps`` time steps: torch's count, but one below
    ``_PARALLEL_GRAIN`` trace elements (times steps), where waking a second thread (or waiting
    for a busy core) costs more than it saves."""
    if hebb.numel() * steps < _PARALLEL_GRAIN:
        return 1
    return max(1, torch.get_num_threads())


def _step_args(
    fns: _NativeFns,
    spec: FusedSpec,
    p: _Params,
    hebb: Tensor,
    elig: Tensor | None,
    h_prev: Tensor,
    alpha: Tensor,
    wm: Tensor | None,
    steps: int = 1,
) -> Any:
    """The C struct of one step (or of the shared part of ``steps``); every tensor it points
    to must be contiguous, and alive while the kernels run (the caller holds them)."""
    n = hebb.shape[1]
    return fns.args(
        hebb.shape[0],
        n,
        spec.modulator_size(n),
        _RULE_CODES[spec.rule],
        _NEUROMOD_CODES[spec.neuromod],
        int(spec.scalar_alpha),
        _threads(hebb, steps),
        0.0 if p.eta is None else p.eta.detach().item(),
        spec.clip_value,
        hebb.data_ptr(),
        _vp(elig),
        h_prev.data_ptr(),
        None,
        None,
        alpha.data_ptr(),
        _vp(wm),
    )


def _native_forward(
    spec: FusedSpec,
    p: _Params,
    x: Tensor,
    h_prev: Tensor,
    hebb: Tensor,
    elig: Tensor | None,
) -> _Out:
    """One step: the sequence kernel over a single step, so that a chain of steps computes
    exactly what :func:`fused_sequence` computes (``z`` is not needed: the native backward
    sums a scalar ``alpha``'s gradient itself)."""
    out = _native_sequence(spec, p, x.unsqueeze(0), h_prev, hebb, elig, interval=None)
    return _Out(out.hs[0], None if out.ms is None else out.ms[0], None, out.hebb, out.elig)


def _native_update_with(
    fns: _NativeFns, args: Any, spec: FusedSpec, h: Tensor, m: Tensor | None, hebb: Tensor
) -> tuple[Tensor, Tensor | None]:
    h, m = _contiguous(h), _contiguous(m)
    args.h = h.data_ptr()
    args.m = _vp(m)
    new = torch.empty(hebb.shape, dtype=hebb.dtype)
    new_elig = torch.empty_like(new) if spec.retroactive else None
    fns.update(ctypes.byref(args), ctypes.c_void_p(new.data_ptr()), ctypes.c_void_p(_vp(new_elig)))
    return new, new_elig


def _native_update(
    spec: FusedSpec,
    p: _Params,
    h_prev: Tensor,
    h: Tensor,
    m: Tensor | None,
    hebb: Tensor,
    elig: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    hebb, elig, h_prev = _contiguous(hebb), _contiguous(elig), _contiguous(h_prev)
    alpha, wm = _contiguous(p.alpha), _contiguous(p.wm)
    fns = _native_fns(hebb.dtype)
    args = _step_args(fns, spec, p, hebb, elig, h_prev, alpha, wm)
    return _native_update_with(fns, args, spec, h, m, hebb)


def _native_backward(
    spec: FusedSpec,
    p: _Params,
    x: Tensor,
    h_prev: Tensor,
    h: Tensor,
    m: Tensor | None,
    z: Tensor | None,
    hebb: Tensor,
    elig: Tensor | None,
    g_h: Tensor | None,
    g_m: Tensor | None,
    g_hebb: Tensor | None,
    g_elig: Tensor | None,
    need_trace_grads: bool,
    need_x: bool,
) -> _Grads:
    """The backward of one step: one C++ call for everything that touches ``[B, N, N]``
    (batch element by batch element, each slice read from memory once), ATen for the rest."""
    hebb, elig, h_prev = _contiguous(hebb), _contiguous(elig), _contiguous(h_prev)
    h, m = _contiguous(h), _contiguous(m)
    alpha, wm = _contiguous(p.alpha), _contiguous(p.wm)
    g_h, g_m, g_hebb, g_elig = (_contiguous(t) for t in (g_h, g_m, g_hebb, g_elig))
    fns = _native_fns(hebb.dtype)
    args = _step_args(fns, spec, p, hebb, elig, h_prev, alpha, wm)
    args.h = h.data_ptr()
    args.m = _vp(m)
    batch, n, k, threads = args.B, args.N, args.K, args.threads
    d_hebb = torch.empty(hebb.shape, dtype=hebb.dtype) if need_trace_grads else None
    d_elig = torch.empty_like(d_hebb) if need_trace_grads and spec.retroactive else None
    # One buffer for the small outputs: ga, ghp, then per-thread sums of dalpha, dW_m, db_m,
    # deta (the kernel adds them up into their first row).
    n_alpha = 1 if spec.scalar_alpha else n * n
    sizes = (batch * n, batch * n, threads * n_alpha, threads * k * n, threads * k, threads)
    small = torch.empty(sum(sizes), dtype=h.dtype)
    g_a, g_hp, acc_alpha, acc_wm, acc_bm, acc_eta = small.split(sizes)
    g_a, g_hp = g_a.view(batch, n), g_hp.view(batch, n)
    grad_args = _GradArgs(
        _vp(g_hebb),
        _vp(g_elig),
        _vp(g_h),
        _vp(g_m),
        _vp(d_hebb),
        _vp(d_elig),
        g_a.data_ptr(),
        g_hp.data_ptr(),
        acc_alpha.data_ptr(),
        acc_wm.data_ptr() if k else None,
        acc_bm.data_ptr() if k else None,
        acc_eta.data_ptr(),
    )
    fns.backward(ctypes.byref(args), ctypes.byref(grad_args))
    out = _Grads()
    _linear_grads(out, p, x, h_prev, g_a, g_hp, need_x)
    out.alpha = acc_alpha[0] if spec.scalar_alpha else acc_alpha[:n_alpha].view(n, n)
    if p.eta is not None:
        out.eta = acc_eta[0]
    if k:
        out.wm = acc_wm[: k * n].view(k, n)
        out.bm = acc_bm[:k]
    out.hebb = d_hebb
    out.elig = d_elig
    return out


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def _step_forward(
    spec: FusedSpec,
    p: _Params,
    x: Tensor,
    h_prev: Tensor,
    hebb: Tensor | None,
    elig: Tensor | None,
    native: bool,
) -> _Out:
    if native:
        return _native_forward(spec, p, x, h_prev, hebb, elig)
    if not spec.plastic:
        h, m = _activations(spec, p, x, h_prev, None)
        return _Out(h, m, None, None, None)
    y = _torch_plastic_input(spec, p, h_prev, hebb)
    h, m = _activations(spec, p, x, h_prev, y)
    new_hebb, new_elig = _torch_update(spec, p, h_prev, h, m, hebb, elig)
    return _Out(h, m, y if spec.scalar_alpha else None, new_hebb, new_elig)


def _update(
    spec: FusedSpec,
    p: _Params,
    h_prev: Tensor,
    h: Tensor,
    m: Tensor | None,
    hebb: Tensor,
    elig: Tensor | None,
    native: bool,
) -> tuple[Tensor, Tensor | None]:
    """``(Hebb_t, E_t)`` from ``(Hebb_{t-1}, E_{t-1})``, as forward computed them: the replay."""
    update = _native_update if native else _torch_update
    return update(spec, p, h_prev, h, m, hebb, elig)


def _step_backward(native: bool, *args: Any) -> _Grads:
    return _native_backward(*args) if native else _torch_backward(*args)


# ---------------------------------------------------------------------------------------------
# Per-step Function: what training calls once per environment step
# ---------------------------------------------------------------------------------------------

# Positions in ``ctx.needs_input_grad`` (after ``spec``).
_NEED_X, _NEED_HEBB, _NEED_ELIG = 1, 3, 4
# Positions in a step's saved tensors.
_SAVED_HEBB, _SAVED_ELIG, _SAVED_PARAMS = 5, 6, 7


def _split_outputs(spec: FusedSpec, outputs: tuple) -> tuple:
    """``(h, m, hebb, elig)`` from a Function's outputs (``None`` for those it lacks)."""
    it = iter(outputs)
    h = next(it)
    m = next(it) if spec.modulated else None
    hebb = next(it) if spec.plastic else None
    elig = next(it) if spec.retroactive else None
    return h, m, hebb, elig


def _join_outputs(spec: FusedSpec, out: _Out) -> tuple[Tensor, ...]:
    outputs = [out.h]
    if spec.modulated:
        outputs.append(out.m)
    if spec.plastic:
        outputs.append(out.hebb)
    if spec.retroactive:
        outputs.append(out.elig)
    return tuple(outputs)


class _StepFunction(torch.autograd.Function):
    """One step; see the module docstring for what is saved and what is recomputed.

    Graph-node attributes chaining the steps of an episode:

    * ``link``: the node of the previous step when this step's incoming traces are that step's
      outputs, unchanged (then they are not saved); ``None`` at a checkpoint.
    * ``depth``: steps since the last checkpoint (``0`` at a checkpoint).
    * ``trace_versions``: version counters of the traces this step returned, to notice an
      in-place change of them before the next step reads them (then that step saves them).
    * ``_fused_out``: during backward, this step's output traces once rebuilt by a later step,
      kept until the step after this one consumes them.
    """

    @staticmethod
    def forward(ctx: Any, spec: FusedSpec, x: Tensor, h_prev: Tensor, hebb, elig, *params):
        ctx.set_materialize_grads(False)
        p = _Params(*params)
        native = _use_native(spec, h_prev)
        out = _step_forward(spec, p, x, h_prev, hebb, elig, native)
        link = _chain_link(spec, hebb, elig) if spec.plastic else None
        ctx.spec = spec
        ctx.native = native
        ctx.link = link
        ctx.depth = 0 if link is None else link.depth + 1
        ctx.trace_versions = (
            out.hebb._version if spec.plastic else None,
            out.elig._version if spec.retroactive else None,
        )
        keep = link is None
        ctx.save_for_backward(
            x, h_prev, out.h, out.m, out.z, hebb if keep else None, elig if keep else None, *p
        )
        return _join_outputs(spec, out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None):
        spec: FusedSpec = ctx.spec
        g_h, g_m, g_hebb, g_elig = _split_outputs(spec, grads)
        saved = ctx.saved_tensors
        x, h_prev, h, m, z = saved[:5]
        p = _Params(*saved[_SAVED_PARAMS:])
        hebb = elig = None
        if spec.plastic:
            hebb, elig = _incoming_traces(ctx, saved)
        need = ctx.needs_input_grad
        g = _step_backward(
            ctx.native,
            spec,
            p,
            x,
            h_prev,
            h,
            m,
            z,
            hebb,
            elig,
            g_h,
            g_m,
            g_hebb,
            g_elig,
            need[_NEED_HEBB] or need[_NEED_ELIG],
            need[_NEED_X],
        )
        return (None, g.x, g.h_prev, g.hebb, g.elig, *g.params())


_STEP_NODE = _StepFunction._backward_cls  # the type of _StepFunction's graph nodes


def _chain_link(spec: FusedSpec, hebb: Tensor, elig: Tensor | None) -> Any:
    """The previous step's node if ``hebb`` (and ``elig``) are exactly its output traces,
    unmodified and less than a checkpoint interval away from its checkpoint; else ``None``."""
    node = hebb.grad_fn
    if type(node) is not _STEP_NODE:
        return None
    if node.spec != spec or node.depth + 1 >= spec.checkpoint_interval:
        return None
    first = 1 + spec.modulated
    traces = (hebb, elig) if spec.retroactive else (hebb,)
    for k, t in enumerate(traces):
        if t.grad_fn is not node or t.output_nr != first + k:
            return None
        if t._version != node.trace_versions[k]:
            return None
    return node


def _incoming_traces(ctx: Any, saved: tuple) -> tuple[Tensor, Tensor | None]:
    """The traces a step read in forward: saved at a checkpoint, else rebuilt (or cached)."""
    if ctx.link is None:
        return saved[_SAVED_HEBB], saved[_SAVED_ELIG]
    return _output_traces(ctx.link)


def _replay(node: Any, traces: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """The output traces of step ``node`` from its input traces (the forward's arithmetic)."""
    saved = node.saved_tensors
    _, h_prev, h, m = saved[:4]
    p = _Params(*saved[_SAVED_PARAMS:])
    return _update(node.spec, p, h_prev, h, m, *traces, node.native)


def _output_traces(node: Any) -> tuple[Tensor, Tensor | None]:
    cached = node.__dict__.pop("_fused_out", None)
    if cached is not None:
        return cached
    # Walk back to the checkpoint (or to a step whose output is cached), then replay forward,
    # leaving the output of every step on the way for its consumer, whose backward runs next.
    chain = [node]
    while True:
        cur = chain[-1]
        if cur.link is None:
            saved = cur.saved_tensors
            traces = (saved[_SAVED_HEBB], saved[_SAVED_ELIG])
            break
        cached = cur.link.__dict__.pop("_fused_out", None)
        if cached is not None:
            traces = cached
            break
        chain.append(cur.link)
    for step in reversed(chain):
        traces = _replay(step, traces)
        if step is not node:
            step._fused_out = traces
    return traces


def fused_step(
    core: Any, spec: FusedSpec, x_t: Tensor, state: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of ``core`` with the fused Function: ``(h_t, M_t, Hebb_t, E_t)``.

    Zero-size traces of the state (non-plastic, non-retroactive) are passed through unchanged.
    """
    hebb = state.hebb if spec.plastic else None
    elig = state.eligibility if spec.retroactive else None
    params = _Params.of(core)
    if _use_native(spec, state.h) and not _needs_graph(x_t, state.h, hebb, elig, *params):
        # Nothing to differentiate (rollouts, evaluation): the sequence kernel for one step,
        # which computes exactly what the sequence Function's forward computes.
        out = _native_sequence(spec, params, x_t.unsqueeze(0), state.h, hebb, elig, None)
        h, m, new_hebb, new_elig = out.hs[0], out.ms, out.hebb, out.elig
        m = None if m is None else m[0]
    else:
        outputs = _StepFunction.apply(spec, x_t, state.h, hebb, elig, *params)
        h, m, new_hebb, new_elig = _split_outputs(spec, outputs)
    return (
        h,
        h.new_zeros(h.shape[0], 0) if m is None else m,
        state.hebb if new_hebb is None else new_hebb,
        state.eligibility if new_elig is None else new_elig,
    )


# ---------------------------------------------------------------------------------------------
# Sequence Function: forward over a whole known input sequence
# ---------------------------------------------------------------------------------------------


def sequence_checkpoint_interval(steps: int) -> int:
    """Steps per saved trace for a sequence of ``steps``: ``ceil(sqrt(T))`` minimises the
    traces kept, ``T / k`` checkpoints plus ``k`` rebuilt in the segment being differentiated."""
    return max(1, math.ceil(math.sqrt(steps)))


class _Sequence(NamedTuple):
    """What the native forward over a sequence returns (checkpoints ``None`` unless asked)."""

    hs: Tensor
    ms: Tensor | None
    hebb: Tensor
    elig: Tensor | None
    checkpoints: Tensor | None
    elig_checkpoints: Tensor | None


def _native_sequence(
    spec: FusedSpec,
    p: _Params,
    x: Tensor,
    h0: Tensor,
    hebb0: Tensor,
    elig0: Tensor | None,
    interval: int | None,
) -> _Sequence:
    """All ``T`` steps in one C++ call, batch element after batch element (each one's trace in
    cache for the whole episode). With ``interval``, the traces before every ``interval``-th
    step are kept for backward."""
    _check_same_dtype_and_device(x, h0, hebb0, elig0, *p)
    _check_shapes(spec, p, x, h0, hebb0, elig0)
    x, h0, hebb0, elig0 = (_contiguous(t) for t in (x, h0, hebb0, elig0))
    w_in, w, bias, alpha, wm, bm = (
        _contiguous(t) for t in (p.w_in, p.w, p.bias, p.alpha, p.wm, p.bm)
    )
    fns = _native_fns(hebb0.dtype)
    steps, batch, n = x.shape[0], h0.shape[0], h0.shape[1]
    k = spec.modulator_size(n)
    step = _step_args(fns, spec, p, hebb0, elig0, h0, alpha, wm, steps)
    out = _Sequence(
        hs=h0.new_empty(steps, batch, n),
        ms=h0.new_empty(steps, batch, k) if k else None,
        hebb=torch.empty_like(hebb0),
        elig=torch.empty_like(elig0) if spec.retroactive else None,
        checkpoints=None,
        elig_checkpoints=None,
    )
    if interval is not None:
        shape = (math.ceil(steps / interval), *hebb0.shape)
        out = out._replace(
            checkpoints=hebb0.new_empty(shape),
            elig_checkpoints=hebb0.new_empty(shape) if spec.retroactive else None,
        )
    args = _sequence_args(fns, step, x, (w_in, w, bias, bm), (h0, hebb0, elig0), out, interval)
    fns.sequence_forward(ctypes.byref(args))
    return out


def _sequence_args(
    fns: _NativeFns,
    step: Any,
    x: Tensor,
    weights: tuple[Tensor, Tensor, Tensor, Tensor | None],
    start: tuple[Tensor, Tensor, Tensor | None],
    out: _Sequence,
    interval: int | None,
) -> Any:
    """The C struct ``Sequence<T>``: ``weights`` (``W_in``, ``W``, ``b``, ``b_m``), the
    initial state, the outputs and checkpoints (contiguous, alive while the kernels run)."""
    steps = x.shape[0]
    pointers = (x, *weights, *start, *out)
    return fns.sequence_args(
        step, steps, x.shape[2], interval or steps, *(_vp(t) for t in pointers)
    )


def _check_same_dtype_and_device(*tensors: Tensor | None) -> None:
    """The C++ kernels read raw memory: refuse mixed dtypes or devices, as torch's ops do
    (e.g. float32 observations for a float64 core)."""
    kinds = {(t.dtype, t.device) for t in tensors if t is not None}
    if len(kinds) > 1:
        found = ", ".join(sorted(f"{dtype} on {device}" for dtype, device in kinds))
        raise TypeError(
            "the plastic core's input, state and parameters must share one dtype and device; "
            f"got {found} (convert the input, e.g. x.to(core.w.dtype))"
        )


def _check_shapes(
    spec: FusedSpec, p: _Params, x: Tensor, h0: Tensor, hebb0: Tensor, elig0: Tensor | None
) -> None:
    """Refuse a state or input of the wrong size (the kernels would read out of bounds)."""
    inputs, n = p.w_in.shape
    steps, batch = x.shape[0], h0.shape[0]
    expected = {
        "x": (x, (steps, batch, inputs)),
        "state.h": (h0, (batch, n)),
        "state.hebb": (hebb0, (batch, n, n)),
    }
    if spec.retroactive:
        expected["state.eligibility"] = (elig0, (batch, n, n))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _SequenceTask(NamedTuple):
    """The non-tensor first argument of :class:`_SequenceFunction`: the spec, and the forward's
    results when they are already known (an episode played step by step; ``None``: compute)."""

    spec: FusedSpec
    played: _Sequence | None


class _SequenceFunction(torch.autograd.Function):
    """``T`` steps as one graph node, on the native kernels: saves the ``[T, B, N]``
    activations and a trace every ``ceil(sqrt(T))`` steps; backward runs in one C++ call
    (element by element, segments in reverse, each replayed from its checkpoint), then the
    gradients of ``W_in``, ``W``, ``b`` and ``x`` as four matrix products over all steps."""

    @staticmethod
    def forward(ctx: Any, task: _SequenceTask, x: Tensor, h0: Tensor, hebb0, elig0, *params):
        ctx.set_materialize_grads(False)
        spec = task.spec
        p = _Params(*params)
        # The kernels index every tensor as contiguous, backward's included: save such copies.
        x, h0, hebb0, elig0 = (_contiguous(t) for t in (x, h0, hebb0, elig0))
        interval = sequence_checkpoint_interval(x.shape[0])
        if task.played is None:
            out = _native_sequence(spec, p, x, h0, hebb0, elig0, interval)
        else:  # outputs of our own, not the caller's tensors
            known = task.played
            out = known._replace(
                **{
                    name: getattr(known, name).clone()
                    for name in ("hs", "ms", "hebb", "elig")
                    if getattr(known, name) is not None
                }
            )
        ctx.spec = spec
        ctx.interval = interval
        ctx.save_for_backward(
            x, h0, hebb0, elig0, out.hs, out.ms, out.checkpoints, out.elig_checkpoints, *p
        )
        return _join_outputs(spec, _Out(out.hs, out.ms, None, out.hebb, out.elig))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None):
        spec: FusedSpec = ctx.spec
        g_hs, g_ms, g_hebb, g_elig = (_contiguous(g) for g in _split_outputs(spec, grads))
        x, h0, hebb0, elig0, hs, ms, checkpoints, elig_checkpoints, *params = ctx.saved_tensors
        p = _Params(*(_contiguous(t) for t in params))
        alpha, wm = p.alpha, p.wm
        steps, batch, n = hs.shape
        k = spec.modulator_size(n)
        need = ctx.needs_input_grad
        need_traces = need[_NEED_HEBB] or need[_NEED_ELIG]

        fns = _native_fns(hs.dtype)
        step = _step_args(fns, spec, p, hebb0, elig0, h0, alpha, wm, steps)
        saved = _Sequence(hs, ms, None, None, checkpoints, elig_checkpoints)
        weights = (p.w_in, p.w, p.bias, p.bm)
        sequence = _sequence_args(fns, step, x, weights, (h0, hebb0, elig0), saved, ctx.interval)
        g_a = torch.empty_like(hs)
        g_h0 = torch.empty_like(h0)
        g_hebb0 = torch.empty_like(hebb0) if need_traces else None
        g_elig0 = torch.empty_like(hebb0) if need_traces and spec.retroactive else None
        # Per-thread sums of dalpha, dW_m, db_m, deta (the kernel adds them up into row 0).
        threads = step.threads
        n_alpha = 1 if spec.scalar_alpha else n * n
        sizes = (threads * n_alpha, threads * k * n, threads * k, threads)
        acc_alpha, acc_wm, acc_bm, acc_eta = hs.new_empty(sum(sizes)).split(sizes)
        grad_args = _SequenceGradArgs(
            *(_vp(t) for t in (g_hs, g_ms, g_hebb, g_elig, g_a, g_h0, g_hebb0, g_elig0)),
            acc_alpha.data_ptr(),
            acc_wm.data_ptr() if k else None,
            acc_bm.data_ptr() if k else None,
            acc_eta.data_ptr(),
        )
        fns.sequence_backward(ctypes.byref(sequence), ctypes.byref(grad_args))

        # a_t = x_t W_in + h_{t-1} W + b + ...: all steps at once.
        flat_a = g_a.view(-1, n)
        h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]]).view(-1, n)
        g_x = (flat_a @ p.w_in.t()).view_as(x) if need[_NEED_X] else None
        g_alpha = acc_alpha[0] if spec.scalar_alpha else acc_alpha[:n_alpha].view(n, n)
        return (
            None,
            g_x,
            g_h0,
            g_hebb0,
            g_elig0,
            x.reshape(-1, x.shape[2]).t() @ flat_a,
            h_prev.t() @ flat_a,
            flat_a.sum(0),
            g_alpha,
            acc_eta[0] if p.eta is not None else None,
            acc_wm[: k * n].view(k, n) if k else None,
            acc_bm[:k] if k else None,
        )


def _stepwise_sequence(
    spec: FusedSpec, params: _Params, x: Tensor, h: Tensor, hebb, elig
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The sequence as a chain of per-step Functions (the torch kernels' sequence path)."""
    hs, ms = [], []
    for x_t in x.unbind(0):
        outputs = _StepFunction.apply(spec, x_t, h, hebb, elig, *params)
        h, m, hebb, elig = _split_outputs(spec, outputs)
        hs.append(h)
        ms.append(m)
    return torch.stack(hs), torch.stack(ms) if spec.modulated else None, hebb, elig


def replay_checkpoints(spec: FusedSpec, like: Tensor, steps: int) -> range:
    """The steps whose incoming state a :func:`fused_sequence` replay of an episode played
    step by step needs (its checkpoints); none where the replay computes its forward anyway
    (no native kernels for ``like``'s dtype and device)."""
    if not _use_native(spec, like):
        return range(0)
    return range(0, steps, sequence_checkpoint_interval(steps))


def _played_sequence(spec: FusedSpec, x: Tensor, played: Any) -> _Sequence:
    """A played record (``plastic.PlayedSequence``) as the forward's results."""
    steps, batch = x.shape[:2]
    needed = replay_checkpoints(spec, played.h, steps)
    missing = [t for t in needed if t not in played.states]
    if tuple(played.h.shape[:2]) != (steps, batch) or missing:
        raise ValueError(
            f"the played record does not fit x of shape {list(x.shape)}: h has shape "
            f"{list(played.h.shape)}, states missing before steps {missing}"
        )
    checkpoints = [played.states[t] for t in needed]
    return _Sequence(
        hs=_contiguous(played.h),
        ms=_contiguous(played.m) if spec.modulated else None,
        hebb=played.final.hebb,
        elig=played.final.eligibility if spec.retroactive else None,
        checkpoints=torch.stack([state.hebb for state in checkpoints]),
        elig_checkpoints=(
            torch.stack([state.eligibility for state in checkpoints]) if spec.retroactive else None
        ),
    )


def fused_sequence(
    core: Any, spec: FusedSpec, x: Tensor, state: Any, played: Any = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``T`` steps of ``core`` from ``state``: ``(h [T, B, N], M [T, B, K], Hebb_T, E_T)``.

    Native kernels: one C++ call for the forward (and one for the backward) of the whole
    sequence; without a graph to build (``no_grad``, or nothing requires grad) nothing is
    saved. With ``played`` (a ``plastic.PlayedSequence`` of ``x`` played from ``state`` step
    by step, without a graph, with the same parameters) the forward is not computed again:
    the native single-step forward is the sequence's, bit for bit. Torch kernels: a chain of
    per-step Functions.
    """
    hebb = state.hebb if spec.plastic else None
    elig = state.eligibility if spec.retroactive else None
    params = _Params.of(core)
    if not _use_native(spec, state.h):
        hs, ms, new_hebb, new_elig = _stepwise_sequence(spec, params, x, state.h, hebb, elig)
    elif _needs_graph(x, state.h, hebb, elig, *params):
        known = None if played is None else _played_sequence(spec, x, played)
        task = _SequenceTask(spec, known)
        outputs = _SequenceFunction.apply(task, x, state.h, hebb, elig, *params)
        hs, ms, new_hebb, new_elig = _split_outputs(spec, outputs)
    else:
        out = _native_sequence(spec, params, x, state.h, hebb, elig, interval=None)
        hs, ms, new_hebb, new_elig = out.hs, out.ms, out.hebb, out.elig
    return (
        hs,
        hs.new_zeros(hs.shape[0], hs.shape[1], 0) if ms is None else ms,
        state.hebb if new_hebb is None else new_hebb,
        state.eligibility if new_elig is None else new_elig,
    )
