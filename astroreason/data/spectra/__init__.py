"""Spectra as a source: a surrogate of stellar spectra (O to M) in Multimodal Universe's Hub layout, a reader
with an inspection of what would make a naive split of it leak, and prepared splits.

* `stars`: the physics of one star's spectrum (a Planck continuum times the absorption features of its class,
  Doppler-shifted, smoothed to a resolution, with noise and its inverse variance);
* `surrogate`: `synthesize_spectra` writes N stars as a `datasets` parquet directory, traps planted on request;
* `reader`: `read_spectra` reads such a directory (the label column and wavelength unit named by the user) and
  `inspect_spectra` reports class counts, class order, duplicate groups and rows with unusable flux (`report`
  prints it);
* `splits`: `prepare_spectra` writes prepared splits in the image layout (`data.splits`), split by the same code.

`astroreason data synth --spectra|inspect|prepare` reach them; `split_spectra` reads a split back for the spectrum
codecs (`astroreason tokens train|encode|cost`); no arm reads the splits yet (docs/spectra.md).
"""
