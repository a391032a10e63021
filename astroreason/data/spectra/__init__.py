"""Spectra as a source: a surrogate of stellar spectra (O to M) in Multimodal Universe's Hub layout, and a reader
with an inspection of what would make a naive split of it leak.

* `stars`: the physics of one star's spectrum (a Planck continuum times the absorption features of its class,
  Doppler-shifted, smoothed to a resolution, with noise and its inverse variance);
* `surrogate`: `synthesize_spectra` writes N stars as a `datasets` parquet directory, traps planted on request;
* `reader`: `read_spectra` reads such a directory (the label column and wavelength unit named by the user) and
  `inspect_spectra` reports class counts, class order, duplicate groups and rows with unusable flux.

Nothing else in the package uses these yet (docs/spectra.md).
"""
