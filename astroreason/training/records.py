"""What a run started from and how it was trained, as JSON for `fingerprint.json`."""

from __future__ import annotations

import json
from pathlib import Path

from .arguments import GalaxyScriptArguments


def _json_safe(values: dict) -> dict:

    return json.loads(json.dumps(values, default=str))


TOKENIZER_TOKEN_ARGS = ("eos_token", "pad_token", "bos_token")  # TRL config fields named *_token that are no secret


def training_args_record(training_args) -> dict:
    """The training arguments as `to_dict()` gives them (JSON-safe), with TRL's tokenizer tokens (`eos_token`,
    `pad_token`) restored: `to_dict()` masks every field named `*_token` as `<NAME>`, secrets (`hub_token`) and
    tokenizer tokens alike."""
    values = training_args.to_dict()
    for key in values:
        real = getattr(training_args, key, None)
        if key.endswith("_token") and (real is None or key in TOKENIZER_TOKEN_ARGS):
            values[key] = real
    return _json_safe(values)


def base_record(recipe: str, args: GalaxyScriptArguments, training_args, model_args) -> dict:
    """What a run started from and how it was trained, for `fingerprint.json` (`RunFingerprint` adds the hash of
    the base's weight files): enough for the audit's label-permutation control to rerun the recipe from the base
    with permuted labels. `recipe` is `sft` or `grpo`."""
    from dataclasses import asdict

    path = model_args.model_name_or_path
    lora = bool(getattr(model_args, "use_peft", False))
    peft = {k: v for k, v in asdict(model_args).items() if k.startswith("lora_") or k in ("use_rslora", "use_dora")}
    return {
        "model_name_or_path": path,
        "resolved_path": str(Path(path).resolve()) if path and Path(path).is_dir() else None,
        "lora": lora,
        "peft": _json_safe(peft) if lora else None,
        "recipe": {
            "kind": recipe,
            "script_args": _json_safe(asdict(args)),
            "training_args": training_args_record(training_args),
            "model_args": _json_safe(asdict(model_args)),
        },
    }
