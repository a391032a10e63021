"""No module outside `astroreason/arms/` branches on a modality's name: the arm is the one home of its modality.

Every module of `astroreason/` outside `astroreason/arms/` is parsed with `ast`, and two things are counted:

(a) a comparison (`==`, `!=`, `in`, `not in`) one of whose operands names a registered modality (a string literal
    that is a key of `astroreason.arms.ARMS`, or a tuple, list or set literal holding one) while another operand
    mentions a modality: somewhere inside it a name, an attribute, a called function or a string literal (a
    subscript's key, `getattr`'s name) that contains `modality` (`args.modality == "image"`, `_modality(arm) ==
    "tokens"`, `(getattr(self, "modality"), rendering) != ("tokens", "special")`);
(b) a dict literal with at least two keys, every one of them a modality's name (a table over the modalities, such as
    a template or a tool per modality).

Both halves of (a) are needed because "image" is also a dataset column and a content block's type
(`b["type"] == "image"`, `"image" in block`): those compare it with no modality. (b) asks for every key to be a
modality's name for the same reason (`{"type": "image", "image": crop}`, `{"image": ..., "label": ...}`). Looking a
modality up in the registry (`ARMS[config.modality]`, `modality in ARMS`) is no branch: it names no modality.
A branch on another variable that holds a modality's name, under a name without `modality` in it, is not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

from astroreason.arms import ARMS

PACKAGE = Path(__file__).resolve().parents[1] / "astroreason"
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _names_modality(node: ast.AST, names: set[str]) -> bool:
    """A string literal naming a modality, or a tuple/list/set literal holding one."""
    if isinstance(node, ast.Constant):
        return node.value in names
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(isinstance(e, ast.Constant) and e.value in names for e in node.elts)
    return False


def _mentions_modality(node: ast.AST) -> bool:
    """Whether a name, attribute, called function or string literal inside `node` contains `modality`."""
    for sub in ast.walk(node):
        text = (
            sub.id
            if isinstance(sub, ast.Name)
            else sub.attr
            if isinstance(sub, ast.Attribute)
            else sub.value
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
            else ""
        )
        if "modality" in text:
            return True
    return False


def modality_branches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) of every branch on a modality's name in `source` (rules (a) and (b) of the module's note)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, COMPARISONS) for op in node.ops):
            operands = [node.left, *node.comparators]
            named = [o for o in operands if _names_modality(o, names)]
            if named and any(_mentions_modality(o) for o in operands if o not in named):
                found.append((node.lineno, "comparison with a modality's name"))
        elif isinstance(node, ast.Dict) and len(node.keys) >= 2:
            if all(isinstance(k, ast.Constant) and k.value in names for k in node.keys):
                found.append((node.lineno, "dict keyed by modality names"))
    return found


def test_the_counter_sees_a_planted_branch():
    names = set(ARMS)
    planted = """
if args.modality == "image":
    pass
if "image" in block and block["type"] == "image":  # a content block, not a modality
    pass
row = {"image": crop, "label": 3}
ok = config.modality in ARMS
"""
    assert modality_branches(planted, names) == [(2, "comparison with a modality's name")]
    assert len(modality_branches('T = {"image": "a", "tokens": "b"}', names)) == 1
    assert len(modality_branches('x = (getattr(s, "modality"), r) != ("tokens", "special")', names)) == 1
    assert len(modality_branches('x = _modality(arm) == "tokens"', names)) == 1


def test_no_module_outside_the_arms_branches_on_a_modality():
    names = set(ARMS)
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "arms") in path.parents:
            continue
        for line, what in modality_branches(path.read_text(), names):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert len(offenders) == 0, "branches on a modality's name outside astroreason/arms/:\n" + "\n".join(offenders)
