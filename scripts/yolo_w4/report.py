"""Write the deltas table as CSV, Markdown, HTML and an RST fragment for `snakemake --report`."""

import csv
import html

from yolo_w4.deltas import COMPACT_COLUMNS, summary_table
from yolo_w4.files import atomic_path

WARNING = "DEMO MODEL WITH RANDOM WEIGHTS"


def write_csv(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[dict], notes: list[str], labelled: bool = True) -> str:
    header, body = summary_table(rows, labelled=labelled)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def html_page(rows: list[dict], notes: list[str], title: str, labelled: bool = True) -> str:
    header, body = summary_table(rows, labelled=labelled)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    items = "".join(f"<li{' class=warn' if n.startswith(WARNING) else ''}>{html.escape(n)}</li>" for n in notes)
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}"
        "td:first-child,th:first-child{text-align:left}.warn{color:#a00;font-weight:bold}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table><tr>{head}</tr>{cells}</table><ul>{items}</ul></body></html>\n"
    )


def rst_fragment(rows: list[dict], notes: list[str], labelled: bool = True) -> str:
    """A compact list-table plus notes; rules/report/workflow.rst includes it on the first page.

    A warning note (random weights) comes first, in bold, above the table.
    """
    header, body = summary_table(rows, COMPACT_COLUMNS, labelled)
    warnings = [note for note in notes if note.startswith(WARNING)]
    lines = [f"**{note}**\n" for note in warnings]
    lines += [
        ".. list-table:: Deltas against the FP baseline (size and latency: ratio to FP)",
        "   :header-rows: 1",
        "",
    ]
    for cells in [header, *body]:
        lines.append("   * - " + cells[0].replace("*", r"\*"))
        lines += [f"     - {c}" for c in cells[1:]]
    lines.append("")
    lines += [f"- {note}" for note in notes if note not in warnings]
    return "\n".join(lines) + "\n"


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
