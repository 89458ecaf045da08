"""Fused, memory-lean implementation of the plastic recurrence of :class:`PlasticCore`.

The reference (:meth:`PlasticCore.reference_step`) is written with ordinary autograd ops. For
every time step autograd then keeps several ``[B, N, N]`` tensors alive until the backward pass
(``alpha * Hebb`` for the recurrent product, the trace before the clamp, the clamped trace, the
eligibility trace...), and on CPU each of them is a fresh allocation that has to be paged in:
at ``B = 30, N = 100`` the allocations, not the arithmetic, dominate the run time.

This module replaces the step by one :class:`torch.autograd.Function` whose backward is
written by hand, so that nothing of size ``[B, N, N]`` is kept per step:

* **Saved per step**: only ``[B, N]``-sized tensors: the input ``x_t``, ``h_{t-1}``, ``h_t``,
  ``M_t`` (and, for a scalar ``alpha``, ``z_t = h_{t-1} Hebb_{t-1}``), plus the parameters.
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

Two sets of kernels compute the ``[B, N, N]`` parts, chosen by :attr:`FusedSpec.kernels`:

* **native** (default where available): C++ compiled on first use with the system compiler
  (a few seconds, cached on disk) and called through ``ctypes``. One kernel for the forward's
  ``h_{t-1} (alpha * Hebb)``, one for the trace update, and one for the whole backward of a
  step, which runs batch element by batch element so that each ``[N, N]`` slice is read from
  memory once and reused from cache by every pass. Parallel over the batch with OpenMP (the
  runtime torch itself loaded) on ``torch.get_num_threads()`` threads, above 65536 trace
  elements; the result does not depend on the thread count beyond rounding of the
  parameter-gradient sums.
* **torch**: the same algorithm in ATen ops (used off CPU, for other dtypes, and where no
  compiler is found). About ten passes over ``[B, N, N]`` per step instead of four.

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

_NATIVE_SOURCE = r"""
// Fused CPU kernels of the plastic recurrence (hebbgym/agents/fused.py has the equations).
// Layout: traces [B, N, N] indexed [batch, pre i, post j], row-major, contiguous.
// Work is split over batch elements (OpenMP, torch's thread count); within one, each pass
// over its [N, N] slices runs while they are in cache. Built with -ffp-contract=off: the
// arithmetic is exactly the one written, hence the same in forward, replay and backward (the
// clamp's mask in backward must see the forward's pre-clamp values bit for bit).
#include <algorithm>
#include <cstdint>
#include <vector>
#include <omp.h>

namespace {

enum Rule { DECAY = 0, OJA = 1, CLIP = 2 };
enum Neuromod { NONE = 0, SIMPLE = 1, RETRO = 2 };

template <typename T>
struct Step {
  int64_t B, N, K;
  int rule, neuromod, scalar_alpha, threads;
  T eta, clip;
  const T* H;       // [B, N, N] incoming Hebb trace
  const T* E;       // [B, N, N] incoming eligibility trace (retroactive) or null
  const T* hp;      // [B, N] h_{t-1}
  const T* h;       // [B, N] h_t
  const T* m;       // [B, K] M_t or null
  const T* alpha;   // [N, N] or a single value
  const T* wm;      // [K, N] modulator weight or null
};

template <typename T>
inline T clamp_to(T u, T lo, T hi) {  // torch.clamp, NaN included; branch-free for simd
  return u < lo ? lo : (u > hi ? hi : u);
}

template <typename T>
inline T rate_of(const Step<T>& s, const T* m_b, int64_t j) {
  return s.neuromod == SIMPLE ? m_b[s.K == 1 ? 0 : j] : s.eta;
}

// ---- forward, first part: y_j = sum_i h_{t-1,i} alpha_ij H_ij (or z_j = sum_i h_i H_ij) ----
// Rows are taken four at a time: short inner loops (N ~ 100) are dominated by their fixed cost.
template <typename T>
void plastic_input(const Step<T>& s, T* y) {
  const int64_t N = s.N, NN = N * N;
  const T* alpha = s.scalar_alpha ? nullptr : s.alpha;
#pragma omp parallel for num_threads(s.threads) if (s.threads > 1 && s.B > 1) schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    const T* __restrict__ H = s.H + b * NN;
    const T* __restrict__ hp = s.hp + b * N;
    T* __restrict__ yb = y + b * N;
    std::fill(yb, yb + N, T(0));
    int64_t i = 0;
    for (; i + 4 <= N; i += 4) {
      const T h0 = hp[i], h1 = hp[i + 1], h2 = hp[i + 2], h3 = hp[i + 3];
      const T* __restrict__ H0 = H + i * N;
      const T* __restrict__ H1 = H0 + N;
      const T* __restrict__ H2 = H1 + N;
      const T* __restrict__ H3 = H2 + N;
      if (alpha) {
        const T* __restrict__ a0 = alpha + i * N;
        const T* __restrict__ a1 = a0 + N;
        const T* __restrict__ a2 = a1 + N;
        const T* __restrict__ a3 = a2 + N;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j)
          yb[j] += (h0 * (a0[j] * H0[j]) + h1 * (a1[j] * H1[j])) +
                   (h2 * (a2[j] * H2[j]) + h3 * (a3[j] * H3[j]));
      } else {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j)
          yb[j] += (h0 * H0[j] + h1 * H1[j]) + (h2 * H2[j] + h3 * H3[j]);
      }
    }
    for (; i < N; ++i) {
      const T hi = hp[i];
      const T* __restrict__ Hi = H + i * N;
      if (alpha) {
        const T* __restrict__ ai = alpha + i * N;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) yb[j] += hi * (ai[j] * Hi[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) yb[j] += hi * Hi[j];
      }
    }
  }
}

// ---- forward, second part (and the replay): the trace update ----
template <typename T>
void update(const Step<T>& s, T* Hn, T* En) {
  const int64_t N = s.N, NN = N * N;
  const T lo = -s.clip, hi_c = s.clip, one_eta = T(1) - s.eta;
#pragma omp parallel num_threads(s.threads) if (s.threads > 1 && s.B > 1)
  {
    std::vector<T> r(N), d(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      const T* H = s.H + b * NN;
      const T* hp = s.hp + b * N;
      const T* h = s.h + b * N;
      const T* mb = s.m ? s.m + b * s.K : nullptr;
      T* out = Hn + b * NN;
      if (s.neuromod == RETRO) {
        const T* E = s.E + b * NN;
        T* eout = En + b * NN;
        for (int64_t j = 0; j < N; ++j) r[j] = mb[s.K == 1 ? 0 : j];  // M_j
        for (int64_t j = 0; j < N; ++j) d[j] = s.eta * h[j];          // eta h_j
        for (int64_t i = 0; i < N; ++i) {
          const T* Ei = E + i * N;
          const T* Hi = H + i * N;
          const T hi = hp[i];
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            const T u = Hi[j] + r[j] * Ei[j];
            out[i * N + j] = clamp_to(u, lo, hi_c);
            eout[i * N + j] = one_eta * Ei[j] + hi * d[j];
          }
        }
        continue;
      }
      for (int64_t j = 0; j < N; ++j) r[j] = rate_of(s, mb, j) * h[j];
      if (s.rule == OJA)
        for (int64_t j = 0; j < N; ++j) d[j] = T(1) - r[j] * h[j];
      for (int64_t i = 0; i < N; ++i) {
        const T* Hi = H + i * N;
        T* oi = out + i * N;
        const T hi = hp[i];
        if (s.rule == DECAY) {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) oi[j] = one_eta * Hi[j] + hi * r[j];
        } else if (s.rule == OJA) {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) oi[j] = Hi[j] * d[j] + hi * r[j];
        } else {
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) oi[j] = clamp_to(Hi[j] + hi * r[j], lo, hi_c);
        }
      }
    }
  }
}

template <typename T>
struct Grad {
  const T* gH;   // [B, N, N] gradient w.r.t. Hebb_t, or null
  const T* gE;   // [B, N, N] gradient w.r.t. E_t, or null
  const T* gh;   // [B, N] or null
  const T* gm;   // [B, K] or null
  T* dH;         // [B, N, N] gradient w.r.t. Hebb_{t-1}, or null (not needed)
  T* dE;         // [B, N, N] gradient w.r.t. E_{t-1}, or null
  T* ga;         // [B, N] gradient w.r.t. the pre-activation a_t
  T* ghp;        // [B, N] gradient w.r.t. h_{t-1}, except the term ga W^T
  T* acc_alpha;  // [threads, N * N] (per connection alpha) or null; the sum ends in row 0
  T* acc_wm;     // [threads, K * N] or null; idem
  T* acc_bm;     // [threads, K] or null; idem
  T* acc_eta;    // [threads]; idem
};

// Rows are processed four at a time (short rows, N ~ 100, are dominated by the fixed cost of a
// loop and of its horizontal sums); rows past N read a zero row and write to throw-away rows
// (``sink``, 4 N values), so that every contribution of theirs is zero.
template <typename T>
struct Rows {
  const T* __restrict__ c[4];
};

template <typename T>
struct RowsOut {
  T* __restrict__ c[4];
};

template <typename T>
inline Rows<T> rows_of(const T* base, int64_t i, int64_t N, const T* zero) {
  Rows<T> out;
  for (int q = 0; q < 4; ++q) out.c[q] = (i + q < N) ? base + (i + q) * N : zero;
  return out;
}

template <typename T>
inline RowsOut<T> rows_out(T* base, int64_t i, int64_t N, T* sink) {
  RowsOut<T> out;
  for (int q = 0; q < 4; ++q) out.c[q] = (i + q < N) ? base + (i + q) * N : sink + q * N;
  return out;
}

// Prefetch rows [i, i + 4) of the next batch element's slab while this one is processed: the
// slabs of a step come from memory (not cache) in backward, and a batch element's work runs in
// bursts that leave the hardware prefetchers idle in between.
template <typename T>
inline void prefetch_rows(const T* next, int64_t i, int64_t N, bool write) {
  if (!next) return;
  const char* p = reinterpret_cast<const char*>(next + i * N);
  const int64_t bytes = std::min<int64_t>(4, N - i) * N * int64_t(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) {
    if (write)
      __builtin_prefetch(p + off, 1, 3);
    else
      __builtin_prefetch(p + off, 0, 3);
  }
}

template <typename T>
inline void hp_of(const T* hp, int64_t i, int64_t N, T* h4) {
  for (int q = 0; q < 4; ++q) h4[q] = (i + q < N) ? hp[i + q] : T(0);
}

template <typename T>
inline void add_rows(T* ghp, int64_t i, int64_t N, const T* a4) {
  for (int q = 0; q < 4; ++q)
    if (i + q < N) ghp[i + q] += a4[q];
}

// Pass 1 of a non-retroactive rule: G_u = mask(G) (clip) or G, written to G; returns, added
// to gr_j: sum_i G_u,ij h_i; to ghp_i: sum_j G_u,ij r_j; to gd_j (oja): sum_i G_u,ij H_ij;
// to s (decay): sum G_u,ij H_ij.
template <typename T, int RULE>
void pass1(int64_t N, const T* H, const T* gH, T* G, const T* hp, const T* r, T* gr, T* gd,
           T lo, T hi_c, T* ghp, T& s, const T* zero, T* sink, const T* nH, const T* ngH,
           const T* nG) {
  for (int64_t i = 0; i < N; i += 4) {
    prefetch_rows(nH, i, N, false);
    prefetch_rows(ngH, i, N, false);
    prefetch_rows(nG, i, N, true);
    const Rows<T> Hr = rows_of(H, i, N, zero), gr4 = rows_of(gH, i, N, zero);
    const RowsOut<T> Gr = rows_out(G, i, N, sink);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ H0 = Hr.c[0], *__restrict__ H1 = Hr.c[1], *__restrict__ H2 = Hr.c[2],
            *__restrict__ H3 = Hr.c[3];
    const T *__restrict__ g0 = gr4.c[0], *__restrict__ g1 = gr4.c[1], *__restrict__ g2 = gr4.c[2],
            *__restrict__ g3 = gr4.c[3];
    T *__restrict__ G0 = Gr.c[0], *__restrict__ G1 = Gr.c[1], *__restrict__ G2 = Gr.c[2],
      *__restrict__ G3 = Gr.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, sum = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, sum)
    for (int64_t j = 0; j < N; ++j) {
      const T rj = r[j];
      T u0 = g0[j], u1 = g1[j], u2 = g2[j], u3 = g3[j];
      if (RULE == CLIP) {
        // U exactly as in update(): the mask is the forward's clamp, bit for bit
        const T v0 = H0[j] + h0 * rj, v1 = H1[j] + h1 * rj;
        const T v2 = H2[j] + h2 * rj, v3 = H3[j] + h3 * rj;
        u0 = ((v0 >= lo) & (v0 <= hi_c)) ? u0 : T(0);
        u1 = ((v1 >= lo) & (v1 <= hi_c)) ? u1 : T(0);
        u2 = ((v2 >= lo) & (v2 <= hi_c)) ? u2 : T(0);
        u3 = ((v3 >= lo) & (v3 <= hi_c)) ? u3 : T(0);
      }
      G0[j] = u0;
      G1[j] = u1;
      G2[j] = u2;
      G3[j] = u3;
      gr[j] += (u0 * h0 + u1 * h1) + (u2 * h2 + u3 * h3);
      a0 += u0 * rj;
      a1 += u1 * rj;
      a2 += u2 * rj;
      a3 += u3 * rj;
      if (RULE == OJA) gd[j] += (u0 * H0[j] + u1 * H1[j]) + (u2 * H2[j] + u3 * H3[j]);
      if (RULE == DECAY) sum += (u0 * H0[j] + u1 * H1[j]) + (u2 * H2[j] + u3 * H3[j]);
    }
    const T a4[4] = {a0, a1, a2, a3};
    add_rows(ghp, i, N, a4);
    s += sum;
  }
}

// Pass 1 of retroactive neuromodulation, U = H + M E: G_u = mask(G) to G, gd_j += sum_i G_u E.
template <typename T>
void pass1_retro(int64_t N, const T* H, const T* E, const T* gH, T* G, const T* mj, T* gd,
                 T lo, T hi_c) {
  for (int64_t i = 0; i < N; ++i) {
    const T *__restrict__ Hi = H + i * N, *__restrict__ Ei = E + i * N;
    const T* __restrict__ gi = gH + i * N;
    T* __restrict__ Gi = G + i * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      const T u = Hi[j] + mj[j] * Ei[j];
      const T gu = ((u >= lo) & (u <= hi_c)) ? gi[j] : T(0);
      Gi[j] = gu;
      gd[j] += gu * Ei[j];
    }
  }
}

// Eligibility trace E_t = (1 - eta) E + eta h_{t-1} (x) h: gr_j += sum_i h_i G_E,ij,
// ghp_i += eta sum_j G_E,ij h_j, s += sum G_E E.
template <typename T>
void pass1_elig(int64_t N, const T* E, const T* gE, const T* hp, const T* h, T eta, T* gr,
                T* ghp, T& s, const T* zero) {
  for (int64_t i = 0; i < N; i += 4) {
    const Rows<T> Er = rows_of(E, i, N, zero), gr4 = rows_of(gE, i, N, zero);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ E0 = Er.c[0], *__restrict__ E1 = Er.c[1], *__restrict__ E2 = Er.c[2],
            *__restrict__ E3 = Er.c[3];
    const T *__restrict__ g0 = gr4.c[0], *__restrict__ g1 = gr4.c[1], *__restrict__ g2 = gr4.c[2],
            *__restrict__ g3 = gr4.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, sum = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, sum)
    for (int64_t j = 0; j < N; ++j) {
      const T hj = h[j];
      gr[j] += (h0 * g0[j] + h1 * g1[j]) + (h2 * g2[j] + h3 * g3[j]);
      a0 += g0[j] * hj;
      a1 += g1[j] * hj;
      a2 += g2[j] * hj;
      a3 += g3[j] * hj;
      sum += (g0[j] * E0[j] + g1[j] * E1[j]) + (g2[j] * E2[j] + g3[j] * E3[j]);
    }
    const T a4[4] = {eta * a0, eta * a1, eta * a2, eta * a3};
    add_rows(ghp, i, N, a4);
    s += sum;
  }
}

// Pass 2, the plastic input y_j = sum_i h_{t-1,i} alpha_ij H_ij:
//   ghp_i += sum_j alpha_ij H_ij ga_j;  dalpha_ij += h_{t-1,i} ga_j H_ij;
//   D_ij = d_j D_ij + alpha_ij h_{t-1,i} ga_j  (MODE 2; MODE 1: no first term; MODE 0: no D)
template <typename T, int MODE>
void pass2(int64_t N, const T* H, const T* alpha, T* A, T* D, const T* hp, const T* ga,
           const T* d, T* ghp, const T* zero, T* sink) {
  for (int64_t i = 0; i < N; i += 4) {
    const Rows<T> Hr = rows_of(H, i, N, zero), ar = rows_of(alpha, i, N, zero);
    const RowsOut<T> Ar = rows_out(A, i, N, sink);
    const RowsOut<T> Dr = rows_out(D ? D : sink, D ? i : N, N, sink);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ H0 = Hr.c[0], *__restrict__ H1 = Hr.c[1], *__restrict__ H2 = Hr.c[2],
            *__restrict__ H3 = Hr.c[3];
    const T *__restrict__ w0 = ar.c[0], *__restrict__ w1 = ar.c[1], *__restrict__ w2 = ar.c[2],
            *__restrict__ w3 = ar.c[3];
    T *__restrict__ A0 = Ar.c[0], *__restrict__ A1 = Ar.c[1], *__restrict__ A2 = Ar.c[2],
      *__restrict__ A3 = Ar.c[3];
    T *__restrict__ D0 = Dr.c[0], *__restrict__ D1 = Dr.c[1], *__restrict__ D2 = Dr.c[2],
      *__restrict__ D3 = Dr.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t j = 0; j < N; ++j) {
      const T gj = ga[j];
      const T hg0 = h0 * gj, hg1 = h1 * gj, hg2 = h2 * gj, hg3 = h3 * gj;
      a0 += (w0[j] * H0[j]) * gj;
      a1 += (w1[j] * H1[j]) * gj;
      a2 += (w2[j] * H2[j]) * gj;
      a3 += (w3[j] * H3[j]) * gj;
      A0[j] += hg0 * H0[j];
      A1[j] += hg1 * H1[j];
      A2[j] += hg2 * H2[j];
      A3[j] += hg3 * H3[j];
      if (MODE == 2) {
        const T dj = d[j];
        D0[j] = dj * D0[j] + w0[j] * hg0;
        D1[j] = dj * D1[j] + w1[j] * hg1;
        D2[j] = dj * D2[j] + w2[j] * hg2;
        D3[j] = dj * D3[j] + w3[j] * hg3;
      } else if (MODE == 1) {
        D0[j] = w0[j] * hg0;
        D1[j] = w1[j] * hg1;
        D2[j] = w2[j] * hg2;
        D3[j] = w3[j] * hg3;
      }
    }
    const T a4[4] = {a0, a1, a2, a3};
    add_rows(ghp, i, N, a4);
  }
}

// Pass 2 with a scalar alpha (y = alpha z, z_j = sum_i h_i H_ij): ghp_i += alpha sum_j H_ij ga_j;
// D_ij = d_j D_ij + h_{t-1,i} alpha ga_j (MODE as in pass2).
template <typename T, int MODE>
void pass2_scalar(int64_t N, const T* H, T a_s, T* D, const T* hp, const T* ga, const T* d,
                  T* ghp, const T* zero, T* sink) {
  for (int64_t i = 0; i < N; i += 4) {
    const Rows<T> Hr = rows_of(H, i, N, zero);
    const RowsOut<T> Dr = rows_out(D ? D : sink, D ? i : N, N, sink);
    T h4[4];
    hp_of(hp, i, N, h4);
    const T h0 = h4[0], h1 = h4[1], h2 = h4[2], h3 = h4[3];
    const T *__restrict__ H0 = Hr.c[0], *__restrict__ H1 = Hr.c[1], *__restrict__ H2 = Hr.c[2],
            *__restrict__ H3 = Hr.c[3];
    T *__restrict__ D0 = Dr.c[0], *__restrict__ D1 = Dr.c[1], *__restrict__ D2 = Dr.c[2],
      *__restrict__ D3 = Dr.c[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t j = 0; j < N; ++j) {
      const T gj = ga[j], ag = a_s * gj;
      a0 += H0[j] * gj;
      a1 += H1[j] * gj;
      a2 += H2[j] * gj;
      a3 += H3[j] * gj;
      if (MODE == 2) {
        const T dj = d[j];
        D0[j] = dj * D0[j] + h0 * ag;
        D1[j] = dj * D1[j] + h1 * ag;
        D2[j] = dj * D2[j] + h2 * ag;
        D3[j] = dj * D3[j] + h3 * ag;
      } else if (MODE == 1) {
        D0[j] = h0 * ag;
        D1[j] = h1 * ag;
        D2[j] = h2 * ag;
        D3[j] = h3 * ag;
      }
    }
    const T a4[4] = {a_s * a0, a_s * a1, a_s * a2, a_s * a3};
    add_rows(ghp, i, N, a4);
  }
}

template <typename T>
void backward(const Step<T>& s, const Grad<T>& g) {
  const int64_t N = s.N, NN = N * N, K = s.K;
  const T lo = -s.clip, hi_c = s.clip, one_eta = T(1) - s.eta;
  const bool retro = s.neuromod == RETRO;
  const bool modulated = s.neuromod != NONE;
  int team = 1;
#pragma omp parallel num_threads(s.threads) if (s.threads > 1 && s.B > 1)
  {
    const int tid = omp_get_thread_num();
#pragma omp single
    team = omp_get_num_threads();
    T* acc_alpha = g.acc_alpha ? g.acc_alpha + tid * NN : nullptr;
    T* acc_wm = g.acc_wm ? g.acc_wm + tid * K * N : nullptr;
    T* acc_bm = g.acc_bm ? g.acc_bm + tid * K : nullptr;
    T acc_eta = 0;
    if (acc_alpha) std::fill(acc_alpha, acc_alpha + NN, T(0));
    if (acc_wm) std::fill(acc_wm, acc_wm + K * N, T(0));
    if (acc_bm) std::fill(acc_bm, acc_bm + K, T(0));
    std::vector<T> scratch(g.dH ? 0 : NN);
    std::vector<T> r(N), d(N), gh(N), gr(N), gd(N), gmod(K), gz(K), zero(N, T(0)), sink(4 * N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      const T* H = s.H + b * NN;
      const T* E = retro ? s.E + b * NN : nullptr;
      const T* hp = s.hp + b * N;
      const T* h = s.h + b * N;
      const T* mb = s.m ? s.m + b * K : nullptr;
      const T* gHb = g.gH ? g.gH + b * NN : nullptr;
      const T* gEb = g.gE ? g.gE + b * NN : nullptr;
      T* GU = g.dH ? g.dH + b * NN : scratch.data();  // masked dHebb_t, then dHebb_{t-1}
      T* ghp = g.ghp + b * N;
      const bool more = b + 1 < s.B;
      const T* nH = more ? H + NN : nullptr;
      const T* ngH = more && gHb ? gHb + NN : nullptr;
      const T* nG = more && g.dH ? GU + NN : nullptr;
      for (int64_t j = 0; j < N; ++j) gh[j] = g.gh ? g.gh[b * N + j] : T(0);
      for (int64_t k = 0; k < K; ++k) gmod[k] = g.gm ? g.gm[b * K + k] : T(0);
      std::fill(ghp, ghp + N, T(0));
      // r: the increment's post-synaptic factor (M_j for retroactive); d: the factor of
      // Hebb_{t-1} in U (1 for clip and retroactive)
      if (!retro) {
        for (int64_t j = 0; j < N; ++j) r[j] = rate_of(s, mb, j) * h[j];
        for (int64_t j = 0; j < N; ++j)
          d[j] = s.rule == DECAY ? one_eta : (s.rule == OJA ? T(1) - r[j] * h[j] : T(1));
      } else {
        for (int64_t j = 0; j < N; ++j) r[j] = mb[K == 1 ? 0 : j];
        for (int64_t j = 0; j < N; ++j) d[j] = T(1);
      }
      // ---- pass 1: the trace update ----
      if (gHb) {
        std::fill(gr.begin(), gr.end(), T(0));
        std::fill(gd.begin(), gd.end(), T(0));
        if (retro) {
          // U = H + M E: dM_j = sum_i G_u,ij E_ij (summed over j for a scalar M)
          pass1_retro(N, H, E, gHb, GU, r.data(), gd.data(), lo, hi_c);
          if (K == 1) {
            T sum = 0;
            for (int64_t j = 0; j < N; ++j) sum += gd[j];
            gmod[0] += sum;
          } else {
            for (int64_t j = 0; j < N; ++j) gmod[j] += gd[j];
          }
        } else {
          T s_gh_h = 0;
          if (s.rule == DECAY)
            pass1<T, DECAY>(N, H, gHb, GU, hp, r.data(), gr.data(), gd.data(), lo, hi_c, ghp,
                            s_gh_h, zero.data(), sink.data(), nH, ngH, nG);
          else if (s.rule == OJA)
            pass1<T, OJA>(N, H, gHb, GU, hp, r.data(), gr.data(), gd.data(), lo, hi_c, ghp,
                          s_gh_h, zero.data(), sink.data(), nH, ngH, nG);
          else
            pass1<T, CLIP>(N, H, gHb, GU, hp, r.data(), gr.data(), gd.data(), lo, hi_c, ghp,
                           s_gh_h, zero.data(), sink.data(), nH, ngH, nG);
          if (s.rule == DECAY) acc_eta -= s_gh_h;
          if (s.rule == OJA) {
            for (int64_t j = 0; j < N; ++j) {
              gr[j] -= gd[j] * h[j];
              gh[j] -= gd[j] * r[j];
            }
          }
          // r_j = rate_j h_j
          for (int64_t j = 0; j < N; ++j) gh[j] += gr[j] * rate_of(s, mb, j);
          if (s.neuromod == SIMPLE) {
            if (K == 1) {
              T sum = 0;
              for (int64_t j = 0; j < N; ++j) sum += gr[j] * h[j];
              gmod[0] += sum;
            } else {
              for (int64_t j = 0; j < N; ++j) gmod[j] += gr[j] * h[j];
            }
          } else {
            for (int64_t j = 0; j < N; ++j) acc_eta += gr[j] * h[j];
          }
        }
      }
      if (gEb) {
        // E_t = (1 - eta) E + eta h_{t-1} (x) h
        std::fill(gr.begin(), gr.end(), T(0));
        T s_ge_e = 0;
        pass1_elig(N, E, gEb, hp, h, s.eta, gr.data(), ghp, s_ge_e, zero.data());
        T s_th = 0;
        for (int64_t j = 0; j < N; ++j) {
          gh[j] += s.eta * gr[j];
          s_th += gr[j] * h[j];
        }
        acc_eta += s_th - s_ge_e;
      }
      // ---- modulator: M = tanh(h W_m^T + b_m) ----
      if (modulated) {
        for (int64_t k = 0; k < K; ++k) gz[k] = gmod[k] * (T(1) - mb[k] * mb[k]);
        for (int64_t k = 0; k < K; ++k) {
          const T gk = gz[k];
          const T* __restrict__ wk = s.wm + k * N;
          T* __restrict__ ak = acc_wm + k * N;
          T* __restrict__ ghj = gh.data();
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            ghj[j] += gk * wk[j];
            ak[j] += gk * h[j];
          }
          acc_bm[k] += gk;
        }
      }
      T* gab = g.ga + b * N;
      for (int64_t j = 0; j < N; ++j) gab[j] = gh[j] * (T(1) - h[j] * h[j]);
      // dE_{t-1} = G_u M + (1 - eta) G_E (before G_u is overwritten by dHebb_{t-1})
      if (g.dE && retro) {
        T* dE = g.dE + b * NN;
        for (int64_t i = 0; i < N; ++i) {
          T* __restrict__ Di = dE + i * N;
          const T* __restrict__ Gi = GU + i * N;
          const T* __restrict__ gi = gEb ? gEb + i * N : nullptr;
          const T* __restrict__ rj = r.data();
          if (gHb && gi) {
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) Di[j] = Gi[j] * rj[j] + one_eta * gi[j];
          } else if (gHb) {
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) Di[j] = Gi[j] * rj[j];
          } else if (gi) {
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) Di[j] = one_eta * gi[j];
          } else {
            std::fill(Di, Di + N, T(0));
          }
        }
      }
      // ---- pass 2: the plastic input ----
      T* dH = g.dH ? g.dH + b * NN : nullptr;
      const int mode = dH == nullptr ? 0 : (gHb ? 2 : 1);
      if (s.scalar_alpha) {
        const T a_s = s.alpha[0];
        if (mode == 2)
          pass2_scalar<T, 2>(N, H, a_s, dH, hp, gab, d.data(), ghp, zero.data(), sink.data());
        else if (mode == 1)
          pass2_scalar<T, 1>(N, H, a_s, dH, hp, gab, d.data(), ghp, zero.data(), sink.data());
        else
          pass2_scalar<T, 0>(N, H, a_s, dH, hp, gab, d.data(), ghp, zero.data(), sink.data());
      } else {
        if (mode == 2)
          pass2<T, 2>(N, H, s.alpha, acc_alpha, dH, hp, gab, d.data(), ghp, zero.data(),
                      sink.data());
        else if (mode == 1)
          pass2<T, 1>(N, H, s.alpha, acc_alpha, dH, hp, gab, d.data(), ghp, zero.data(),
                      sink.data());
        else
          pass2<T, 0>(N, H, s.alpha, acc_alpha, dH, hp, gab, d.data(), ghp, zero.data(),
                      sink.data());
      }
    }
    if (g.acc_eta) g.acc_eta[tid] = acc_eta;
  }
  // Per-thread partial sums into slot 0 (in a fixed order: the result does not depend on
  // timing, only on the number of threads).
  for (int t = 1; t < team; ++t) {
    if (g.acc_alpha)
      for (int64_t k = 0; k < NN; ++k) g.acc_alpha[k] += g.acc_alpha[t * NN + k];
    if (g.acc_wm)
      for (int64_t k = 0; k < K * N; ++k) g.acc_wm[k] += g.acc_wm[t * K * N + k];
    if (g.acc_bm)
      for (int64_t k = 0; k < K; ++k) g.acc_bm[k] += g.acc_bm[t * K + k];
    if (g.acc_eta) g.acc_eta[0] += g.acc_eta[t];
  }
}

}  // namespace

#define HG_EXPORT(T, SUFFIX)                                                                  \
  extern "C" void hg_plastic_input_##SUFFIX(const Step<T>* s, T* y) { plastic_input(*s, y); } \
  extern "C" void hg_update_##SUFFIX(const Step<T>* s, T* Hn, T* En) { update(*s, Hn, En); } \
  extern "C" void hg_backward_##SUFFIX(const Step<T>* s, const Grad<T>* g) { backward(*s, *g); }

HG_EXPORT(float, f32)
HG_EXPORT(double, f64)
"""

_NATIVE_FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-std=c++17",
)
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
    key = hashlib.sha256(
        "\0".join([_NATIVE_SOURCE, compiler, *_NATIVE_FLAGS, _cpu_fingerprint()]).encode()
    ).hexdigest()[:20]
    cache = Path(os.environ.get("HEBBGYM_CACHE_DIR", Path.home() / ".cache" / "hebbgym"))
    path = cache / f"plastic_kernels_{key}.so"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source = Path(tmp) / "plastic_kernels.cpp"
            source.write_text(_NATIVE_SOURCE)
            built = Path(tmp) / "plastic_kernels.so"
            result = subprocess.run(
                [compiler, *_NATIVE_FLAGS, "-o", str(built), str(source)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(f"compiling the plastic kernels failed:\n{result.stderr}")
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


class _GradArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "gH", "gE", "gh", "gm", "dH", "dE", "ga", "ghp",
            "acc_alpha", "acc_wm", "acc_bm", "acc_eta",
        )
    ]  # fmt: skip


class _NativeFns(NamedTuple):
    args: type
    plastic_input: Any
    update: Any
    backward: Any


def _native_fns(dtype: torch.dtype) -> _NativeFns:
    fns = _state.get(dtype)
    if fns is None:
        lib = _native_library()
        suffix = "f32" if dtype == torch.float32 else "f64"
        fns = _NativeFns(
            _StepArgs32 if dtype == torch.float32 else _StepArgs64,
            getattr(lib, f"hg_plastic_input_{suffix}"),
            getattr(lib, f"hg_update_{suffix}"),
            getattr(lib, f"hg_backward_{suffix}"),
        )
        for f in fns[1:]:
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


def _threads(hebb: Tensor) -> int:
    """Threads for a kernel: torch's count, but one below ``_PARALLEL_GRAIN`` trace elements,
    where waking a second thread (or waiting for a busy core) costs more than it saves."""
    if hebb.numel() < _PARALLEL_GRAIN:
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
) -> Any:
    """The C struct of one step; every tensor it points to must be contiguous, and alive
    while the kernels run (the caller holds them)."""
    n = hebb.shape[1]
    return fns.args(
        hebb.shape[0],
        n,
        spec.modulator_size(n),
        _RULE_CODES[spec.rule],
        _NEUROMOD_CODES[spec.neuromod],
        int(spec.scalar_alpha),
        _threads(hebb),
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
    """One step: ``y`` (or ``z``) in one pass over the trace, the ``[B, N]`` products in
    ATen, then the trace update in one more pass."""
    hebb, elig, h_prev = _contiguous(hebb), _contiguous(elig), _contiguous(h_prev)
    alpha, wm = _contiguous(p.alpha), _contiguous(p.wm)
    fns = _native_fns(hebb.dtype)
    args = _step_args(fns, spec, p, hebb, elig, h_prev, alpha, wm)
    y = torch.empty_like(h_prev)
    fns.plastic_input(ctypes.byref(args), ctypes.c_void_p(y.data_ptr()))
    h, m = _activations(spec, p, x, h_prev, y)
    new_hebb, new_elig = _native_update_with(fns, args, spec, h, m, hebb)
    return _Out(h, m, y if spec.scalar_alpha else None, new_hebb, new_elig)


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
    n_alpha = 0 if spec.scalar_alpha else n * n
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
        acc_alpha.data_ptr() if n_alpha else None,
        acc_wm.data_ptr() if k else None,
        acc_bm.data_ptr() if k else None,
        acc_eta.data_ptr(),
    )
    fns.backward(ctypes.byref(args), ctypes.byref(grad_args))
    out = _Grads()
    _linear_grads(out, p, x, h_prev, g_a, g_hp, need_x)
    out.alpha = (z * g_a).sum() if spec.scalar_alpha else acc_alpha[:n_alpha].view(n, n)
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
    outputs = _StepFunction.apply(spec, x_t, state.h, hebb, elig, *_Params.of(core))
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


class _SequenceFunction(torch.autograd.Function):
    """``T`` steps as one graph node: saves the ``[T, B, N]`` activations and a trace every
    ``ceil(sqrt(T))`` steps; backward walks the segments in reverse, replaying each one's
    traces from its checkpoint, then its steps in reverse."""

    @staticmethod
    def forward(ctx: Any, spec: FusedSpec, x: Tensor, h0: Tensor, hebb0, elig0, *params):
        ctx.set_materialize_grads(False)
        p = _Params(*params)
        native = _use_native(spec, h0)
        steps = x.shape[0]
        interval = sequence_checkpoint_interval(steps)
        hs, ms, zs, checkpoints = [], [], [], []
        h_prev, hebb, elig = h0, hebb0, elig0
        for t in range(steps):
            if spec.plastic and t % interval == 0:
                checkpoints += [hebb, elig]
            out = _step_forward(spec, p, x[t], h_prev, hebb, elig, native)
            hs.append(out.h)
            ms.append(out.m)
            zs.append(out.z)
            h_prev, hebb, elig = out.h, out.hebb, out.elig
        out_h = torch.stack(hs)
        out_m = torch.stack(ms) if spec.modulated else None
        out_z = torch.stack(zs) if spec.plastic and spec.scalar_alpha else None
        ctx.spec = spec
        ctx.native = native
        ctx.interval = interval
        ctx.save_for_backward(x, h0, out_h, out_m, out_z, *p, *checkpoints)
        return _join_outputs(spec, _Out(out_h, out_m, None, hebb, elig))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None):
        spec: FusedSpec = ctx.spec
        g_hs, g_ms, g_hebb, g_elig = _split_outputs(spec, grads)
        saved = ctx.saved_tensors
        x, h0, hs, ms, zs = saved[:5]
        p = _Params(*saved[5 : 5 + _N_PARAMS])
        flat = saved[5 + _N_PARAMS :]
        steps, interval = x.shape[0], ctx.interval
        need = ctx.needs_input_grad
        need_first_trace = need[_NEED_HEBB] or need[_NEED_ELIG]

        g_x = torch.empty_like(x) if need[_NEED_X] else None
        sums: list[Tensor | None] = [None] * _N_PARAMS
        g_next: Tensor | None = None  # gradient w.r.t. h_t from step t + 1
        for start in reversed(range(0, steps, interval)):
            stop = min(start + interval, steps)
            # Incoming traces of the segment's steps, rebuilt from its checkpoint.
            inputs: list[tuple[Tensor | None, Tensor | None]] = [(None, None)] * (stop - start)
            if spec.plastic:
                k = start // interval
                inputs = [(flat[2 * k], flat[2 * k + 1])]
                for t in range(start, stop - 1):
                    h_prev = h0 if t == 0 else hs[t - 1]
                    m = ms[t] if spec.modulated else None
                    inputs.append(_update(spec, p, h_prev, hs[t], m, *inputs[-1], ctx.native))
            for t in reversed(range(start, stop)):
                g_h = g_next if g_hs is None else _add(g_next, g_hs[t])
                g = _step_backward(
                    ctx.native,
                    spec,
                    p,
                    x[t],
                    h0 if t == 0 else hs[t - 1],
                    hs[t],
                    ms[t] if spec.modulated else None,
                    zs[t] if zs is not None else None,
                    *inputs.pop(),
                    g_h,
                    None if g_ms is None else g_ms[t],
                    g_hebb,
                    g_elig,
                    t > 0 or need_first_trace,
                    need[_NEED_X],
                )
                if g_x is not None:
                    g_x[t] = g.x
                g_next, g_hebb, g_elig = g.h_prev, g.hebb, g.elig
                for k, value in enumerate(g.params()):
                    if value is not None:
                        sums[k] = value.clone() if sums[k] is None else sums[k].add_(value)
        return (None, g_x, g_next, g_hebb, g_elig, *sums)


def fused_sequence(
    core: Any, spec: FusedSpec, x: Tensor, state: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``T`` steps of ``core`` from ``state``: ``(h [T, B, N], M [T, B, K], Hebb_T, E_T)``."""
    hebb = state.hebb if spec.plastic else None
    elig = state.eligibility if spec.retroactive else None
    outputs = _SequenceFunction.apply(spec, x, state.h, hebb, elig, *_Params.of(core))
    hs, ms, new_hebb, new_elig = _split_outputs(spec, outputs)
    return (
        hs,
        hs.new_zeros(hs.shape[0], hs.shape[1], 0) if ms is None else ms,
        state.hebb if new_hebb is None else new_hebb,
        state.eligibility if new_elig is None else new_elig,
    )
