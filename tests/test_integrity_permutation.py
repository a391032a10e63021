"""The label-permutation control retrains from the run's base, never from its trained checkpoint.

An honest run trained through the demo's own stages (surrogate files, split, vision-tower pretraining on a disjoint
file, SFT, then GRPO from the SFT output) is measurably above chance; its audit passes the control, which follows the
GRPO run's base back through the SFT run to the pretrained model and reruns the SFT recipe from there on permuted
labels. The control can still fail: a run started from a copy of that trained SFT model (a base that already saw the
labels, with no record of it) fails, because retraining from its base on permuted labels stays above chance. A run
recorded before the recipes recorded their base, and a base whose weights changed, are skipped with the reason.
"""

from __future__ import annotations

import json
import shutil

import pytest

from astroreason.audit.probes import RunSpec, _score_backend, control_rows, probe_label_permutation
from astroreason.cli import main as cli
from astroreason.demo import Demo, DemoConfig
from astroreason.integrity.fingerprint import FINGERPRINT_FILE

SMALL = DemoConfig(
    n_galaxies=700,
    n_pretrain=700,
    fractions=(0.7, 0.05, 0.25),
    pretrain_steps=120,
    sft_steps=60,
    sft_batch=16,
    grpo_steps=2,
    check=False,
)
N = 128  # test galaxies the controls score


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """The demo's image arm at a small scale: SFT from the pretrained-vision model, then GRPO from the SFT output."""
    import torch

    torch.set_num_threads(SMALL.threads)
    demo = Demo(tmp_path_factory.mktemp("demo"), SMALL)
    demo.data()
    demo.tokens()  # the codec: the model both arms start from has its code-token embeddings pretrained too
    demo.models()
    sft = demo.sft("image")
    return demo, sft, demo.grpo("image")


def spec_of(demo, model) -> RunSpec:
    return RunSpec(model=str(model), data_dir=str(demo.prepared), image_size=SMALL.image_size)


def score(model_dir, spec) -> dict:
    from astroreason.evaluation.backends import SamplingSettings, TransformersBackend

    backend = TransformersBackend.from_pretrained(str(model_dir), SamplingSettings(max_new_tokens=32), batch_size=32)
    prompts, images, labels = control_rows(spec, "test", max_samples=N, galaxy="real")
    return _score_backend(backend, prompts, images, labels, spec.classes())


def audit_json(target, capsys, *extra, max_samples=N) -> tuple[int, dict]:
    capsys.readouterr()  # drop the trainings' own output: only the audit's JSON is read
    status = cli(["audit", str(target), "--max-samples", str(max_samples), "--json", *extra])
    probes = {p["name"]: p for p in json.loads(capsys.readouterr().out)["probes"]}
    return status, probes


def test_fingerprints_record_the_base_and_the_recipe(honest):
    demo, sft, grpo = honest
    base = json.loads((sft / FINGERPRINT_FILE).read_text())["base"]
    assert base["model_name_or_path"] == str(demo.model) and base["lora"] is False and base["peft"] is None
    assert len(base["weights_sha256"]) == 64
    recipe = base["recipe"]
    assert recipe["kind"] == "sft" and recipe["training_args"]["max_steps"] == SMALL.sft_steps
    assert recipe["script_args"]["data_dir"] == str(demo.prepared) and recipe["model_args"]["dtype"] == "float32"
    grpo_base = json.loads((grpo / FINGERPRINT_FILE).read_text())["base"]
    assert grpo_base["model_name_or_path"] == str(sft) and grpo_base["recipe"]["kind"] == "grpo"
    assert grpo_base["recipe"]["training_args"]["num_generations"] == 4
    assert grpo_base["weights_sha256"] != base["weights_sha256"]  # the SFT output is not its base


def test_honest_trained_run_passes_the_control(honest, capsys):
    demo, sft, grpo = honest
    spec = spec_of(demo, grpo)
    trained = score(grpo, spec)
    # Measurably above chance: the trained checkpoint itself beats the majority rate (the old control, which
    # fine-tuned this checkpoint for a few steps on permuted labels, called exactly this a leak).
    assert trained["beats"], trained

    status, probes = audit_json(grpo, capsys, "--random-reward-samples", str(N))
    control = probes["label_permutation"]
    print(control["summary"], json.dumps({k: control["details"].get(k) for k in ("accuracy", "rate", "p_value")}))
    assert control["status"] == "pass", control
    # The random-reward control reruns the GRPO stage itself, from its own start (the SFT run), not the chain root.
    random_reward = probes["random_reward"]
    print(random_reward["summary"])
    assert random_reward["details"]["start"] == str(sft) and random_reward["details"]["steps"] == SMALL.grpo_steps
    assert random_reward["details"]["replaced"].keys() == {"accuracy"} and random_reward["details"]["n"] == N
    failed = {name for name, p in probes.items() if p["status"] == "fail"}
    assert failed <= {"random_reward"} and status == (1 if failed else 0), failed
    details = control["details"]
    # Back through the GRPO run and the SFT run to the pretrained model: the SFT recipe, all its 60 steps.
    assert details["root_base"] == str(demo.model) and details["recipe"] == "sft"
    assert details["chain"] == [str(grpo), str(sft)] and details["first_labelled_stage"] == str(sft)
    assert details["steps"] == SMALL.sft_steps and details["n"] == N
    assert not details["beats"] and details["accuracy"] < trained["accuracy"] - 0.1
    assert details["parsed"] > 0.9  # the control learned to answer; it answers without knowing the galaxy's class
    assert "models/tiny_pretrained " in control["summary"] and "not the trained checkpoint" in control["summary"]


def test_base_that_already_saw_the_labels_fails_the_control(honest, tmp_path, capsys):
    """A planted leak through the base: the trained SFT model copied without its fingerprint, so it looks like a
    plain pretrained model, and a new run fine-tuned from it. Its base knows the test labels."""
    from trl import ModelConfig, SFTConfig

    from astroreason.training import build_sft_trainer, run_training

    demo, sft, _ = honest
    leaked = tmp_path / "leaked_base"
    shutil.copytree(sft, leaked, ignore=shutil.ignore_patterns(FINGERPRINT_FILE, "prompt_lint.json", "SUSPECT.json"))
    run = tmp_path / "from_leaked_base"
    args = SFTConfig(
        output_dir=str(run),
        max_steps=8,
        per_device_train_batch_size=16,
        learning_rate=1e-4,
        max_length=None,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    script = demo.script_args("image")
    run_training(build_sft_trainer(script, args, ModelConfig(str(leaked), dtype="float32")), script)

    status, probes = audit_json(run, capsys, "--permutation-steps", "8")
    control = probes["label_permutation"]
    print(control["summary"], json.dumps({k: control["details"].get(k) for k in ("accuracy", "rate", "p_value")}))
    assert status == 1 and control["status"] == "fail", control
    assert control["details"]["root_base"] == str(leaked) and control["details"]["beats"]
    assert "labels reach the model by another route" in control["summary"]


def test_run_without_a_base_record_is_skipped(honest, tmp_path, capsys):
    demo, sft, _ = honest
    old = tmp_path / "old_run"
    shutil.copytree(sft, old)
    record = json.loads((old / FINGERPRINT_FILE).read_text())
    del record["base"]  # as the recipes wrote it before they recorded their base
    (old / FINGERPRINT_FILE).write_text(json.dumps(record))
    status, probes = audit_json(old, capsys, max_samples=16)
    control = probes["label_permutation"]
    print(control["summary"], json.dumps({k: control["details"].get(k) for k in ("accuracy", "rate", "p_value")}))
    assert control["status"] == "skip" and "has no base record" in control["summary"]
    assert status == 0 and probes["blank_input"]["status"] == "pass"


def test_changed_base_is_skipped(honest, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    demo, sft, _ = honest
    moved = tmp_path / "moved_base"
    shutil.copytree(demo.model, moved)
    run = tmp_path / "run"
    shutil.copytree(sft, run)
    record = json.loads((run / FINGERPRINT_FILE).read_text())
    record["base"].update(model_name_or_path=str(moved), resolved_path=str(moved))
    (run / FINGERPRINT_FILE).write_text(json.dumps(record))
    spec = spec_of(demo, run)

    from astroreason.audit.permutation import check_base, control_start

    start = control_start(spec.model, spec.data_dir)
    assert start.root == str(moved) and check_base(start) is None  # the hash is of the weights, not of the path
    weights = load_file(moved / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.ones_like(weights[name])
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    result = probe_label_permutation(spec, max_samples=16)
    assert result.status == "skip" and "changed since" in result.summary and result.details["root_base"] == str(moved)


def test_lora_run_is_controlled_with_a_fresh_adapter_on_its_base(prepared_dir, tiny_model_dir, tmp_path):
    """A LoRA SFT through the recipe's builder: the control starts from the base with a new adapter, never from the
    run's trained adapter, and leaves the base's own weights as they were."""
    import torch
    from safetensors.torch import load_file
    from trl import ModelConfig, SFTConfig

    from astroreason.audit.permutation import check_base, control_start, control_trainer
    from astroreason.models import load_model_and_processor
    from astroreason.training import GalaxyScriptArguments, build_sft_trainer, run_training

    run = tmp_path / "lora"
    script = GalaxyScriptArguments(data_dir=str(prepared_dir), image_size=56, max_train_samples=16)
    args = SFTConfig(
        output_dir=str(run),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_length=None,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    model_args = ModelConfig(
        str(tiny_model_dir),
        dtype="float32",
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
    )
    run_training(build_sft_trainer(script, args, model_args), script)
    base = json.loads((run / FINGERPRINT_FILE).read_text())["base"]
    assert (
        base["lora"] is True
        and base["peft"]["lora_r"] == 4
        and base["peft"]["lora_target_modules"] == ["q_proj", "v_proj"]
    )

    start = control_start(str(run), str(prepared_dir))
    assert start.root == str(tiny_model_dir) and check_base(start) is None
    trainer = control_trainer(start, str(tmp_path / "control"), steps=1)
    model = trainer.model
    assert model.peft_config and trainer.train_dataset.num_rows == 16  # a LoRA model, on the run's 16 rows
    # A fresh adapter: every lora_B starts at zero (PEFT's init), where the run's trained adapter has moved.
    trained = load_file(run / "adapter_model.safetensors")
    fresh_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert fresh_b and all(not p.any() for p in fresh_b.values())
    assert all(t.abs().max() > 0 for n, t in trained.items() if "lora_B" in n)
    # On the base's own weights (LoRA leaves them frozen): the base as `from_pretrained` loads it.
    reference = load_model_and_processor(tiny_model_dir)[0].state_dict()
    own = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().state_dict().items() if "lora_" not in n}
    assert own.keys() == reference.keys() and all(torch.equal(own[k], reference[k]) for k in reference)
    trainer.train()  # and it trains: the adapter moves
    assert any(p.any() for p in fresh_b.values())


def test_grpo_first_chain_is_controlled_with_grpo_on_permuted_labels(prepared_dir, tiny_model_dir, tmp_path):
    """A chain whose first labelled stage is GRPO (from a base): the control is a GRPO rerun, its rewards read the
    permuted labels, with the run's own GRPO settings."""
    from trl import GRPOConfig, GRPOTrainer, ModelConfig

    from astroreason.audit.permutation import control_start, control_trainer
    from astroreason.training import GalaxyScriptArguments, build_grpo_trainer, galaxy_dataset, run_training

    run = tmp_path / "grpo"
    script = GalaxyScriptArguments(data_dir=str(prepared_dir), image_size=56, max_train_samples=32)
    args = GRPOConfig(
        output_dir=str(run),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-3,
        beta=0.0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    run_training(build_grpo_trainer(script, args, ModelConfig(str(tiny_model_dir), dtype="float32")), script)

    start = control_start(str(run), str(prepared_dir))
    assert start.root == str(tiny_model_dir) and start.recipe["kind"] == "grpo" and start.chain == [run]
    trainer = control_trainer(start, str(tmp_path / "control"), steps=1, seed=0)
    assert isinstance(trainer, GRPOTrainer)
    assert trainer.args.num_generations == 2 and trainer.args.max_completion_length == 8 and trainer.args.max_steps == 1
    true = galaxy_dataset(script, "train", with_completion=False, max_samples=32)["label"]
    permuted = trainer.train_dataset["label"]
    assert sorted(permuted) == sorted(true) and permuted != true  # same class mix, labels moved between galaxies
    assert (
        trainer.train_dataset["prompt"]
        == galaxy_dataset(script, "train", with_completion=False, max_samples=32)["prompt"]
    )
    trainer.train()
    assert trainer.state.global_step == 1
