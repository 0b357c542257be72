"""A small live plot of training and validation loss, painted with QPainter.

matplotlib is not a dependency of napari or of this package, and a plot of two curves does not justify one; this
widget redraws in well under a millisecond, so it can follow every progress report without slowing the GUI.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAIN_COLOUR = QColor(80, 160, 255)
VAL_COLOUR = QColor(255, 150, 50)
BEST_COLOUR = QColor(95, 191, 111)
LEGEND_ROW = 14  # px between legend rows


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values between ``lo`` and ``hi``."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


class LossPlot(QWidget):
    """Training loss (a light raw curve and its running mean) and validation loss (points joined) against step."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Loss on normalised intensities: blue = training (running mean), orange = validation, "
                        "green dot = best validation (the model that is kept).")
        self.clear()

    def sizeHint(self) -> QSize:
        return QSize(300, 170)

    def clear(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.total_steps: int | None = None
        self.update()

    def add(self, step: int, loss: float | None, val_loss: float | None = None, total_steps: int | None = None) -> None:
        """Add one report; ``loss`` is the running mean of training losses, ``val_loss`` set on validation steps."""
        if loss is not None and math.isfinite(loss):
            self.steps.append(int(step))
            self.losses.append(float(loss))
        if val_loss is not None and math.isfinite(val_loss):
            self.val_steps.append(int(step))
            self.val_losses.append(float(val_loss))
        self.total_steps = total_steps
        self.update()

    # -- drawing ----------------------------------------------------------------------------------------------
    def _y_range(self) -> tuple[float, float]:
        values = self.losses[len(self.losses) // 10:] + self.val_losses  # the first reports are far above the rest
        if not values:
            return 0.0, 1.0
        lo, hi = float(np.min(values)), float(np.percentile(values, 99))
        hi = max(hi, max(self.val_losses, default=hi))
        pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.1
        return lo - pad, hi + pad

    def legend_items(self) -> list[tuple[QColor, str, bool]]:
        """The legend: (colour, text, drawn as a dot) for training, validation and the best validation loss."""
        items = [(colour, f"{label} {values[-1]:.4g}", False)
                 for label, colour, values in (("train", TRAIN_COLOUR, self.losses),
                                               ("validation", VAL_COLOUR, self.val_losses)) if values]
        if self.val_losses:
            items.append((BEST_COLOUR, f"best {min(self.val_losses):.4g}", True))
        return items

    def _legend_layout(self, fm: Any) -> list[tuple[int, float, QColor, str, bool]]:
        """Rows and x positions of the legend items, starting a new row where an item would pass the right edge."""
        out, row, x = [], 0, float(fm.horizontalAdvance("0.0000") + 8)
        left = x
        for colour, text, dot in self.legend_items():
            width = (12 if dot else 18) + fm.horizontalAdvance(text)
            if x > left and x + width > self.width() - 4:
                row, x = row + 1, left
            out.append((row, x, colour, text, dot))
            x += width + 14
        return out

    def paintEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        grid = QColor(text)
        grid.setAlpha(40)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        legend = self._legend_layout(fm)
        rows = max((row for row, _, _, _, _ in legend), default=0) + 1
        left, right, bottom = fm.horizontalAdvance("0.0000") + 8, 8, fm.height() + 8
        top = 18 + (rows - 1) * LEGEND_ROW
        area = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))

        if not self.steps and not self.val_steps:
            p.setPen(text)
            p.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss appears here while training")
            p.end()
            return
        ymin, ymax = self._y_range()
        xmax = max(self.total_steps or 0, max(self.steps + self.val_steps, default=1), 1)

        def pt(x: float, y: float) -> QPointF:
            y = min(max(y, ymin), ymax)
            return QPointF(area.left() + area.width() * x / xmax, area.bottom() - area.height() * (y - ymin) / (ymax - ymin))

        # Grid and labels.
        for y in _nice_ticks(ymin, ymax):
            yy = pt(0, y).y()
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(area.left(), yy), QPointF(area.right(), yy))
            p.setPen(text)
            p.drawText(QRectF(0, yy - fm.height() / 2, left - 4, fm.height()),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{y:.3g}")
        p.setPen(QPen(grid, 1))
        p.drawRect(area)
        p.setPen(text)
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   Qt.AlignmentFlag.AlignLeft, "0")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   Qt.AlignmentFlag.AlignRight, f"step {xmax}" if self.total_steps else f"step {self.steps[-1] if self.steps else xmax}")

        def curve(xs: list[int], ys: list[float], colour: QColor, width: float) -> None:
            if not xs:
                return
            path = QPainterPath(pt(xs[0], ys[0]))
            for x, y in zip(xs[1:], ys[1:]):
                path.lineTo(pt(x, y))
            p.setPen(QPen(colour, width))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPath(path)

        curve(self.steps, self.losses, TRAIN_COLOUR, 1.6)
        curve(self.val_steps, self.val_losses, VAL_COLOUR, 1.6)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(VAL_COLOUR)
        for x, y in zip(self.val_steps, self.val_losses):
            p.drawEllipse(pt(x, y), 2.5, 2.5)
        if self.val_losses:
            i = int(np.argmin(self.val_losses))
            p.setBrush(BEST_COLOUR)
            p.drawEllipse(pt(self.val_steps[i], self.val_losses[i]), 4, 4)

        # Legend with the latest values: wrapped onto a second row in a narrow dock rather than cut off.
        for row, x, colour, text_, dot in legend:
            y = 9 + row * LEGEND_ROW
            if dot:
                p.setPen(QPen(colour, 1))
                p.setBrush(colour)
                p.drawEllipse(QPointF(x + 4, y), 4, 4)
            else:
                p.setPen(QPen(colour, 3))
                p.drawLine(QPointF(x, y), QPointF(x + 14, y))
            p.setPen(text)
            p.drawText(QPointF(x + 18 if not dot else x + 12, y + fm.ascent() / 2 - 1), text_)
        p.end()
