"""How much of the class a model's frozen inputs carry: a linear probe on them, beside the model's own accuracy.

The measurement behind docs/recipes.md ("Why GRPO did not raise held-out accuracy"). For the image arm it reads the
model's merged visual tokens of each galaxy (the vision tower and merger, as the language model receives them); for
the token arm the embedding rows of the galaxy's code tokens (`special` rendering). A logistic regression is fitted
on the training split and scored on the validation and test splits, once on the mean over a galaxy's tokens and once
on all of them, position by position. A probe well above the model's own accuracy says the language model reads
less from its input than the input holds.

    python bench/readout_probe.py runs/demo/image/sft --demo runs/demo
    python bench/readout_probe.py runs/demo/tokens/sft --demo runs/demo --arm tokens
"""

from __future__ import annotations

import argparse


def features(model, processor, rows, arm: str):
    import torch

    from astroreason.models import family_for

    if arm == "image":
        family, out = family_for(model), []
        with torch.no_grad():
            for start in range(0, len(rows), 64):
                batch = processor.image_processor(
                    images=[r["image"] for r in rows[start : start + 64]], return_tensors="pt"
                )
                out += [t for t in family.image_features(model, batch)]
        return [t.numpy() for t in out]
    weight = model.get_input_embeddings().weight.detach()
    return [weight[r["code_ids"]].numpy() for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="the model whose inputs are probed (e.g. a demo's image/sft)")
    p.add_argument("--demo", default="runs/demo", help="the demo directory whose prepared data and codec are used")
    p.add_argument("--arm", default="image", choices=["image", "tokens"])
    a = p.parse_args()

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from astroreason.arms import build_arm
    from astroreason.arms.base import ArmSettings
    from astroreason.models import load_model_and_processor
    from astroreason.tokens.render import code_token_ids

    torch.set_num_threads(1)
    model, processor = load_model_and_processor(a.model)
    model.eval()
    settings = ArmSettings(
        data_dir=f"{a.demo}/prepared",
        modality=a.arm,
        codec=f"{a.demo}/codec" if a.arm == "tokens" else None,
        rendering="special",
    )

    def split(name):
        arm = build_arm(settings, name, lint_template=False)
        rows = arm.rows()
        if a.arm == "tokens":  # the code tokens of each galaxy, read back from its prompt
            tokenizer = getattr(processor, "tokenizer", processor)
            codes = set(code_token_ids(tokenizer, arm.codec.vocab_size))
            for r in rows:
                ids = tokenizer(r["prompt"][-1]["content"])["input_ids"]
                r["code_ids"] = [i for i in ids if i in codes]
        x = features(model, processor, rows, a.arm)
        labels = np.array([r["label"] for r in rows])
        return np.stack([t.mean(0) for t in x]), np.stack([t.ravel() for t in x]), labels

    (train_mean, train_all, y_train) = split("train")
    for name in ("val", "test"):
        mean, every, y = split(name)
        for what, (x_train, x) in {"their mean": (train_mean, mean), "every token": (train_all, every)}.items():
            scaler = StandardScaler().fit(x_train)
            clf = LogisticRegression(max_iter=3000).fit(scaler.transform(x_train), y_train)
            print(
                f"PROBE {a.arm} {name} on {what}: {clf.score(scaler.transform(x), y):.3f} "
                f"(train {clf.score(scaler.transform(x_train), y_train):.3f}, {x.shape[1]} features)"
            )


if __name__ == "__main__":
    main()
