"""`astroreason data synth|inspect|prepare|download`."""

from __future__ import annotations

import json

from ..errors import UserError, seed
from ..io import check_writable

SOURCE_HELP = (
    "file or directory: a Galaxy10-schema HDF5 file, a Hub-layout dataset directory (data/<split>-*.parquet, e.g. "
    "galaxy10-aion), a datasets save_to_disk directory, a local Hub cache folder (datasets--owner--name) or a "
    "cached repo id (owner/name, offline); or a spectra dataset in Multimodal Universe's layout (a `spectrum` struct "
    "column of flux, ivar, lambda; read as spectra, with --label-column)"
)
SPECTRA_EPILOG = (
    "A Hub-layout directory with a `spectrum` column (Multimodal Universe's spectra) is read as spectra: name its "
    "label column with --label-column, and the unit of its `lambda` with --wavelength-unit (default Angstrom)."
)


def _add_spectra_arguments(p) -> None:
    p.add_argument("--label-column", help="spectra: the catalogue column holding the class (required for spectra)")
    p.add_argument(
        "--wavelength-unit",
        default=None,
        help="spectra: the unit of spectrum.lambda (Angstrom, nm, um, anything astropy reads; default Angstrom)",
    )


def add_parser(subparsers) -> None:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .download import DEFAULT_DIR, RELEASES
    from .galaxy10 import LAYOUTS
    from .inspect import DEFAULT_RADIUS_ARCSEC
    from .splits import DEFAULT_FRACTIONS, SUBSETS

    parser = subparsers.add_parser(
        "data", help="Galaxy10 data (and stellar spectra): surrogate, inspection, splits, download"
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "synth",
        help="write a GalSim surrogate of Galaxy10 DECaLS (HDF5, or the galaxy10-aion layout), or with --spectra "
        "stellar spectra O-M in Multimodal Universe's layout",
    )
    p.add_argument(
        "--out", required=True, help="HDF5 file to write (a new directory for --layout galaxy10-aion or --spectra)"
    )
    p.add_argument("--spectra", action="store_true", help="write stellar spectra (docs/spectra.md) instead of galaxies")
    p.add_argument("--n", type=int, default=None, help="rows (default 2000; 700 stars with --spectra)")
    p.add_argument("--size", type=int, default=None, help="RGB side in pixels (default 256)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the surrogate's galaxies (default 0)")
    p.add_argument("--sorted", action="store_true", help="order rows by class, as the real file is")
    p.add_argument("--flux", action="store_true", help="also write g,r,i,z flux (nanomaggies) of the same galaxies")
    p.add_argument("--flux-size", type=int, default=None, help="flux cutout side in pixels (default 96)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: available cores)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="hdf5",
        help="hdf5 (Galaxy10_DECals.h5 schema) or galaxy10-aion (data/train|test-*.parquet: image_rgb, "
        "image_bands flux, ra, dec, Galaxy10_DECals_index, label, label_name); default hdf5",
    )
    p.add_argument(
        "--traps",
        action="store_true",
        help="galaxy10-aion layout: plant exact duplicates with conflicting labels (one across train/test), "
        "a near pair across train/test and NaN/inf flux rows; --spectra: position and content duplicates, with "
        "and without conflicting labels, and NaN/inf flux rows (listed in planted.json)",
    )
    p.set_defaults(func=run_synth)

    p = sub.add_parser(
        "inspect",
        help="schema, class counts, row order, NaNs, duplicate groups and label conflicts",
        epilog=SPECTRA_EPILOG,
    )
    p.add_argument("file", help=SOURCE_HELP)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--radius",
        type=float,
        default=DEFAULT_RADIUS_ARCSEC,
        help=f"near-duplicate radius on the sky, arcsec (default {DEFAULT_RADIUS_ARCSEC})",
    )
    p.add_argument("--sha256", help="verify the file's SHA-256 (a directory's content fingerprint) first")
    _add_spectra_arguments(p)
    p.set_defaults(func=run_inspect)

    p = sub.add_parser(
        "prepare", help="seeded, stratified, deduplicated splits and their datasets views", epilog=SPECTRA_EPILOG
    )
    p.add_argument("file", help=SOURCE_HELP)
    p.add_argument("--out", required=True, help="prepared directory to write")
    p.add_argument("--seed", type=seed, default=0, help="seed of the split shuffle (default 0)")
    p.add_argument(
        "--fractions",
        default=",".join(map(str, DEFAULT_FRACTIONS)),
        help="train,val,test shares per class (default 0.8,0.1,0.1)",
    )
    p.add_argument(
        "--radius",
        type=float,
        default=DEFAULT_RADIUS_ARCSEC,
        help="rows this close on the sky are one galaxy, kept in one split (arcsec)",
    )
    p.add_argument("--subset", choices=SUBSETS, default="all", help="flux: only rows with a finite g,r,i,z cutout")
    p.add_argument(
        "--include-rows",
        help="file of source ids to keep (one per line, or .npy): the row of an HDF5 file, the "
        "Galaxy10_DECals_index of a galaxy10-aion copy; e.g. the Galaxy10 rows a flux cross-match covers, so both "
        "modalities split the same galaxies",
    )
    p.add_argument("--sha256", help="verify the file's SHA-256 (a directory's content fingerprint) first")
    _add_spectra_arguments(p)
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("download", help="fetch Galaxy10 from Zenodo, checksum-verified")
    p.add_argument(
        "--release",
        choices=sorted(RELEASES),
        default="decals",
        help="decals (Galaxy10 DECaLS, 256 px) or sdss (the older Galaxy10 SDSS, 69 px); default decals",
    )
    p.add_argument("--out", default=str(DEFAULT_DIR), help=f"directory to put the file in (default {DEFAULT_DIR}/)")
    p.add_argument("--url", help="a mirror to fetch from instead of Zenodo")
    p.add_argument("--sha256", help="expected SHA-256 (default: the release's)")
    p.set_defaults(func=run_download)


def _spectra_source(args, image_only: dict) -> bool:
    """Is `args.file` a spectra dataset? Detected by its `spectrum` column; the spectra options are refused on
    anything else, and the image-only options (`image_only`: flag -> whether it was given) on spectra."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .spectra.reader import is_spectra_dataset

    spectra = is_spectra_dataset(args.file)
    if not spectra:
        given = [
            f for f, v in (("--label-column", args.label_column), ("--wavelength-unit", args.wavelength_unit)) if v
        ]
        if given:
            raise UserError(
                f"{args.file}: not a spectra dataset (no directory of parquet or Arrow files with a `spectrum` "
                f"column); {given[0]} is for spectra"
            )
        return False
    if not args.label_column:
        raise UserError(
            f"{args.file}: a spectra dataset (a `spectrum` column); name its label column with --label-column"
        )
    for flag, given in image_only.items():
        if given:
            raise UserError(f"{flag}: not supported for a spectra dataset ({args.file})")
    return True


def run_synth(args) -> int:
    if args.spectra:
        return _run_synth_spectra(args)
    # GalSim and scipy.signal take seconds to import: only `synth` pays for them.
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .surrogate import synthesize

    check_writable(args.out, "--out", directory=args.layout != "hdf5")
    n = 2000 if args.n is None else args.n
    size = 256 if args.size is None else args.size
    path = synthesize(
        args.out,
        n=n,
        size=size,
        seed=args.seed,
        sort_by_class=args.sorted,
        flux=args.flux,
        flux_size=96 if args.flux_size is None else args.flux_size,
        workers=args.workers,
        progress=True,
        layout=args.layout,
        traps=args.traps,
    )
    flux = args.flux or args.layout != "hdf5"
    print(f"wrote {path} ({n} galaxies, {size} px{', with flux' if flux else ''}, layout {args.layout})")
    return 0


def _run_synth_spectra(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .spectra.surrogate import synthesize_spectra

    given = {
        "--flux": args.flux,
        "--layout": args.layout != "hdf5",
        "--size": args.size is not None,
        "--flux-size": args.flux_size is not None,
        "--workers": args.workers is not None,
    }
    image_only = [flag for flag, v in given.items() if v]
    if image_only:
        raise UserError(f"--spectra: writes Multimodal Universe's spectra layout; {image_only[0]} is for images")
    check_writable(args.out, "--out", directory=True)
    n = 700 if args.n is None else args.n
    path = synthesize_spectra(args.out, n=n, seed=args.seed, sort_by_class=args.sorted, traps=args.traps)
    traps = " with traps (planted.json)" if args.traps else ""
    print(f"wrote {path} ({n} stellar spectra, O-M{', sorted by class' if args.sorted else ''}{traps})")
    return 0


def run_inspect(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .inspect import inspect_file, print_report

    if _spectra_source(args, {"--sha256": args.sha256}):
        from .spectra.reader import inspect_spectra, read_spectra
        from .spectra.report import print_spectra_report

        spectra = read_spectra(args.file, label_column=args.label_column, unit=args.wavelength_unit or "Angstrom")
        report = inspect_spectra(spectra, radius_arcsec=args.radius)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            print_spectra_report(report)
        return 0

    report = inspect_file(args.file, radius_arcsec=args.radius, sha256=args.sha256)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


def run_prepare(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .splits import load_manifest, prepare

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise UserError(f"--fractions: expected three comma-separated numbers, got {args.fractions!r}") from None
    check_writable(args.out, "--out", directory=True)
    image_only = {"--subset": args.subset != "all", "--include-rows": args.include_rows, "--sha256": args.sha256}
    if _spectra_source(args, image_only):
        return _run_prepare_spectra(args, fractions)
    out = prepare(
        args.file,
        args.out,
        seed=args.seed,
        fractions=fractions,
        radius_arcsec=args.radius,
        subset=args.subset,
        include_rows=args.include_rows,
        sha256=args.sha256,
        progress=True,
    )
    m = load_manifest(out)
    sizes = ", ".join(f"{k} {v}" for k, v in m.split_sizes().items())
    print(
        f"{out}: {sizes} galaxies (seed {m.seed}); {len(m.groups)} duplicate groups kept whole, "
        f"{len(m.dropped)} conflicting groups dropped ({sum(len(d['rows']) for d in m.dropped)} rows), "
        f"{m.excluded} rows excluded (subset, row list or unusable flux); manifest {m.hash[:12]}"
    )
    for e in m.excluded_rows:
        print(f"  excluded {m.id_name} {e['id']}: {e['reason']}")
    if m.source_split_leaks:
        print(
            f"  the source's own split leaks: {len(m.source_split_leaks)} duplicate group(s) span its splits "
            "(here each is kept in one split, or dropped when its labels conflict)"
        )
    return 0


def _run_prepare_spectra(args, fractions) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .spectra.splits import prepare_spectra
    from .splits import load_manifest

    out = prepare_spectra(
        args.file,
        args.out,
        label_column=args.label_column,
        unit=args.wavelength_unit or "Angstrom",
        seed=args.seed,
        fractions=fractions,
        radius_arcsec=args.radius,
    )
    m = load_manifest(out)
    sizes = ", ".join(f"{k} {v}" for k, v in m.split_sizes().items())
    print(
        f"{out}: {sizes} spectra (seed {m.seed}); {len(m.groups)} duplicate groups kept whole, "
        f"{len(m.dropped)} conflicting groups dropped ({sum(len(d['rows']) for d in m.dropped)} rows), "
        f"{m.excluded} rows excluded (unusable flux); manifest {m.hash[:12]}"
    )
    for d in m.dropped:
        names = ", ".join(m.classes[c] for c in d["labels"])
        print(f"  dropped object_id {', '.join(d['ids'])}: the same star labelled {names}")
    for e in m.excluded_rows:
        print(f"  excluded object_id {e['id']}: {e['reason']}")
    if m.source_split_leaks:
        print(
            f"  the source's own split leaks: {len(m.source_split_leaks)} duplicate group(s) span its splits "
            "(here each is kept in one split, or dropped when its labels conflict)"
        )
    return 0


def run_download(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .download import download

    check_writable(args.out, "--out", directory=True)
    path = download(args.release, args.out, url=args.url, sha256=args.sha256, progress=True)
    print(f"{path}: SHA-256 verified")
    return 0
