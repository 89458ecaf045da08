"""Forward+backward time and memory of the plastic core: fused vs reference vs nn.RNN/nn.LSTM.

Every row runs one episode of ``T`` steps over a batch of ``B`` from a zero state, then one
backward pass of ``sum(h)`` through the whole episode, as A2C training does. Rows:

* ``fused step``: :meth:`PlasticCore.step` called once per step with the graph (one autograd
  node per step), with the native C++ kernels, then with the torch-op kernels;
* ``fused sequence``: :meth:`PlasticCore.forward` over the whole input sequence (one C++ call
  for the forward, one for the backward);
* ``... played + replayed``: what training does (:func:`hebbgym.train.rollout.collect_rollout`):
  the episode played step by step under ``no_grad``, keeping what ``replay_checkpoints``
  asks for, then replayed as one sequence with the graph (the fused core reuses the played
  forward), and the backward;
* ``reference step``: ``implementation="reference"``, plain autograd ops;
* ``nn.RNN`` / ``nn.LSTM``: the baselines of :mod:`hebbgym.agents.baselines` with the hidden
  size whose parameter count (plus 5 linear heads) matches the plastic core's, run over the
  whole sequence (one ATen call for all steps) and one step at a time.

Timing: the rows are measured side by side, round-robin, ``--reps`` times after one warm-up
round; the table shows the median time (and the minimum): wall-clock, or with ``--clock cpu``
(and ``--threads 1``) the CPU time of the calling thread, which time spent waiting for a core
on a busy machine does not inflate. Memory is measured in a
separate pass after the timed ones: ``peak MB`` is the peak of torch's CPU allocations during
forward+backward, above what was allocated before (torch.profiler ``profile_memory``, running
sum of its allocation events), and ``saved MB`` the distinct non-parameter storages saved for
backward (``torch.autograd.graph.saved_tensors_hooks``).

glibc's allocator is tuned once for the whole process (:func:`hebbgym.agents.fused.tune_malloc`,
as the fused path does on first use) so that every row runs under the same allocator;
``--no-tune-malloc`` keeps glibc's defaults for every row instead.

``first run s`` is the warm-up run: it includes building the native kernels (cached on disk
afterwards) or, with ``--compile``, compiling the reference step with torch.compile.

Usage: ``python benchmarks/plastic_core.py [--threads 2] [--reps 5] [--quick] [--compile]``
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hebbgym.agents import fused
from hebbgym.agents.baselines import LSTMCore, RNNCore, count_parameters, matched_hidden_size
from hebbgym.agents.plastic import PlasticConfig, PlasticCore, play

INPUT_SIZE = 16
HEAD_OUTPUTS = 5  # 4 actions + 1 value, as in the maze
VARIANTS = {
    "modulated": {"rule": "clip", "neuromod": "simple"},
    "retroactive": {"rule": "clip", "neuromod": "retroactive"},
    "plastic": {"rule": "decay", "neuromod": "none"},
}


@dataclass
class Row:
    name: str
    run: Callable[[], None]
    times: list[float]
    first_s: float = float("nan")
    peak_mb: float = float("nan")
    saved_mb: float = float("nan")


def _episode_steps(core: nn.Module, x: torch.Tensor) -> None:
    state = core.initial_state(x.shape[1])
    hs = []
    for t in range(x.shape[0]):
        h, _, state = core.step(x[t], state)
        hs.append(h)
    torch.stack(hs).sum().backward()


def _episode_sequence(core: nn.Module, x: torch.Tensor) -> None:
    out, _ = core(x)
    out.h.sum().backward()


def _episode_played_then_replayed(core: nn.Module, x: torch.Tensor) -> None:
    core.replay(x, play(core, x)).h.sum().backward()


def _rows(
    variant: str, batch: int, hidden: int, steps: int, compiled: bool
) -> tuple[list[Row], dict[str, int], list[nn.Module]]:
    torch.manual_seed(0)
    x = torch.randn(steps, batch, INPUT_SIZE)
    config = PlasticConfig(INPUT_SIZE, hidden, **VARIANTS[variant])
    plastic = {
        "native": PlasticCore(config, kernels="native"),
        "torch": PlasticCore(config, kernels="torch"),
    }
    reference = PlasticCore(config, implementation="reference")
    target = count_parameters(reference) + HEAD_OUTPUTS * (hidden + 1)
    n_rnn = matched_hidden_size(lambda n: RNNCore(INPUT_SIZE, n), target, HEAD_OUTPUTS)
    n_lstm = matched_hidden_size(lambda n: LSTMCore(INPUT_SIZE, n), target, HEAD_OUTPUTS)
    rnn, lstm = RNNCore(INPUT_SIZE, n_rnn), LSTMCore(INPUT_SIZE, n_lstm)
    rows = [
        Row("fused step (native kernels)", lambda: _episode_steps(plastic["native"], x), []),
        Row("fused step (torch kernels)", lambda: _episode_steps(plastic["torch"], x), []),
        Row("fused sequence (native)", lambda: _episode_sequence(plastic["native"], x), []),
        Row(
            "fused played + replayed (training)",
            lambda: _episode_played_then_replayed(plastic["native"], x),
            [],
        ),
        Row("reference step", lambda: _episode_steps(reference, x), []),
        Row(f"nn.RNN N={n_rnn}, sequence", lambda: _episode_sequence(rnn, x), []),
        Row(f"nn.RNN N={n_rnn}, per step", lambda: _episode_steps(rnn, x), []),
        Row(
            f"nn.RNN N={n_rnn}, played + replayed",
            lambda: _episode_played_then_replayed(rnn, x),
            [],
        ),
        Row(f"nn.LSTM N={n_lstm}, sequence", lambda: _episode_sequence(lstm, x), []),
        Row(f"nn.LSTM N={n_lstm}, per step", lambda: _episode_steps(lstm, x), []),
    ]
    if compiled:
        # torch.compile of the reference step: the other way to fuse (compiles on first use).
        compiled_core = PlasticCore(config, implementation="reference")
        compiled_core.step = torch.compile(compiled_core.reference_step, dynamic=False)
        rows.insert(
            5, Row("reference step, torch.compile", lambda: _episode_steps(compiled_core, x), [])
        )
    modules = [plastic["native"], plastic["torch"], reference, rnn, lstm]
    return rows, {"rnn": n_rnn, "lstm": n_lstm}, modules


def _time_rows(rows: list[Row], reps: int, clock: Callable[[], float]) -> None:
    for row in rows:  # warm-up: builds the kernels (or compiles), fills allocator caches
        start = time.perf_counter()
        row.run()
        row.first_s = time.perf_counter() - start
    for _ in range(reps):
        for row in rows:
            gc.collect()
            gc.disable()
            try:
                start = clock()
                row.run()
                row.times.append(clock() - start)
            finally:
                gc.enable()


def _peak_allocated_mb(run: Callable[[], None]) -> float:
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    return max(itertools.accumulate(n for _, n in events), default=0) / 2**20


def _saved_mb(run: Callable[[], None], modules: list[nn.Module]) -> float:
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values()) / 2**20


def _measure_memory(rows: list[Row], modules: list[nn.Module]) -> None:
    for row in rows:
        row.peak_mb = _peak_allocated_mb(row.run)
        row.saved_mb = _saved_mb(row.run, modules)


def _table(rows: list[Row]) -> str:
    ref = statistics.median(next(r for r in rows if r.name == "reference step").times)
    rnn = statistics.median(next(r for r in rows if "RNN" in r.name and "sequence" in r.name).times)
    lines = [
        "| implementation | fwd+bwd ms (median) | min ms | speed-up vs reference "
        "| time / nn.RNN sequence | peak MB | saved MB | first run s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        med = statistics.median(row.times)
        lines.append(
            f"| {row.name} | {med * 1e3:.1f} | {min(row.times) * 1e3:.1f} | {ref / med:.2f}x "
            f"| {med / rnn:.2f} | {row.peak_mb:.1f} | {row.saved_mb:.1f} | {row.first_s:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--variants", default="modulated,retroactive,plastic")
    parser.add_argument("--large", default="30x200x200", help="BxNxT of the larger size")
    parser.add_argument("--large-variants", default="modulated")
    parser.add_argument("--quick", action="store_true", help="2 reps, the base size only")
    parser.add_argument("--no-tune-malloc", action="store_true")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: CPU time of the calling thread (needs --threads 1; robust on a busy machine)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="add torch.compile of the reference step"
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    if args.no_tune_malloc:
        os.environ["HEBBGYM_TUNE_MALLOC"] = "0"
    tuned = fused.tune_malloc()
    torch.set_num_threads(args.threads)
    reps = 2 if args.quick else args.reps
    sizes = [((30, 100, 200), args.variants.split(","))]
    if not args.quick and args.large:
        b, n, t = (int(v) for v in args.large.split("x"))
        sizes.append(((b, n, t), args.large_variants.split(",")))

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
        f"input size {INPUT_SIZE}, native kernels: {fused.native_kernels_available()}, "
        f"malloc tuned: {tuned}, clock: {args.clock}, load average {os.getloadavg()[0]:.2f}"
    )
    for (batch, hidden, steps), variants in sizes:
        for variant in variants:
            rows, matched, modules = _rows(variant, batch, hidden, steps, args.compile)
            _time_rows(rows, reps, clock)
            _measure_memory(rows, modules)
            cfg = VARIANTS[variant]
            print(
                f"\n### {variant} ({cfg['rule']}, neuromod={cfg['neuromod']}): "
                f"B={batch}, N={hidden}, T={steps}; matched nn.RNN N={matched['rnn']}, "
                f"nn.LSTM N={matched['lstm']}; median of {reps}\n"
            )
            print(_table(rows), flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
