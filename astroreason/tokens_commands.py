"""`astroreason tokens train|encode|cost`: train the built-in codec, fill the token cache, measure prompt cost."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import UserError, seed
from .io import check_writable, sha256_file, write_json_atomic


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokens", help="discrete image or spectrum tokens: train a codec, encode a dataset, prompt cost"
    )
    sub = parser.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a built-in FSQ codec on Galaxy10-schema data or on prepared spectra")
    p.add_argument(
        "--data",
        required=True,
        help="prepared split directory (images or spectra: trains on train, measures on val), or a Galaxy10-schema "
        "HDF5 file",
    )
    p.add_argument("--out", required=True, help="codec directory to write, e.g. tokenizers/<name>/")
    p.add_argument(
        "--config",
        help='JSON file: {"config": codec fields, "training": training fields} (see '
        "tokenizers/*.json, or a trained codec's codec.json); flags below override it",
    )
    p.add_argument("--input", choices=["rgb", "flux"], help="rgb images (`images`) or g,r,i,z flux (`flux`)")
    p.add_argument("--size", type=int, help="input side in pixels, a multiple of 4 (default 96 -> 24x24 codes)")
    p.add_argument("--levels", help="FSQ levels, comma-separated (default 7,5,5,5,5 = 4375 codes, like AION)")
    p.add_argument("--hidden", type=int, help="convolution channels (default 32)")
    p.add_argument("--steps", type=int, help="optimiser steps (default 400)")
    p.add_argument("--batch-size", type=int, help="images per step (default 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-3)")
    p.add_argument("--seed", type=seed, help="seed for initialisation, sampling and batches (default 0)")
    p.add_argument("--max-images", type=int, help="cap on training images held in memory (default 4096)")
    p.add_argument("--crop", type=int, help="train on random crops of this side, a multiple of 4 (default: full size)")
    p.set_defaults(func=run_train)

    p = sub.add_parser("encode", help="encode every row of a prepared manifest once into the token cache")
    p.add_argument("--data", required=True, help="prepared split directory")
    p.add_argument("--codec", required=True, help="codec directory (built-in FSQ, or a local AION-1 codec)")
    p.add_argument("--out", help="cache directory (default: PREPARED/tokens/<codec>-<hash>/)")
    p.add_argument("--flux-source", help="local galaxy10-aion copy (parquet or save_to_disk) to take flux from")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images or spectra per encode batch (default: the codec's own, 256 for the built-in codecs, 32 for "
        "AION-1's image codec, 16 for its spectrum codec)",
    )
    p.add_argument("--force", action="store_true", help="re-encode even when the cache is up to date")
    p.set_defaults(func=run_encode)

    p = sub.add_parser("cost", help="LM tokens per galaxy or spectrum of each rendering vs the image's visual tokens")
    p.add_argument("--codec", required=True, help="codec directory")
    p.add_argument("--model", required=True, help="model directory whose tokenizer and image processor count")
    p.add_argument("--rendering", default="all", help="ints, rows, special, or all (default), comma-separated")
    p.add_argument(
        "--data", help="prepared directory: measure real galaxies or spectra of --split (default: random code grids)"
    )
    p.add_argument("--split", default="test", help="split of --data to measure (default test)")
    p.add_argument("--n", type=int, default=16, help="galaxies or spectra to measure (default 16)")
    p.add_argument(
        "--image-size",
        type=int,
        help="side of the image the image arm shows (default: the data's, else the codec's input size; for spectra, "
        "the side of a plot, else no image is compared)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=run_cost)


# --- train --------------------------------------------------------------------------------------------------------


def _training_rows(data: Path, seed: int):
    """(source file, train rows, held-out rows, description) from a prepared directory or an HDF5 file."""
    if data.is_dir():
        # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
        from .data.splits import load_manifest, source_path

        manifest = load_manifest(data)
        held = "val" if "val" in manifest.rows else next(s for s in manifest.rows if s != "train")
        return (
            source_path(manifest, data),
            np.asarray(manifest.rows["train"]),
            np.asarray(manifest.rows[held]),
            {
                "prepared_dir": str(data),
                "manifest_hash": manifest.hash,
                "held_out_split": held,
            },
        )
    if not data.is_file():
        raise UserError(f"{data}: neither a prepared directory nor an HDF5 file")
    import h5py

    try:
        with h5py.File(data, "r") as f:
            n = len(f["ans"]) if "ans" in f else len(f["images"])
    except (OSError, KeyError) as err:
        raise UserError(f"{data}: not a Galaxy10-schema HDF5 file ({err})") from None
    perm = np.random.default_rng(seed).permutation(n)
    cut = max(1, n // 10)
    return (
        data,
        np.sort(perm[cut:]),
        np.sort(perm[:cut]),
        {"source_sha256": sha256_file(data), "held_out": "seeded 10 % of rows"},
    )


def _load_inputs(source, rows, spec) -> np.ndarray:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .tokens.codec import check_inputs, read_inputs

    where = f"{source}:{spec.h5_key}"
    return np.concatenate([check_inputs(b, spec, source=where) for b in read_inputs(source, rows, spec)])


def run_train(args) -> int:
    from dataclasses import fields as dataclass_fields

    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .tokens.fsq import FSQConfig, TrainConfig, train_fsq

    spectra = _spectra_manifest(Path(args.data)) is not None
    if spectra:
        image_only = [flag for flag in ("input", "size", "crop") if getattr(args, flag) is not None]
        if image_only:
            raise UserError(
                f"--{image_only[0]}: an image codec's flag; the spectrum codec's grid comes from --config "
                "(pixels, wavelength_min, wavelength_max)"
            )
    fields_json, training_json = {}, {}
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{args.config}: cannot read codec config ({err})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{args.config}: expected a JSON object")
        # {"config": {...}, "training": {...}} (a tokenizers/*.json or a trained codec's codec.json), or bare fields.
        fields_json = (
            loaded.get("config", loaded) if "config" in loaded else {k: v for k, v in loaded.items() if k != "training"}
        )
        known = {f.name for f in dataclass_fields(TrainConfig)}
        training_json = {
            k: v for k, v in loaded.get("training", {}).items() if k in known
        }  # codec.json adds provenance
    overrides = {"input": args.input, "size": args.size, "hidden": args.hidden}
    if args.levels:
        try:
            overrides["levels"] = [int(v) for v in args.levels.split(",")]
        except ValueError:
            raise UserError(f"--levels: expected comma-separated integers, got {args.levels!r}") from None
    fields_json = {**fields_json, **{k: v for k, v in overrides.items() if v is not None}}
    if spectra:
        from .tokens.spectrum_fsq import SpectrumFSQConfig

        config = SpectrumFSQConfig.from_json(fields_json)
    else:
        config = FSQConfig.from_json(fields_json)
    flags = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "max_images": args.max_images,
        "crop": args.crop,
    }
    train = TrainConfig(**{**training_json, **{k: v for k, v in flags.items() if v is not None}})
    for name in ("steps", "batch_size", "max_images"):
        if getattr(train, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(train, name)}")
    if not train.lr > 0:
        raise UserError(f"--lr: must be positive, got {train.lr}")
    if train.seed < 0:  # a seed from --config (the flag's type refuses it already)
        raise UserError(f"seed: must be a non-negative integer, got {train.seed}")
    if config.hidden < 1:
        raise UserError(f"--hidden: must be at least 1, got {config.hidden}")

    check_writable(args.out, "--out", directory=True)  # before minutes of training, not at the save
    if spectra:
        return _train_spectra(args, config, train)
    source, train_rows, eval_rows, provenance = _training_rows(Path(args.data), train.seed)
    rng = np.random.default_rng(train.seed)
    if len(train_rows) > train.max_images:
        train_rows = np.sort(rng.choice(train_rows, train.max_images, replace=False))
    if len(eval_rows) > train.max_eval_images:
        eval_rows = np.sort(rng.choice(eval_rows, train.max_eval_images, replace=False))
    spec = config.input_spec
    train_inputs, eval_inputs = _load_inputs(source, train_rows, spec), _load_inputs(source, eval_rows, spec)
    out = Path(args.out)
    print(
        f"training codec {out.name}: {spec.kind} {spec.channels}x{spec.size}x{spec.size}, levels {config.levels} "
        f"({config.vocab_size} codes), {len(train_inputs)} train / {len(eval_inputs)} held-out images from {source}"
    )
    codec, metrics = train_fsq(
        config,
        train_inputs,
        eval_inputs,
        train,
        name=out.name,
        progress=lambda step, loss: print(f"  step {step}/{train.steps}  loss {loss:.5f}", flush=True),
    )
    training = {**asdict(train), **provenance, "source_path": str(source)}
    codec.save(out, training=training, metrics=metrics)
    m = metrics["held_out"]
    print(f"wrote {out} ({codec.describe()})")
    print(
        f"held-out ({provenance.get('held_out_split', provenance.get('held_out'))}, {m['n_images']} images): "
        f"MSE {m['mse']:.5f}  PSNR {m['psnr_db']:.2f} dB  codebook usage {m['codebook_usage']:.1%}  "
        f"perplexity {m['perplexity']:.1f}  ({metrics['train_seconds']} s)"
    )
    return 0


def _spectra_manifest(data: Path):
    """The manifest of a spectra prepared directory; None for an image one or an HDF5 file."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .data.splits import MANIFEST_NAME, load_manifest

    if not (data / MANIFEST_NAME).is_file():
        return None
    manifest = load_manifest(data)
    return manifest if manifest.spectra is not None else None


def _train_spectra(args, config, train) -> int:
    """`tokens train --data PREPARED` on spectra: the spectrum codec on the train split, measured on val.

    Never on val or test rows, and never measured on test: the codec that makes the arm's tokens has seen only what
    the arm trains on, as for images. The spectra come from the split views (Angstrom, rows already checked finite
    by `data prepare`)."""
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .data.spectra.splits import split_spectra
    from .tokens.spectrum_fsq import train_spectrum_fsq

    data = Path(args.data)
    manifest = _spectra_manifest(data)
    sizes = manifest.split_sizes()
    for split in ("train", "val"):
        if not sizes.get(split):
            raise UserError(
                f"{data}: the {split} split is empty; the spectrum codec trains on train and is measured on val"
            )
    rng = np.random.default_rng(train.seed)
    train_pos = np.arange(sizes["train"])
    eval_pos = np.arange(sizes["val"])
    if len(train_pos) > train.max_images:
        train_pos = np.sort(rng.choice(train_pos, train.max_images, replace=False))
    if len(eval_pos) > train.max_eval_images:
        eval_pos = np.sort(rng.choice(eval_pos, train.max_eval_images, replace=False))
    out = Path(args.out)
    print(
        f"training spectrum codec {out.name}: {config.pixels} px {config.wavelength_min:g}-{config.wavelength_max:g} A "
        f"-> {config.codes} codes, levels {config.levels} ({config.vocab_size} codes), {len(train_pos)} train / "
        f"{len(eval_pos)} val spectra from {data}"
    )
    codec, metrics = train_spectrum_fsq(
        config,
        split_spectra(data, "train", manifest=manifest, positions=train_pos),
        split_spectra(data, "val", manifest=manifest, positions=eval_pos),
        train,
        name=out.name,
        progress=lambda step, loss: print(f"  step {step}/{train.steps}  loss {loss:.5f}", flush=True),
    )
    training = {
        **asdict(train),
        "prepared_dir": str(data),
        "manifest_hash": manifest.hash,
        "train_split": "train",
        "held_out_split": "val",
    }
    codec.save(out, training=training, metrics=metrics)
    m = metrics["held_out"]
    print(f"wrote {out} ({codec.describe()})")
    print(
        f"held-out (val, {m['n_spectra']} spectra): MSE {m['mse']:.5f} ({m['mse_vs_mean']:.3f} of each spectrum's "
        f"mean's)  codebook usage {m['codebook_usage']:.1%}  perplexity {m['perplexity']:.1f}  "
        f"({metrics['train_seconds']} s)"
    )
    return 0


# --- encode -------------------------------------------------------------------------------------------------------


def run_encode(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .tokens.cache import META_NAME, encode_prepared, load_codes
    from .tokens.loading import load_codec

    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size: must be at least 1, got {args.batch_size}")
    if args.out is not None:
        check_writable(args.out, "--out", directory=True)
    codec = load_codec(args.codec)
    batch_size = args.batch_size or codec.default_batch_size
    out = encode_prepared(
        args.data,
        codec,
        out=args.out,
        flux_source=args.flux_source,
        batch_size=batch_size,
        force=args.force,
        progress=True,
    )
    cache = load_codes(out, codec, prepared_dir=args.data)
    meta = json.loads((Path(out) / META_NAME).read_text())
    print(
        f"{out}: codes for {meta['n_rows']} of {meta['n_manifest_rows']} manifest rows "
        f"({len(cache.codes)} x {cache.codes.shape[1]}x{cache.codes.shape[2]}), {codec.describe()}"
    )
    return 0


# --- cost ---------------------------------------------------------------------------------------------------------


def _load_model_parts(model_dir: Path):
    """(tokenizer, image processor) of a local model directory."""
    from transformers import AutoImageProcessor, AutoTokenizer

    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: model directory not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        image_processor = AutoImageProcessor.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{model_dir}: cannot load its tokenizer and image processor ({str(err).splitlines()[0]})"
        ) from None
    return tokenizer, image_processor


def _galaxy_codes(args, codec):
    """Code grids to measure and the side of the image to compare them with (None: no image to compare, a spectrum
    codec without --image-size), with a description of where they come from."""
    spectra = codec.input_spec.kind == "spectrum"
    # A spectrum has no image of its own: its visual tokens are those of a plot, counted when --image-size says its side.
    side = args.image_size or (None if spectra else codec.input_spec.size)
    if args.data is None:
        rng = np.random.default_rng(0)
        codes = rng.integers(0, codec.vocab_size, size=(args.n, *codec.grid_shape))
        return codes, side, f"{args.n} random code grids (uniform, seed 0)"
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .data.sources import open_source
    from .data.spectra.splits import iter_split_spectra
    from .data.splits import load_manifest, source_path, split_path
    from .tokens.cache import load_codes
    from .tokens.codec import read_inputs

    manifest = load_manifest(args.data)
    if args.split not in manifest.rows:
        raise UserError(f"--split: {args.data} has no split {args.split!r} (has {', '.join(manifest.rows)})")
    if (manifest.spectra is not None) != spectra:
        what = "spectra" if manifest.spectra is not None else "images"
        raise UserError(f"--data: {args.data} holds {what}; codec {codec.name} takes {codec.input_spec.kind} input")
    rows = np.asarray(manifest.rows[args.split])[: args.n]
    source = source_path(manifest, args.data)
    try:
        cache = load_codes(args.data, codec)
        rows = np.asarray([r for r in rows if r in cache])
        codes, how = cache.codes_for(rows), "from the token cache"
    except UserError:
        if spectra:  # the split view holds the spectra: its first rows are `rows`
            batches = iter_split_spectra(args.data, args.split, manifest=manifest, positions=np.arange(len(rows)))
            codes = codec.encode_batches(batches, source=str(split_path(args.data, args.split)))
        else:
            spec = codec.input_spec
            codes = np.concatenate(
                [codec.encode(b, source=f"{source}:{spec.h5_key}") for b in read_inputs(source, rows, spec)]
            )
        how = "encoded now"
    if not spectra and args.image_size is None:
        with open_source(source) as src:  # an HDF5 file or a Hub-layout dataset
            side = int(src.height)
    noun = "spectra" if spectra else "galaxies"
    return codes, side, f"{len(codes)} {noun} of {args.data} split {args.split} ({how})"


def run_cost(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .models import family_for, load_processor, read_config  # the command compares the arms: the model's family
    from .tokens.cost import prompt_costs
    from .tokens.loading import load_codec
    from .tokens.render import RENDERINGS, check_fits, check_rendering

    renderings = (
        RENDERINGS if args.rendering == "all" else tuple(check_rendering(r.strip()) for r in args.rendering.split(","))
    )
    if args.n < 1:
        raise UserError(f"--n: must be at least 1, got {args.n}")
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size: must be positive, got {args.image_size}")
    if args.json:
        check_writable(args.json, "--json")
    codec = load_codec(args.codec)
    model_dir = Path(args.model)
    tokenizer, image_processor = _load_model_parts(model_dir)
    for r in renderings:
        check_fits(r, codec.vocab_size)
    codes, side, where = _galaxy_codes(args, codec)
    costs = prompt_costs(codes, tokenizer, vocab_size=codec.vocab_size, renderings=renderings, model_dir=model_dir)
    n_visual = None
    if side is not None:
        family = family_for(read_config(model_dir, local_files_only=True))
        n_visual = family.visual_tokens(load_processor(model_dir), side)  # the whole processor: Gemma 3's counts there
    item = "spectrum" if codec.input_spec.kind == "spectrum" else "galaxy"

    print(codec.describe())
    print(f"model {model_dir}: {type(tokenizer).__name__}, {type(image_processor).__name__}; {where}")
    per = f"LM tokens/{item}"
    print(f"{'rendering':<10} {per:>18} {'min-max':>13} {'tokens/code':>12} {f'prompt/{item}':>15}")
    for c in costs:
        note = f"  ({c.note})" if c.note else ""
        print(
            f"{c.rendering:<10} {c.lm_tokens_mean:>18.1f} {f'{c.lm_tokens_min}-{c.lm_tokens_max}':>13} "
            f"{c.tokens_per_code:>12.3f} {c.prompt_tokens_mean:>15.1f}{note}"
        )
    print(
        f"(prompt/{item}: the default template's {costs[0].template_tokens} tokens with the codes, chat template "
        "included)"
    )
    if n_visual is None:
        print("image: none to compare (a spectrum; --image-size N counts the visual tokens of an N px plot)")
    else:
        what = "a plot" if item == "spectrum" else "an image"
        print(f"{'image':<10} {n_visual:>18d} {'':>13} {'':>12}  (visual tokens of {what} of {side}x{side} px)")
    if args.json:
        write_json_atomic(
            args.json,
            {
                "codec": {
                    "name": codec.name,
                    "hash": codec.codec_hash,
                    "vocab_size": codec.vocab_size,
                    "grid_shape": list(codec.grid_shape),
                },
                "model": str(model_dir),
                "galaxies": where,
                "renderings": [c.to_json() for c in costs],
                "image": None if side is None else {"side_px": side, "visual_tokens": n_visual},
            },
        )
    return 0
