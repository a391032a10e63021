"""`astroreason model`: build a tiny random vision-language model (Qwen-VL, Gemma 3) offline (for tests, demos and dry runs of the recipes)."""

from __future__ import annotations


def run_tiny(args) -> int:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .io import check_writable
    from .models import build_record, build_tiny_model

    check_writable(args.out, "--out", directory=True)
    out = build_tiny_model(args.out, arch=args.arch, seed=args.seed, size=args.size)
    record = build_record(out)
    print(
        f"Built a random {record['arch']} ({record['size']}, seed {record['seed']}, "
        f"{record['parameters']:,} parameters, vocabulary {record['vocab_size']}) in {out}"
    )
    return 0


def add_parser(subparsers) -> None:
    # lazy: a command module, imported at `astroreason --help`; the library loads only when the command runs
    from .errors import seed
    from .models import ARCHS, SIZES

    p = subparsers.add_parser("model", help="Model utilities (a tiny offline vision-language model).")
    sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    tiny = sub.add_parser(
        "tiny",
        help="Build a tiny random vision-language model with a locally trained tokenizer; no network needed.",
        description="Build a tiny random model of a family (--arch: Qwen2.5-VL, Qwen3-VL, Gemma 3; model, tokenizer, "
        "image processor, chat template) in --out. "
        "The same arguments give the same weights.",
    )
    tiny.add_argument("--out", required=True, help="Directory to create (must not exist or be empty).")
    tiny.add_argument("--arch", choices=ARCHS, default="qwen2_5_vl", help="Architecture (default: qwen2_5_vl).")
    tiny.add_argument("--seed", type=seed, default=0, help="Seed of the random weights (default: 0).")
    tiny.add_argument("--size", choices=SIZES, default="tiny", help="tiny (~0.2 M parameters) or small.")
    tiny.set_defaults(func=run_tiny)
