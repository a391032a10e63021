"""Galaxy10 DECaLS (and the older SDSS release): class table, schema and checksums (docs/facts.md)."""

from __future__ import annotations

# Class index -> name, Galaxy10 DECaLS. astroNN's own lookup misnames class 3: this list is the right one.
DECALS_CLASSES: tuple[str, ...] = (
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
)
# Rows per class in the real file; the surrogate draws its class mix from these.
DECALS_COUNTS: tuple[int, ...] = (1081, 1853, 2645, 2027, 334, 2043, 1829, 2628, 1423, 1873)

DECALS_FILENAME = "Galaxy10_DECals.h5"
DECALS_SHA256 = "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"
DECALS_URL = "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5"
DECALS_PIXEL_SCALE = 0.262  # arcsec / pixel, the Legacy Survey native scale

SDSS_FILENAME = "Galaxy10.h5"
SDSS_SHA256 = "969a6b1cefcc36e09fffa86febd2f699a4aa19b837ba0427f01b0bc6ded458af"
SDSS_URL = "https://zenodo.org/records/10844811/files/Galaxy10.h5"
# Galaxy10 SDSS class names (Leung & Bovy 2019), a different list from DECaLS.
SDSS_CLASSES: tuple[str, ...] = (
    "Disk, Face-on, No Spiral",
    "Smooth, Completely round",
    "Smooth, in-between round",
    "Smooth, Cigar shaped",
    "Disk, Edge-on, Rounded Bulge",
    "Disk, Edge-on, Boxy Bulge",
    "Disk, Edge-on, No Bulge",
    "Disk, Face-on, Tight Spiral",
    "Disk, Face-on, Medium Spiral",
    "Disk, Face-on, Loose Spiral",
)

# HDF5 keys every Galaxy10-schema file carries; `flux` (N, 4, H, W) float32 nanomaggies is optional.
REQUIRED_KEYS = ("images", "ans", "ra", "dec", "redshift", "pxscale")
FLUX_BANDS = ("DES-G", "DES-R", "DES-I", "DES-Z")
LAYOUTS = (
    "hdf5",
    "galaxy10-aion",
)  # what `data synth` writes: one Galaxy10 HDF5 file, or the Hub galaxy10-aion parquet
