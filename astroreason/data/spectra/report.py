"""`data inspect`'s report of a spectra dataset (`reader.inspect_spectra`) as rich tables, in the style of the
image report (`..inspect.print_report`)."""

from __future__ import annotations


def print_spectra_report(report: dict, console=None) -> None:
    """The report as rich tables: classes, row order, duplicate groups with their conflicts, unusable flux."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    lo, hi = report["wavelength_range_aa"] or (float("nan"), float("nan"))
    console.print(
        f"[bold]{report['path']}[/bold] (spectra): {report['n_rows']} rows, {report['n_pixels']} pixels each, "
        f"{lo:.1f}-{hi:.1f} Angstrom; labels from `{report['label_column']}`"
    )

    n = report["n_rows"]
    classes = Table(title="Classes")
    for col, justify in (("label", "right"), ("name", "left"), ("count", "right"), ("share", "right")):
        classes.add_column(col, justify=justify)
    for c in report["classes"]:
        classes.add_row(str(c["label"]), c["name"], str(c["count"]), f"{100 * c['count'] / n:.1f} %")
    console.print(classes)

    order = report["ordering"]
    verdict = (
        "[red]sorted by class[/red]"
        if order["sorted_by_class"]
        else "[red]grouped by class[/red]"
        if order["grouped_by_class"]
        else "[red]clustered by class[/red] (neighbours mostly share a label)"
        if order["clustered_by_class"]
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

    dupes = report["duplicates"]
    if not dupes["positions_checked"]:
        console.print("No ra/dec columns: duplicates checked by flux content only.")
    table = Table(title=f"Duplicate groups (near: within {dupes['radius_arcsec']} arcsec)")
    for col in ("kind", "object_id", "labels", "sep (arcsec)", "conflict"):
        table.add_column(col)
    for kind in ("exact_position", "near_position", "identical_flux"):
        for g in dupes[kind]:
            sep = g.get("max_sep_arcsec")
            table.add_row(
                kind.replace("_", " "),
                ", ".join(g["ids"]),
                ", ".join(g["label_names"]),
                "" if sep is None else f"{sep:.2f}",
                "[red]yes (dropped by prepare)[/red]" if g["conflict"] else "no",
            )
    console.print(table)
    c = dupes["conflicts"]
    console.print(
        f"{len(dupes['exact_position'])} exact-position groups ({c['exact_position']} with conflicting labels), "
        f"{len(dupes['near_position'])} near groups ({c['near_position']} conflicting), "
        f"{len(dupes['identical_flux'])} identical-flux groups ({c['identical_flux']} conflicting); "
        f"{len(dupes['combined'])} groups in all, {c['combined']} of them conflicting."
    )
    excluded = report["flux_excluded"]
    if excluded:
        console.print(f"{len(excluded)} row(s) left out for unusable flux (prepare excludes them from every split):")
        for e in excluded:
            console.print(f"  object_id {e['id']} (row {e['row']}): {e['reason']}")
