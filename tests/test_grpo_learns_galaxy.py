"""GRPO learns what the galaxy shows, in both arms, and learns nothing when the galaxy is blanked out.

Real TRL GRPOTrainer runs, built by the recipes' own builders (`build_sft_trainer`, `build_grpo_trainer`,
`run_training`) on the tiny offline Qwen2.5-VL, rewarded by the recipes' own `accuracy` reward alone, and evaluated
greedily on held-out galaxies (the test split, never trained on) with the project's `TransformersBackend` and answer
parser.

The task: a Galaxy10-schema file of two classes whose pictures are plainly distinct, a bright round disc (Round
Smooth) and a bright thin bar (Edge-on without Bulge), split as `astroreason data prepare` splits. Its blanked twin
has the same labels and positions, every image replaced by one flat dark field (a pixel or two off by one, so that
the split's duplicate check does not merge them): the labels are there, the galaxy is not. The token arm sees both
through a small FSQ codec trained here on the real pictures.

The model is built the way the demo builds it: a tiny random Qwen2.5-VL whose input path is warm-started on a second,
disjoint file of such galaxies (the vision tower for the image arm, the code-token rows for the token arm; both then
held fixed), so that the galaxy reaches the language model in a usable form; the language model knows nothing. The
start is a short, gentle SFT on the blanked twin: it learns the answer format and the class mix, and cannot learn
which galaxy is which (greedy, it is no better than the majority rate; sampled, it names both classes, so GRPO's
groups disagree from the first step). From that start:
- GRPO on the real galaxies reaches >= 90 % held-out accuracy;
- the same run on the blanked twin stays at chance (the project's one-sided binomial test against the majority
  rate), on its own held-out rows and on the real galaxies: the reward alone, without the galaxy, teaches nothing.
- the audit's random-reward control (`probe_random_reward`) passes the token arm's run: its GRPO stage rerun with
  the accuracy reward replaced by a coin of the same mean gains nothing.

What it took, measured on this task (docs/recipes.md, "A GRPO run that learns the galaxy"): 16 galaxies a step (with
4 the class prior random-walks faster than a read-out forms, and every group collapses onto one answer); a rate of
3e-3 after a 5-step warm-up (1e-3 did not leave chance in 40 steps, 1e-2 lost the answer format); a short prompt;
and, in the token arm, the policy gradient on the highest-entropy fifth of the completion tokens only (TRL's
`top_entropy_quantile`), without which 2 runs in 4 lost the answer format. It is seed-dependent: with these
settings, seeds 0, 1, 2 reached 94.7 %, 50 % (never left chance), 100 % in the image arm and 97.4 %, 100 %, 89.5 %
in the token arm. This module runs seed 0, which gives the same result each time on this stack.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from astroreason.audit.probes import beats_rate

ROUND, EDGE_ON = 2, 8  # Galaxy10 DECaLS: Round Smooth (a disc), Edge-on without Bulge (a thin bar)
CLASSES = (ROUND, EDGE_ON)
SIDE = 32  # source pixels; the image arm resizes to IMAGE_SIZE, the codec to 16
N_GALAXIES = 128
N_PRETRAIN = 256  # the disjoint file the input path is warm-started on
FRACTIONS = (0.6, 0.1, 0.3)  # 76 train, 14 val, 38 held-out test galaxies
IMAGE_SIZE = 112  # 16 visual tokens
# Two classes, one question: a short prompt keeps the galaxy a large share of what the language model attends to.
PROMPTS = {
    "image": "Round Smooth or Edge-on without Bulge?",
    "tokens": "{tokens}\nRound Smooth or Edge-on without Bulge?",
}
PRETRAIN_STEPS = {"image": 60, "tokens": 300}  # the tower's steps cost ~0.3 s, the code rows' a millisecond
START_STEPS, START_LR = 40, 1e-2
GRPO_LR, GRPO_WARMUP = 3e-3, 5
GRPO_STEPS = {"image": 120, "tokens": 60}  # when the read-out forms varies by seed: steps 10 to 80 in the image arm
# The token arm's policy gradient only on the 20 % of completion tokens with the highest entropy (TRL's
# `top_entropy_quantile`: the class name, not the answer tags); on all of them it lost the answer format in 2 of 4
# runs. The image arm learnt in 2 of 3 seeds on all tokens (this module's settings) and in 1 of 3 on the top 20 %.
ENTROPY_QUANTILE = {"image": 1.0, "tokens": 0.2}
GALAXIES, GENERATIONS = 16, 4  # per step
TARGET = 0.9


# --- the galaxies --------------------------------------------------------------------------------------------------


def galaxy_pixels(label: int, rng) -> np.ndarray:
    """A bright disc (Round Smooth) or a bright thin bar (Edge-on without Bulge) on a dark, noisy field."""
    image = rng.integers(0, 24, (SIDE, SIDE))
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx = SIDE / 2 + rng.uniform(-2, 2, 2)
    if label == ROUND:
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 12) ** 2
    else:
        shape = (abs(yy - cy) < rng.uniform(11, 14)) & (abs(xx - cx) < rng.uniform(3, 4))
    image[shape] = rng.integers(200, 256, int(shape.sum()))
    return image


def blank_pixels(rng) -> np.ndarray:
    """One flat dark field; a few pixels off by one or two keep every image distinct (no duplicate groups)."""
    image = np.full((SIDE, SIDE), 12)
    rows, cols = rng.integers(0, SIDE, (2, 4))
    image[rows, cols] += rng.integers(-2, 3, 4)
    return image


def write_galaxies(path: Path, *, seed: int, blank: bool = False, n: int = N_GALAXIES) -> Path:
    """A Galaxy10-schema file of both classes in equal numbers (shuffled); `blank`: the same labels and positions,
    with blank images."""
    from data_files import write_h5

    rng = np.random.default_rng(seed)
    labels = np.resize(np.asarray(CLASSES), n)
    rng.shuffle(labels)
    ra, dec = np.arange(n) * 0.5 + 1.0, rng.uniform(-20, 30, n)  # 0.5 deg apart: no neighbours
    pixels = [blank_pixels(rng) if blank else galaxy_pixels(int(y), rng) for y in labels]
    columns = {
        "images": np.stack([np.repeat(p[..., None], 3, -1) for p in pixels]).astype(np.uint8),
        "ans": labels.astype(np.uint8),
        "ra": ra,
        "dec": dec,
        "redshift": np.full(n, 0.05),
        "pxscale": np.full(n, 0.262),
    }
    return write_h5(path, columns)


def prepared_pair(root: Path, seed: int) -> dict[str, Path]:
    """The real galaxies and their blanked twin, each split as `astroreason data prepare` splits."""
    from astroreason.data.splits import prepare

    return {
        kind: prepare(
            write_galaxies(root / f"{kind}.h5", seed=seed, blank=kind == "blank"),
            root / f"prepared_{kind}",
            seed=0,
            fractions=FRACTIONS,
        )
        for kind in ("real", "blank")
    }


def train_codec(prepared: dict[str, Path], out: Path, seed: int) -> Path:
    """A small FSQ codec (16 px in, 4x4 codes of 25) trained on the real galaxies, and both twins encoded with it."""
    from astroreason.cli import main

    train = ["tokens", "train", "--data", str(prepared["real"]), "--out", str(out), "--seed", str(seed)]
    train += ["--size", "16", "--levels", "5,5", "--hidden", "8", "--steps", "20", "--batch-size", "16"]
    assert main(train) == 0
    for data in prepared.values():
        assert main(["tokens", "encode", "--data", str(data), "--codec", str(out)]) == 0
    return out


def warm_started_model(root: Path, arm: str, codec: Path | None, seed: int) -> Path:
    """The tiny model with its input path pretrained on a disjoint file (another seed), as the demo's warm start."""
    from astroreason.models import build_tiny_model
    from astroreason.pretrain import (
        CodePretrainConfig,
        VisionPretrainConfig,
        pretrain_code_embeddings_on_file,
        pretrain_vision_tower,
    )

    base = build_tiny_model(root / "tiny", arch="qwen2_5_vl", seed=seed)
    source = write_galaxies(root / "pretrain.h5", seed=seed + 1000, n=N_PRETRAIN)
    out = root / "warm"
    if arm == "image":
        config = VisionPretrainConfig(steps=PRETRAIN_STEPS[arm], batch_size=32, image_size=IMAGE_SIZE, seed=seed)
        record = pretrain_vision_tower(base, source, out, config, progress=False)
    else:
        config = CodePretrainConfig(steps=PRETRAIN_STEPS[arm], seed=seed)
        record = pretrain_code_embeddings_on_file(base, source, codec, out, config)
    assert record["held_out_accuracy"] >= 0.9, record  # the galaxy does reach the language model
    return out


# --- training and evaluation through the recipes' builders ---------------------------------------------------------


def script_args(arm: str, data_dir: Path, codec: Path | None, **kwargs):
    from astroreason.training import GalaxyScriptArguments

    # The warm-started input path stays fixed, as in the demo's GRPO stage.
    held = dict(rendering="special", freeze_code_rows=True) if arm == "tokens" else dict(freeze_vision_tower=True)
    return GalaxyScriptArguments(
        data_dir=str(data_dir),
        modality=arm,
        image_size=IMAGE_SIZE,
        codec=str(codec) if arm == "tokens" else None,
        prompt_template=PROMPTS[arm],
        **held,
        **kwargs,
    )


def common(seed: int) -> dict:
    return dict(
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        optim="adamw_torch",
        seed=seed,
    )


def train_start(args, model_dir: Path, out: Path, seed: int) -> Path:
    """The SFT start: the answer format, learnt on the blanked twin (labels without galaxies)."""
    from trl import ModelConfig, SFTConfig

    from astroreason.training import build_sft_trainer, run_training

    config = SFTConfig(
        output_dir=str(out),
        max_steps=START_STEPS,
        per_device_train_batch_size=8,
        learning_rate=START_LR,
        lr_scheduler_type="constant",
        max_length=None,
        **common(seed),
    )
    run_training(build_sft_trainer(args, config, ModelConfig(str(model_dir), dtype="float32")), args)
    return out


def train_grpo(args, start: Path, out: Path, seed: int) -> list[dict]:
    """GRPO from the start model with the recipes' accuracy reward alone; returns its log records."""
    from trl import GRPOConfig, ModelConfig

    from astroreason.training import build_grpo_trainer, run_training

    config = GRPOConfig(
        output_dir=str(out),
        max_steps=GRPO_STEPS[args.modality],
        per_device_train_batch_size=GALAXIES * GENERATIONS,
        num_generations=GENERATIONS,
        max_completion_length=16,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        learning_rate=GRPO_LR,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=GRPO_WARMUP,
        top_entropy_quantile=ENTROPY_QUANTILE[args.modality],
        activation_checkpointing=False,
        dataloader_num_workers=0,
        **common(seed),
    )
    trainer = build_grpo_trainer(args, config, ModelConfig(str(start), dtype="float32"))
    run_training(trainer, args)
    return [h for h in trainer.state.log_history if "reward" in h]


def answers(model_dir: Path, args, *, temperature: float = 0.0, repeats: int = 1, seed: int = 0):
    """The parsed answers (class index or None) to the held-out galaxies of `args`' data, and their labels."""
    import torch

    from astroreason.data.galaxy10 import DECALS_CLASSES
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend
    from astroreason.rewards import parse_answer
    from astroreason.training import galaxy_rows

    sampling = SamplingSettings(max_new_tokens=24, temperature=temperature)
    backend = TransformersBackend.from_pretrained(str(model_dir), sampling, batch_size=64)
    rows = galaxy_rows(args, "test") * repeats
    torch.manual_seed(seed)  # sampled answers (temperature > 0) are reproducible
    images = [r["image"] for r in rows] if "image" in rows[0] else None
    generations = backend.generate([r["prompt"] for r in rows], images)
    return [parse_answer(g.text, DECALS_CLASSES) for g in generations], [int(r["label"]) for r in rows]


def score(predictions: list, labels: list) -> dict:
    """Accuracy against the majority rate (the audit's one-sided binomial test), parse rate, answer counts."""
    correct = sum(p == y for p, y in zip(predictions, labels))
    majority = max(Counter(labels).values()) / len(labels)
    parsed = [p for p in predictions if p is not None]
    return {
        **beats_rate(correct, len(labels), majority),
        "parsed": len(parsed) / len(predictions),
        "answers": dict(Counter(parsed)),
    }


def run_arm(root: Path, arm: str, seed: int) -> dict:
    """One arm's whole experiment: data, (codec), the warm-started model, the SFT start, GRPO on the real galaxies
    and on the blanked twin, and their held-out scores."""
    prepared = prepared_pair(root, seed)
    codec = train_codec(prepared, root / "codec", seed) if arm == "tokens" else None
    real, blank = (script_args(arm, prepared[k], codec) for k in ("real", "blank"))
    start = train_start(blank, warm_started_model(root, arm, codec, seed), root / "start", seed)
    run = {
        "arm": arm,
        "root": root,
        "codec": codec,
        "start_greedy": score(*answers(start, real)),
        "start_sampled": score(*answers(start, real, temperature=1.0, repeats=4, seed=seed)),
    }
    for kind, args in (("real", real), ("blank", blank)):
        grpo_args = script_args(arm, args.data_dir, codec, reward_funcs=["accuracy"])
        out = root / f"grpo_{kind}"
        run[f"{kind}_logs"] = train_grpo(grpo_args, start, out, seed)
        run[kind] = score(*answers(out, args))
    run["blank_on_real"] = score(*answers(root / "grpo_blank", real))
    return run


@pytest.fixture(scope="module", params=["image", "tokens"])
def arm_run(request, tmp_path_factory):
    return run_arm(tmp_path_factory.mktemp(f"learns_{request.param}"), request.param, seed=0)


def test_the_start_answers_in_format_without_knowing_the_galaxy(arm_run):
    greedy, sampled = arm_run["start_greedy"], arm_run["start_sampled"]
    assert greedy["parsed"] >= 0.9 and sampled["parsed"] >= 0.7, (greedy, sampled)
    assert not greedy["beats"], greedy  # no better than the majority rate: the SFT never saw which galaxy is which
    # Sampled, it names both classes, neither in more than 3/4 of its answers: groups disagree from step 1.
    shares = [sampled["answers"].get(c, 0) / sum(sampled["answers"].values()) for c in CLASSES]
    assert max(shares) <= 0.75, sampled
    assert arm_run["real_logs"][0]["frac_reward_zero_std"] < 1.0


def test_grpo_learns_the_galaxy(arm_run):
    real, logs = arm_run["real"], arm_run["real_logs"]
    assert real["accuracy"] >= TARGET and real["beats"], real
    # ... and it learnt it from the reward: the training accuracy rose from the start's level.
    first, last = (np.mean([h["reward"] for h in part]) for part in (logs[:10], logs[-10:]))
    assert last >= first + 0.2, (first, last)


def test_grpo_without_the_galaxy_stays_at_chance(arm_run):
    # The same run with the galaxy blanked out: its rewards varied inside groups as the real run's did...
    logs = arm_run["blank_logs"]
    assert len(logs) == GRPO_STEPS[arm_run["arm"]] and min(h["frac_reward_zero_std"] for h in logs) < 1.0
    # ... and it is not above the majority rate on its own held-out rows, nor on the real galaxies.
    for result in (arm_run["blank"], arm_run["blank_on_real"]):
        assert not result["beats"] and result["accuracy"] < TARGET, result


def test_the_run_that_learnt_passes_the_random_reward_control(arm_run):
    """`astroreason audit`'s random-reward control on the run that learnt: its GRPO stage rerun from the same start
    with the accuracy reward replaced by a seeded coin of the mean it logged gains nothing, and the run beats it."""
    if arm_run["arm"] == "image":
        pytest.skip("the token arm's run shows it; the image arm's 120-step rerun would add two minutes to CI")
    from astroreason.audit.probes import RunSpec, probe_random_reward

    root, arm = arm_run["root"], arm_run["arm"]
    spec = RunSpec(
        model=str(root / "grpo_real"),
        data_dir=str(root / "prepared_real"),
        modality=arm,
        template=PROMPTS[arm],
        codec=str(arm_run["codec"]),
        rendering="special",
        image_size=IMAGE_SIZE,
    )
    result = probe_random_reward(spec)
    details = result.details
    assert result.status == "pass", result.summary
    assert details["steps"] == GRPO_STEPS[arm] and details["rewards"] == ["random_accuracy"]
    gains = details["gains"]
    assert gains["run"]["gain_points"] >= 30 and gains["rerun"]["gain_points"] <= 10, gains
    assert details["comparison"]["mcnemar_p_value"] < 0.05
