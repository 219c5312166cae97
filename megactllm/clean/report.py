"""The cleaning report: report.json (all numbers), report.md (readable, with plots), *.png."""
from __future__ import annotations

import json
from pathlib import Path

from .records import write_json_atomic
from .stats import merge, new_stats
from .workdir import Workdir


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    rules = summary["removed_by_rule"]
    if rules:
        names = list(rules)[::-1]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
        ax.barh(names, [rules[r]["docs"] for r in names])
        ax.set_xlabel("documents removed")
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


def render_markdown(summary: dict, plots: dict[str, str]) -> str:
    inp, outp = summary["input"], summary["output"]
    docs, chars = inp["documents"], inp["characters"]
    lines = ["# Corpus cleaning report", "",
             f"- input: {inp['shards']} shard(s), {docs:,} records, {inp['bytes'] / 1e6:,.1f} MB, {chars:,} characters",
             f"- after filters: {summary['after_filter']['documents']:,} documents",
             f"- output: {outp['documents']:,} documents ({_pct(outp['documents'], docs)}), "
             f"{outp['characters']:,} characters ({_pct(outp['characters'], chars)})",
             f"- every record accounted for: {'yes' if summary['accounting']['balanced'] else 'NO'} "
             f"({summary['accounting']['accounted_records']:,} of {summary['accounting']['input_records']:,})", ""]
    lines += ["## Documents removed, by rule", "", "| rule | documents | % docs | characters | % chars |",
              "|---|---:|---:|---:|---:|"]
    for rule, e in summary["removed_by_rule"].items():
        lines.append(f"| {rule} | {e['docs']:,} | {_pct(e['docs'], docs)} | {e['chars']:,} | {_pct(e['chars'], chars)} |")
    if "rules" in plots:
        lines += ["", f"![documents removed by rule]({plots['rules']})"]
    lines += ["", "## Lines removed by line rules (before document rules)", "", "| rule | lines | characters |", "|---|---:|---:|"]
    for rule, e in summary["removed_lines_by_rule"].items():
        lines.append(f"| {rule} | {e['lines']:,} | {e['chars']:,} |")
    lines += ["", "## Bad input", ""]
    if summary["bad_input"]:
        lines += ["| reason | records | bytes | example |", "|---|---:|---:|---|"]
        for reason, e in summary["bad_input"].items():
            ex = e["examples"][0] if e["examples"] else {}
            lines.append(f"| {reason} | {e['records']:,} | {e['bytes']:,} | `{ex.get('where', '')}`: {ex.get('detail', '')} |")
    else:
        lines.append("none")
    d = summary["dedup"]
    lines += ["", "## Deduplication", "",
              f"- exact duplicates removed: {d.get('exact_duplicates', 0):,}",
              f"- near duplicates removed: {d.get('near_duplicates', 0):,}", "",
              "| cluster size | clusters |", "|---:|---:|"]
    for size, count in sorted(d.get("cluster_size_histogram", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {size} | {count:,} |")
    if "clusters" in plots:
        lines += ["", f"![cluster sizes]({plots['clusters']})"]
    lines += ["", "## Examples", ""]
    for rule, e in summary["removed_by_rule"].items():
        lines.append(f"### {rule}")
        for ex in e.get("examples", []):
            text = str(ex.get("text", "")).replace("\n", " ⏎ ").replace("|", "\\|")
            extra = f" value={ex['value']}" if "value" in ex else ""
            extra += f" duplicate of {ex['duplicate_of']}" if "duplicate_of" in ex else ""
            lines.append(f"- `{ex.get('where') or ex.get('id')}`{extra}: {text}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(wd: Workdir) -> dict[str, str]:
    summary = build_summary(wd)
    write_json_atomic(wd.root / "report.json", summary)
    plots = _plots(summary, wd.root)
    md = wd.root / "report.md"
    tmp = md.with_name("report.md.tmp")
    tmp.write_text(render_markdown(summary, plots), encoding="utf-8")
    tmp.replace(md)
    return {"json": str(wd.root / "report.json"), "markdown": str(md)}
