"""`astroreason demo`: the whole pipeline on the GalSim surrogate, on a CPU, offline, in minutes.

surrogate data -> split manifest -> codec + token cache -> tiny Qwen2.5-VL -> warm start of each arm's input path
on a second, disjoint surrogate file (the vision tower for the image arm; the code-token embeddings, one token per
code, for the token arm) -> SFT then GRPO for the image arm and the token arm, both from that one model ->
evaluation of both on the same test galaxies -> a side-by-side report (table + figures + the warm starts) -> the
figures printed, and one `RESULT {json}` line.

Every stage writes into `--out` and is skipped when its output is already there, so a killed demo resumes. The demo
checks its own claim: each arm must beat twice the majority-class rate with the lower end of its 95 % interval above
that rate; otherwise it exits 1.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
        rendering: How the token arm writes codec ids as text (`special`: one LM token per code).
        codec_levels: FSQ levels of the demo's codec (32 px in, 8x8 codes); [8, 5, 5] is 200 codes.
        codec_hidden: Channels of the codec's convolutions.
        codec_steps: Codec training steps. The tiny defaults' codec (levels [7, 5, 5, 5, 5], 16 channels, 60 steps,
            fast for the tests) collapses on the demo's data to a handful of ids, so the token arm would see almost
            nothing; the demo prints its codec's held-out codebook usage and perplexity.
        threads: Torch threads; tiny models are overhead-bound, and one thread is faster on a busy 2-core machine.
        seed: Seed of everything.
        check: Whether to enforce the image arm's accuracy claim.
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
    rendering: str = "special"
    codec_levels: tuple[int, ...] = (8, 5, 5)
    codec_hidden: int = 32
    codec_steps: int = 300
    threads: int = 1
    seed: int = 0
    check: bool = True


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
        return {
            "image": json.loads((self.model / PRETRAIN_RECORD).read_text()),
            "tokens": json.loads((self.model / CODE_PRETRAIN_RECORD).read_text()),
        }

    def _pretrain_codes(self) -> None:
        import h5py
        import numpy as np

        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .pretrain import CodePretrainConfig, pretrain_code_embeddings
        from .tokens import load_codec
        from .tokens.codec import read_inputs

        codec = load_codec(self.codec)
        with h5py.File(self.pretrain_h5, "r") as f:
            labels = f["ans"][()].astype(np.int64)
        rows = np.arange(len(labels))
        codes = np.concatenate([codec.encode(b) for b in read_inputs(self.pretrain_h5, rows, codec.input_spec)])
        pretrain_code_embeddings(
            self.vision_model,
            codes,
            labels,
            codec.vocab_size,
            self.model,
            CodePretrainConfig(steps=self.config.code_pretrain_steps, seed=self.config.seed),
            source=f"{self.pretrain_h5} encoded by {self.codec}",
        )

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

    def script_args(self, modality: str):
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .training import GalaxyScriptArguments

        return GalaxyScriptArguments(
            data_dir=str(self.prepared),
            modality=modality,
            codec=str(self.codec) if modality == "tokens" else None,
            rendering=self.config.rendering,
            image_size=self.config.image_size,
        )

    def _common(self) -> dict:
        return dict(
            use_cpu=True,
            bf16=False,
            report_to="none",
            seed=self.config.seed,
            save_strategy="no",
            logging_steps=10,
            dataloader_num_workers=0,
            disable_tqdm=False,
        )

    def sft(self, modality: str) -> Path:
        """SFT from the warm-started model, with a learning rate per part (`astroreason.optim`)."""
        from trl import ModelConfig, SFTConfig

        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .optim import PartLearningRates
        from .training import build_sft_trainer, run_training

        c, out = self.config, self.out / modality / "sft"

        def run():
            args = SFTConfig(
                output_dir=str(out),
                max_steps=c.sft_steps,
                per_device_train_batch_size=c.sft_batch,
                learning_rate=c.lr_language,
                lr_scheduler_type="cosine",
                warmup_steps=0.05,
                max_length=None,
                **self._common(),
            )
            trainer = build_sft_trainer(self.script_args(modality), args, ModelConfig(str(self.model), dtype="float32"))
            self.learning_rates(trainer, modality, PartLearningRates(c.lr_vision, c.lr_merger, c.lr_language))
            run_training(trainer, self.script_args(modality))

        self.stage(f"SFT, {modality} arm", out / "config.json", run)
        return out

    def grpo(self, modality: str) -> Path:
        """GRPO from the SFT model (format + accuracy rewards); the vision blocks and the code rows stay frozen."""
        from trl import GRPOConfig, ModelConfig

        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .optim import PartLearningRates
        from .training import build_grpo_trainer, run_training

        c, out, start = self.config, self.out / modality / "grpo", self.out / modality / "sft"

        def run():
            args = GRPOConfig(
                output_dir=str(out),
                max_steps=c.grpo_steps,
                per_device_train_batch_size=8,
                num_generations=4,
                max_completion_length=24,
                temperature=1.0,
                beta=0.0,
                learning_rate=c.grpo_lr,
                lr_scheduler_type="constant",
                activation_checkpointing=False,
                **self._common(),
            )
            trainer = build_grpo_trainer(self.script_args(modality), args, ModelConfig(str(start), dtype="float32"))
            self.learning_rates(trainer, modality, PartLearningRates(0.0, c.grpo_lr, c.grpo_lr))
            run_training(trainer, self.script_args(modality))

        self.stage(f"GRPO, {modality} arm", out / "config.json", run)
        return out

    def learning_rates(self, trainer, modality: str, rates) -> None:
        """A learning rate per part; on the token arm the pretrained code rows are held fixed, the counterpart of the
        pretrained vision tower's slow (SFT) or zero (GRPO) rate: rows of the embedding matrix cannot have a rate of
        their own. Without it, on small data, SFT's language-model rate washes out what the rows learnt."""
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .optim import freeze_code_rows, use_part_learning_rates
        from .tokens import load_codec

        use_part_learning_rates(trainer, rates)
        if modality == "tokens":
            freeze_code_rows(trainer, load_codec(self.codec).vocab_size)

    def evaluate(self, modality: str, model_dir: Path) -> dict:
        # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
        from .evaluation.harness import EvalConfig, evaluate

        c = self.config
        out = self.out / "eval" / modality
        config = EvalConfig(
            model=str(model_dir),
            data_dir=str(self.prepared),
            split="test",
            modality=modality,
            codec=str(self.codec) if modality == "tokens" else None,
            rendering=c.rendering,
            image_size=c.image_size,
            output_dir=str(out),
            batch_size=32,
            max_new_tokens=24,
            seed=c.seed,
            # The demo runs on this machine's CPU: no marginal cost, and its ledger stays inside the demo's folder.
            price_gpu_hour=0.0,
            ledger=str(self.out / "ledger" / "spend.jsonl"),
        )
        started = time.monotonic()
        result = evaluate(config)  # resumes from its per-sample cache
        self.timings[f"evaluate {modality} arm"] = round(time.monotonic() - started, 1)
        return result


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
    ]


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, config: DemoConfig | None = None) -> dict:
    """Run (or resume) the demo into `out`; returns the summary also written to `out/demo_result.json`."""
    import torch

    # lazy: a command module, imported at `astroreason --help`; training and evaluation load only when it runs
    from .evaluation.report import write_report

    config = config or (replace(DemoConfig(), **QUICK) if quick else DemoConfig())
    out = Path(out)
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
    results = {}
    for modality in ("image", "tokens"):
        demo.sft(modality)
        results[modality] = demo.evaluate(modality, demo.grpo(modality))
    report_started = time.monotonic()
    report = write_report([out / "eval" / "image", out / "eval" / "tokens"], out / "report")
    demo.timings["report"] = round(time.monotonic() - report_started, 1)
    wall = round(time.monotonic() - started, 1)

    majority = results["image"]["metrics"]["majority_rate"]
    beats = {m: _beats_twice(r["metrics"]) for m, r in results.items()}
    passed = all(beats.values())
    summary = {
        "wall_seconds_this_run": wall,
        "stage_seconds": demo.timings,
        "report": str(report),
        "figures": sorted(str(p) for p in report.parent.glob("*.png")),
        "majority_rate": majority,
        "twice_majority_rate": 2 * majority,
        "beats_twice_majority": beats,
        "warm_starts": pretrain,
        "arms": {
            m: {
                "accuracy": r["metrics"]["accuracy"],
                "accuracy_interval": r["metrics"]["interval"]["accuracy"],
                "balanced_accuracy": r["metrics"]["balanced_accuracy"],
                "macro_f1": r["metrics"]["macro_f1"],
                "parse_failure_rate": r["metrics"]["parse_failure_rate"],
                "n": r["metrics"]["n"],
                "prompt_tokens_per_galaxy": r["prompt_tokens"] / r["metrics"]["n"],
                "eval_dir": r["config"]["output_dir"],
            }
            for m, r in results.items()
        },
        "config": wanted,
    }
    write_json_atomic(out / "demo_result.json", summary)

    # The end of the output: the side-by-side table and the figures, then one RESULT line.
    table = [line for line in report.read_text().splitlines() if line.startswith("|")]
    print("\n" + "\n".join(table[: 2 + len(results)]))
    for m, a in summary["arms"].items():
        lo, hi = a["accuracy_interval"]
        print(
            f"{m:>6} arm: accuracy {_pct(a['accuracy'])} (95 % CI {_pct(lo)} - {_pct(hi)}), n = {a['n']}, "
            f"{a['prompt_tokens_per_galaxy']:.0f} prompt tokens per galaxy"
        )
    print(
        f"majority-class rate {_pct(majority)}; twice that {_pct(2 * majority)}: "
        + "; ".join(
            f"{m} arm {'beats it (point estimate and CI lower end)' if ok else 'does NOT beat it'}"
            for m, ok in beats.items()
        )
    )
    print(f"report: {report}")
    for fig in summary["figures"]:
        print(f"figure: {fig}")
    print(f"demo wall time (this run): {wall:.0f} s")
    line = {"majority_rate": majority, "wall_seconds": wall, "report": str(report)}
    for m, r in results.items():
        line[f"{m}_accuracy"] = r["metrics"]["accuracy"]
        line[f"{m}_interval"] = r["metrics"]["interval"]["accuracy"]
        line[f"{m}_beats_twice_majority"] = beats[m]
    print("RESULT " + json.dumps(line, sort_keys=True), flush=True)
    if config.check and not passed:
        failed = [m for m, ok in beats.items() if not ok]
        raise CheckFailed(
            "; ".join(
                f"{m} arm accuracy {_pct(results[m]['metrics']['accuracy'])} (CI low "
                f"{_pct(results[m]['metrics']['interval']['accuracy'][0])}) does not beat twice the majority rate "
                f"{_pct(2 * majority)}"
                for m in failed
            )
        )
    return summary


def _run(args) -> int:
    run_demo(args.out, quick=args.quick)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the GalSim surrogate: data, codec, tiny model, SFT+GRPO, both arms, report",
        description="Surrogate data -> codec -> tiny Qwen2.5-VL (vision tower and code-token embeddings pretrained "
        "on a disjoint surrogate file) -> SFT then GRPO for the image and the token arm -> evaluation -> side-by-side "
        "report. CPU, offline.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory; rerunning into it resumes (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (minutes); its accuracy is not checked")
    p.set_defaults(func=_run)
