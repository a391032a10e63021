"""`data inspect`'s report of a spectra dataset (`reader.inspect_spectra`) as rich tables, in the style of the
image report (`..inspect.print_report`)."""

from __future__ import annotations

from ..inspect import print_classes_and_order


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

    print_classes_and_order(report, console)

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
