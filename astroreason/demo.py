"""`astroreason demo`: the whole pipeline on the GalSim surrogate, on a CPU, offline, in minutes.

surrogate data -> split manifest -> codec + token cache -> tiny Qwen2.5-VL -> warm start of each arm's input path
on a second, disjoint surrogate file (the vision tower for the image arm; the code-token embeddings, one token per
code, for the token arm) -> SFT then GRPO for the image arm and the token arm, both from that one model ->
evaluation of both on the same test galaxies, and of each arm's earlier stages (the model SFT starts from, the SFT
model) -> a side-by-side report (table + figures + the warm starts + what each stage adds, paired with the stage
before it) -> the figures printed, and one `RESULT {json}` line (with each arm's `<arm>_sft_gain`, `<arm>_grpo_gain`
and their exact McNemar p).

Every stage writes into `--out` and is skipped when its output is already there, so a killed demo resumes. The demo
checks its own claim: each arm must beat twice the majority-class rate with the lower end of its 95 % interval above
that rate; otherwise it exits 1.

`--zoom` (into runs/demo_zoom by default) renders the surrogate at Galaxy10's 256 px, so the 112 px first view is
downsampled and a zoom can add detail (a bar, how tightly arms wind, a second nucleus), and adds a zoom arm of each
modality: from that modality's SFT model, a short SFT on zoom trajectories (the warm start: on the galaxies whose
focus box is small, a call on it, the tool's crop, the answer; on the others the answer at once;
`zoom.trajectories`), then multi-turn GRPO with the zoom tool, then evaluation as zoom episodes; and an image arm
without zoom whose 168 px first view has the zoom arm's visual tokens. The image zoom arm's GRPO model is also
evaluated without zoom on its 112 px first view and on the 252 px full view: the zooming gap, what zooming could add.
Its claim is honest measurement, not that zoom wins: after GRPO each zoom arm must still decide per galaxy
(homogenisation below `MAX_HOMOGENISATION`: it zooms on some galaxies and not others); its accuracy, the accuracy
with and without a zoom, the zoom rate per true class before and after GRPO and the tokens per galaxy are reported
beside the plain arms', all from the results files.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .arms import ARMS
from .errors import CheckFailed, UserError
from .io import check_writable, write_json_atomic

CONFIG_NAME = "demo_config.json"


@dataclass
class DemoConfig:
    """Sizes of the demo; `--quick` shrinks them for a smoke run (its accuracy claim is not checked).

    Args:
        n_galaxies: Surrogate galaxies split into train / val / test.
        n_pretrain: Galaxies of the second surrogate file (another seed) the arms' input paths are pretrained on.
        fractions: Train, val, test shares of the split.
        render_size: Side of the rendered surrogate images (px); the arms resize them to `image_size`.
        image_size: Side the image arm shows (112 px = 16 visual tokens).
        pretrain_steps: Vision-tower pretraining steps (batch 64).
        code_pretrain_steps: Code-embedding pretraining steps (batch 64; a step costs a millisecond).
        sft_steps: SFT steps per arm.
        sft_batch: SFT batch size.
        grpo_steps: GRPO steps per arm.
        lr_vision: SFT learning rate of the vision blocks (pretrained: they move slowly).
        lr_merger: SFT learning rate of the merger into the language model.
        lr_language: SFT learning rate of the language model (random: it learns fast).
        grpo_lr: GRPO learning rate (language model and merger; the vision blocks are frozen).
        grpo_galaxies: Galaxies (prompts) per GRPO step: the class prior a step pushes is that of these galaxies,
            and with few of them it random-walks faster than the answers learn to depend on the galaxy.
        grpo_generations: Completions per galaxy (the group whose mean is the advantage's baseline).
        grpo_warmup: Steps of linear learning-rate warm-up (Adam's first steps move every weight by the full rate).
        grpo_scale_rewards: TRL's `scale_rewards`: `group` divides each advantage by its group's reward spread, which
            weights galaxies the model already answers confidently above the ones it gets wrong; `none` does not.
        rendering: How the token arm writes codec ids as text (`special`: one LM token per code).
        codec_levels: FSQ levels of the demo's codec (32 px in, 8x8 codes); [8, 5, 5] is 200 codes.
        codec_hidden: Channels of the codec's convolutions.
        codec_steps: Codec training steps. The tiny defaults' codec (levels [7, 5, 5, 5, 5], 16 channels, 60 steps,
            fast for the tests) collapses on the demo's data to a handful of ids, so the token arm would see almost
            nothing; the demo prints its codec's held-out codebook usage and perplexity.
        threads: Torch threads; tiny models are overhead-bound, and one thread is faster on a busy 2-core machine.
        seed: Seed of everything.
        check: Whether to enforce the demo's claims (the plain arms' accuracy; the zoom arms' homogenisation).
        zoom: Add a zoom arm of each modality (`--zoom`).
        zoom_sft_steps: SFT steps of a zoom arm's warm start on zoom trajectories, from its modality's SFT model.
        zoom_sft_lr: Learning rate of that warm start (language model; the merger's is at most this).
        zoom_sft_fraction: Share of the warm start's rows taught a zoom (a seeded choice, blind to the galaxy); the
            others answer at once. 1 with `zoom_sft_max_box`, which picks the rows instead.
        zoom_sft_max_box: The warm start teaches a zoom on the galaxies whose focus box (the region deciding the
            class) has sides of at most this fraction of the image, where the downsampled first view shows it
            smallest; the others answer at once. 0.3 picks 46 % of the demo's training galaxies. None: by share.
        zoom_grpo_steps: GRPO steps of a zoom arm, with the zoom tool.
        zoom_max_turns: Turn cap of a zoom episode (rounds of tool calls), in GRPO and in evaluation.
        zoom_cost: GRPO reward taken off per zoom call.
        zoom_bonus: GRPO reward added to a right answer reached with a valid zoom.
        matched_image_size: First view of the `image_matched` arm (no zoom), with at least as many visual tokens as
            the zoom arm's first view and its crops: 168 px = 36 visual tokens, against 16 + 16 at 112 px and one
            call.
        matched_token_crop: The `tokens_matched` arm (no zoom): its prompt carries the field's codes and those of the
            centre box of this side, as many codes as the token zoom arm's first view and one call (64 + 64). 0.25:
            the median side (0.245) of the focus boxes the zoom warm start teaches a call on, in the training split,
            all centred on the field; the crop a zoom would ask for, fixed in advance for every galaxy.
        full_view_size: The full-resolution view of the image zoom arm's zooming gap: the source's 256 px on the
            model's 28 px grid (81 visual tokens). The token arm has no zooming gap: its codec takes one input size,
            so its first view is already the whole source at the only resolution it encodes.
    """

    n_galaxies: int = 3000
    n_pretrain: int = 2500
    fractions: tuple[float, float, float] = (0.8, 0.05, 0.15)
    render_size: int = 64
    image_size: int = 112
    pretrain_steps: int = 300
    code_pretrain_steps: int = 2000
    sft_steps: int = 300
    sft_batch: int = 16
    grpo_steps: int = 8
    lr_vision: float = 1e-4
    lr_merger: float = 1e-3
    lr_language: float = 5e-3
    grpo_lr: float = 2e-5
    grpo_galaxies: int = 2
    grpo_generations: int = 4
    grpo_warmup: int = 0
    grpo_scale_rewards: str = "group"
    rendering: str = "special"
    codec_levels: tuple[int, ...] = (8, 5, 5)
    codec_hidden: int = 32
    codec_steps: int = 300
    threads: int = 1
    seed: int = 0
    check: bool = True
    zoom: bool = False
    zoom_sft_steps: int = 150
    zoom_sft_lr: float = 5e-3
    zoom_sft_fraction: float = 1.0
    zoom_sft_max_box: float | None = 0.3
    zoom_grpo_steps: int = 8
    zoom_max_turns: int = 2
    zoom_cost: float = 0.02
    zoom_bonus: float = 0.1
    matched_image_size: int = 168
    matched_token_crop: float = 0.25
    full_view_size: int = 252

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms, by name: `image`, `tokens`, and with `zoom` `image_zoom`, `tokens_zoom`, `image_matched` and
        `tokens_matched`."""
        return (*PLAIN_ARMS, *(ZOOM_ARMS if self.zoom else ()))

    def arm_image_size(self, arm: str) -> int:
        return self.matched_image_size if arm == "image_matched" else self.image_size

    def arm_token_crop(self, arm: str) -> float | None:
        return self.matched_token_crop if arm == "tokens_matched" else None


# The arms without zoom, one per modality, each named by its modality (`_modality`).
PLAIN_ARMS = ("image", "tokens")

# `--zoom`: Galaxy10's 256 px, so the 112 px first view is downsampled and a crop can show more; a zoom arm of each
# modality, and of each an arm without zoom at the zoom arm's budget: a larger first view costing its visual tokens,
# and the field's codes with those of a fixed centre crop.
ZOOM_ARMS = ("image_zoom", "tokens_zoom", "image_matched", "tokens_matched")
ZOOM = dict(zoom=True, render_size=256)
QUICK_ZOOM = dict(zoom_sft_steps=4, zoom_grpo_steps=2)

QUICK = dict(
    n_galaxies=300,
    n_pretrain=200,
    fractions=(0.7, 0.1, 0.2),
    pretrain_steps=10,
    code_pretrain_steps=10,
    sft_steps=4,
    grpo_steps=2,
    codec_steps=30,
    check=False,
)


class Demo:
    """The stages of the demo, each skipped when its output exists."""

    def __init__(self, out: Path, config: DemoConfig):
        self.out, self.config = out, config
        self.timings: dict[str, float] = {}
        self.data_h5 = out / "data" / "surrogate.h5"
        self.pretrain_h5 = out / "data" / "pretrain_surrogate.h5"
        self.prepared = out / "prepared"
        self.base_model = out / "models" / "tiny_random"
        self.vision_model = out / "models" / "tiny_pretrained_vision"
        self.model = out / "models" / "tiny_pretrained"  # both arms start here
        self.codec = out / "codec"

    def stage(self, name: str, done: Path, fn) -> None:
        if done.exists():
            print(f"[demo] {name}: reusing {done}", flush=True)
            return
        print(f"[demo] {name} ...", flush=True)
        started = time.monotonic()
        fn()
        self.timings[name] = round(time.monotonic() - started, 1)
        print(f"[demo] {name}: done in {self.timings[name]:.0f} s", flush=True)

    # --- data, model, codec ----------------------------------------------------------------------------------------

    def data(self) -> None:
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .data.splits import prepare
        from .data.surrogate import synthesize

        c = self.config
        self.stage(
            "render surrogate (evaluation file)",
            self.data_h5,
            lambda: synthesize(self.data_h5, n=c.n_galaxies, size=c.render_size, seed=c.seed, progress=True),
        )
        # A second file from another seed: the galaxies the vision tower is pretrained on are not the ones evaluated.
        self.stage(
            "render surrogate (pretraining file, another seed)",
            self.pretrain_h5,
            lambda: synthesize(self.pretrain_h5, n=c.n_pretrain, size=c.render_size, seed=c.seed + 1000, progress=True),
        )
        self.stage(
            "split (seeded, stratified, deduplicated)",
            self.prepared / "manifest.json",
            lambda: prepare(self.data_h5, self.prepared, seed=c.seed, fractions=c.fractions),
        )

    def shared_galaxies(self) -> int:
        """Images present in both the pretraining file and the evaluation file (by the SHA-256 of their pixels)."""
        import h5py

        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .io import sha256_bytes

        def hashes(path):
            with h5py.File(path, "r") as f:
                return {sha256_bytes(im.tobytes()) for im in f["images"]}

        return len(hashes(self.pretrain_h5) & hashes(self.data_h5))

    def models(self) -> dict:
        """The tiny model both arms start from: its vision tower and its code-token embeddings each pretrained on the
        pretraining file (the codes are the demo codec's); returns both pretraining records."""
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .models import build_tiny_model
        from .pretrain import CODE_PRETRAIN_RECORD, PRETRAIN_RECORD, VisionPretrainConfig, pretrain_vision_tower

        c = self.config
        self.stage("build tiny Qwen2.5-VL", self.base_model, lambda: build_tiny_model(self.base_model, seed=c.seed))
        self.stage(
            "pretrain vision tower",
            self.vision_model,
            lambda: pretrain_vision_tower(
                self.base_model,
                self.pretrain_h5,
                self.vision_model,
                VisionPretrainConfig(steps=c.pretrain_steps, image_size=c.image_size, seed=c.seed),
            ),
        )
        self.stage("pretrain code-token embeddings", self.model, self._pretrain_codes)
        records = (PRETRAIN_RECORD, CODE_PRETRAIN_RECORD)  # each plain arm's input path: the tower, the code rows
        return {arm: json.loads((self.model / record).read_text()) for arm, record in zip(PLAIN_ARMS, records)}

    def _pretrain_codes(self) -> None:
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .pretrain import CodePretrainConfig, pretrain_code_embeddings_on_file

        config = CodePretrainConfig(steps=self.config.code_pretrain_steps, seed=self.config.seed)
        pretrain_code_embeddings_on_file(self.vision_model, self.pretrain_h5, self.codec, self.model, config)

    def tokens(self) -> None:
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .defaults import build_tiny_codec
        from .tokens.cache import encode_prepared

        c = self.config
        self.stage(
            "train codec (FSQ)",
            self.codec,
            lambda: build_tiny_codec(
                str(self.codec),
                str(self.prepared),
                steps=c.codec_steps,
                levels=list(c.codec_levels),
                hidden=c.codec_hidden,
            ),
        )
        started = time.monotonic()
        held_out = json.loads((self.codec / "metrics.json").read_text())["held_out"]
        print(
            f"[demo] codec on {held_out['n_images']} held-out images: codebook usage {_pct(held_out['codebook_usage'])}"
            f", perplexity {held_out['perplexity']:.1f}, PSNR {held_out['psnr_db']:.1f} dB",
            flush=True,
        )
        encode_prepared(self.prepared, self.codec)  # a no-op when the cache is up to date
        self.timings["encode tokens"] = round(time.monotonic() - started, 1)

    # --- training and evaluation -----------------------------------------------------------------------------------

    def script_args(self, arm: str):
        """The recipe arguments of an arm (`DemoConfig.arms`), without a stage's part options."""
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .training import GalaxyScriptArguments

        return GalaxyScriptArguments(**self._arm_values(arm))

    def _arm_values(self, arm: str) -> dict:
        c, modality = self.config, _modality(arm)
        return dict(
            data_dir=str(self.prepared),
            modality=modality,
            **({"codec": str(self.codec)} if ARMS[modality].uses_codec else {}),
            rendering=c.rendering,
            image_size=c.arm_image_size(arm),
            **({"token_crop": c.arm_token_crop(arm)} if c.arm_token_crop(arm) else {}),
            zoom=_zoomed(arm),
            zoom_max_turns=c.zoom_max_turns,
            zoom_cost=c.zoom_cost,
            zoom_bonus=c.zoom_bonus,
            zoom_sft_fraction=c.zoom_sft_fraction,
            zoom_sft_max_box=c.zoom_sft_max_box,
        )

    def _common(self, logging_steps: int = 10) -> dict:
        return dict(
            use_cpu=True,
            bf16=False,
            report_to="none",
            seed=self.config.seed,
            save_strategy="no",
            logging_steps=logging_steps,
            dataloader_num_workers=0,
            disable_tqdm=False,
            optim="adamw_torch",  # PyTorch's AdamW, not its fused kernel: the demo's numbers stay the same
        )

    def _held_rows(self, arm: str) -> dict:
        """On the token arm the pretrained code rows are held fixed, the counterpart of the pretrained vision tower's
        slow (SFT) or zero (GRPO) rate: rows of the embedding matrix cannot have a rate of their own. Without it, on
        small data, SFT's language-model rate washes out what the rows learnt."""
        special = ARMS[_modality(arm)].needs_code_tokens(self.config)
        return {"freeze_code_rows": True} if special else {}

    def sft_recipe(self, arm: str) -> dict:
        """The SFT stage's recipe (model, script and training arguments): from the warm-started model, a learning
        rate per part (`astroreason.optim`); a zoom arm's is the zoom warm start: a short SFT on zoom trajectories
        from its modality's SFT model, which already answers."""
        c, zoomed = self.config, _zoomed(arm)
        language = c.zoom_sft_lr if zoomed else c.lr_language
        parts = dict(vision_lr=c.lr_vision, merger_lr=min(c.lr_merger, language), **self._held_rows(arm))
        training = dict(
            output_dir=str(self.out / arm / "sft"),
            max_steps=c.zoom_sft_steps if zoomed else c.sft_steps,
            per_device_train_batch_size=c.sft_batch,
            learning_rate=language,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            max_length=None,
            **self._common(),
        )
        return _recipe(self.start_model(arm), {**self._arm_values(arm), **parts}, training)

    def grpo_recipe(self, arm: str) -> dict:
        """The GRPO stage's recipe: from the SFT model, format + accuracy rewards (a zoom arm's episodes also pay
        `zoom_cost` per call and `zoom_bonus` for a right answer reached with a zoom); the vision blocks and the code
        rows stay frozen."""
        c, zoomed = self.config, _zoomed(arm)
        parts = dict(freeze_vision_tower=True, merger_lr=c.grpo_lr, **self._held_rows(arm))
        # A zoom episode costs up to ZOOM_COMPLETION_TOKENS: its steps keep the small shape (2 galaxies x 4 episodes).
        galaxies, generations = (2, 4) if zoomed else (c.grpo_galaxies, c.grpo_generations)
        training = dict(
            output_dir=str(self.out / arm / "grpo"),
            max_steps=c.zoom_grpo_steps if zoomed else c.grpo_steps,
            per_device_train_batch_size=galaxies * generations,
            num_generations=generations,
            max_completion_length=ZOOM_COMPLETION_TOKENS if zoomed else 24,
            temperature=1.0,
            beta=0.0,
            learning_rate=c.grpo_lr,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=c.grpo_warmup,
            scale_rewards=c.grpo_scale_rewards,
            activation_checkpointing=False,
            # Every step: the report compares the first and last log of what GRPO had to learn from.
            **self._common(logging_steps=1),
        )
        return _recipe(self.out / arm / "sft", {**self._arm_values(arm), **parts}, training)

    def write_recipe(self, arm: str, stage: str) -> Path:
        """Write a stage's recipe as a TRL config file, `configs/<arm>_<stage>.yaml`: the demo builds the stage from
        it, and `accelerate launch recipes/<stage>.py --config FILE --output_dir ELSEWHERE`, from the directory the
        demo ran in, reruns it."""
        recipe = self.sft_recipe(arm) if stage == "sft" else self.grpo_recipe(arm)
        path = self.out / "configs" / f"{arm}_{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"astroreason demo: {_title(arm)} arm, {stage.upper()} (recipes/{stage}.py)"
        path.write_text(recipe_yaml(recipe, title, f"{stage.upper()}Config"))
        return path

    def sft(self, arm: str) -> Path:
        """SFT of an arm (`sft_recipe`), built through the recipe's own arguments from its written config file."""
        from trl import SFTConfig

        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .training import build_sft_trainer, parse_recipe_args, run_training

        out = self.out / arm / "sft"

        def run():
            script, args, model = parse_recipe_args(SFTConfig, ["--config", str(self.write_recipe(arm, "sft"))])
            run_training(build_sft_trainer(script, args, model), script)

        self.stage(f"SFT, {_title(arm)} arm", out / "config.json", run)
        return out

    def grpo(self, arm: str) -> Path:
        """GRPO of an arm from its SFT model (`grpo_recipe`), built from its written config file."""
        from trl import GRPOConfig

        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .training import build_grpo_trainer, parse_recipe_args, run_training

        out = self.out / arm / "grpo"

        def run():
            script, args, model = parse_recipe_args(GRPOConfig, ["--config", str(self.write_recipe(arm, "grpo"))])
            run_training(build_grpo_trainer(script, args, model), script)

        self.stage(f"GRPO, {_title(arm)} arm", out / "config.json", run)
        return out

    def evaluate(
        self, arm: str, model_dir: Path, stage: str | None = None, *, image_size: int | None = None, zoom=None
    ) -> dict:
        """The arm's evaluation on the test split (a zoom arm's as zoom episodes), into eval/<arm> (the final model),
        or eval/<arm>_<stage> for an earlier stage's model (`STAGES`) or another view of it (`image_size`, `zoom`:
        the arm's own by default)."""
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .evaluation.episodes import ZOOM_TURN_TOKENS
        from .evaluation.harness import EvalConfig, evaluate

        c, modality = self.config, _modality(arm)
        zoom = _zoomed(arm) if zoom is None else zoom
        name = f"{arm}_{stage}" if stage else arm
        out = self.out / "eval" / name
        config = EvalConfig(
            model=str(model_dir),
            data_dir=str(self.prepared),
            split="test",
            modality=modality,
            codec=str(self.codec) if ARMS[modality].uses_codec else None,
            rendering=c.rendering,
            image_size=image_size or c.arm_image_size(arm),
            token_crop=c.arm_token_crop(arm),
            output_dir=str(out),
            batch_size=32,
            max_new_tokens=ZOOM_TURN_TOKENS if zoom else 24,
            seed=c.seed,
            zoom=zoom,
            zoom_max_turns=c.zoom_max_turns,
            # The demo runs on this machine's CPU: no marginal cost, and its ledger stays inside the demo's folder.
            price_gpu_hour=0.0,
            ledger=str(self.out / "ledger" / "spend.jsonl"),
        )
        started = time.monotonic()
        result = evaluate(config)  # resumes from its per-sample cache
        self.timings[f"evaluate {_title(arm)} arm" + (f" ({stage})" if stage else "")] = round(
            time.monotonic() - started, 1
        )
        return result

    def zooming_gap(self, arm: str) -> tuple[Path, Path]:
        """The zooming gap of an image zoom arm's final model (`report.zooming_gap`): evaluated without zoom on the
        first view and on the full-resolution view, into eval/<arm>_first_view and eval/<arm>_full_view."""
        views = {"first_view": self.config.image_size, "full_view": self.config.full_view_size}
        for view, size in views.items():
            self.evaluate(arm, self.out / arm / "grpo", view, image_size=size, zoom=False)
        return tuple(self.out / "eval" / f"{arm}_{view}" for view in views)

    def start_model(self, arm: str) -> Path:
        """The model an arm's SFT starts from: the warm-started model, or for a zoom arm its modality's SFT model."""
        return self.out / _modality(arm) / "sft" if _zoomed(arm) else self.model

    def train_and_evaluate(self, arm: str) -> tuple[dict, list[tuple[str, Path]]]:
        """Train an arm (SFT, then GRPO) and evaluate the model of every stage on the same test galaxies: the start,
        the SFT model, the GRPO model. Returns the final evaluation and the stages' evaluation directories in order."""
        self.sft(arm)
        grpo = self.grpo(arm)
        for stage, model in (("start", self.start_model(arm)), ("sft", self.out / arm / "sft")):
            self.evaluate(arm, model, stage)
        final = self.evaluate(arm, grpo)
        evals = self.out / "eval"
        return final, [(STAGES[s], evals / f"{arm}_{s}") for s in ("start", "sft")] + [(STAGES["grpo"], evals / arm)]


# The stages of an arm, as the report names them: the model SFT starts from (the warm start; a zoom arm's is its
# modality's SFT model), the SFT model, the GRPO model.
STAGES = {"start": "start (warm start)", "sft": "SFT", "grpo": "GRPO"}

# GRPO, a zoom episode's every turn: up to 2 calls (~46 tokens each, the box digit by digit), their results (16 visual
# or 64 code tokens each, in their turn) and the answer.
ZOOM_COMPLETION_TOKENS = 320


def _recipe(start: Path, script: dict, training: dict) -> dict:
    return {"model": {"model_name_or_path": str(start), "dtype": "float32"}, "script": script, "training": training}


RECIPE_SECTIONS = {
    "model": "Model (trl.ModelConfig)",
    "script": "Data and parts (astroreason.training.GalaxyScriptArguments)",
    "training": "Training (trl.{config})",
}


def recipe_yaml(recipe: dict, title: str, config: str) -> str:
    """A recipe (`Demo.sft_recipe`) as one flat TRL config file, its sections commented; `config` names the training
    arguments' class (`SFTConfig`, `GRPOConfig`)."""
    import yaml

    sections = [
        f"# {RECIPE_SECTIONS[name].format(config=config)}\n" + yaml.safe_dump(values, sort_keys=False)
        for name, values in recipe.items()
    ]
    return f"# {title}\n\n" + "\n".join(sections)


def _modality(arm: str) -> str:
    return arm.split("_")[0]


def _zoomed(arm: str) -> bool:
    return arm.endswith("_zoom")


def _title(arm: str) -> str:
    return arm.replace("_zoom", " + zoom").replace("_matched", " (matched view)")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _beats_twice(metrics: dict) -> bool:
    """The demo's claim for one arm: point estimate and 95 % interval's lower end above twice the majority rate."""
    twice = 2 * metrics["majority_rate"]
    return metrics["accuracy"] > twice and metrics["interval"]["accuracy"][0] > twice


def warm_start_notes(pretrain: dict, config: DemoConfig) -> list[str]:
    """What each arm's warm start was, from its pretraining record (the report carries the same records)."""
    image, tokens = pretrain["image"], pretrain["tokens"]
    where = f"a separate surrogate file (seed {config.seed + 1000}), none of them in the evaluated split"
    return [
        f"image arm: vision tower pretrained ({image['config']['steps']} steps, linear head on the mean visual token, "
        f"discarded) on {image['n_train']} labelled galaxies of {where}; held-out accuracy there "
        f"{_pct(image['held_out_accuracy'])}.",
        f"token arm: its {tokens['vocab_size']} code-token embeddings pretrained ({tokens['config']['steps']} steps, "
        f"linear head on the mean code embedding, discarded) on the codes of the same {tokens['n_train']} galaxies; "
        f"held-out accuracy there {_pct(tokens['held_out_accuracy'])}. Both arms fine-tune that one model; the code rows "
        "stay fixed in SFT and GRPO (the vision blocks: a 50x lower rate in SFT, frozen in GRPO).",
    ] + (
        [
            f"zoom arms: each starts from its modality's SFT model and gets {config.zoom_sft_steps} more SFT steps on "
            f"zoom trajectories ({_taught(config)} zoom on the galaxy's focus box, the others answer at once), "
            f"then {config.zoom_grpo_steps} GRPO steps with the zoom tool (up to "
            f"{config.zoom_max_turns} call(s) an episode, {config.zoom_cost} reward per call, {config.zoom_bonus} "
            "bonus for a right answer after a zoom): more training than the plain arms, which get none of it."
        ]
        if config.zoom
        else []
    )


def _taught(config: DemoConfig) -> str:
    if config.zoom_sft_max_box is None:
        return f"{_pct(config.zoom_sft_fraction)} of the rows, a seeded choice,"
    return f"the rows whose focus box has sides of at most {config.zoom_sft_max_box} of the image"


def demo_config(*, quick: bool = False, zoom: bool = False) -> DemoConfig:
    """The demo's sizes: the defaults, `--quick`'s and `--zoom`'s changes."""
    changes = {**(QUICK if quick else {}), **(ZOOM if zoom else {}), **(QUICK_ZOOM if quick and zoom else {})}
    return replace(DemoConfig(), **changes)


def run_demo(
    out: str | Path | None = None, *, quick: bool = False, zoom: bool = False, config: DemoConfig | None = None
) -> dict:
    """Run (or resume) the demo into `out` (default runs/demo, or runs/demo_zoom with `zoom`); returns the summary
    also written to `out/demo_result.json`."""
    import torch

    # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
    from .evaluation.report import tokens_per_galaxy, write_report

    config = config or demo_config(quick=quick, zoom=zoom)
    out = Path(out or ("runs/demo_zoom" if config.zoom else "runs/demo"))
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out} is a file; give a directory for the demo's outputs")
    check_writable(out, "out", directory=True)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / CONFIG_NAME
    wanted = json.loads(json.dumps(asdict(config)))
    if saved.exists() and json.loads(saved.read_text()) != wanted:
        raise UserError(f"out: {out} holds a demo run with other settings ({saved}); choose another --out")
    write_json_atomic(saved, wanted)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    demo = Demo(out, config)

    demo.data()
    shared = demo.shared_galaxies()
    if shared:
        raise CheckFailed(
            f"{demo.pretrain_h5}: {shared} images also in {demo.data_h5}; the pretraining set must be disjoint"
        )
    demo.tokens()  # the codec first: the token arm's warm start reads the pretraining file's codes
    pretrain = demo.models()
    for line in warm_start_notes(pretrain, config):
        print(f"[demo] NOTE: {line}", flush=True)
    results, stage_dirs = {}, {}
    for arm in config.arms:
        results[arm], stage_dirs[arm] = demo.train_and_evaluate(arm)
    report_started = time.monotonic()
    gaps = {"image_zoom": demo.zooming_gap("image_zoom")} if config.zoom else {}
    report = write_report(
        [out / "eval" / arm for arm in config.arms],
        out / "report",
        stages=stage_dirs,
        gaps=gaps,
        tex=True,  # the report's figures as LaTeX macros and a Markdown table, each naming its source files
        macros=True,
    )
    report_json = json.loads((report.parent / "report.json").read_text())
    stages = report_json["stages"]
    demo.timings["report"] = round(time.monotonic() - report_started, 1)
    wall = round(time.monotonic() - started, 1)

    majority = results["image"]["metrics"]["majority_rate"]
    plain = [a for a in config.arms if not _zoomed(a)]
    beats = {a: _beats_twice(results[a]["metrics"]) for a in plain}
    zooms = {a: chooses_when_to_zoom(results[a]["zoom"]) for a in config.arms if _zoomed(a)}
    passed = all(beats.values()) and all(zooms.values())
    summary = {
        "wall_seconds_this_run": wall,
        "stage_seconds": demo.timings,
        "report": str(report),
        "figures": sorted(str(p) for p in report.parent.glob("*.png")),
        "majority_rate": majority,
        "twice_majority_rate": 2 * majority,
        "beats_twice_majority": beats,
        "chooses_when_to_zoom": zooms,
        "zooming_gaps": report_json["zooming_gaps"],
        "warm_starts": pretrain,
        "arms": {a: arm_summary(r, tokens_per_galaxy(r)) for a, r in results.items()},
        "stages": stages,
        "config": wanted,
    }
    write_json_atomic(out / "demo_result.json", summary)

    # The end of the output: the side-by-side table and the figures, then one RESULT line.
    markdown = report.read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    print("\n" + "\n".join(table[: 2 + len(results)]))
    print("\nWhat each stage adds (same test galaxies; gain over the stage before, exact McNemar p):")
    print("\n".join(section_table(markdown, "## What each stage adds")))
    if config.zoom:
        print("\nWhen each zoom arm zoomed (zoom rate per true class), its warm start (SFT) and after GRPO:")
        print("\n".join(section_table(markdown, "## When the model zoomed")))
        print("\n" + "\n".join(section_table(markdown, "## The zooming gap")))
        # the paired comparisons of each zoom arm with the plain arms of its modality (report.md)
        print("\n" + "\n".join(line for line in table if "vs zoom (" in line or "vs no zoom (" in line))
    for a, s in summary["arms"].items():
        lo, hi = s["accuracy_interval"]
        print(
            f"{_title(a):>13} arm: accuracy {_pct(s['accuracy'])} (95 % CI {_pct(lo)} - {_pct(hi)}), n = {s['n']}, "
            f"{s['tokens_per_galaxy']:.0f} tokens per galaxy (all turns)"
        )
        if "zoom" in s:
            z = s["zoom"]
            print(
                f"{'':>18}zoom rate {_pct(z['zoom_rate'])} (homogenisation {_maybe_pct(z.get('homogenisation'))}), "
                f"{z['zooms_per_galaxy']:.2f} zooms per galaxy; accuracy "
                f"{_maybe_pct(z['accuracy_with_zoom'])} with a zoom (n = {z['n_with_zoom']}), "
                f"{_maybe_pct(z['accuracy_without_zoom'])} without (n = {z['n_without_zoom']})"
            )
    print(
        f"majority-class rate {_pct(majority)}; twice that {_pct(2 * majority)}: "
        + "; ".join(
            f"{_title(a)} arm {'beats it (point estimate and CI lower end)' if ok else 'does NOT beat it'}"
            for a, ok in beats.items()
        )
    )
    for a, gap in report_json["zooming_gaps"].items():
        first, full = gap["views"]["first"], gap["views"]["full"]
        print(
            f"{_title(a)} arm's zooming gap (its GRPO model without zoom, {full['image_size']} px view minus "
            f"{first['image_size']} px): {100 * gap['gap']:+.1f} points (p {gap['mcnemar_p_value']:.3g})"
        )
    for a, ok in zooms.items():
        h = results[a]["zoom"].get("homogenisation")
        print(
            f"{_title(a)} arm after GRPO: homogenisation {_maybe_pct(h)} "
            + ("(zooms on some galaxies, not others)" if ok else f"(NOT below {_pct(MAX_HOMOGENISATION)}: a habit)")
        )
    print(f"report: {report}")
    for fig in summary["figures"]:
        print(f"figure: {fig}")
    print(f"demo wall time (this run): {wall:.0f} s")
    line = {"majority_rate": majority, "wall_seconds": wall, "report": str(report)}
    for a, r in results.items():
        line[f"{a}_accuracy"] = r["metrics"]["accuracy"]
        line[f"{a}_interval"] = r["metrics"]["interval"]["accuracy"]
        if a in beats:
            line[f"{a}_beats_twice_majority"] = beats[a]
        if a in zooms:
            line |= zoom_keys(a, r["zoom"], stages[a]) | matched_keys(a, report_json["comparisons"])
        line |= stage_gains(a, stages[a])
    for a, gap in report_json["zooming_gaps"].items():
        line |= {f"{a}_zooming_gap": round(100 * gap["gap"], 2), f"{a}_zooming_gap_p": gap["mcnemar_p_value"]}
    print("RESULT " + json.dumps(line, sort_keys=True), flush=True)
    if config.check and not passed:
        failed = [
            f"{a} arm accuracy {_pct(results[a]['metrics']['accuracy'])} (CI low "
            f"{_pct(results[a]['metrics']['interval']['accuracy'][0])}) does not beat twice the majority rate "
            f"{_pct(2 * majority)}"
            for a, ok in beats.items()
            if not ok
        ]
        failed += [
            f"{_title(a)} arm's homogenisation after GRPO {_maybe_pct(results[a]['zoom'].get('homogenisation'))} is "
            f"not below {_pct(MAX_HOMOGENISATION)}: it zooms on (almost) every galaxy or on (almost) none"
            for a, ok in zooms.items()
            if not ok
        ]
        raise CheckFailed("; ".join(failed))
    return summary


# The demo's zoom claim: after GRPO each zoom arm still decides per galaxy, at most this share of them getting the
# majority decision (1.0: it always zooms or never does).
MAX_HOMOGENISATION = 0.9


def chooses_when_to_zoom(zoom: dict) -> bool:
    """Whether a zoom arm's evaluation zooms on some galaxies and not others (`MAX_HOMOGENISATION`)."""
    h = zoom.get("homogenisation")
    return h is not None and h < MAX_HOMOGENISATION


def section_table(markdown: str, heading: str) -> list[str]:
    """The rows of the first table in the section of a Markdown page whose heading starts with `heading`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    start = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def stage_gains(arm: str, stages: list[dict]) -> dict:
    """The RESULT line's stage figures of an arm (from the report's stage table): each stage's gain over the stage
    before it in accuracy points, and its exact McNemar p, e.g. `image_grpo_gain`, `image_grpo_gain_p`."""
    keys = {STAGES["sft"]: "sft", STAGES["grpo"]: "grpo"}
    out = {}
    for row in stages:
        if row["stage"] in keys and "gain" in row:
            out[f"{arm}_{keys[row['stage']]}_gain"] = round(100 * row["gain"], 2)
            out[f"{arm}_{keys[row['stage']]}_gain_p"] = row["mcnemar_p_value"]
    return out


def zoom_keys(arm: str, zoom: dict, stages: list[dict]) -> dict:
    """The RESULT line's zoom figures of a zoom arm: after GRPO its zoom rate, homogenisation and zoom rate per true
    class, and the homogenisation of its warm start (the SFT stage) before GRPO, from the report's stage table."""
    before = next((row["zoom"] for row in stages if row["stage"] == STAGES["sft"] and "zoom" in row), {})
    return {
        f"{arm}_zoom_rate": zoom["zoom_rate"],
        f"{arm}_zoom_rate_before_grpo": before.get("zoom_rate"),
        f"{arm}_homogenisation": zoom.get("homogenisation"),
        f"{arm}_homogenisation_before_grpo": before.get("homogenisation"),
        f"{arm}_zoom_rate_per_class": zoom.get("zoom_rate_per_class"),
        f"{arm}_zoom_rate_per_class_before_grpo": before.get("zoom_rate_per_class"),
    }


def matched_keys(arm: str, comparisons: dict) -> dict:
    """The RESULT line's equal-budget figures of a zoom arm: its accuracy minus that of its modality's matched arm
    (no zoom, the same budget) in points, and the exact McNemar p, from the report's paired comparison."""
    pair = comparisons.get(f"{arm} vs {_modality(arm)}_matched")
    if pair is None:
        return {}
    return {
        f"{arm}_vs_matched": round(100 * pair["accuracy_difference"], 2),
        f"{arm}_vs_matched_p": pair["mcnemar_p_value"],
    }


def arm_summary(result: dict, tokens: float) -> dict:
    """What the demo's summary keeps of one arm's `result.json` (and, for a zoom arm, its `zoom` block)."""
    m = result["metrics"]
    summary = {
        "accuracy": m["accuracy"],
        "accuracy_interval": m["interval"]["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "macro_f1": m["macro_f1"],
        "parse_failure_rate": m["parse_failure_rate"],
        "n": m["n"],
        "prompt_tokens_per_galaxy": result["prompt_tokens"] / m["n"],
        "tokens_per_galaxy": tokens,
        "eval_dir": result["config"]["output_dir"],
    }
    if result.get("zoom", {}).get("n"):
        summary["zoom"] = result["zoom"]
    return summary


def _maybe_pct(x: float | None) -> str:
    return "n/a" if x is None else _pct(x)


def _run(args) -> int:
    run_demo(args.out, quick=args.quick, zoom=args.zoom)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the GalSim surrogate: data, codec, tiny model, SFT+GRPO, both arms, report",
        description="Surrogate data -> codec -> tiny Qwen2.5-VL (vision tower and code-token embeddings pretrained "
        "on a disjoint surrogate file) -> SFT then GRPO for the image and the token arm -> evaluation -> side-by-side "
        "report. CPU, offline. --zoom adds a zoom arm of each modality and an image arm at the zoom arm's visual-token "
        "budget (docs/zoom.md).",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory; rerunning into it resumes (default runs/demo, or runs/demo_zoom with --zoom)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (minutes); its claims are not checked")
    p.add_argument(
        "--zoom",
        action="store_true",
        help="also a zoom arm of each modality (warm start on zoom trajectories, GRPO with the zoom tool, zoom "
        "evaluation) on a 256 px surrogate whose 112 px first view is downsampled",
    )
    p.set_defaults(func=_run)
