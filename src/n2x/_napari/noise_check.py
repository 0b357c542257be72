"""The Train widget's noise check: measure the layer's noise (:func:`n2x.api.probe_noise`: level, correlation, the
fitted noise model and how well it fits) in a worker, show the report under the method and offer to switch to the
method it recommends (the one "Auto" would train)."""
from __future__ import annotations

from typing import Any, Callable

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QHBoxLayout, QPushButton

from n2x import api
from n2x.errors import N2xError

from ._common import check_trainable, hint_label, layer_data, set_status
from .settings import TrainSettings
from .words import error_text
from .workers import N2xWorkerError, start_worker


class NoiseCheck:
    """The "Check noise" button, its report line and the "Use …" button. ``source()`` gives the layer, its axes
    and the network's dimensionality choice."""

    def __init__(self, settings: TrainSettings, source: Callable[[], tuple[Any, str, int | None]]):
        self.settings, self.source = settings, source
        self.report: Any = None
        self.worker: Any = None
        self.row = QHBoxLayout()
        self.button = QPushButton("Check noise")
        self.button.setToolTip("Measure the noise of the layer (level, spatial correlation) and recommend a method")
        self.button.clicked.connect(self.check)
        self.follow_btn = QPushButton("Use recommendation")
        self.follow_btn.setVisible(False)
        self.follow_btn.clicked.connect(self.follow)
        # The report's figures (lag correlations...) take eight lines and pushed the loss plot below the fold: the
        # verdict is one line, the figures open on demand.
        self.figures_btn = QPushButton("Figures")
        self.figures_btn.setCheckable(True)
        self.figures_btn.setVisible(False)
        self.figures_btn.setToolTip("Show the measured noise level and correlations behind the verdict")
        self.figures_btn.toggled.connect(lambda on: self.details.setVisible(bool(on) and self.report is not None))
        self.row.addWidget(self.button)
        self.row.addWidget(self.follow_btn)
        self.row.addWidget(self.figures_btn)
        self.row.addStretch()
        self.label = hint_label()
        self.label.setVisible(False)
        self.details = hint_label()
        self.details.setVisible(False)
        settings.events.method.connect(lambda _m: self.show(self.report))
        settings.events.method_options.connect(lambda _v: self.show(self.report))

    def clear(self) -> None:
        """Forget the report (another layer was chosen)."""
        self.report = None
        self.label.setVisible(False)
        self.follow_btn.setVisible(False)
        self.figures_btn.setChecked(False)
        self.figures_btn.setVisible(False)
        self.details.setVisible(False)

    def check(self) -> None:
        """Run the noise probe on the chosen layer in a worker; the result appears under the method."""
        layer, axes, dims = self.source()
        try:
            check_trainable(layer, axes, dims)  # the same rule as Train (the engine's)
        except N2xError as exc:
            show_error(f"n2x: {error_text(exc)}")
            return
        self.button.setEnabled(False)
        self.button.setText("Checking…")
        self.label.setVisible(True)
        set_status(self.label, "Measuring the noise…", None)

        def done() -> None:
            self.button.setEnabled(True)
            self.button.setText("Check noise")

        def failed(exc: BaseException) -> None:
            msg = exc.message if isinstance(exc, N2xWorkerError) else error_text(exc)
            set_status(self.label, f"The noise check failed: {msg}", False)
            show_error(f"n2x: {msg}")

        self.worker = start_worker(api.probe_noise, layer_data(layer), axes or None, doing="the noise check",
                                   on_return=self.show, on_error=failed, on_finish=done)

    def _stride_follows(self, stride: int) -> bool:
        """AP-BSN's automatic blind box, or a training stride at least the measured one, follows the report."""
        value = self.settings.method_values().get("stride_train")
        return value in (None, api.AUTO) or (isinstance(value, int) and value >= stride)

    def show(self, report: Any) -> None:
        """Show ``report``; offer its method when the current choice does not follow it."""
        self.report = report
        if report is None:
            return
        rec = getattr(report, "recommended", None)
        current = self.settings.method
        follows = (rec is None or rec == current or current == api.AUTO_METHOD
                   or (rec in ("n2v", "bsn") and current in ("n2v", "n2v2", "n2n", "bsn")))
        if rec == "apbsn" and current == "apbsn" and getattr(report, "stride", None):
            follows = self._stride_follows(int(report.stride))
        self.label.setVisible(True)
        set_status(self.label, verdict(report), True if follows else None)
        self.details.setText(report.summary() if hasattr(report, "summary") else str(report))
        self.figures_btn.setVisible(True)
        self.details.setVisible(self.figures_btn.isChecked())
        if rec is not None and not follows and rec in api.method_names():
            self.follow_btn.setText(f"Use {api.method_info(rec).label}")
        self.follow_btn.setVisible(rec is not None and not follows)

    def follow(self) -> None:
        """Switch the method to what the noise check recommended (AP-BSN: with its automatic blind box)."""
        report = self.report
        if report is None:
            return
        rec = report.recommended
        if rec == "n2v" and "n2v2" in api.method_names():
            rec = "n2v2"  # same assumption (independent noise), without checkerboard artefacts
        self.settings.method = rec
        if "stride_train" in self.settings.method_values():  # auto: the blind box sized by the same measurement
            self.settings.set_method_option("stride_train", None)
        self.show(report)


def _model_words(report: Any) -> str:
    """The fitted noise model in a few words: ``Poisson-Gaussian (gain 0.05, read σ 0.02, fit R² 0.99)``."""
    model = getattr(report, "noise_model", None)
    fits = getattr(report, "noise_fits", None) or []
    quality = f", fit R² {fits[0].r2:.2f}" if fits else ""
    if getattr(model, "kind", None) == "poisson-gaussian":
        return f"Poisson-Gaussian (gain {model.gain:.3g}, read σ {model.read_sigma:.3g}{quality})"
    if getattr(model, "kind", None) == "gaussian":
        return "Gaussian"
    return ""


def verdict(report: Any) -> str:
    """The noise check's one line: the noise level and model, whether it is correlated, and the method that fits."""
    sigma = getattr(report, "sigma", None)
    level = f"noise σ {sigma:.3g}" if isinstance(sigma, (int, float)) else "noise measured"
    words = _model_words(report)
    level = f"{level}, {words}" if words else level
    length = getattr(report, "correlation_length", 0) or 0
    rec = getattr(report, "recommended", None)
    if rec == "apbsn":
        return f"{level}, correlated over {length} px: AP-BSN fits (stride {report.stride})"
    name = api.method_info(rec).label if rec in api.method_names() else "N2V / N2V2"
    reason = api.choose_method(None, None, report=report).reason
    vst = (" with the Anscombe transform" if "Anscombe" in reason
           else " (photon noise in its posterior)" if "photon noise" in reason else "")
    return f"{level}, independent from pixel to pixel: {name}{vst} fits"
