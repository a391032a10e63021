"""Rewards and renderings by registry name, or user code by dotted path (a module in tmp_path on sys.path); an
unknown name is one line."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli

from astroreason.data.splits import load_manifest
from astroreason.errors import UserError
from astroreason.rewards import REWARD_FUNCS, accuracy_reward, get_reward_funcs
from astroreason.tokens import load_codec
from astroreason.tokens.codec import read_inputs
from astroreason.tokens.fsq import FSQCodec, FSQConfig
from astroreason.tokens.render import RENDERINGS, parse, render

USER_REWARDS = '''
def brevity_reward(completions, label, **kwargs):
    """1 for a completion of at most 20 characters, else 0 (conversational or plain, as TRL passes them)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [1.0 if len(t) <= 20 else 0.0 for t in texts]

NOT_A_FUNCTION = 3
'''

USER_RENDERINGS = '''
import numpy as np
from astroreason.tokens.render import Rendering

def hex_codes(grid):
    """Every code in hexadecimal, space-separated."""
    return " ".join(format(int(c), "x") for c in grid.ravel())

def _parse_hex(text, grid_shape):
    ids = [int(t, 16) for t in text.split()]
    return np.asarray(ids).reshape(grid_shape) if len(ids) == grid_shape[0] * grid_shape[1] else None

HEX = Rendering(hex_codes, _parse_hex)
'''


def _user_module(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _one_line(err: UserError, *needles: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_user_reward_by_dotted_path_is_called_the_trl_way(tmp_path, monkeypatch):
    module = _user_module(tmp_path, monkeypatch, "astro_user_rewards_a", USER_REWARDS)
    funcs = get_reward_funcs(f"accuracy, {module}.brevity_reward")
    assert (
        funcs[0].__wrapped__ is accuracy_reward and funcs[1].__name__ == "brevity_reward"
    )  # TRL logs rewards/<__name__>
    completions = [
        [{"role": "assistant", "content": "<answer>Merging</answer>"}],
        [{"role": "assistant", "content": "a long reasoning first, then <answer>Merging</answer>"}],
    ]
    rewards = [f(prompts=[[]] * 2, completions=completions, completion_ids=[[], []], label=[1, 0]) for f in funcs]
    assert rewards == [[1.0, 0.0], [0.0, 0.0]]
    assert set(REWARD_FUNCS) == {"format", "accuracy", "partial", "zoom_cost", "zoom_bonus"}  # untouched by it


def test_unknown_or_unimportable_reward_is_one_line(tmp_path, monkeypatch):
    module = _user_module(tmp_path, monkeypatch, "astro_user_rewards_b", USER_REWARDS)
    with pytest.raises(UserError) as err:
        get_reward_funcs(["format", "acuracy"])
    _one_line(err.value, "reward_funcs: unknown ['acuracy']", "known: format, accuracy, partial", "dotted path")
    with pytest.raises(UserError) as err:
        get_reward_funcs(["astro_no_such_module.reward"])
    _one_line(err.value, "reward_funcs: cannot import 'astro_no_such_module'")
    with pytest.raises(UserError) as err:
        get_reward_funcs([f"{module}.missing_reward"])
    _one_line(err.value, f"module '{module}' has no 'missing_reward'")
    with pytest.raises(UserError) as err:
        get_reward_funcs([f"{module}.NOT_A_FUNCTION"])
    _one_line(err.value, "is a int, not a function")


def test_user_rendering_by_dotted_path(tmp_path, monkeypatch):
    module = _user_module(tmp_path, monkeypatch, "astro_user_renderings_a", USER_RENDERINGS)
    grid = np.array([[3513, 255, 7], [42, 0, 4374]])
    assert render(grid, f"{module}.hex_codes") == "db9 ff 7 2a 0 1116"
    np.testing.assert_array_equal(parse(render(grid, f"{module}.HEX"), f"{module}.HEX", (2, 3)), grid)
    with pytest.raises(UserError, match="not a .* rendering of a 3x3 grid"):
        parse(render(grid, f"{module}.HEX"), f"{module}.HEX", (3, 3))
    with pytest.raises(UserError) as err:  # a plain function renders, but its text cannot be read back
        parse("db9 ff 7 2a 0 1116", f"{module}.hex_codes", (2, 3))
    _one_line(err.value, "has no parse")
    assert list(RENDERINGS) == ["ints", "rows", "special"]


def test_user_rendering_through_tokens_cost_and_unknown_is_one_line(
    tiny_model_dir, prepared_dir, tmp_path, monkeypatch, capsys
):
    """`astroreason tokens cost` measures a user rendering exactly like a built-in one; an unknown name, a module
    that does not import and a name that is neither a Rendering nor a function each end in one line, exit 2."""
    from transformers import AutoTokenizer

    module = _user_module(tmp_path, monkeypatch, "astro_user_renderings_b", USER_RENDERINGS)
    torch.manual_seed(0)
    codec_dir = FSQCodec(FSQConfig(size=32, hidden=8), name="fsq32").save(tmp_path / "fsq32")
    out = tmp_path / "cost.json"
    status, _, err = cli(
        capsys,
        "tokens",
        "cost",
        "--codec",
        codec_dir,
        "--model",
        tiny_model_dir,
        "--data",
        prepared_dir,
        "--split",
        "test",
        "--n",
        "4",
        "--rendering",
        f"ints,{module}.hex_codes",
        "--json",
        out,
    )
    assert status == 0, err
    by_name = {r["rendering"]: r for r in json.loads(out.read_text())["renderings"]}
    codec, manifest = load_codec(codec_dir), load_manifest(prepared_dir)
    codes = np.concatenate(
        [codec.encode(b) for b in read_inputs(manifest.source_path, manifest.rows["test"][:4], codec.input_spec)]
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    counts = [
        len(tokenizer(" ".join(format(int(c), "x") for c in g.ravel()), add_special_tokens=False)["input_ids"])
        for g in codes
    ]
    got = by_name[f"{module}.hex_codes"]
    assert got["lm_tokens_mean"] == pytest.approx(np.mean(counts)) and got["lm_tokens_max"] == max(counts)
    assert got["lm_tokens_mean"] != by_name["ints"]["lm_tokens_mean"]

    for rendering, needle in (
        ("hexx", "rendering: expected one of ints, rows, special or a dotted path"),
        ("astro_no_such_module.render", "rendering: cannot import 'astro_no_such_module'"),
        (f"{module}.np", "is a module, not a Rendering nor a function"),
    ):
        status, _, err = cli(
            capsys, "tokens", "cost", "--codec", codec_dir, "--model", tiny_model_dir, "--rendering", rendering
        )
        assert_one_line_error(status, err, needle)
