"""The classes come from the data: a split's task (its manifest's class names and wording) makes its prompts, SFT
targets and reward scores; Galaxy10 DECaLS's prompts stay byte for byte what every run has recorded."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from astroreason.arms import ImageArm, TokenArm, build_arm
from astroreason.arms.base import ArmSettings
from astroreason.data.galaxy10 import DECALS_CLASSES
from astroreason.data.spectra.stars import SPECTRAL_CLASSES
from astroreason.data.splits import load_manifest
from astroreason.data.task import GALAXY10, task_of
from astroreason.errors import UserError
from astroreason.evaluation.report import class_names
from astroreason.models import tokenizer_corpus
from astroreason.prompts import IMAGE_TEMPLATE, INSTRUCTION, TOKENS_TEMPLATE, answer_text, build_prompt
from astroreason.rewards import get_reward_funcs, parse_answer

# The sha256 of the Galaxy10 DECaLS templates and instruction as runs recorded them before the classes came from the
# data (astroreason 04b8498): a prompt that changes by one byte changes every run's fingerprint.
RECORDED_SHA256 = {
    "image": "7c64db15cc6ddb75e2298abd5dd1fb78f0fda8e463b8fc8af6a57708238c9ad4",
    "tokens": "d3169425e4d6eb28a1b6dca0f9949b976a4e72d62da7a337b54b34e062bbf6ca",
    "instruction": "50bb6180b76ffd27f4410768ff2eac1530f3bde1fd56fb85f5149ab86498e528",
}
SPECTRA = task_of(SimpleNamespace(release="mmu-spectra", classes=list(SPECTRAL_CLASSES)))
G = SPECTRAL_CLASSES.index("G")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_galaxy10_templates_are_byte_identical_to_the_recorded_ones():
    assert sha256(IMAGE_TEMPLATE) == RECORDED_SHA256["image"]
    assert sha256(TOKENS_TEMPLATE) == RECORDED_SHA256["tokens"]
    assert sha256(INSTRUCTION) == RECORDED_SHA256["instruction"]


def test_a_galaxy10_split_gets_the_recorded_template(prepared_dir):
    manifest = load_manifest(prepared_dir)
    assert task_of(manifest) == GALAXY10
    assert ImageArm.template_for(task_of(manifest)) == IMAGE_TEMPLATE
    assert TokenArm.template_for(task_of(manifest)) == TOKENS_TEMPLATE
    arm = build_arm(ArmSettings(data_dir=str(prepared_dir)), "train", max_samples=2)
    assert arm.default_template == IMAGE_TEMPLATE
    assert sha256(arm.rows()[0]["prompt"][0]["content"]) == RECORDED_SHA256["image"]


def test_a_prepared_spectra_split_names_the_spectral_classes(tmp_path):
    """The task read from a spectra directory that `prepare_spectra` wrote is the one the other tests use."""
    from astroreason.data.spectra.splits import prepare_spectra
    from astroreason.data.spectra.surrogate import synthesize_spectra

    source = synthesize_spectra(tmp_path / "stars", n=35, seed=2, dloglam=1e-3)
    out = prepare_spectra(source, tmp_path / "prepared", label_column="spectral_class")
    assert task_of(load_manifest(out)) == SPECTRA


def test_a_spectra_task_names_the_spectral_classes():
    assert SPECTRA.classes == ("O", "B", "A", "F", "G", "K", "M")
    assert SPECTRA.noun == "star"
    assert SPECTRA.instruction.startswith(
        "Classify the star's spectral type as exactly one of these seven classes: O, B, A, F, G, K, M.\n"
    )
    assert "Galaxy10" not in SPECTRA.instruction and "galaxy" not in SPECTRA.instruction
    # An arm's template carries the task's instruction (no spectrum arm yet: the image arm's template stands in).
    (turn,) = build_prompt(ImageArm, template=ImageArm.template_for(SPECTRA))
    assert turn["content"] == "The image shows a star.\n" + SPECTRA.instruction


def test_a_release_without_its_own_wording_gets_a_plain_one():
    task = task_of(SimpleNamespace(release="elsewhere", classes=["Spiral", "Elliptical"]))
    assert task.instruction.startswith("Classify the source as exactly one of these two classes: Spiral, Elliptical.")


def test_answers_name_the_tasks_classes():
    assert answer_text(G, SPECTRA.classes) == "<answer>G</answer>"
    assert parse_answer("<answer> g </answer>", SPECTRA.classes) == G
    assert parse_answer("<answer>Round Smooth</answer>", SPECTRA.classes) is None
    assert parse_answer("<answer>G</answer>", DECALS_CLASSES) is None
    with pytest.raises(UserError, match="0-6"):
        answer_text(7, SPECTRA.classes)


def test_rewards_score_against_the_runs_classes():
    format_reward, accuracy_reward = get_reward_funcs(["format", "accuracy"], SPECTRA.classes)
    assert (format_reward.__name__, accuracy_reward.__name__) == ("format_reward", "accuracy_reward")  # TRL's logs
    texts = ["<answer>G</answer>", "<answer>K</answer>", "<answer>Round Smooth</answer>", "G"]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    # As GRPOTrainer calls them: prompts, completions, completion_ids, then the dataset's columns.
    call = dict(prompts=["p"] * 4, completions=completions, completion_ids=[[0]] * 4, label=[G] * 4)
    assert accuracy_reward(**call) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(**call) == [1.0, 1.0, 0.0, 0.0]


def test_partial_credit_is_refused_for_other_classes():
    with pytest.raises(UserError, match="partial credit groups Galaxy10 DECaLS's classes"):
        get_reward_funcs("accuracy,partial", SPECTRA.classes)
    assert len(get_reward_funcs("partial", DECALS_CLASSES)) == 1


def test_the_tiny_tokenizer_corpus_carries_the_tasks_classes():
    corpus = tokenizer_corpus(SPECTRA)
    assert "<answer>G</answer>" in corpus and SPECTRA.instruction in "\n".join(corpus)
    assert tokenizer_corpus() == tokenizer_corpus(GALAXY10)


def test_a_result_names_its_classes():
    assert class_names({"classes": list(SPECTRAL_CLASSES)}) == SPECTRAL_CLASSES
    assert class_names({}) == DECALS_CLASSES  # a result written before the classes were recorded


def test_a_tiny_model_for_a_task_records_its_classes(tmp_path):
    from astroreason.models import build_record, build_tiny_model, load_model_and_processor

    out = build_tiny_model(tmp_path / "tiny", task=SPECTRA)
    assert build_record(out)["classes"] == list(SPECTRAL_CLASSES)
    _, processor = load_model_and_processor(out)
    ids = processor.tokenizer("<answer>G</answer>", add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == "<answer>G</answer>"
