"""`astroreason claims DRAFT SOURCE...` on runs made like the demo's (an image and a token arm answered by a scripted
server on 127.0.0.1, reported with `write_report`): a draft quoting their values passes, each planted error is
flagged on its own line, a macro-only draft survives a redo of the runs and a typed one does not. Every expected
number is read from the report's values.json."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from evalkit import ScriptedServer, build_codec

from astroreason.cli import main
from astroreason.evaluation.report import load_run, write_report


def evaluate(prepared_dir, codec, out, name, seed):
    """One run of the arm `name` (image or tokens) whose scripted answers are drawn with `seed`."""
    modality = ["--modality", "image", "--image_size", "56"] if name == "image" else ["--modality", "tokens"]
    modality += ["--codec", str(codec)] if name == "tokens" else []
    server = ScriptedServer(answer_seed=seed)
    try:
        argv = ["eval", "--model", f"scripted-{name}", "--base_url", server.url, "--backend", "openai"]
        argv += ["--data_dir", str(prepared_dir), "--split", "test", "--max_new_tokens", "16", "--n_boot", "300"]
        argv += ["--price_input_per_million", "0.5", "--price_output_per_million", "1.5", "--concurrency", "2"]
        argv += ["--image_tokens_bound", "64", "--ledger", str(out.parent / "spend.jsonl")]
        assert main([*argv, "--max_dollars", "1", *modality, "--output_dir", str(out)]) == 0
    finally:
        server.stop()
    return out


@pytest.fixture(scope="module")
def reported(prepared_dir, tmp_path_factory):
    """Two runs (image, tokens) and their report; the values by name."""
    root = tmp_path_factory.mktemp("claims")
    codec = build_codec(prepared_dir, root / "codec")
    runs = {
        name: evaluate(prepared_dir, codec, root / name, name, seed) for name, seed in (("image", 0), ("tokens", 4))
    }
    write_report([runs["image"], runs["tokens"]], root / "report")
    return root, runs, codec, values_of(root / "report")


def values_of(report_dir):
    return {v["name"]: v for v in json.loads((report_dir / "values.json").read_text())}


def check(capsys, draft, *sources, verbose=False):
    """Run `astroreason claims`: its exit status, its finding lines and its CLAIMS counts."""
    capsys.readouterr()  # what came before (an evaluation's RESULT line) is not its output
    status = main(["claims", str(draft), *map(str, sources), *(["--verbose"] if verbose else [])])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("CLAIMS ")
    return status, out[:-1], json.loads(out[-1][len("CLAIMS ") :])


def clean_markdown(v):
    """A draft quoting the report's values by hand, as printed."""
    t = {name: value["text"] for name, value in v.items()}
    return f"""# Results

## 2.1 Accuracy

The image arm reaches {t["ImageAccuracy"]} % [{t["ImageAccuracyLow"]}, {t["ImageAccuracyHigh"]}] accuracy on
n = {t["NTest"]} test galaxies, the tokens arm {t["TokensAccuracy"]} % [{t["TokensAccuracyLow"]},
{t["TokensAccuracyHigh"]}] (Table 1, 95 % CI).
The paired difference is {t["ImageVsTokensDiff"]} points [{t["ImageVsTokensDiffLow"]}, {t["ImageVsTokensDiffHigh"]}]
(exact McNemar p = {t["ImageVsTokensP"]}): the image arm is not significantly better than the tokens arm.
The image arm costs {t["ImageTokensPerGalaxy"]} tokens per galaxy (${t["ImageCost"]} in all), on 56 px images, in 2026.

| run | n | accuracy [95 % CI] | tokens / galaxy | cost $ |
|---|---|---|---|---|
| image | {t["ImageN"]} | {t["ImageAccuracy"]} [{t["ImageAccuracyLow"]}, {t["ImageAccuracyHigh"]}] | {t["ImageTokensPerGalaxy"]} | {t["ImageCost"]} |
| tokens | {t["TokensN"]} | {t["TokensAccuracy"]} [{t["TokensAccuracyLow"]}, {t["TokensAccuracyHigh"]}] | {t["TokensTokensPerGalaxy"]} | {t["TokensCost"]} |

Not a result: `lr = 0.0001`, Qwen2.5-VL 3B, Figure 2, [3, 4].

```
accuracy 99.9 %
```
"""


def clean_latex(v):
    t = {name: value["text"] for name, value in v.items()}
    return rf"""\input{{macros}}
\section{{Results}}
The image arm reaches ${t["ImageAccuracy"]}\,\%$ [{t["ImageAccuracyLow"]}, {t["ImageAccuracyHigh"]}] % a comment: 99.9 %
accuracy ($n = {t["NTest"]}$), the tokens arm {t["TokensAccuracy"]}~\% (see Table~\ref{{tab:2}}).
The difference, {t["ImageVsTokensDiff"]} points ($p = {t["ImageVsTokensP"]}$), is not significant.
\begin{{table}}
\begin{{tabular}}{{lcc}}
run & accuracy & cost \\
image & {t["ImageAccuracy"]} & \${t["ImageCost"]} \\
tokens & {t["TokensAccuracy"]} & \${t["TokensCost"]} \\
\end{{tabular}}
\caption{{Accuracy of the two arms: {t["ImageAccuracy"]}\,\% and {t["TokensAccuracy"]}\,\%.}}
\label{{tab:2}}
\end{{table}}
"""


def test_a_draft_that_quotes_the_values_passes(reported, tmp_path, capsys):
    root, runs, _, v = reported
    for name, text in (("draft.md", clean_markdown(v)), ("draft.tex", clean_latex(v))):
        (tmp_path / name).write_text(text)
        for sources in ([root / "report"], [runs["image"], runs["tokens"]]):
            status, lines, counts = check(capsys, tmp_path / name, *sources)
            assert (status, lines) == (0, []), (name, lines)
            assert counts["checked"] == counts["matched"] > 10
            assert all(counts[k] == 0 for k in ("no_source", "mismatch", "interval", "significance", "figure"))
    # --verbose names the source of each number.
    _, lines, _ = check(capsys, tmp_path / "draft.md", root / "report", verbose=True)
    accuracy = next(line for line in lines if "is \\ImageAccuracy =" in line)
    assert accuracy.startswith(f"{tmp_path / 'draft.md'}:5: ok: ") and str(runs["image"] / "result.json") in accuracy


def planted(v):
    """One error per sentence, each made from the values, and the kind of finding it must raise."""
    t = {name: value["text"] for name, value in v.items()}
    assert v["ImageVsTokensP"]["value"] >= 0.05  # the claims below are planted on a comparison that is not significant
    assert t["ImageVsTokensP"] != "0.0123"
    return [
        (f"The image arm reaches {float(t['ImageAccuracy']) + 1:.1f} % accuracy.", "mismatch"),
        (
            f"The tokens arm reaches {t['TokensAccuracy']} % [{t['ImageAccuracyLow']}, {t['ImageAccuracyHigh']}].",
            "interval",
        ),
        ("The two arms differ (p = 0.0123).", "no source"),
        ("The image arm is significantly better than the tokens arm.", "significance"),
        ("The image arm beats the tokens arm (p < 0.05).", "significance"),
        ("We measured an accuracy of 12.34 % on the hold-out.", "no source"),
    ]


def test_each_planted_error_is_flagged_on_its_line(reported, tmp_path, capsys):
    root, runs, _, v = reported
    # The number one point off is none of the image run's values.
    off = float(v["ImageAccuracy"]["text"]) + 1
    image_values = [x for x in v.values() if x["percent"] and "image" in {s["run"] for s in x["sources"]}]
    assert all(abs(100 * x["value"] - off) > 0.05 for x in image_values)
    errors = planted(v)
    draft = tmp_path / "planted.md"
    draft.write_text("# Planted\n\n" + "\n\n".join(sentence for sentence, _ in errors) + "\n")
    status, lines, counts = check(capsys, draft, root / "report")
    assert status == 1
    for i, (_, kind) in enumerate(errors):  # sentence i is on line 3 + 2 i
        assert any(f.startswith(f"{draft}:{3 + 2 * i}: {kind}: ") for f in lines), (3 + 2 * i, kind, lines)
    assert {int(f.split(":")[1]) for f in lines} == {3 + 2 * i for i in range(len(errors))}  # nothing else
    assert counts["mismatch"] == 1 and counts["interval"] == 1 and counts["significance"] == 3
    assert counts["no_source"] == 2 and counts["figure"] == counts["stale"] == 0


def test_latex_macros_expand_and_an_unknown_one_of_ours_is_flagged(reported, tmp_path, capsys):
    root, _, _, v = reported
    draft = tmp_path / "macros.tex"
    draft.write_text(
        "\\input{macros}\n"
        "The image arm reaches \\ImageAccuracy\\,\\% [\\ImageAccuracyLow, \\ImageAccuracyHigh] (\\textbf{n = \\NTest}).\n"
        "The tokens arm reaches \\TokensAccuracy{}~\\% [\\ImageAccuracyLow, \\ImageAccuracyHigh].\n"
        "Its accuracy is \\ImagAccuracy\\,\\% in \\LaTeX.\n"
        "The image arm outperforms the tokens arm ($p = \\ImageVsTokensP$).\n"
    )
    status, lines, _ = check(capsys, draft, root / "report")
    assert status == 1
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{draft}:3", "interval"],
        [f"{draft}:4", "no source"],
        [f"{draft}:5", "significance"],
    ], lines
    assert "\\ImagAccuracy" in lines[1] and v["ImageVsTokensP"]["text"] in lines[2]
    # A Markdown placeholder that names no value is flagged the same way.
    (tmp_path / "unknown.md").write_text("The image arm reaches {{ImageAccuracy}} %.\n\nAnd {{ImageAcuracy}} %.\n")
    status, lines, _ = check(capsys, tmp_path / "unknown.md", root / "report")
    assert (status, lines) == (
        1,
        [f"{tmp_path / 'unknown.md'}:3: no source: {{{{ImageAcuracy}}}} is not a value of the given runs"],
    )


def save_figure(path, runs):
    """A PNG carrying the provenance of these runs, as the report's figures do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astroreason.evaluation.figure_provenance import figure_metadata

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path, metadata=figure_metadata([load_run(r) for r in runs], path.parent))
    plt.close(fig)


def test_a_figure_of_other_runs_or_of_changed_files_is_flagged(reported, tmp_path, capsys):
    root, runs, _, _ = reported
    other = tmp_path / "image-old"
    shutil.copytree(runs["image"], other)
    save_figure(tmp_path / "ours.png", [runs["image"], runs["tokens"]])
    save_figure(tmp_path / "theirs.png", [other])
    save_figure(tmp_path / "before.png", [other])
    (tmp_path / "plain.png").write_bytes((tmp_path / "ours.png").read_bytes()[:8])  # no provenance, not even a PNG
    draft = tmp_path / "figures.md"
    draft.write_text("![ours](ours.png)\n\n![theirs](theirs.png)\n\n![plain](plain.png)\n\n![gone](gone.png)\n")
    status, lines, counts = check(capsys, draft, runs["image"], runs["tokens"])
    assert status == 1 and counts["figure"] == 3
    assert [line.split(": ")[0] for line in lines] == [f"{draft}:3", f"{draft}:5", f"{draft}:7"]
    assert "image-old" in lines[0] and "no provenance" in lines[1] and "no such file" in lines[2]
    # A figure of a given run drawn before its predictions changed: the sha256 differs from the file now.
    result = other / "result.json"
    result.write_text(json.dumps(json.loads(result.read_text())))  # the same result, other bytes
    tex = tmp_path / "figures.tex"
    tex.write_text("\\begin{figure}\n\\includegraphics[width=\\linewidth]{before}\n\\end{figure}\n")
    status, lines, _ = check(capsys, tex, other)
    assert status == 1 and lines[0].startswith(f"{tex}:2: figure: before: drawn from ")
    assert "result.json" in lines[0] and "changed" in lines[0]


def macro_drafts():
    """The same paragraph in Markdown placeholders and in LaTeX macros: no number typed by hand."""
    text = (
        "The image arm reaches {{ImageAccuracy}} % [{{ImageAccuracyLow}}, {{ImageAccuracyHigh}}] on n = {{NTest}},\n"
        "the tokens arm {{TokensAccuracy}} % [{{TokensAccuracyLow}}, {{TokensAccuracyHigh}}];\n"
        "the difference is {{ImageVsTokensDiff}} points (p = {{ImageVsTokensP}}), not significant, at\n"
        "{{ImageTokensPerGalaxy}} tokens per galaxy and ${{ImageCost}}.\n"
    )
    latex = re.sub(r"\{\{(\w+)\}\}", r"\\\1{}", text).replace("%", "\\%").replace("$", "\\$")
    return {"macros.md": "# Results\n\n" + text, "macros.tex": "\\input{macros}\n\\section{Results}\n" + latex}


def test_a_macro_draft_survives_a_redo_and_a_typed_one_does_not(reported, prepared_dir, tmp_path, capsys):
    root, runs, codec, _ = reported
    redo = {name: tmp_path / name for name in runs}
    for name in runs:
        shutil.copytree(runs[name], redo[name])
    write_report([redo["image"], redo["tokens"]], tmp_path / "report")
    old = values_of(tmp_path / "report")
    shutil.copytree(tmp_path / "report", tmp_path / "report-old")
    for name, text in macro_drafts().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "typed.md").write_text(clean_markdown(old))
    for draft in ("macros.md", "macros.tex", "typed.md"):
        assert check(capsys, tmp_path / draft, tmp_path / "report")[:2] == (0, [])

    # The runs redone with other answers, the values regenerated.
    for name, seed in (("image", 9), ("tokens", 7)):
        shutil.rmtree(redo[name])
        evaluate(prepared_dir, codec, redo[name], name, seed)
    write_report([redo["image"], redo["tokens"]], tmp_path / "report")
    new = values_of(tmp_path / "report")
    assert new["ImageAccuracy"]["text"] != old["ImageAccuracy"]["text"]
    for draft in ("macros.md", "macros.tex"):
        assert check(capsys, tmp_path / draft, tmp_path / "report")[:2] == (0, [])
        assert check(capsys, tmp_path / draft, redo["image"], redo["tokens"])[:2] == (0, [])
    status, lines, counts = check(capsys, tmp_path / "typed.md", tmp_path / "report")
    assert status == 1 and counts["mismatch"] + counts["no_source"] + counts["interval"] >= 1
    assert any(line.startswith(f"{tmp_path / 'typed.md'}:5: ") for line in lines), lines
    # Against the report written before the redo, the old numbers are stale: their files changed since.
    status, lines, counts = check(capsys, tmp_path / "typed.md", tmp_path / "report-old")
    assert status == 1 and counts["stale"] >= 1
    assert any(": stale: " in line and "changed since" in line for line in lines), lines
    status, lines, counts = check(capsys, tmp_path / "macros.tex", tmp_path / "report-old")
    assert status == 1 and counts["stale"] == counts["checked"] - counts["matched"] > 0
    assert lines[0].startswith(f"{tmp_path / 'macros.tex'}:3: stale: \\ImageAccuracy: ")


def test_bad_input_is_one_line(reported, tmp_path, capsys):
    root, runs, _, _ = reported
    (tmp_path / "draft.md").write_text("Nothing.\n")
    (tmp_path / "draft.txt").write_text("Nothing.\n")
    for argv, named in (
        ([tmp_path / "missing.md", root / "report"], "missing.md"),
        ([tmp_path / "draft.txt", root / "report"], "draft.txt"),
        ([tmp_path / "draft.md", tmp_path], str(tmp_path)),
        ([tmp_path / "draft.md"], "claims"),
    ):
        assert main(["claims", *map(str, argv)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("astroreason: error: ") and named in err[0], err
        assert "CLAIMS" not in captured.out


def test_a_report_written_with_relative_paths_is_checked_from_anywhere(
    reported, prepared_dir, tmp_path, monkeypatch, capsys
):
    """As the demo writes it (`runs/demo/eval/...` from the project's root): the report, its runs and a figure copied
    beside the draft are moved elsewhere, and the draft is checked from another directory: its numbers match, its
    figure is recognised by its runs' files, and nothing is stale or gone."""
    project = tmp_path / "project"
    root, runs, codec, _ = reported
    for name, run in (("image", "image"), ("tokens", "tokens"), ("image_sft", "tokens")):
        shutil.copytree(runs[run], project / "runs" / name)
    evaluate(prepared_dir, codec, project / "runs" / "image_start", "image", seed=7)
    monkeypatch.chdir(project)
    # The image arm's stages, named as the demo names them: the SFT stage's values read none of run `image`'s files.
    stages = {"image": [("start", "runs/image_start"), ("SFT", "runs/image_sft"), ("GRPO", "runs/image")]}
    write_report(["runs/image", "runs/tokens"], "runs/report", stages=stages, tex=True)
    assert str(project) not in (project / "runs" / "report" / "values.json").read_text()
    assert str(project) not in (project / "runs" / "report" / "macros.tex").read_text()
    moved = shutil.move(project, tmp_path / "elsewhere")
    v = values_of(moved / "runs" / "report")
    draft = moved / "paper" / "draft.md"
    draft.parent.mkdir()
    shutil.copy(moved / "runs" / "report" / "accuracy_vs_tokens.png", draft.parent / "figure.png")
    t = {name: value["text"] for name, value in v.items()}
    stage = f"SFT adds {t['ImageSftGain']} points to the image arm (p = {t['ImageSftGainP']}).\n"
    draft.write_text(clean_markdown(v) + "\n" + stage + "\n![accuracy against tokens](figure.png)\n")
    monkeypatch.chdir(tmp_path)
    status, lines, counts = check(capsys, draft, moved / "runs" / "report")
    assert status == 0 and lines == [] and counts["stale"] == counts["figure"] == 0, lines
    # The same figure once a run's results changed: flagged on its line.
    result = moved / "runs" / "image" / "result.json"
    result.write_text(result.read_text().replace('"status"', ' "status"', 1))
    status, lines, _ = check(capsys, draft, moved / "runs" / "image", moved / "runs" / "tokens")
    figure_line = len(draft.read_text().splitlines())
    assert status == 1 and any(line.startswith(f"{draft}:{figure_line}: figure: ") for line in lines), lines
