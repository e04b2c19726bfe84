"""Two battery versions of the robustness protocol on the same model, images and Poisson scoring draws, paired.

Reads the ``report.json`` of each run (``snn-adv protocol ... --version V --out DIR``, same checkpoint, data, seeds
and ``--test-count``) and compares, per image (the mean over its scoring draws), the pairs left robust (i) after
each version's first stage, (ii) after its whole battery, before the certificate, (iii) at the end: the
difference ``a - b`` with its 95 % interval and two-sided paired test (Holm over the three), the cost in
forward-backward passes per image and the verdicts. Writes ``comparison.md`` and ``comparison.json`` to ``--out``.

    python experiments/compare_protocol_versions.py runs/v1/report.json runs/v2/report.json --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from snn_adv.io import atomic_write, atomic_write_json, provenance
from snn_adv.stats import holm, paired_difference


def robust_after(report: Dict, stages: int) -> np.ndarray:
    """``[images, seeds]``: the pairs clean-correct and not broken by the first ``stages`` stages."""
    clean = np.array(report["clean_correct"], dtype=bool)
    broken_by = np.array(report["broken_by"])
    return clean & ((broken_by == -1) | (broken_by > stages))


def compare_reports(a: Dict, b: Dict) -> Dict:
    """The three paired comparisons of ``a`` against ``b`` (see the module docstring)."""
    if a["index"] != b["index"] or a["scoring_seeds"] != b["scoring_seeds"] or a["clean_correct"] != b["clean_correct"]:
        raise ValueError("the two reports are not on the same images, scoring seeds and clean outcomes")
    # stages before the certificate: broken_by_names holds them, the certificate, "robust" and "clean misclassified"
    battery = {name: len(r["broken_by_names"]) - 3 for name, r in (("a", a), ("b", b))}
    points = {"after the first stage": (robust_after(a, 1), robust_after(b, 1)),
              "after the battery, before the certificate": (robust_after(a, battery["a"]),
                                                             robust_after(b, battery["b"])),
              "final (with the certificate)": (np.array(a["robust"], bool), np.array(b["robust"], bool))}
    rows = []
    for what, (x, y) in points.items():
        comparison = paired_difference(x.mean(1), y.mean(1), limits=(-1.0, 1.0))
        rows.append({"point": what, "a": float(x.mean()), "b": float(y.mean()), "difference": comparison.to_dict(),
                     "text": str(comparison), "pairs_only_a_robust": int((x & ~y).sum()),
                     "pairs_only_b_robust": int((y & ~x).sum())})
    for row, adjusted in zip(rows, holm([row["difference"]["p_value"] for row in rows])):
        row["holm"] = float(adjusted)
    return {"rows": rows, **{f"{name}_summary": {"version": r["version"], "battery": r["battery"],
                                                 "headline": r["headline"], "total_cost": r["total_cost"],
                                                 "seconds": r["seconds"], "verdict": r["verdict"]}
                             for name, r in (("a", a), ("b", b))}}


def markdown(result: Dict) -> str:
    a, b = result["a_summary"], result["b_summary"]
    lines = [f"# Protocol {a['version']} (a) against {b['version']} (b): same model, images and scoring draws", "",
             *(f"- ({name}) {r['headline']}; {r['total_cost']:.1f} forward-backward passes per image, "
               f"{r['seconds']:.0f} s" for name, r in (("a", a), ("b", b))), "",
             "| robust pairs | (a) % | (b) % | (a) − (b), 95 % interval, two-sided paired test | Holm (3) "
             "| pairs robust only under (a) / (b) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        lines.append(f"| {row['point']} | {100 * row['a']:.1f} | {100 * row['b']:.1f} | {row['text']} | "
                     f"{row['holm']:.3g} | {row['pairs_only_a_robust']} / {row['pairs_only_b_robust']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="report.json of version (a)")
    parser.add_argument("b", help="report.json of version (b)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = compare_reports(json.loads(Path(args.a).read_text()), json.loads(Path(args.b).read_text()))
    result["provenance"] = provenance()
    out = Path(args.out)
    atomic_write_json(out / "comparison.json", result)
    with atomic_write(out / "comparison.md", "w") as handle:
        handle.write(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
