"""The 12-lead tracing as a picture for the signed report: ECG paper at 25 mm/s and
10 mm/mV, the standard 3x4 layout (2.5 s per lead) and a 10-s lead II rhythm strip.

Drawn in millimetres, so the printed PDF can be measured with a ruler as on paper.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from ecg.signal import LEADS, Ecg12

MM_PER_S = 25.0
MM_PER_MV = 10.0
_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_ROW_MM = 30.0
_SEGMENT_S = 2.5
_CAL_S = 0.2


def _grid(ax: Axes, width: float, height: float) -> None:
    for x in np.arange(0, width + 0.01, 1.0):
        ax.axvline(x, color="#f4c6c6" if x % 5 else "#e08a8a", lw=0.3 if x % 5 else 0.6,
                   zorder=0)
    for y in np.arange(0, height + 0.01, 1.0):
        ax.axhline(y, color="#f4c6c6" if y % 5 else "#e08a8a", lw=0.3 if y % 5 else 0.6,
                   zorder=0)


def _trace(ax: Axes, x0: float, y0: float, signal: np.ndarray, fs: float) -> None:
    t = np.arange(signal.size) / fs
    ax.plot(x0 + t * MM_PER_S, y0 + signal * MM_PER_MV, color="black", lw=0.5, zorder=2)


def _calibration(ax: Axes, y0: float) -> None:
    w = _CAL_S * MM_PER_S
    ax.plot([0, 1, 1, 1 + w, 1 + w, 1 + w + 1], [y0, y0, y0 + 10, y0 + 10, y0, y0],
            color="black", lw=0.6, zorder=2)


def tracing_png(ecg: Ecg12, *, dpi: int = 150) -> bytes:
    """PNG of the tracing; the paper is 10 s + calibration wide and four rows high."""
    fs = ecg.sampling_rate
    lead = {name: ecg.leads[i] for i, name in enumerate(LEADS)}
    seg = int(_SEGMENT_S * fs)
    left = 2 + _CAL_S * MM_PER_S + 2
    width = left + 10 * MM_PER_S + 2
    height = _ROW_MM * 4 + 6
    fig = plt.figure(figsize=(width / 25.4, height / 25.4), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    _grid(ax, width, height)
    for row, names in enumerate(_LAYOUT):
        y0 = height - (row + 1) * _ROW_MM
        _calibration(ax, y0)
        for col, name in enumerate(names):
            x0 = left + col * _SEGMENT_S * MM_PER_S
            data = lead[name][col * seg:(col + 1) * seg]
            _trace(ax, x0, y0, data - np.median(data), fs)
            ax.text(x0 + 1, y0 + 11, name, fontsize=6, zorder=3)
    y0 = height - 4 * _ROW_MM
    _calibration(ax, y0)
    rhythm = lead["II"][: int(10 * fs)]
    _trace(ax, left, y0, rhythm - np.median(rhythm), fs)
    ax.text(left + 1, y0 + 11, "II (rhythm)", fontsize=6, zorder=3)
    ax.text(width - 60, 1.5, "25 mm/s  10 mm/mV", fontsize=6, zorder=3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
