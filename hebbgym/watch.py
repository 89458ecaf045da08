"""Watch a trained agent play, beside what goes on inside it.

A return curve says *whether* an agent learns within an episode; these frames show *how*.
Each step is one frame: the env's own picture on the left and, on the right, the
neuromodulator ``M(t)`` so far (when does the network decide to learn?), the rewards and
running return (what it is reacting to) and the Hebbian trace now (what it has stored).
Frames go to a pygame window or to a GIF/MP4. Panels are drawn with the env's
:class:`~hebbgym.envs.rendering.Painter`, so pygame stays the only drawing dependency.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from hebbgym.agents.actor_critic import ActorCritic
from hebbgym.agents.plastic import CoreState
from hebbgym.envs.rendering import (
    ACCENT,
    AGENT,
    BACKGROUND,
    BAD,
    GOOD,
    GRID,
    INK,
    MUTED,
    Color,
    Painter,
    import_pygame,
)
from hebbgym.recording import VIDEO_SUFFIXES, write_video
from hebbgym.train.config import TrainConfig
from hebbgym.train.rollout import to_env_actions

PANEL_WIDTH = 420
PLOT_HEIGHT = 190
HEATMAP_SIZE = 240
HEATMAP_PANEL_HEIGHT = 350
MAX_MODULATOR_LINES = 4
LINE_COLORS: tuple[Color, ...] = (AGENT, ACCENT, (150, 70, 190), (20, 150, 150))
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Layout:
    """Where everything goes in a composed frame; fixed per env so videos keep one size."""

    env_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        width, height = self.env_size
        return width + PANEL_WIDTH, max(height, 2 * PLOT_HEIGHT + HEATMAP_PANEL_HEIGHT)

    def panel(self, index: int) -> Box:
        """Panel ``index`` (0: M(t), 1: rewards, 2: Hebbian trace) as ``(x, y, w, h)``."""
        x, y = self.env_size[0], index * PLOT_HEIGHT
        return x, y, PANEL_WIDTH, PLOT_HEIGHT if index < 2 else HEATMAP_PANEL_HEIGHT

    @property
    def heatmap(self) -> Box:
        """The heatmap's own pixels, e.g. for tests that check it changes."""
        x, y, w, _ = self.panel(2)
        return x + (w - HEATMAP_SIZE) // 2, y + 34, HEATMAP_SIZE, HEATMAP_SIZE


@dataclass
class EpisodeHistory:
    """What the panels show of the episode so far (reward bounds: the task's own)."""

    length: int
    reward_low: float
    reward_high: float
    modulation: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    hebb: np.ndarray | None = None

    @property
    def reward_bound(self) -> float:
        return max(abs(self.reward_low), abs(self.reward_high), 1e-6)


def _vertical_text(painter: Painter, x: float, y: float, text: str, color: Color = MUTED) -> None:
    """A y-axis label, rotated to read bottom-up and centred on ``(x, y)``."""
    image = painter.pygame.transform.rotate(painter.font(18).render(text, True, color), 90)
    painter.surface.blit(
        image, (round(x - image.get_width() / 2), round(y - image.get_height() / 2))
    )


def _axes(painter: Painter, box: Box, title: str, y_label: str, length: int) -> Box:
    """Title, frame, x ticks (steps 0..length) and y label of a plot; returns the plot area."""
    x, y, w, h = box
    painter.text(x + 12, y + 8, title, INK, 22)
    area = (x + 52, y + 34, w - 104, h - 70)
    ax, ay, aw, ah = area
    painter.rect(ax, ay, aw, ah, GRID, 1)
    for step in (0, length // 2, length):
        tick_x = ax + aw * step / max(length, 1)
        painter.line((tick_x, ay + ah), (tick_x, ay + ah + 4), MUTED)
        painter.text(tick_x, ay + ah + 12, str(step), MUTED, 17, center=True)
    painter.text(ax + aw / 2, ay + ah + 27, "step", MUTED, 18, center=True)
    _vertical_text(painter, x + 12, ay + ah / 2, y_label)
    return area


def _draw_modulation(painter: Painter, box: Box, history: EpisodeHistory) -> None:
    """M(t) is a tanh output, so a fixed [-1, 1] axis keeps frames comparable."""
    ax, ay, aw, ah = _axes(painter, box, "Neuromodulator M(t)", "M(t)", history.length)
    zero_y = ay + ah / 2
    painter.line((ax, zero_y), (ax + aw, zero_y), MUTED)
    for value, label in ((1, "+1"), (0, "0"), (-1, "-1")):
        painter.text(ax - 6 - 7 * len(label), ay + ah / 2 * (1 - value) - 6, label, MUTED, 17)
    if not history.modulation:
        return
    m = np.stack(history.modulation)  # [t, K]
    if m.shape[1] == 0:
        painter.text(ax + aw / 2, zero_y - 18, "no neuromodulation", MUTED, 20, center=True)
        return
    step_x = aw / max(history.length, 1)
    for k in range(min(m.shape[1], MAX_MODULATOR_LINES)):
        points = [
            (ax + (t + 0.5) * step_x, zero_y - float(np.clip(v, -1, 1)) * ah / 2)
            for t, v in enumerate(m[:, k])
        ]
        painter.lines(points, LINE_COLORS[k], 2)
        painter.circle(*points[-1], 3, LINE_COLORS[k])
    if m.shape[1] > MAX_MODULATOR_LINES:
        note = f"first {MAX_MODULATOR_LINES} of {m.shape[1]} outputs"
        painter.text(box[0] + box[2] - 150, box[1] + 12, note, MUTED, 17)
    painter.text(ax + aw + 6, zero_y - 8, f"{m[-1, 0]:+.2f}", LINE_COLORS[0], 17)


def _draw_rewards(painter: Painter, box: Box, history: EpisodeHistory) -> None:
    """Bars on the task's fixed reward scale (left axis), the return on its own (right axis).

    Tasks without negative rewards put zero at the bottom rather than waste half the plot.
    """
    ax, ay, aw, ah = _axes(painter, box, "Rewards (bars), return (line)", "reward", history.length)
    signed, bound = history.reward_low < 0, history.reward_bound
    zero_y, half = (ay + ah / 2, ah / 2) if signed else (ay + ah, ah)
    painter.line((ax, zero_y), (ax + aw, zero_y), MUTED)
    for value in (bound, -bound) if signed else (bound, 0.0):
        painter.text(ax - 44, zero_y - value / bound * half - 6, f"{value:+.1f}", MUTED, 17)
    _vertical_text(painter, box[0] + box[2] - 10, ay + ah / 2, "return", INK)
    if not history.rewards:
        return
    rewards = np.asarray(history.rewards)
    step_x = aw / max(history.length, 1)
    for t, reward in enumerate(rewards):
        height = float(np.clip(reward / bound, -1, 1)) * half
        top, color = min(zero_y, zero_y - height), GOOD if reward > 0 else BAD
        painter.rect(ax + t * step_x + 1, top, max(step_x - 2, 1), abs(height), color)
    returns = np.cumsum(rewards)
    scale = max(float(np.abs(returns).max()), 1.0)
    points = [(ax + (t + 0.5) * step_x, zero_y - r / scale * half) for t, r in enumerate(returns)]
    painter.lines(points, INK, 2)
    painter.circle(*points[-1], 3, INK)
    for value in (scale, -scale) if signed else (scale, 0.0):
        painter.text(ax + aw + 6, zero_y - value / scale * half - 6, f"{value:+.0f}", INK, 17)
    x, y, w, _ = box
    painter.text(x + w - 110, y + 10, f"return {returns[-1]:+.1f}", INK, 20)


def _diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """Blue (-scale) → white (0) → red (+scale), as uint8 RGB of shape ``values.shape + (3,)``."""
    blue, white, red = (np.array(c, np.float64) for c in ((40, 90, 200), (255, 255, 255), BAD))
    s = np.clip(values / scale, -1, 1)[..., None] if scale > 0 else np.zeros((*values.shape, 1))
    colors = np.where(s < 0, white + (blue - white) * -s, white + (red - white) * s)
    return colors.round().astype(np.uint8)


def _draw_hebb(painter: Painter, box: Box, layout: Layout, hebb: np.ndarray | None) -> None:
    """The trace as it is now; each frame is scaled to its own max |value| to show structure."""
    x, y, w, _ = box
    painter.text(x + 12, y + 8, "Hebbian trace Hebb[i, j], this step", INK, 22)
    hx, hy, size, _ = layout.heatmap
    if hebb is None:
        painter.rect(hx, hy, size, size, GRID, 1)
        painter.text(hx + size / 2, hy + size / 2, "no Hebbian trace", MUTED, 20, center=True)
        painter.text(
            hx + size / 2, hy + size / 2 + 20, "(non-plastic core)", MUTED, 20, center=True
        )
        return
    scale = float(np.abs(hebb).max())
    pixels = _diverging(hebb, scale).transpose(1, 0, 2)  # surfarray wants [x=post, y=pre]
    image = painter.pygame.transform.scale(
        painter.pygame.surfarray.make_surface(pixels), (size, size)
    )
    painter.surface.blit(image, (hx, hy))
    painter.rect(hx, hy, size, size, MUTED, 1)
    _vertical_text(painter, hx - 14, hy + size / 2, "pre-synaptic i")
    painter.text(hx + size / 2, hy + size + 12, "post-synaptic j", MUTED, 18, center=True)
    bar_y = hy + size + 26
    gradient = _diverging(np.linspace(-1, 1, size)[:, None].repeat(10, 1), 1.0)
    painter.surface.blit(painter.pygame.surfarray.make_surface(gradient), (hx, bar_y))
    for frac, label in ((0, f"{-scale:+.3f}"), (0.5, "0"), (1, f"{scale:+.3f}")):
        painter.text(hx + frac * size, bar_y + 20, label, MUTED, 17, center=True)
    painter.text(x + 12, bar_y + 34, f"min {hebb.min():+.4f}   max {hebb.max():+.4f}", INK, 18)
    painter.text(x + w - 12 - 60, bar_y + 34, f"N = {hebb.shape[0]}", MUTED, 18)


class Dashboard:
    """Composes the env frame and the three panels onto one surface per step."""

    def __init__(self, env_size: tuple[int, int]) -> None:
        pygame = import_pygame()
        pygame.font.init()
        self.layout = Layout(env_size)
        self.painter = Painter(pygame.Surface(self.layout.size))

    def compose(self, env_frame: np.ndarray, history: EpisodeHistory) -> np.ndarray:
        """One ``(H, W, 3) uint8`` frame: env left, panels right."""
        painter, layout = self.painter, self.layout
        painter.fill(BACKGROUND)
        painter.surface.blit(
            painter.pygame.surfarray.make_surface(env_frame.transpose(1, 0, 2)), (0, 0)
        )
        painter.line((layout.env_size[0], 0), (layout.env_size[0], layout.size[1]), GRID, 2)
        _draw_modulation(painter, layout.panel(0), history)
        _draw_rewards(painter, layout.panel(1), history)
        _draw_hebb(painter, layout.panel(2), layout, history.hebb)
        pixels = painter.pygame.surfarray.array3d(painter.surface)
        return np.ascontiguousarray(pixels.transpose(1, 0, 2), dtype=np.uint8)


class _Window:
    """The human-mode window: shows frames at ``fps`` and notices when to stop."""

    def __init__(self, size: tuple[int, int], fps: int) -> None:
        self.pygame = import_pygame()
        self.pygame.display.init()
        self.pygame.display.set_caption("hebbgym watch")
        self.screen = self.pygame.display.set_mode(size)
        self.clock = self.pygame.time.Clock()
        self.fps = fps

    def show(self, frame: np.ndarray) -> bool:
        """Show ``frame``; ``False`` once the window is closed or Escape is pressed."""
        pygame = self.pygame
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (
                event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE
            ):
                return False
        self.screen.blit(pygame.surfarray.make_surface(frame.transpose(1, 0, 2)), (0, 0))
        pygame.display.flip()
        self.clock.tick(self.fps)
        return True

    def close(self) -> None:
        self.pygame.display.quit()


def _check_out(out: str | Path | None) -> Path | None:
    """Refuse an unusable output path up front: a typo must not cost a whole episode."""
    if out is None:
        return None
    out = Path(out)
    if out.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"out must end in one of {VIDEO_SUFFIXES}, got {str(out)!r}")
    if out.suffix == ".mp4" and importlib.util.find_spec("av") is None:
        raise RuntimeError(f"{out}: MP4 needs the 'av' package (pip install av); use .gif")
    return out


def _trace(state: CoreState) -> np.ndarray | None:
    """Episode 0's Hebbian trace, or ``None`` for cores without one (``[B, 0, 0]``)."""
    return state.hebb[0].cpu().numpy() if state.hebb.numel() else None


def _play(
    env: gym.vector.VectorEnv,
    agent: ActorCritic,
    seed: int,
    generator: torch.Generator,
    greedy: bool,
    emit: Callable[[EpisodeHistory], bool],
) -> float | None:
    """One episode, a frame per step; its return, or ``None`` if ``emit`` asked to stop."""
    rules = env.unwrapped.rules
    obs, _ = env.reset(seed=seed)
    state = agent.initial_state(1)
    history = EpisodeHistory(env.unwrapped.batch.length, rules.reward_low, rules.reward_high)
    history.hebb = _trace(state)
    if not emit(history):
        return None
    for _ in range(history.length):
        out, state = agent.step(torch.as_tensor(obs), state, generator, greedy)
        obs, reward, _, _, _ = env.step(to_env_actions(out.action, env.single_action_space))
        history.modulation.append(out.m[0].cpu().numpy())
        history.rewards.append(float(reward[0]))
        history.hebb = _trace(state)
        if not emit(history):
            return None
    return float(sum(history.rewards))


def watch_agent(
    config: TrainConfig,
    agent: ActorCritic,
    seed: int = 0,
    out: str | Path | None = None,
    greedy: bool = False,
    episodes: int = 1,
    fps: int | None = None,
) -> list[float]:
    """Play ``episodes`` episodes of ``agent`` on ``config``'s task and show or record them.

    Episode ``i`` is the env's episode for seed ``seed + i`` and actions are sampled with a
    generator seeded from ``seed``, so a watch is reproducible and matches
    :func:`~hebbgym.train.rollout.collect_rollout` on the same seeds. With ``out=None``
    frames go to a pygame window (Escape or closing it stops early); else they are written
    to ``out`` (``.gif`` or ``.mp4``). Returns the return of every episode played to its end.
    """
    out = _check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int) or fps < 1):
        raise ValueError(f"fps must be a positive integer or None, got {fps!r}")
    env = gym.make_vec(
        config.env_id,
        num_envs=1,
        vectorization_mode="vector_entry_point",
        render_mode="rgb_array",
        **config.env_kwargs,
    )
    obs_size = env.single_observation_space.shape[0]
    if agent.core.input_size != obs_size:
        env.close()
        raise ValueError(
            f"the agent takes {agent.core.input_size} inputs but {config.env_id} with "
            f"env_kwargs={config.env_kwargs} gives {obs_size}: is this the agent's config?"
        )
    fps = fps or int(env.metadata["render_fps"])
    dashboard = Dashboard(env.unwrapped.rules.frame_size)
    window: _Window | None = None
    frames: list[np.ndarray] = []

    def emit(history: EpisodeHistory) -> bool:
        frame = dashboard.compose(env.render()[0], history)
        if window is None:
            frames.append(frame)
            return True
        return window.show(frame)

    generator = torch.Generator().manual_seed(seed)
    returns: list[float] = []
    try:
        if out is None:
            window = _Window(dashboard.layout.size, fps)
        with torch.no_grad():
            for episode in range(episodes):
                total = _play(env, agent, seed + episode, generator, greedy, emit)
                if total is None:
                    break
                returns.append(total)
    finally:
        env.close()
        if window is not None:
            window.close()
    if out is not None:
        write_video(frames, out, fps)
    return returns


def watch_run(
    run_dir: str | Path,
    seed: int = 0,
    out: str | Path | None = None,
    greedy: bool = False,
    episodes: int = 1,
    fps: int | None = None,
) -> list[float]:
    """:func:`watch_agent` for the trained agent of a run directory."""
    from hebbgym.train.loop import load_agent  # training machinery only when needed

    _check_out(out)
    config, agent, _ = load_agent(Path(run_dir))
    return watch_agent(config, agent, seed=seed, out=out, greedy=greedy, episodes=episodes, fps=fps)
