"""Galaxy models for the ten Galaxy10 DECaLS classes, built from physical ingredients and drawn with GalSim.

A `Galaxy` is a list of light components placed in sky coordinates (arcsec from the frame centre): GalSim profiles
(Sersic bulges and spheroids, inclined exponential disks, bars, companions), optionally multiplied by a pattern
(log-spiral arms, a one-sided tidal tail, a lopsided disk), plus point sources (star-forming knots, field stars) and
an optional dust lane. The model lives in arcsec, so the same galaxy renders at any pixel scale: an RGB cutout and a
multi-band flux cutout of one row show the same object.

Class identity is carried by large-scale structure (axis ratio, concentration, bulge-to-total, arm pitch, a bar,
a second nucleus or a tail), so it survives 64-112 px. Parameter ranges of the classes Galaxy10 itself confuses
overlap on purpose: round vs in-between smooth (axis ratio), tight vs loose spirals (pitch), barred vs unbarred
(weak bars, inner ovals), merging vs disturbed (close pairs, offset clumps), edge-on with vs without bulge (B/T).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import galsim
import numpy as np
from scipy.signal import fftconvolve

BANDS = ("g", "r", "i", "z")
ZERO_POINT = 22.5  # magnitude of 1 nanomaggy
NATIVE_SCALE = 0.262  # arcsec / pixel, Legacy Surveys
FIELD = NATIVE_SCALE * 256  # arcsec: the side of a Galaxy10 DECaLS cutout
# Per-pixel sky noise (nanomaggies, 0.262" pixel) of a DECaLS coadd, from 5-sigma PSF depths of about
# g 24.7, r 24.2, i 23.8, z 23.3 with 1.3" seeing (inferred, not read from a survey file).
SKY_SIGMA = np.array([0.0035, 0.0055, 0.0075, 0.013])
# Effective wavelengths (nm) of DECam g, r, i, z; atmospheric seeing scales as wavelength^(-1/5).
_WAVELENGTH = np.array([480.0, 640.0, 780.0, 920.0])
# Internal pixels are at most this large (arcsec): coarse outputs are drawn oversampled, convolved, then binned.
_MAX_INTERNAL_SCALE = 0.6

Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]


def colour(g_r: float, r_z: float) -> np.ndarray:
    """Flux in g, r, i, z per unit r-band flux for the colours g-r and r-z (r-i taken as half of r-z)."""
    return 10 ** (0.4 * np.array([-g_r, 0.0, 0.5 * r_z, r_z]))


@dataclass
class Component:
    """One light component: a unit-flux GalSim profile in sky coordinates, its flux per band (nanomaggies),
    and an optional pattern multiplying its surface brightness (the component keeps its flux)."""

    profile: galsim.GSObject
    flux: np.ndarray
    pattern: Pattern | None = None


@dataclass
class DustLane:
    """A thin absorbing lane along a disk's major axis; optical depth falls with wavelength."""

    centre: np.ndarray
    pa: float
    half_length: float
    width: float
    tau_g: float

    def transmission(self, x: np.ndarray, y: np.ndarray, band: int) -> np.ndarray:
        c, s = math.cos(self.pa), math.sin(self.pa)
        dx, dy = x - self.centre[0], y - self.centre[1]
        along, across = c * dx + s * dy, -s * dx + c * dy
        tau = self.tau_g * (_WAVELENGTH[0] / _WAVELENGTH[band]) ** 1.5
        lane = np.exp(-0.5 * (across / self.width) ** 2 - 0.5 * (along / self.half_length) ** 4)
        return np.exp(-tau * lane)


@dataclass
class Galaxy:
    """A galaxy (or an interacting pair) and its field, ready to render in any band at any pixel scale."""

    label: int
    r50: float  # half-light radius of the target, arcsec
    components: list[Component]
    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # arcsec
    points_flux: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # nanomaggies g, r, i, z
    dust: DustLane | None = None
    psf_fwhm: float = 1.2  # r band, arcsec
    psf_beta: float = 3.5
    # The region that decides the class (bar, arms, bulge, both nuclei, ...): (x1, y1, x2, y2) arcsec
    focus: tuple[float, float, float, float] | None = None

    def focus_box(self) -> tuple[float, float, float, float] | None:
        """`focus` as fractions of the field, [x1, y1, x2, y2] from the top-left corner (image rows follow +y),
        clipped to the field."""
        if self.focus is None:
            return None
        return tuple(float(np.clip(v / FIELD + 0.5, 0.0, 1.0)) for v in self.focus)


def render(galaxy: Galaxy, size: int, pxscale: float, bands: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
    """Noise-free, PSF-convolved image of `galaxy`: float32 (len(bands), size, size), nanomaggies per pixel;
    `bands` index BANDS (g, r, i, z)."""
    over = max(1, math.ceil(pxscale / _MAX_INTERNAL_SCALE - 1e-9))
    n, scale = size * over, pxscale / over
    axis = (np.arange(n) - (n - 1) / 2) * scale  # GalSim centres profiles on the image's true centre
    x, y = np.meshgrid(axis, axis)
    templates = []
    for comp in galaxy.components:
        img = comp.profile.drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array.astype(np.float64)
        if comp.pattern is not None:
            total = img.sum()
            img *= comp.pattern(x, y)
            img *= total / max(img.sum(), 1e-30)
        templates.append(img)
    points = _deposit(galaxy.points_xy, galaxy.points_flux[:, bands], n, scale)
    sky = np.empty((len(bands), n, n))
    psf = []
    for j, b in enumerate(bands):
        sky[j] = sum(t * c.flux[b] for t, c in zip(templates, galaxy.components))
        if galaxy.dust is not None:
            sky[j] *= galaxy.dust.transmission(x, y, b)
        fwhm = galaxy.psf_fwhm * (_WAVELENGTH[b] / _WAVELENGTH[1]) ** -0.2
        half = max(2, math.ceil(2.75 * galaxy.psf_fwhm / scale))
        psf.append(_psf_kernel(round(fwhm, 2), round(galaxy.psf_beta, 1), scale, half, over == 1))
    sky += points
    conv = fftconvolve(sky, np.stack(psf), mode="same", axes=(1, 2))
    return conv.reshape(len(bands), size, over, size, over).sum(axis=(2, 4)).astype(np.float32)


@functools.lru_cache(maxsize=1024)
def _psf_kernel(fwhm: float, beta: float, scale: float, half: int, with_pixel: bool) -> np.ndarray:
    """A Moffat PSF stamp; it carries the pixel response when output pixels are drawn directly (no binning)."""
    method = "auto" if with_pixel else "no_pixel"
    psf = galsim.Moffat(beta=beta, fwhm=fwhm).drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=scale, method=method)
    return psf.array / psf.array.sum()


def _deposit(xy: np.ndarray, flux: np.ndarray, n: int, scale: float) -> np.ndarray:
    """Point sources onto an (4, n, n) grid with bilinear weights (sub-pixel positions survive rebinning)."""
    grid = np.zeros((flux.shape[1], n, n))
    if len(xy) == 0:
        return grid
    px = xy / scale + (n - 1) / 2
    i0 = np.floor(px).astype(int)
    frac = px - i0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
        col, row = i0[:, 0] + dx, i0[:, 1] + dy
        ok = (col >= 0) & (col < n) & (row >= 0) & (row < n)
        for b in range(flux.shape[1]):
            np.add.at(grid[b], (row[ok], col[ok]), w[ok] * flux[ok, b])
    return grid


# ---------------------------------------------------------------------------------------------------------------
# Ingredients


def _sersic(n: float, hlr: float, q: float, pa: float, centre) -> galsim.GSObject:
    # Sersic indices on a 0.25 grid: GalSim caches its per-index tables.
    n = float(np.clip(round(n * 4) / 4, 0.5, 6.0))
    return galsim.Sersic(n=n, half_light_radius=hlr).shear(q=q, beta=pa * galsim.radians).shift(*centre)


def _incline(obj: galsim.GSObject, q: float, pa: float, centre) -> galsim.GSObject:
    """A profile defined in a disk's plane, seen with axis ratio q (cos inclination), major axis at pa."""
    c, s = math.cos(pa), math.sin(pa)
    return obj.transform(c, -s * q, s, c * q).withFlux(1.0).shift(*centre)


def _disk_coords(x, y, centre, q: float, pa: float):
    """Radius and azimuth in a disk's own plane, for sky positions x, y (arcsec)."""
    dx, dy = x - centre[0], y - centre[1]
    c, s = math.cos(pa), math.sin(pa)
    u = c * dx + s * dy
    v = (-s * dx + c * dy) / q
    return np.hypot(u, v), np.arctan2(v, u)


def _to_sky(r, theta, centre, q: float, pa: float) -> np.ndarray:
    u, v = r * np.cos(theta), q * r * np.sin(theta)
    c, s = math.cos(pa), math.sin(pa)
    return np.stack([c * u - s * v + centre[0], s * u + c * v + centre[1]], axis=-1)


def _arms(centre, q, pa, m, pitch, r0, phase0, sharpness, chirality) -> Pattern:
    """m logarithmic spiral arms of the given pitch (rad), starting at radius r0 (arcsec) and azimuth phase0."""
    cot = chirality / math.tan(pitch)

    def pattern(x, y):
        r, theta = _disk_coords(x, y, centre, q, pa)
        r = np.maximum(r, 1e-3)
        arms = (0.5 + 0.5 * np.cos(m * (theta - phase0) - m * cot * np.log(r / r0))) ** sharpness
        start = np.clip((r - 0.6 * r0) / (0.6 * r0), 0.0, 1.0) ** 2
        return arms * start

    return pattern


def _tail(centre, theta0, r0, pitch, length, width, chirality) -> Pattern:
    """One tidal tail: an arc of a logarithmic spiral leaving `centre` at azimuth theta0, `length` rad long."""
    tan_p = math.tan(pitch)

    def pattern(x, y):
        dx, dy = x - centre[0], y - centre[1]
        r = np.maximum(np.hypot(dx, dy), 1e-3)
        psi = np.log(r / r0) / tan_p  # how far along the arc this radius lies
        dtheta = (np.arctan2(dy, dx) - theta0 - chirality * psi + np.pi) % (2 * np.pi) - np.pi
        ridge = np.exp(-0.5 * (dtheta * r * math.cos(pitch) / width) ** 2)
        taper = np.clip(psi / 0.3, 0, 1) * np.clip((length - psi) / (0.5 * length), 0, 1)
        return ridge * taper

    return pattern


def _lopsided(centre, q, pa, amplitude, theta1, h) -> Pattern:
    """An m=1 distortion growing with radius: one side of the disk brighter and more extended."""

    def pattern(x, y):
        r, theta = _disk_coords(x, y, centre, q, pa)
        return 1.0 + amplitude * np.cos(theta - theta1) * np.tanh(r / h)

    return pattern


# Stellar populations: (g-r, r-z) means; each component draws a little scatter around them.
_OLD, _DISK, _YOUNG = (0.80, 0.45), (0.58, 0.33), (0.30, 0.10)


def _sed(rng, population, flux_r: float) -> np.ndarray:
    g_r, r_z = population
    return flux_r * colour(g_r + rng.normal(0, 0.05), r_z + rng.normal(0, 0.04))


def _knots_on_arms(rng, k, centre, q, pa, m, pitch, r0, phase0, chirality, r_max) -> np.ndarray:
    r = rng.uniform(r0, r_max, k)
    arm = rng.integers(0, m, k)
    theta = phase0 + 2 * np.pi * arm / m + chirality * np.log(r / r0) / math.tan(pitch) + rng.normal(0, 0.12, k)
    return _to_sky(r, theta, centre, q, pa)


def _split_flux(rng, total: float, k: int) -> np.ndarray:
    w = rng.exponential(1.0, k)
    return total * w / w.sum()


@dataclass
class _Builder:
    """Collects the parts of one galaxy while a class recipe draws them."""

    rng: np.random.Generator
    components: list[Component] = field(default_factory=list)
    points_xy: list[np.ndarray] = field(default_factory=list)
    points_flux: list[np.ndarray] = field(default_factory=list)
    dust: DustLane | None = None
    focus: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, radius) arcsec

    def mark(self, centre, radius: float) -> None:
        """Mark a disc (arcsec) of the region that decides the class; no random draw, so the pixels are unchanged."""
        self.focus.append((float(centre[0]), float(centre[1]), float(radius)))

    def focus_region(self) -> tuple[float, float, float, float] | None:
        if not self.focus:
            return None
        xyr = np.asarray(self.focus)
        lo, hi = xyr[:, :2] - xyr[:, 2:], xyr[:, :2] + xyr[:, 2:]
        return (*lo.min(axis=0).tolist(), *hi.max(axis=0).tolist())

    def add(self, profile, population, flux_r, pattern=None):
        if flux_r > 0:
            self.components.append(Component(profile, _sed(self.rng, population, flux_r), pattern))

    def add_points(self, xy, population, flux_r):
        self.points_xy.append(np.asarray(xy, float).reshape(-1, 2))
        seds = (
            np.stack([_sed(self.rng, population, 1.0) for _ in range(len(flux_r))]) if len(flux_r) else np.zeros((0, 4))
        )
        self.points_flux.append(seds * np.asarray(flux_r)[:, None])


# ---------------------------------------------------------------------------------------------------------------
# Class recipes. Each takes (builder, r50, flux_r, pa, centre): r50 the galaxy's half-light radius (arcsec),
# flux_r its r-band flux (nanomaggies), pa its position angle (rad), centre its position (arcsec).


def _smooth(q_range, n_range, hlr_range, population=_OLD):
    def recipe(b: _Builder, r50, flux, pa, centre):
        u = b.rng.uniform
        n, hlr = u(*n_range), r50 * u(*hlr_range)  # drawn in this order: the pixels of a seed never change
        b.add(_sersic(n, hlr, u(*q_range), pa, centre), population, flux)
        b.mark(centre, 2.5 * hlr)  # the body: its axis ratio and concentration

    return recipe


def _edge_on(bulge_range, q_range, dust_prob, dust_tau):
    def recipe(b: _Builder, r50, flux, pa, centre):
        u = b.rng.uniform
        h = r50 / 1.68 * u(0.95, 1.3)
        bt = u(*bulge_range)
        b.add(_incline(galsim.Exponential(scale_radius=h), u(*q_range), pa, centre), _DISK, flux * (1 - bt))
        b.add(_sersic(u(2.0, 4.0), h * u(0.45, 0.8), u(0.65, 0.95), pa, centre), _OLD, flux * bt)
        if b.rng.random() < dust_prob:
            b.dust = DustLane(np.asarray(centre), pa, 2.5 * h, u(0.25, 0.5), u(*dust_tau))
        b.mark(centre, 2.0 * h)  # the centre of the disk: a bulge or none, the dust lane

    return recipe


def _spiral(bulge_range, arm_range, pitch_deg, m3_prob, knot_range, bar: bool):
    def recipe(b: _Builder, r50, flux, pa, centre):
        rng, u = b.rng, b.rng.uniform
        q = u(0.5, 1.0)
        h = r50 / 1.68 * u(0.95, 1.3)
        bt, f_arm, f_knot = u(*bulge_range), u(*arm_range), u(*knot_range)
        b.add(_sersic(u(1.5, 3.5), h * u(0.18, 0.32), u(0.75, 1.0), pa + u(-0.3, 0.3), centre), _OLD, flux * bt)
        phase0 = u(0, 2 * np.pi)
        chirality = rng.choice([-1.0, 1.0])
        if bar:
            a_bar, q_bar, f_bar = h * u(0.8, 1.5), u(0.18, 0.4), u(0.05, 0.2)
            bar_obj = galsim.Sersic(n=0.5, half_light_radius=0.55 * a_bar * math.sqrt(q_bar))
            bar_obj = bar_obj.shear(q=q_bar, beta=phase0 * galsim.radians)
            b.add(_incline(bar_obj, q, pa, centre), _OLD, flux * f_bar)
            r0, m = a_bar, 2
            b.mark(centre, 1.4 * a_bar)  # the bar and where the arms leave it
        else:
            f_bar = 0.0
            if rng.random() < 0.5:  # a weak inner oval: unbarred spirals are not all perfectly round inside
                f_bar = u(0.0, 0.05)
                oval = galsim.Sersic(n=1.0, half_light_radius=0.4 * h).shear(
                    q=u(0.5, 0.75), beta=phase0 * galsim.radians
                )
                b.add(_incline(oval, q, pa, centre), _OLD, flux * f_bar)
            r0, m = h * u(0.35, 0.6), 3 if rng.random() < m3_prob else 2
        if not bar:
            b.mark(centre, 2.2 * h)  # the inner arms: how tightly they wind, whether an oval is there
        pitch = math.radians(u(*pitch_deg))
        arms = _arms(centre, q, pa, m, pitch, r0, phase0, u(2.0, 4.0), chirality)
        b.add(_incline(galsim.Exponential(scale_radius=1.25 * h), q, pa, centre), _YOUNG, flux * f_arm, arms)
        b.add(
            _incline(galsim.Exponential(scale_radius=h), q, pa, centre),
            _DISK,
            flux * max(0.0, 1 - bt - f_arm - f_bar - f_knot),
        )
        k = int(rng.integers(8, 20))
        xy = _knots_on_arms(rng, k, centre, q, pa, m, pitch, r0, phase0, chirality, 3.2 * h)
        b.add_points(xy, _YOUNG, _split_flux(rng, flux * f_knot, k))

    return recipe


def _disturbed(b: _Builder, r50, flux, pa, centre):
    rng, u = b.rng, b.rng.uniform
    flux *= 10 ** (-0.4 * u(0.3, 0.8))  # disturbed systems tend to lower surface brightness
    q, h = u(0.4, 1.0), r50 / 1.68 * u(0.9, 1.3)
    bt, f_off, f_knot = u(0.0, 0.2), u(0.25, 0.45), u(0.03, 0.08)
    f_plume = u(0.05, 0.12) if rng.random() < 0.5 else 0.0
    theta1 = u(0, 2 * np.pi)
    b.add(_sersic(u(1.0, 3.0), h * u(0.2, 0.4), u(0.6, 1.0), pa, centre), _OLD, flux * bt)
    lopsided = _lopsided(centre, q, pa, u(0.4, 0.8), theta1, h)
    b.add(
        _incline(galsim.Exponential(scale_radius=h), q, pa, centre),
        _DISK,
        flux * (1 - bt - f_off - f_knot - f_plume),
        lopsided,
    )
    # An offset lump of young stars: the light is no longer symmetric about the nucleus. Often it is diffuse; in a
    # third of them it is compact, a second knot that looks like the nucleus of a merging companion.
    d = h * u(0.6, 1.4)
    off = np.asarray(centre) + d * np.array([math.cos(theta1), math.sin(theta1)])
    lump = h * (u(0.2, 0.35) if rng.random() < 0.35 else u(0.6, 1.2))
    b.add(_incline(galsim.Exponential(scale_radius=lump), u(0.4, 1.0), u(0, np.pi), off), _YOUNG, flux * f_off)
    b.mark(centre, 1.5 * h)  # the nucleus and the offset lump: the asymmetry
    b.mark(off, max(lump, 0.8 * h))
    k = int(rng.integers(3, 8))
    xy = off + rng.normal(0, 1.0 * h, (k, 2))
    b.add_points(xy, _YOUNG, _split_flux(rng, flux * f_knot, k))
    if f_plume:
        plume = _tail(
            centre,
            theta1 + u(-0.6, 0.6),
            1.2 * h,
            math.radians(u(25, 45)),
            u(0.8, 1.6),
            u(1.0, 2.0),
            rng.choice([-1.0, 1.0]),
        )
        b.add(_incline(galsim.Exponential(scale_radius=3 * h), 1.0, 0.0, centre), _DISK, flux * f_plume, plume)


def _merging(b: _Builder, r50, flux, pa, centre):
    rng, u = b.rng, b.rng.uniform
    ratio = u(0.25, 1.0)  # companion / primary flux
    sep = r50 * u(0.7, 2.6)  # the closest pairs overlap into one lumpy, asymmetric body, as disturbed galaxies look
    angle = u(0, 2 * np.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    f1, f2 = flux / (1 + ratio), flux * ratio / (1 + ratio)
    # Place the pair so that its light-weighted centre sits near the frame centre.
    c1 = np.asarray(centre) - direction * sep * f2 / flux
    c2 = c1 + direction * sep
    chirality = rng.choice([-1.0, 1.0])
    for c, f, size, away in ((c1, f1, r50, angle + np.pi), (c2, f2, r50 * math.sqrt(ratio) * u(0.8, 1.2), angle)):
        f_tail = u(0.1, 0.25) if rng.random() < 0.85 else 0.0
        q_i, pa_i = u(0.5, 1.0), u(0, np.pi)
        bt = u(0.2, 0.8)
        b.add(_sersic(u(2.0, 4.0), size * u(0.3, 0.5), u(0.7, 1.0), pa_i, c), _OLD, f * (1 - f_tail) * bt)
        b.mark(c, 0.8 * size)  # both nuclei
        b.add(_incline(galsim.Exponential(scale_radius=size / 1.68), q_i, pa_i, c), _DISK, f * (1 - f_tail) * (1 - bt))
        if f_tail:
            tail = _tail(
                c, away + u(-0.5, 0.5), 0.8 * size, math.radians(u(20, 40)), u(1.2, 2.4), u(1.2, 2.5), chirality
            )
            b.add(_incline(galsim.Exponential(scale_radius=3 * size), 1.0, 0.0, c), _DISK, f * f_tail, tail)
    k = int(rng.integers(0, 6))
    b.add_points(c1 + rng.normal(0, r50, (k, 2)), _YOUNG, _split_flux(rng, flux * u(0.0, 0.05), k))


_RECIPES = (
    _disturbed,  # 0 Disturbed
    _merging,  # 1 Merging
    _smooth(q_range=(0.75, 1.0), n_range=(3.0, 5.5), hlr_range=(0.55, 0.9)),  # 2 Round Smooth
    _smooth(q_range=(0.42, 0.82), n_range=(2.0, 4.5), hlr_range=(0.6, 1.0)),  # 3 In-between Round Smooth
    _smooth(q_range=(0.22, 0.45), n_range=(1.5, 3.0), hlr_range=(0.45, 0.7)),  # 4 Cigar Shaped Smooth
    _spiral((0.08, 0.28), (0.35, 0.55), (13, 30), 0.0, (0.03, 0.08), bar=True),  # 5 Barred Spiral
    _spiral((0.12, 0.35), (0.30, 0.50), (9, 19), 0.3, (0.02, 0.07), bar=False),  # 6 Unbarred Tight Spiral
    _spiral((0.03, 0.20), (0.42, 0.65), (16, 38), 0.25, (0.04, 0.12), bar=False),  # 7 Unbarred Loose Spiral
    _edge_on(bulge_range=(0.0, 0.15), q_range=(0.07, 0.18), dust_prob=0.3, dust_tau=(0.2, 0.5)),  # 8 without bulge
    _edge_on(bulge_range=(0.10, 0.50), q_range=(0.08, 0.22), dust_prob=0.6, dust_tau=(0.4, 0.9)),  # 9 with bulge
)


def _field(b: _Builder, r50: float) -> None:
    """Foreground stars and small background galaxies, kept off the target's core."""
    rng, u = b.rng, b.rng.uniform

    def positions(k):
        r = u(max(8.0, 1.2 * r50), FIELD / 2, k)
        t = u(0, 2 * np.pi, k)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=-1)

    k = int(rng.poisson(0.6))
    star_flux = 10 ** (-0.4 * (u(16.5, 21.0, k) - ZERO_POINT))
    b.add_points(positions(k), (0.7, 0.35), star_flux)
    for xy in positions(int(rng.poisson(1.0))):
        mag = u(19.5, 22.5)
        b.add(_sersic(u(1.0, 4.0), u(0.4, 1.5), u(0.3, 1.0), u(0, np.pi), xy), _DISK, 10 ** (-0.4 * (mag - ZERO_POINT)))


def draw_galaxy(label: int, rng: np.random.Generator) -> Galaxy:
    """Draw a random galaxy of Galaxy10 DECaLS class `label` (0-9), roughly centred in a 67" field."""
    u = rng.uniform
    r50 = FIELD * u(0.075, 0.14)
    # Brighter galaxies are larger (constant-ish surface brightness); GZ DECaLS reaches r ~ 17.7.
    mag = float(np.clip(16.0 - 5 * math.log10(r50 / 7.0) + rng.normal(0, 0.35), 13.5, 17.7))
    flux_r = 10 ** (-0.4 * (mag - ZERO_POINT))
    pa = u(0, np.pi)
    centre = np.clip(rng.normal(0, 0.8, 2), -2.5, 2.5)
    b = _Builder(rng)
    _RECIPES[label](b, r50, flux_r, pa, centre)
    _field(b, r50)
    xy = np.concatenate(b.points_xy) if b.points_xy else np.zeros((0, 2))
    flux = np.concatenate(b.points_flux) if b.points_flux else np.zeros((0, 4))
    return Galaxy(
        label,
        r50,
        b.components,
        xy,
        flux,
        b.dust,
        psf_fwhm=u(1.0, 1.5),
        psf_beta=u(2.5, 4.5),
        focus=b.focus_region(),
    )
