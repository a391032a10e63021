"""The recipes end to end, as a new user runs them: tiny configs, a fresh working directory, real subprocesses.

`accelerate launch` (1 and 2 CPU processes) and plain `python`, SFT and GRPO, image and tokens; a run killed with
SIGKILL and resumed; an output_dir with checkpoints refused; a LoRA adapter saved and reloaded; the vLLM path checked
without vLLM. Every run starts in one session-wide working directory, which holds no `runs/` at first: the first run
builds the tiny defaults (surrogate data, tiny model, codec) there, the later ones reuse them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from holdpoint import wait_for_hold

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny"
STEPS = 2  # optimizer steps of every run below except the killed one
TIMEOUT = 600


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        # One thread per process: on a shared 2-core machine two torch threads per process thrash (10-20x slower).
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(recipe: str, config: str, *overrides: str, launcher: str = "accelerate", processes: int = 1) -> list[str]:
    """`python recipes/R.py ...`, `accelerate launch --num_processes 1 --cpu recipes/R.py ...`, or for N > 1
    processes `accelerate launch --multi_gpu --num_processes N recipes/R.py ...` (launcher `multi_gpu`) or
    `accelerate launch --config_file recipes/accelerate/cpu.yaml --num_processes N recipes/R.py ...`."""
    script = [str(ROOT / "recipes" / f"{recipe}.py"), "--config", str(TINY / config), *overrides]
    if launcher == "python":
        return [sys.executable, *script]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes == 1:
        launch += ["--num_processes", "1", "--cpu"]
    elif launcher == "multi_gpu":  # no GPU here: torch.distributed.run starts N CPU processes over gloo
        launch += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(_free_port())]
    else:
        launch += [
            "--config_file",
            str(ROOT / "recipes/accelerate/cpu.yaml"),
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(_free_port()),
        ]
    return [*launch, *script]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def check_ok(result: subprocess.CompletedProcess) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def losses(checkpoint: Path) -> list[float]:
    return [e["loss"] for e in trainer_state(checkpoint)["log_history"] if "loss" in e]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """An empty working directory, as a fresh clone has no `runs/`."""
    return tmp_path_factory.mktemp("clone")


class Runner:
    """Runs a recipe once per (launcher, processes, recipe, config), two runs at a time, and remembers the result."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.pool = ThreadPoolExecutor(max_workers=2)  # one torch thread per process: two runs fill two cores
        self.futures: dict[tuple, Future] = {}

    def start(
        self, recipe: str, modality: str, *, launcher: str = "accelerate", processes: int = 1, config: str | None = None
    ) -> Future:
        config = config or f"{recipe}_{modality}.yaml"
        key = (launcher, processes, recipe, config)
        if key not in self.futures:
            out_dir = Path("runs") / "test" / f"{launcher}{processes}_{Path(config).stem}"
            cmd = command(
                recipe,
                config,
                "--max_steps",
                str(STEPS),
                "--save_steps",
                str(STEPS),
                "--max_train_samples",
                "32",
                "--output_dir",
                str(out_dir),
                launcher=launcher,
                processes=processes,
            )
            self.futures[key] = self.pool.submit(lambda: (run(cmd, self.workdir), self.workdir / out_dir))
        return self.futures[key]

    def start_all(self) -> None:
        """Queue every run the tests below use, so that two are always under way."""
        for launcher, recipe, modality in RUNS:
            self.start(recipe, modality, launcher=launcher)
        for launcher, recipe, modality in TWO_PROCESS_RUNS:
            self.start(recipe, modality, launcher=launcher, processes=2)
        self.start("sft", "image", launcher="python", config="sft_lora_image.yaml")

    def __call__(self, recipe: str, modality: str, **kwargs) -> tuple[subprocess.CompletedProcess, Path]:
        return self.start(recipe, modality, **kwargs).result()


RUNS = [
    (launcher, recipe, modality)
    for launcher in ("accelerate", "python")
    for recipe, modality in (("sft", "image"), ("sft", "tokens"), ("grpo", "image"), ("grpo", "tokens"))
]
# Both ways of starting two CPU processes: accelerate's flag, and the config file.
TWO_PROCESS_RUNS = [("multi_gpu", "sft", "tokens"), ("accelerate", "grpo", "image")]


@pytest.fixture(scope="session")
def runner(workdir):
    runner = Runner(workdir)
    assert not any(workdir.iterdir())
    # The first run builds the tiny defaults on its own; every later run starts once it is done.
    runner.start("grpo", "tokens").result()
    yield runner
    runner.pool.shutdown(wait=True)


def generate_one(model_dir: Path, workdir: Path, modality: str) -> str:
    """Load a trained model with the library's loader and generate an answer to a real test-split prompt."""
    import torch

    from astroreason.models import load_model_and_processor
    from astroreason.training import GalaxyScriptArguments, galaxy_dataset

    args = GalaxyScriptArguments(
        data_dir=str(workdir / "runs/tiny/prepared"),
        modality=modality,
        codec=str(workdir / "runs/tiny/codec") if modality == "tokens" else None,
    )
    row = galaxy_dataset(args, "test", with_completion=False, max_samples=1)[0]
    model, processor = load_model_and_processor(model_dir)
    text = row["prompt"][0]["content"]
    content = [{"type": "image"}, {"type": "text", "text": text}] if modality == "image" else text
    chat = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    images = [row["image"]] if modality == "image" else None
    inputs = processor(text=[chat], images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])[0]


# --- a fresh clone: the first run builds the tiny defaults ---------------------------------------------------------


def test_first_run_builds_the_tiny_defaults(runner, workdir):
    runner.start_all()
    result, out_dir = runner("grpo", "tokens")
    out = check_ok(result)
    for what in ("GalSim surrogate data", "random Qwen2.5-VL", "FSQ codec"):
        assert sum(f"building the tiny default {what}" in line for line in out.splitlines()) == 1, what
    for built in ("runs/tiny/prepared/manifest.json", "runs/tiny/qwen2_5_vl/config.json", "runs/tiny/codec/codec.json"):
        assert (workdir / built).is_file(), built
    assert f"after {STEPS} steps (1 process)" in out
    # The next run reuses them and says nothing about building.
    again = check_ok(runner("sft", "tokens")[0])
    assert "building the tiny default" not in again


# --- both recipes, both arms, both launchers -------------------------------------------------------------------------


@pytest.mark.parametrize("launcher,recipe,modality", RUNS)
def test_recipe_runs(runner, launcher, recipe, modality):
    result, out_dir = runner(recipe, modality, launcher=launcher)
    out = check_ok(result)
    assert f"Model saved to {Path(out_dir).relative_to(out_dir.parents[2])} after {STEPS} steps (1 process)" in out
    state = trainer_state(out_dir / f"checkpoint-{STEPS}")
    assert state["global_step"] == STEPS
    assert len(losses(out_dir / f"checkpoint-{STEPS}")) == STEPS
    assert all(math.isfinite(v) for v in losses(out_dir / f"checkpoint-{STEPS}"))
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "processor_config.json").is_file()
    if recipe == "sft":  # a random model's SFT loss on the answer tokens starts near ln(vocabulary) and moves
        assert 3.0 < losses(out_dir / f"checkpoint-{STEPS}")[0] < 9.0


# --- two processes train what one does -----------------------------------------------------------------------------


@pytest.mark.parametrize("launcher,recipe,modality", TWO_PROCESS_RUNS)
def test_two_processes_match_one(runner, workdir, launcher, recipe, modality):
    one, one_dir = runner(recipe, modality)
    two, two_dir = runner(recipe, modality, launcher=launcher, processes=2)
    check_ok(one)
    out = check_ok(two)
    assert f"after {STEPS} steps (2 processes)" in out
    one_state = trainer_state(one_dir / f"checkpoint-{STEPS}")
    two_state = trainer_state(two_dir / f"checkpoint-{STEPS}")
    assert one_state["global_step"] == two_state["global_step"] == STEPS
    assert len(losses(two_dir / f"checkpoint-{STEPS}")) == len(losses(one_dir / f"checkpoint-{STEPS}"))
    assert all(math.isfinite(v) for v in losses(two_dir / f"checkpoint-{STEPS}"))
    # Two processes see twice the samples per optimizer step.
    assert two_state["epoch"] == pytest.approx(2 * one_state["epoch"], rel=0.01)
    assert isinstance(generate_one(two_dir, workdir, modality), str)


# --- checkpoints and resume -----------------------------------------------------------------------------------------


def test_killed_run_resumes_to_the_final_step(workdir, runner, tmp_path):
    check_ok(runner("sft", "image")[0])  # the tiny defaults exist
    out_dir = Path("runs/test/killed_sft_image")
    final, every, killed_at = 12, 3, 6
    cmd = command(
        "sft",
        "sft_image.yaml",
        "--max_steps",
        str(final),
        "--save_steps",
        str(every),
        "--save_total_limit",
        "10",
        "--output_dir",
        str(out_dir),
        "--callbacks",
        "holdpoint.HoldAtSave",
        launcher="python",
    )
    # The run holds right after saving checkpoint-6 and is killed there: where it dies never depends on speed.
    marker = tmp_path / "held"
    env = {**_env(), "HOLD_MARKER": str(marker), "HOLD_AT_STEP": str(killed_at)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env["PYTHONPATH"]])
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_hold(marker, proc, TIMEOUT)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(p.name.split("-")[1]) for p in (workdir / out_dir).glob("checkpoint-*"))
    assert saved == [3, 6] and not (workdir / out_dir / "model.safetensors").exists()

    # Without --resume the run is refused: one line, exit 2, nothing touched.
    refused = run(
        command("sft", "sft_image.yaml", "--max_steps", str(final), "--output_dir", str(out_dir), launcher="python"),
        workdir,
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("astroreason: error:")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr
    assert f"{out_dir} already holds checkpoint-" in errors[0] and "--resume" in errors[0]
    assert sorted(int(p.name.split("-")[1]) for p in (workdir / out_dir).glob("checkpoint-*")) == saved

    resumed = run(
        command(
            "sft",
            "sft_image.yaml",
            "--max_steps",
            str(final),
            "--save_steps",
            str(every),
            "--save_total_limit",
            "10",
            "--output_dir",
            str(out_dir),
            "--resume",
            "true",
            launcher="accelerate",
        ),
        workdir,
    )
    out = check_ok(resumed)
    # The newest checkpoint is the one resumed from (one killed mid-save would be skipped, with a line).
    assert f"Resuming from {out_dir}/checkpoint-{killed_at} (global step {killed_at})" in out
    assert f"after {final} steps" in out
    state = trainer_state(workdir / out_dir / f"checkpoint-{final}")
    assert state["global_step"] == final
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged == list(range(1, final + 1))  # the first steps come from the checkpoint, the rest were trained now


def test_cpu_flag_with_two_processes_is_refused(runner, workdir):
    """accelerate 1.15 runs ONE process for `--cpu --num_processes 2`: the recipe says so instead of training."""
    check_ok(runner("sft", "image")[0])
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "--main_process_port",
        str(_free_port()),
        str(ROOT / "recipes/sft.py"),
        "--config",
        str(TINY / "sft_image.yaml"),
        "--output_dir",
        "runs/test/cpu_flag",
    ]
    result = run(cmd, workdir)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("astroreason: error:")]
    assert len(errors) == 1 and "starts only ONE process" in errors[0] and "--multi_gpu --num_processes N" in errors[0]
    assert not (workdir / "runs/test/cpu_flag").exists()


def test_last_checkpoint_skips_one_killed_while_saving(tmp_path):
    from astroreason.training import last_checkpoint

    assert last_checkpoint(tmp_path / "missing") is None
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # no trainer_state.json: the job died while writing it
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")


# --- LoRA -------------------------------------------------------------------------------------------------------------


def test_lora_sft_saves_an_adapter_that_loads(runner, workdir):
    result, out_dir = runner("sft", "image", launcher="python", config="sft_lora_image.yaml")
    out = check_ok(result)
    assert f"after {STEPS} steps" in out
    assert (out_dir / "adapter_model.safetensors").is_file() and not (out_dir / "model.safetensors").exists()
    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    from peft import PeftModel

    os.chdir(workdir)  # the adapter names its base model by the config's relative path
    try:
        from astroreason.models import load_model_and_processor

        model, _ = load_model_and_processor(out_dir)
        assert isinstance(model, PeftModel)
        assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
        assert isinstance(generate_one(out_dir, workdir, "image"), str)
    finally:
        os.chdir(ROOT)


# --- the datasets of the two arms -----------------------------------------------------------------------------------


def test_arms_differ_only_in_the_galaxy(runner, workdir):
    check_ok(runner("grpo", "tokens")[0])
    from astroreason.prompts import INSTRUCTION
    from astroreason.training import GalaxyScriptArguments, galaxy_dataset

    data, codec = str(workdir / "runs/tiny/prepared"), str(workdir / "runs/tiny/codec")
    image = galaxy_dataset(GalaxyScriptArguments(data_dir=data), "train", with_completion=True)
    tokens = galaxy_dataset(
        GalaxyScriptArguments(data_dir=data, modality="tokens", codec=codec), "train", with_completion=True
    )
    assert image["label"] == tokens["label"] and image["completion"] == tokens["completion"]
    assert image[0]["image"].size == (112, 112)  # 16 visual tokens, not the 4 of the raw 64 px
    assert "image" not in tokens.column_names
    for row in (image[0], tokens[0]):
        assert row["prompt"][-1]["role"] == "user" and row["prompt"][-1]["content"].endswith(INSTRUCTION)
    from astroreason.tokens.render import parse

    grid = parse(tokens[0]["prompt"][0]["content"].split("\n")[1], "ints", (8, 8))  # an 8x8 grid of ids as text
    assert grid.shape == (8, 8) and 0 <= grid.min() and grid.max() < 4375

    # What the evaluation asks (built in memory) is what training sees, row for row and pixel for pixel.
    from astroreason.training import galaxy_rows

    for args in (
        GalaxyScriptArguments(data_dir=data),
        GalaxyScriptArguments(data_dir=data, modality="tokens", codec=codec),
    ):
        trained = galaxy_dataset(args, "test", with_completion=False, max_samples=5)
        asked = galaxy_rows(args, "test", max_samples=5)
        assert len(asked) == 5 and [r["prompt"] for r in asked] == trained["prompt"]
        assert [r["label"] for r in asked] == trained["label"]
        if args.modality == "image":
            assert all(a["image"].tobytes() == t.tobytes() for a, t in zip(asked, trained["image"]))


def test_only_the_named_defaults_are_built(tmp_path, monkeypatch):
    from astroreason.defaults import ensure_tiny_defaults

    monkeypatch.chdir(tmp_path)
    ensure_tiny_defaults("runs/tiny/prepared_typo", "runs/tiny/qwen2_5_vl_typo", "runs/tiny/codec_typo")
    assert not (tmp_path / "runs").exists()


# --- vLLM: not runnable here; its config path is ----------------------------------------------------------------------


def _grpo_args(*overrides: str):
    from trl import GRPOConfig, ModelConfig, TrlParser

    from astroreason.training import GalaxyScriptArguments

    parser = TrlParser((GalaxyScriptArguments, GRPOConfig, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(TINY / "grpo_image.yaml"), *overrides])


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_use_vllm_config_path(mode, tmp_path):
    import importlib.util

    from astroreason.errors import UserError
    from astroreason.training import build_grpo_trainer, check_vllm

    script_args, training_args, model_args = _grpo_args(
        "--use_vllm", "true", "--vllm_mode", mode, "--vllm_server_host", "10.0.0.7", "--output_dir", str(tmp_path)
    )
    assert training_args.use_vllm and training_args.vllm_mode == mode
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: its own integration tests apply")
    with pytest.raises(UserError) as err:
        build_grpo_trainer(script_args, training_args, model_args)  # refused before any model or data is loaded
    message = str(err.value)
    assert "\n" not in message and message.startswith("use_vllm: vLLM is not installed")
    assert "astroreason[vllm]" in message and "--use_vllm false" in message
    check_vllm(_grpo_args("--output_dir", str(tmp_path))[1])  # use_vllm off: nothing to check


def test_bad_vllm_mode_is_one_line(tmp_path):
    from astroreason.errors import UserError
    from astroreason.training import check_vllm

    _, training_args, _ = _grpo_args("--use_vllm", "true", "--vllm_mode", "remote", "--output_dir", str(tmp_path))
    with pytest.raises(UserError, match="vllm_mode: expected one of colocate, server, got 'remote'"):
        check_vllm(training_args)
