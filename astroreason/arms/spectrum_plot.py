"""The spectrum plot arm: a spectrum drawn as an image, a fixed-size plot with labelled axes (`SpectrumPlotter`),
that reaches the model as the image arm's pixels do (TRL inserts the image block into the prompt)."""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..data.spectra.stars import SPECTRAL_CLASSES
from ..data.splits import load_split
from ..data.task import Task, make_task
from ..errors import UserError
from ..prompts import literal
from .base import ArmSettings
from .image import PixelArm

PLOT_DPI = 100


class SpectrumPlotter:
    """Draws spectra as `size` x `size` RGB plots on one reused matplotlib figure (Agg, no display): flux divided by
    its median over the pixels drawn, from 0 to a little above its 99.5th percentile, against wavelength in
    Angstrom. Pixels with ivar 0 (the survey's bad pixels) are left out, as gaps in the line.

    One figure serves every call, its line's data replaced: building a figure costs more than drawing one.
    """

    def __init__(self, size: int):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        figure = Figure(figsize=(size / PLOT_DPI, size / PLOT_DPI), dpi=PLOT_DPI)
        self.canvas = FigureCanvasAgg(figure)
        self.axes = figure.add_axes((0.2, 0.18, 0.76, 0.76))
        (self.line,) = self.axes.plot([], [], lw=max(0.4, size / 400), color="black")
        font = max(4.0, size / 40)
        self.axes.set_xlabel("Wavelength (Å)", fontsize=font, labelpad=1)
        self.axes.set_ylabel("Flux / median", fontsize=font, labelpad=1)
        self.axes.tick_params(labelsize=font * 0.8, length=2, pad=1)
        self.axes.xaxis.set_major_locator(MaxNLocator(3, integer=True))
        self.axes.yaxis.set_major_locator(MaxNLocator(4))

    def __call__(self, wavelength, flux, ivar=None, window: tuple[float, float] | None = None):
        """The plot of one spectrum (a PIL image); `window` (Angstrom) draws only that range, at the same size."""
        from PIL import Image

        wavelength, flux = np.asarray(wavelength, np.float64), np.asarray(flux, np.float64)
        lo, hi = window if window is not None else (wavelength.min(), wavelength.max())
        good = np.isfinite(flux) & (np.ones_like(flux, bool) if ivar is None else np.asarray(ivar) > 0)
        shown = good & (wavelength >= lo) & (wavelength <= hi)
        scale = np.median(flux[shown]) if shown.any() else 1.0
        flux = np.where(good, flux, np.nan) / (scale if scale > 0 else 1.0)
        self.line.set_data(wavelength, flux)
        self.axes.set_xlim(lo, hi)
        top = np.percentile(flux[shown], 99.5) * 1.1 if shown.any() else 1.0
        self.axes.set_ylim(0.0, top if top > 0 else 1.0)
        self.canvas.draw()
        return Image.fromarray(np.asarray(self.canvas.buffer_rgba())[..., :3].copy())


def plot_template(task: Task) -> str:
    """The spectrum plot arm's default template for `task` (`Arm.default_template`)."""
    return f"The image is a plot of a {task.noun}'s spectrum: its flux against wavelength.\n" + literal(
        task.instruction
    )


class SpectrumPlotArm(PixelArm):
    modality = "spectrum_plot"
    columns = ("label",)  # the plot is drawn from the view's arrays (`galaxy`), not kept from it
    template_for = staticmethod(plot_template)
    default_template = plot_template(make_task("mmu-spectra", SPECTRAL_CLASSES))
    zoom_instruction = ""  # no zoom tool yet (`zoom_tool`)
    blank_input = "a flat spectrum"
    reads_spectra = True
    marker = "D"

    @classmethod
    def zoom_tool(cls, settings: ArmSettings, **kwargs):
        raise UserError("zoom: the spectrum_plot arm has no zoom tool yet (a wavelength range); run it without --zoom")

    def load_view(self):
        self.plotter = SpectrumPlotter(self.settings.image_size)
        return load_split(self.settings.data_dir, self.split, manifest=self.manifest)

    def split_positions(self) -> np.ndarray:
        return np.arange(len(self.manifest.rows[self.split]))

    def galaxy(self, example) -> dict:
        return {"image": self.plotter(example["wavelength"], example["flux"], example["ivar"])}

    def without_galaxy(self, seed: int = 0) -> list[dict]:
        """A flat spectrum's plot in place of each spectrum, on the same wavelengths (the prompts are unchanged)."""
        rows = []
        for i, example in enumerate(islice(self.view.select_columns(["label", "wavelength"]), self.n)):
            flat = self.plotter(example["wavelength"], np.ones(len(example["wavelength"])))
            rows.append({"label": example["label"], "prompt": self.prompt(example, i), "image": flat})
        return rows
