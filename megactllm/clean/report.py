"""The cleaning report: report.json (all numbers), report.md and report.html (readable, with
plots), report_*.png."""
from __future__ import annotations

import logging

import html
import json
import re
from pathlib import Path

from megactllm.common.atomic import write_json_atomic, write_text_atomic
from megactllm.common.optional import MissingDependencyError, require

from .stats import merge, new_stats
from .workdir import Workdir

log = logging.getLogger(__name__)


def _sum_stats(wd: Workdir, stage: str, n: int, max_examples: int) -> dict:
    total = new_stats()
    for unit in range(n):
        part = json.loads(wd.path(stage, unit, ".stats.json").read_text(encoding="utf-8"))
        merge(total, part, max_examples)
    return total


def build_summary(wd: Workdir) -> dict:
    n = len(wd.shards())
    k = wd.cfg.run.examples_per_rule
    filt = _sum_stats(wd, "filter", n, k)
    dedup = _sum_stats(wd, "dedup", n, k)
    cluster = json.loads(wd.path("cluster", 0, ".stats.json").read_text(encoding="utf-8"))
    bad_docs = sum(e["records"] for e in filt["bad_input"].values())
    filtered_docs = sum(e["docs"] for e in filt["rules"].values())
    dup_docs = sum(e["docs"] for e in dedup["rules"].values())
    accounted = dedup["kept_docs"] + filtered_docs + dup_docs + bad_docs
    rules = {**filt["rules"], **dedup["rules"]}
    return {
        "input": {"shards": n, "documents": filt["input_docs"], "bytes": filt["input_bytes"],
                  "characters": filt["input_chars"]},
        "output": {"documents": dedup["kept_docs"], "characters": dedup["kept_chars"],
                   "files": [str(wd.path("dedup", u, ".jsonl")) for u in range(n)]},
        "bad_input": filt["bad_input"],
        "removed_by_rule": dict(sorted(rules.items(), key=lambda kv: -kv[1]["docs"])),
        "removed_lines_by_rule": dict(sorted(filt["line_rules"].items(), key=lambda kv: -kv[1]["lines"])),
        "after_filter": {"documents": filt["kept_docs"], "characters": filt["kept_chars"]},
        "dedup": cluster,
        # Every input record is kept, removed by a named rule, or rejected as bad input.
        "accounting": {"input_records": filt["input_docs"], "accounted_records": accounted,
                       "balanced": accounted == filt["input_docs"]},
        "recipe": wd.cfg.to_dict(),
    }


def _plots(summary: dict, out: Path) -> dict[str, str]:
    matplotlib = require("matplotlib", "the cleaning report's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    rules = summary["removed_by_rule"]
    if rules:
        names = list(rules)[::-1]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
        bars = ax.barh(names, [rules[r]["docs"] for r in names])
        ax.bar_label(bars, padding=2, fontsize=8)
        ax.set_xscale("log")  # small rules stay visible beside the large ones
        ax.set_xlabel("documents removed (log scale)")
        fig.tight_layout()
        fig.savefig(out / "report_rules.png", dpi=90)
        plt.close(fig)
        files["rules"] = "report_rules.png"
    hist = summary["dedup"].get("cluster_size_histogram", {})
    if hist:
        sizes = sorted(int(s) for s in hist)
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([str(s) for s in sizes], [hist[str(s)] if str(s) in hist else hist[s] for s in sizes])
        ax.set_xlabel("cluster size (documents)")
        ax.set_ylabel("clusters")
        ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(out / "report_clusters.png", dpi=90)
        plt.close(fig)
        files["clusters"] = "report_clusters.png"
    return files


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(summary: dict, plots: dict[str, str]) -> str:
    inp, outp, acc = summary["input"], summary["output"], summary["accounting"]
    docs, chars = inp["documents"], inp["characters"]
    bad = sum(e["records"] for e in summary["bad_input"].values())
    d = summary["dedup"]
    lines = ["# Corpus cleaning report", "",
             f"Input: {inp['shards']} shard(s), {inp['bytes'] / 1e6:,.1f} MB. Every record is kept, removed by a "
             f"named rule or rejected as bad input: {'yes' if acc['balanced'] else 'NO'} "
             f"({acc['accounted_records']:,} of {acc['input_records']:,} accounted for).", "", "## Funnel", ""]
    lines += _table(["step", "documents", "% of input"], [
        ["input records", docs, "100%"],
        ["readable records", docs - bad, _pct(docs - bad, docs)],
        ["after filters", summary["after_filter"]["documents"], _pct(summary["after_filter"]["documents"], docs)],
        ["after exact dedup", summary["after_filter"]["documents"] - d.get("exact_duplicates", 0),
         _pct(summary["after_filter"]["documents"] - d.get("exact_duplicates", 0), docs)],
        ["output (after near dedup)", outp["documents"], _pct(outp["documents"], docs)],
    ])
    lines += ["", f"Output characters: {outp['characters']:,} of {chars:,} ({_pct(outp['characters'], chars)}).",
              "", "## Documents removed, by rule", "",
              "Each document is tagged with the first rule it failed (cheap rules run first).", ""]
    lines += _table(["rule", "documents", "% docs", "characters", "% chars"],
                    [[r, e["docs"], _pct(e["docs"], docs), e["chars"], _pct(e["chars"], chars)]
                     for r, e in summary["removed_by_rule"].items()])
    if "rules" in plots:
        lines += ["", f"![documents removed by rule]({plots['rules']})"]
    lines += ["", "## Lines removed by line rules", ""]
    lines += _table(["rule", "lines", "characters"],
                    [[r, e["lines"], e["chars"]] for r, e in summary["removed_lines_by_rule"].items()])
    lines += ["", "## Bad input", ""]
    if summary["bad_input"]:
        rows = []
        for reason, e in summary["bad_input"].items():
            ex = e["examples"][0] if e["examples"] else {}
            rows.append([reason, e["records"], e["bytes"], f"`{ex.get('where', '')}`: {ex.get('detail', '')}"])
        lines += _table(["reason", "records", "bytes", "first example"], rows)
    else:
        lines.append("none")
    lines += ["", "## Deduplication", "",
              f"Exact duplicates removed: {d.get('exact_duplicates', 0):,}; near duplicates removed: "
              f"{d.get('near_duplicates', 0):,}. Clusters of two or more documents (one is kept):", ""]
    hist = sorted(d.get("cluster_size_histogram", {}).items(), key=lambda kv: int(kv[0]))
    lines += _table(["cluster size", "clusters"], [[str(size), count] for size, count in hist])
    if "clusters" in plots:
        lines += ["", f"![cluster sizes]({plots['clusters']})"]
    lines += ["", "## Examples", ""]
    for rule, e in summary["removed_by_rule"].items():
        lines.append(f"### {rule}")
        for ex in e.get("examples", []):
            text = str(ex.get("text", "")).replace("\n", " ⏎ ")
            extra = f" value={ex['value']}" if "value" in ex else ""
            extra += f" duplicate of `{ex['duplicate_of']}`" if "duplicate_of" in ex else ""
            lines.append(f"- `{ex.get('where') or ex.get('id')}`{extra}: {text}")
        lines.append("")
    return "\n".join(lines) + "\n"


def markdown_to_html(md: str) -> str:
    """HTML for the Markdown subset render_markdown writes: headings, tables, images, lists."""
    inline = [(re.compile(r"!\[([^\]]*)\]\(([^)]+)\)"), r'<img alt="\1" src="\2">'),
              (re.compile(r"`([^`]*)`"), r"<code>\1</code>")]

    def fmt(text: str) -> str:
        text = html.escape(text, quote=False)
        for pattern, repl in inline:
            text = pattern.sub(repl, text)
        return text

    out, in_list, rows = [], False, []
    for line in md.splitlines() + [""]:
        if line.startswith("| "):
            rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            cells = [rows[0]] + rows[2:]  # rows[1] is the alignment row
            body = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{fmt(c)}</{'th' if i == 0 else 'td'}>"
                                            for c in r) + "</tr>" for i, r in enumerate(cells))
            out.append(f"<table>{body}</table>")
            rows = []
        if line.startswith("- "):
            out.append(("" if in_list else "<ul>") + f"<li>{fmt(line[2:])}</li>")
            in_list = True
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{fmt(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{fmt(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px}td{text-align:right}td:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Corpus cleaning report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_report(wd: Workdir) -> dict[str, str]:
    summary = build_summary(wd)
    write_json_atomic(wd.root / "report.json", summary, indent=1)
    try:
        plots = _plots(summary, wd.root)
    except MissingDependencyError as e:  # the tables are the report; the plots are a view of them
        log.warning(f"report without plots: {e}")
        plots = {}
    markdown = render_markdown(summary, plots)
    write_text_atomic(wd.root / "report.md", markdown)
    write_text_atomic(wd.root / "report.html", markdown_to_html(markdown))
    return {"json": str(wd.root / "report.json"), "markdown": str(wd.root / "report.md"),
            "html": str(wd.root / "report.html")}
