"""pygame drawing shared by every env: one place that imports pygame, lazily.

A :class:`Renderer` owns a surface (and, in ``human`` mode, the window); each frame it hands
a :class:`Painter` to a draw callback and returns an ``(H, W, 3) uint8`` array in
``rgb_array`` mode. Works headless with ``SDL_VIDEODRIVER=dummy``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Color = tuple[int, int, int]

BACKGROUND: Color = (250, 250, 247)
INK: Color = (30, 30, 35)
MUTED: Color = (130, 130, 140)
GRID: Color = (210, 210, 215)
WALL: Color = (55, 60, 75)
AGENT: Color = (40, 110, 220)
GOOD: Color = (40, 170, 80)
BAD: Color = (215, 60, 50)
ACCENT: Color = (240, 170, 30)
HEADER_HEIGHT = 44


def import_pygame() -> Any:
    """pygame, imported on first use only: importing hebbgym must not need a display."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    return pygame


class Painter:
    """Drawing primitives on one surface, so env modules never touch pygame directly."""

    def __init__(self, surface: Any) -> None:
        self.pygame = import_pygame()
        self.surface = surface
        self.width, self.height = surface.get_size()
        self._fonts: dict[int, Any] = {}

    def font(self, size: int) -> Any:
        if size not in self._fonts:
            self._fonts[size] = self.pygame.font.Font(None, size)
        return self._fonts[size]

    def fill(self, color: Color = BACKGROUND) -> None:
        self.surface.fill(color)

    def rect(self, x: float, y: float, w: float, h: float, color: Color, width: int = 0) -> None:
        self.pygame.draw.rect(self.surface, color, (round(x), round(y), round(w), round(h)), width)

    def circle(self, x: float, y: float, radius: float, color: Color, width: int = 0) -> None:
        self.pygame.draw.circle(self.surface, color, (round(x), round(y)), round(radius), width)

    def line(
        self, start: Sequence[float], end: Sequence[float], color: Color, width: int = 1
    ) -> None:
        self.pygame.draw.line(self.surface, color, start, end, width)

    def lines(self, points: Sequence[Sequence[float]], color: Color, width: int = 1) -> None:
        if len(points) >= 2:
            self.pygame.draw.lines(self.surface, color, False, points, width)

    def text(
        self,
        x: float,
        y: float,
        string: str,
        color: Color = INK,
        size: int = 20,
        center: bool = False,
    ) -> None:
        image = self.font(size).render(string, True, color)
        if center:
            x -= image.get_width() / 2
            y -= image.get_height() / 2
        self.surface.blit(image, (round(x), round(y)))

    def header(self, title: str, step: int, length: int, last_reward: float, total: float) -> None:
        """The band every frame shares: task name, step, last reward and return."""
        self.fill()
        self.rect(0, 0, self.width, HEADER_HEIGHT, (236, 236, 240))
        self.text(10, 6, title, INK, 24)
        reward_color = GOOD if last_reward > 0 else BAD if last_reward < 0 else MUTED
        status = f"step {step}/{length}"
        self.text(10, 26, status, MUTED, 18)
        self.text(self.width * 0.42, 26, f"last reward {last_reward:+.2f}", reward_color, 18)
        self.text(self.width * 0.74, 26, f"return {total:+.1f}", INK, 18)

    def timeline(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        values: np.ndarray,
        colors: Callable[[float], Color],
        length: int,
    ) -> None:
        """Draw ``values`` (one per step so far) as coloured ticks on a bar of ``length`` steps."""
        self.rect(x, y, w, h, GRID, 1)
        step_width = w / max(length, 1)
        for index, value in enumerate(values):
            self.rect(
                x + index * step_width, y + 1, max(step_width, 1), h - 2, colors(float(value))
            )


class Renderer:
    """Owns the surface and window of one env; ``render`` draws a frame with a callback."""

    def __init__(self, render_mode: str | None, size: tuple[int, int], fps: int) -> None:
        self.render_mode = render_mode
        self.size = size
        self.fps = fps
        self._window: Any = None
        self._clock: Any = None
        self._painter: Painter | None = None

    def render(self, draw: Callable[[Painter], None]) -> np.ndarray | None:
        pygame = import_pygame()
        if self._painter is None:
            pygame.font.init()
            if self.render_mode == "human":
                pygame.display.init()
                pygame.display.set_caption("hebbgym")
                self._window = pygame.display.set_mode(self.size)
                self._clock = pygame.time.Clock()
            self._painter = Painter(pygame.Surface(self.size))
        draw(self._painter)
        if self.render_mode == "human":
            pygame.event.pump()
            self._window.blit(self._painter.surface, (0, 0))
            pygame.display.flip()
            self._clock.tick(self.fps)
            return None
        pixels = pygame.surfarray.array3d(self._painter.surface)
        return np.ascontiguousarray(np.transpose(pixels, (1, 0, 2)), dtype=np.uint8)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings only: surfaces and windows are rebuilt on the next frame."""
        return {"render_mode": self.render_mode, "size": self.size, "fps": self.fps}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def close(self) -> None:
        """Close the window if one is open; safe to call any number of times."""
        if self._window is not None:
            pygame = import_pygame()
            pygame.display.quit()
            self._window = None
        self._painter = None
