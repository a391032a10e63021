"""What a Galaxy10-schema source holds, and what would make a naive split of it leak.

`inspect_file` reads any source `sources.open_source` opens (an HDF5 file, a Hub-layout directory) and reports the schema, class counts, whether rows are ordered by class (the real file is: a first-N
slice is single-class and a row index is a label), NaN counts, and duplicate groups: rows at the same sky position
(exact), rows within a radius of each other (near), and rows with byte-identical images, each with its label
conflicts; for a dataset with its own train/test files, the duplicate groups that span them (its split leaks);
and the rows left out for non-finite flux, with the reason. `splits.prepare` uses the same grouping (`duplicate_groups`) to keep each group inside one split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .reader import CHUNK_ROWS, COLUMN_KEYS
from .sources import open_source

DEFAULT_RADIUS_ARCSEC = 5.0
# Two rows closer than this are "the same position" (the real file's 59 exact pairs have identical coordinates).
EXACT_ARCSEC = 1e-3
MAX_RUNS_LISTED = 50  # a shuffled file has thousands of class runs: list them only when there are few


# --- grouping (shared with splits.prepare) -----------------------------------------------------------------------


def position_pairs(ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs (i < j) within `radius_arcsec` on the sky, and their separations in arcsec.

    Rows without a finite position take part in no pair.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    rows = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    empty = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    if len(rows) < 2 or radius_arcsec <= 0:
        return empty
    coords = SkyCoord(ra=ra[rows] * u.deg, dec=dec[rows] * u.deg)
    i, j, sep, _ = search_around_sky(coords, coords, radius_arcsec * u.arcsec)
    keep = i < j  # each pair once, no self-matches
    return rows[i[keep]], rows[j[keep]], sep.arcsec[keep]


def hash_pairs(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (first row of a hash, another row with the same hash): enough to join identical images."""
    first: dict[str, int] = {}
    i, j = [], []
    for row, h in enumerate(hashes):
        if h in first:
            i.append(first[h])
            j.append(row)
        else:
            first[h] = row
    return np.asarray(i, np.int64), np.asarray(j, np.int64)


def groups_from_pairs(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components (union-find over the pairs) with two or more rows, each sorted, ordered by first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(component[order]) != 0])
    groups = [g for g in np.split(order, starts[1:]) if len(g) > 1]
    return sorted(groups, key=lambda g: g[0])


@dataclass
class DuplicateGroups:
    """Duplicate groups of one file: by exact position, by near position, by identical image, and all combined."""

    exact: list[np.ndarray]
    near: list[np.ndarray]
    image: list[np.ndarray]
    combined: list[np.ndarray]  # position within the radius OR identical image: what a split must keep together
    separations: dict[tuple[int, int], float]  # arcsec, for each position pair


def duplicate_groups(ra, dec, hashes: list[str], radius_arcsec: float) -> DuplicateGroups:
    """Group rows that show the same galaxy. `ra`/`dec` may be None (the SDSS release has no positions)."""
    n = len(hashes)
    if ra is not None and dec is not None:
        pi, pj, sep = position_pairs(ra, dec, radius_arcsec)
    else:
        pi, pj, sep = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    exact = sep < EXACT_ARCSEC
    exact_groups = groups_from_pairs(n, pi[exact], pj[exact])
    exact_sets = {tuple(g) for g in exact_groups}
    near_groups = [g for g in groups_from_pairs(n, pi, pj) if tuple(g) not in exact_sets]
    hi, hj = hash_pairs(hashes)
    combined = groups_from_pairs(n, np.r_[pi, hi], np.r_[pj, hj])
    separations = {(int(a), int(b)): float(s) for a, b, s in zip(pi, pj, sep)}
    return DuplicateGroups(exact_groups, near_groups, groups_from_pairs(n, hi, hj), combined, separations)


def describe_group(rows: np.ndarray, labels: np.ndarray, classes, separations=None, *, ids=None, splits=None) -> dict:
    """A group as JSON: its rows (and source ids, and the source's own split of each when it has splits), their
    labels, whether the labels conflict, and its widest separation."""
    rows = [int(r) for r in rows]
    group_labels = [int(labels[r]) for r in rows]
    out = {
        "rows": rows,
        "ids": [int(ids[r]) for r in rows] if ids is not None else rows,
        "labels": group_labels,
        "label_names": [classes[c] for c in group_labels],
        "conflict": len(set(group_labels)) > 1,
    }
    if splits is not None:
        out["source_splits"] = [str(splits[r]) for r in rows]
    if separations is not None:
        member = set(rows)
        seps = [s for (a, b), s in separations.items() if a in member and b in member]
        out["max_sep_arcsec"] = round(max(seps), 4) if seps else None
    return out


# --- ordering and counts -----------------------------------------------------------------------------------------


def class_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, start, stop) for each maximal run of equal labels in row order."""
    if len(labels) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, np.diff(labels) != 0])
    stops = np.r_[starts[1:], len(labels)]
    return [(int(labels[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def ordering(labels: np.ndarray, classes, splits=None) -> dict:
    """Is the file ordered by class? Sorted (labels never decrease), grouped (one run per class) or clustered
    (neighbours share a label far more often than in a shuffled file, e.g. a sorted file with a few labels changed),
    each judged within each of the source's own splits when it has them (a train file and a test file, each sorted);
    and how often neighbours share a label compared with a shuffled file."""
    parts = [labels] if splits is None else [labels[splits == name] for name in dict.fromkeys(splits.tolist())]
    runs = class_runs(labels)
    share = np.bincount(labels, minlength=len(classes)) / len(labels)
    same = [p[1:] == p[:-1] for p in parts if len(p) > 1]
    adjacent = float(np.mean(np.concatenate(same))) if same else None
    shuffled = float(np.sum(share**2))
    return {
        "sorted_by_class": all(bool(np.all(np.diff(p) >= 0)) for p in parts),
        "grouped_by_class": all(len(class_runs(p)) == len(np.unique(p)) for p in parts),
        "clustered_by_class": adjacent is not None and adjacent > max(0.5, 3 * shuffled),
        "n_runs": len(runs),
        "runs": [{"label": c, "name": classes[c], "start": a, "stop": b} for c, a, b in runs]
        if len(runs) <= MAX_RUNS_LISTED
        else None,
        "adjacent_same_label": adjacent,
        "adjacent_same_label_if_shuffled": shuffled,
    }


def split_leaks(groups, splits) -> list[np.ndarray]:
    """The duplicate groups whose rows lie in more than one of the source's own splits (None: it has none)."""
    if splits is None:
        return []
    return [g for g in groups if len({str(splits[r]) for r in g}) > 1]


def nan_counts(g10) -> dict[str, int]:
    """NaN values per one-value-per-row field, and rows of `flux` with any non-finite value."""
    counts = {}
    for key in COLUMN_KEYS:
        col = g10.column(key)
        if col is not None:
            counts[key] = int(np.isnan(col).sum())
    if g10.has_flux:
        key = "image_bands" if "image_bands" in g10.keys else "flux"
        counts[f"{key} (rows)"] = int(g10.n_rows - g10.finite_flux_rows().sum())
    return counts


# --- the report ----------------------------------------------------------------------------------------------------


def inspect_file(path, *, radius_arcsec: float = DEFAULT_RADIUS_ARCSEC, sha256: str | None = None) -> dict:
    """Everything `astroreason data inspect` shows, as a JSON-ready dict."""
    if not radius_arcsec >= 0:
        raise UserError(f"--radius: must be >= 0 arcsec, got {radius_arcsec}")
    with open_source(path, sha256=sha256) as g10:
        labels, classes, ids, splits = g10.labels, g10.classes, g10.ids, g10.source_splits
        counts = np.bincount(labels, minlength=len(classes))
        hashes = g10.image_hashes(CHUNK_ROWS)
        groups = duplicate_groups(g10.column("ra"), g10.column("dec"), hashes, radius_arcsec)

        def describe(gs, seps=None):
            return [describe_group(g, labels, classes, seps, ids=ids, splits=splits) for g in gs]

        dupes = {
            "radius_arcsec": radius_arcsec,
            "exact_arcsec": EXACT_ARCSEC,
            "positions_checked": g10.has_positions,
            "exact_position": describe(groups.exact, groups.separations),
            "near_position": describe(groups.near, groups.separations),
            "identical_image": describe(groups.image),
            "combined": describe(groups.combined),
            "source_split_leaks": describe(split_leaks(groups.combined, splits)),
        }
        dupes["conflicts"] = {
            k: sum(g["conflict"] for g in dupes[k])
            for k in ("exact_position", "near_position", "identical_image", "combined")
        }
        reasons = g10.flux_reasons()
        return {
            "path": str(path),
            "format": g10.format,
            "size_bytes": g10.size_bytes,
            "sha256": sha256.lower() if sha256 else None,
            "release": g10.release.name,
            "n_rows": g10.n_rows,
            "image_size": [g10.height, g10.width],
            "id_name": g10.id_name,
            "source_splits": g10.split_counts() if splits is not None else None,
            "schema": g10.schema(),
            "classes": [{"label": c, "name": classes[c], "count": int(counts[c])} for c in range(len(classes))],
            "ordering": ordering(labels, classes, splits),
            "nan_counts": nan_counts(g10),
            "flux_excluded": [{"row": r, "id": int(ids[r]), "reason": why} for r, why in sorted(reasons.items())]
            if g10.flux_required
            else [],
            "duplicates": dupes,
        }


def print_classes_and_order(report: dict, console, *, within: str = "") -> None:
    """The report's class counts and row order as rich tables (images and spectra alike); `within` qualifies an
    order found inside each of the source's own splits."""
    from rich.table import Table

    n = report["n_rows"]
    classes = Table(title="Classes")
    for col, justify in (("label", "right"), ("name", "left"), ("count", "right"), ("share", "right")):
        classes.add_column(col, justify=justify)
    for c in report["classes"]:
        classes.add_row(str(c["label"]), c["name"], str(c["count"]), f"{100 * c['count'] / n:.1f} %")
    console.print(classes)

    order = report["ordering"]
    verdict = (
        f"[red]sorted by class{within}[/red]"
        if order["sorted_by_class"]
        else f"[red]grouped by class{within}[/red]"
        if order["grouped_by_class"]
        else f"[red]clustered by class{within}[/red] (neighbours mostly share a label)"
        if order.get("clustered_by_class")
        else "not ordered by class"
    )
    same, shuffled = order["adjacent_same_label"], order["adjacent_same_label_if_shuffled"]
    console.print(
        f"Row order: {verdict}; {order['n_runs']} class runs; neighbours share a label "
        f"{100 * (same or 0):.1f} % of the time ({100 * shuffled:.1f} % if shuffled)"
    )
    if order["runs"] and (order["sorted_by_class"] or order["grouped_by_class"]):
        runs = Table(title="Class runs (row boundaries)")
        for col in ("label", "name", "rows"):
            runs.add_column(col)
        for r in order["runs"]:
            runs.add_row(str(r["label"]), r["name"], f"{r['start']}-{r['stop'] - 1}")
        console.print(runs)


def print_report(report: dict, console=None) -> None:
    """The report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(
        f"[bold]{report['path']}[/bold] ({report['format']}): Galaxy10 {report['release']}, {report['n_rows']} rows, "
        f"{report['image_size'][0]} x {report['image_size'][1]} px, {report['size_bytes']:,} bytes"
        + (" (SHA-256 verified)" if report["sha256"] else "")
    )

    if report["source_splits"]:
        console.print(
            "Own splits: "
            + ", ".join(f"{k} {v}" for k, v in report["source_splits"].items())
            + f"; ids: {report['id_name']}"
        )

    schema = Table(title="Schema")
    for col in ("key", "shape", "dtype", "NaN"):
        schema.add_column(col)
    nans = report["nan_counts"]
    for key, info in report["schema"].items():
        nan = nans.get(key, nans.get(f"{key} (rows)", ""))
        schema.add_row(key, str(tuple(info["shape"])) if info["shape"] else "-", info["dtype"], str(nan))
    console.print(schema)

    print_classes_and_order(report, console, within=" within each of its splits" if report["source_splits"] else "")

    dupes = report["duplicates"]
    if not dupes["positions_checked"]:
        console.print("No sky positions in this file: duplicates checked by image content only.")
    table = Table(title=f"Duplicate groups (near: within {dupes['radius_arcsec']} arcsec)")
    for col in ("kind", "rows", "labels", "sep (arcsec)", "conflict"):
        table.add_column(col)
    for kind in ("exact_position", "near_position", "identical_image"):
        for g in dupes[kind]:
            sep = g.get("max_sep_arcsec")
            table.add_row(
                kind.replace("_", " "),
                ", ".join(map(str, g["rows"])),
                ", ".join(g["label_names"]),
                "" if sep is None else f"{sep:.2f}",
                "[red]yes[/red]" if g["conflict"] else "no",
            )
    console.print(table)
    c = dupes["conflicts"]
    console.print(
        f"{len(dupes['exact_position'])} exact-position groups ({c['exact_position']} with conflicting labels), "
        f"{len(dupes['near_position'])} near groups ({c['near_position']} conflicting), "
        f"{len(dupes['identical_image'])} identical-image groups ({c['identical_image']} conflicting); "
        f"{len(dupes['combined'])} groups in all, {c['combined']} of them conflicting."
    )
    leaks = dupes["source_split_leaks"]
    if leaks:
        console.print(
            f"[red]The dataset's own split leaks[/red]: {len(leaks)} duplicate group(s) span its splits "
            "(prepare re-splits by content and keeps each group in one split):"
        )
        for g in leaks:
            console.print(
                f"  ids {', '.join(map(str, g['ids']))} in {', '.join(g['source_splits'])}, labels "
                f"{', '.join(g['label_names'])}"
                + (" [red](conflicting: dropped by prepare)[/red]" if g["conflict"] else "")
            )
    excluded = report["flux_excluded"]
    if excluded:
        console.print(f"{len(excluded)} row(s) left out for unusable flux (prepare excludes them from every split):")
        for e in excluded:
            console.print(f"  {report['id_name']} {e['id']} (row {e['row']}): {e['reason']}")
