"""One star's spectrum, from simple but real physics: the model the spectra surrogate draws from.

The continuum is a blackbody (Planck's law) at the star's effective temperature, drawn within its class's range.
Absorption features multiply it, each an optical depth profile `tau(lambda)` whose strength is a smooth function of
temperature, so a class is what its temperature makes visible:

  O   He II 4686, 5411 (ionised helium needs the hottest photospheres); He I weak; Balmer weak
  B   He I 4026, 4471, 5876, 6678 at their strongest; Balmer growing
  A   Balmer (H-alpha 6563 ... H8 3889) at their deepest and broadest (peak near 9500 K); Ca II K weak
  F   Balmer fading; Ca II H and K, the G band (CH 4300), Mg b 5175 appearing
  G   Ca II H and K strong; G band, Mg b, Na D 5893 growing
  K   Ca II H and K deepest; Ca I 4227, G band, Mg b, Na D strong; Balmer almost gone
  M   TiO bands: broad depressions from each band head (4955, 5167, 5448, 6159, 7054, 7589, 8432 A), degrading
      to the red

Each star also has a metal-line scatter (a lognormal factor on the metal lines), a radial velocity (Doppler shift
of the whole spectrum, uniform within +-RV_MAX_KMS), a resolution (Gaussian line-spread function of a width in
pixels drawn per star; the grid is uniform in log wavelength, so one width in pixels is one width in velocity), a
brightness, and a signal-to-noise ratio: the noise variance is `a * flux + b` (photon noise of the star plus a sky
and read floor) and `ivar` is exactly its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPECTRAL_CLASSES = ("O", "B", "A", "F", "G", "K", "M")
# Effective temperature ranges (K) of main-sequence stars of each class; a star's T is drawn log-uniformly within.
TEFF_RANGE = {
    "O": (30000.0, 45000.0),
    "B": (10500.0, 29000.0),
    "A": (7500.0, 10000.0),
    "F": (6000.0, 7400.0),
    "G": (5300.0, 5950.0),
    "K": (3900.0, 5250.0),
    "M": (2800.0, 3800.0),
}
LAMBDA_MIN, LAMBDA_MAX = 3600.0, 9000.0  # Angstrom, observed frame
DLOGLAM = 1e-4  # dex per pixel, as SDSS coadds (69 km/s)
RV_MAX_KMS = 300.0
LSF_PIXELS = (0.8, 2.5)  # Gaussian sigma of the line-spread function, pixels (R ~ 1000-2500)
SNR_RANGE = (20.0, 60.0)  # per pixel at the median flux
FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"  # SDSS's, nominal: the surrogate's flux scale is arbitrary

BALMER = (6562.8, 4861.3, 4340.5, 4101.7, 3970.1, 3889.1)  # H-alpha ... H8 (air)
TIO_HEADS = (4954.6, 5166.7, 5448.0, 6158.6, 7053.6, 7589.0, 8432.0)


def wavelength_grid(dloglam: float = DLOGLAM) -> np.ndarray:
    """Observed-frame wavelengths (Angstrom), uniform in log10 from LAMBDA_MIN to LAMBDA_MAX."""
    n = int(np.floor(np.log10(LAMBDA_MAX / LAMBDA_MIN) / dloglam)) + 1
    return LAMBDA_MIN * 10.0 ** (dloglam * np.arange(n))


def planck(wave_aa: np.ndarray, teff: float) -> np.ndarray:
    """B_lambda(T) up to a constant: lambda^-5 / (exp(hc / lambda k T) - 1), lambda in Angstrom."""
    from astropy import constants as const
    from astropy import units as u

    hc_over_k = (const.h * const.c / const.k_B).to(u.AA * u.K).value  # 1.4388e8 Angstrom K
    x = wave_aa * 1e-4  # micron, keeps the numbers near 1
    return x**-5 / np.expm1(hc_over_k / (wave_aa * teff))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def strengths(teff: float) -> dict[str, float]:
    """How strong each family of features is at `teff` (0 absent, 1 at its peak)."""
    log_t = np.log10(teff)
    balmer_width = 0.26 if teff > 9500 else 0.13  # fades slowly to the hot side (ionised H), fast to the cool
    he1_width = 0.13
    return {
        "he2": float(_sigmoid((teff - 29000.0) / 1500.0)),
        "he1": float(np.exp(-0.5 * ((log_t - np.log10(20000.0)) / he1_width) ** 2)),
        "balmer": float(np.exp(-0.5 * ((log_t - np.log10(9500.0)) / balmer_width) ** 2)),
        "ca2": float(_sigmoid((8000.0 - teff) / 700.0)),
        "metal": float(_sigmoid((6600.0 - teff) / 500.0)),
        "cool": float(_sigmoid((5000.0 - teff) / 350.0)),
        "tio": float(_sigmoid((3900.0 - teff) / 120.0)),
    }


# (rest wavelength A, Gaussian sigma A, optical depth at strength 1, family); Balmer lines are added apart (their
# width grows with strength: pressure broadening peaks in A stars).
LINES = (
    (4685.7, 2.5, 0.45, "he2"),
    (5411.5, 2.5, 0.35, "he2"),
    (4541.6, 2.0, 0.2, "he2"),
    (4026.2, 2.5, 0.35, "he1"),
    (4471.5, 2.5, 0.45, "he1"),
    (5875.6, 2.5, 0.35, "he1"),
    (6678.2, 2.5, 0.25, "he1"),
    (3933.7, 4.0, 1.6, "ca2"),  # Ca II K
    (3968.5, 4.0, 1.3, "ca2"),  # Ca II H
    (4300.0, 10.0, 0.45, "metal"),  # G band (CH)
    (5175.0, 5.0, 0.6, "metal"),  # Mg b triplet
    (5892.9, 4.0, 0.6, "metal"),  # Na D
    (4226.7, 2.5, 0.7, "cool"),  # Ca I
)
METAL_FAMILIES = ("ca2", "metal", "cool")


@dataclass(frozen=True)
class Star:
    label: int
    teff: float
    rv_kms: float
    lsf_pixels: float
    metal_scale: float  # lognormal scatter of the metal lines (a metallicity proxy)
    amplitude: float  # median flux, in FLUX_UNIT
    snr: float

    @property
    def redshift(self) -> float:
        from astropy import constants as const

        return self.rv_kms / const.c.to("km/s").value


def draw_star(label: int, rng: np.random.Generator) -> Star:
    """A star of class `label` (index into SPECTRAL_CLASSES) with its parameters drawn from `rng`."""
    lo, hi = TEFF_RANGE[SPECTRAL_CLASSES[label]]
    return Star(
        label=label,
        teff=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
        rv_kms=float(rng.uniform(-RV_MAX_KMS, RV_MAX_KMS)),
        lsf_pixels=float(rng.uniform(*LSF_PIXELS)),
        metal_scale=float(rng.lognormal(0.0, 0.2)),
        amplitude=float(rng.lognormal(np.log(30.0), 0.5)),
        snr=float(rng.uniform(*SNR_RANGE)),
    )


def optical_depth(rest_wave: np.ndarray, star: Star) -> np.ndarray:
    """Total absorption optical depth at rest-frame wavelengths (Angstrom)."""
    s = strengths(star.teff)
    tau = np.zeros_like(rest_wave)
    for k, center in enumerate(BALMER):
        depth = s["balmer"] * (1.1 - 0.12 * k)
        sigma = 3.0 + 9.0 * s["balmer"]
        tau += depth * np.exp(-0.5 * ((rest_wave - center) / sigma) ** 2)
    for center, sigma, depth, family in LINES:
        scale = s[family] * (star.metal_scale if family in METAL_FAMILIES else 1.0)
        tau += depth * scale * np.exp(-0.5 * ((rest_wave - center) / sigma) ** 2)
    for k, head in enumerate(TIO_HEADS):  # a sharp head, then the band fades to the red
        past = rest_wave - head
        band = np.where(past >= 0, np.exp(-np.clip(past, 0, None) / (150.0 + 20.0 * k)), 0.0)
        tau += 0.9 * s["tio"] * star.metal_scale * band
    return tau


def model_flux(star: Star, wave: np.ndarray) -> np.ndarray:
    """Noiseless observed flux at the grid `wave`: Doppler-shifted, LSF-smoothed, at the star's amplitude."""
    from scipy.ndimage import gaussian_filter1d

    rest = wave / (1.0 + star.redshift)
    flux = planck(rest, star.teff) * np.exp(-optical_depth(rest, star))
    flux = gaussian_filter1d(flux, star.lsf_pixels, mode="nearest")
    return flux * (star.amplitude / np.median(flux))


def observe(star: Star, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux, ivar, lsf_sigma in Angstrom), float32: the model plus noise of variance a * flux + b."""
    flux = model_flux(star, wave)
    median = np.median(flux)
    floor = (0.3 * median / star.snr) ** 2  # sky and read noise: 30 % of the noise at the median flux
    slope = (median**2 / star.snr**2 - floor) / median  # photon noise: var = slope * flux
    var = slope * np.clip(flux, 0.0, None) + floor
    noisy = flux + rng.normal(size=flux.shape) * np.sqrt(var)
    dloglam = np.log10(wave[1] / wave[0])
    lsf = star.lsf_pixels * wave * np.log(10.0) * dloglam
    return noisy.astype(np.float32), (1.0 / var).astype(np.float32), lsf.astype(np.float32)
