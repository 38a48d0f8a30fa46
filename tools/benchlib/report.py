"""The bench results as text tables and bar charts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tools.inputs import save_figure


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [f"\n== {title}", line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def render(res: dict[str, Any]) -> str:
    parts = [f"maskd bench on {res['machine']['cpu']} ({res['machine']['cores']} cores), "
             f"python {res['machine']['python']}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime(res['time']))} UTC, "
             f"load average {res['machine']['loadavg_start']} -> {res['machine'].get('loadavg_end')}"]
    face = res.get("face")
    if face:
        parts.append(table(
            f"Per face (input {face['input_size']}px, {face['input']}; median of {face['rows'][0]['n'] if face['rows'] else 0})",
            ["path", "threads", "median ms", "p90 ms", "invoke ms", "faces/s", "x vs predict"],
            [[r["name"], r["threads"], r["median_ms"], r["p90_ms"], r.get("invoke_median_ms"),
              r["faces_per_s"], r.get("speedup_vs_keras_predict")] for r in face["rows"]]))
    macs = res.get("macs")
    if macs:
        pk = macs["peak"]
        lines = ["\n== MACs and peak"]
        if "model" in macs:
            m = macs["model"]
            lines.append(f"model {m['model']} @ {m['input_size']}px: {m['macs'] / 1e6:.1f} M MACs "
                         f"(conv {m['by_op'].get('CONV_2D', 0) / 1e6:.1f} M, depthwise "
                         f"{m['by_op'].get('DEPTHWISE_CONV_2D', 0) / 1e6:.1f} M, fc "
                         f"{m['by_op'].get('FULLY_CONNECTED', 0) / 1e6:.3f} M)")
        if macs.get("keras_count"):
            k = macs["keras_count"]
            lines.append(f"same count from the Keras layers of {k['model']}: {k['macs'] / 1e6:.1f} M MACs")
        if macs.get("mobilenetv2_224_macs"):
            lines.append(f"MobileNetV2-224: {macs['mobilenetv2_224_macs'] / 1e6:.1f} M MACs "
                         f"({macs.get('mobilenetv2_224_source')})")
        lines.append(f"CPU {pk['cpu']}, {pk['cores']} cores @ {pk['mhz']} MHz; {pk['isa']} -> "
                     f"{pk['int8_macs_per_cycle_per_core']} int8 MACs/cycle/core; nominal peak "
                     f"{pk.get('peak_int8_gmacs', float('nan')):.0f} GMAC/s")
        for u in macs.get("utilisation", []):
            lines.append(f"int8 invoke @ {u['threads']} thread(s): {u['achieved_gmacs']:.1f} GMAC/s "
                         f"= {100 * u['fraction_of_peak']:.1f}% of {u['peak_gmacs']:.0f} GMAC/s peak")
        parts.append("\n".join(lines))
    frame = res.get("frame")
    if frame and frame["rows"]:
        parts.append(table("Per frame (detector only)", ["detector", "size", "mode", "median ms", "fps", "faces"],
                           [[r["detector"], r["size"], r["mode"], r["median_ms"], r["fps"], r["faces"]]
                            for r in frame["rows"]]))
    for e2e in res.get("e2e", {}).get("clips", []):
        if e2e["rows"]:
            parts.append(table(f"End to end ({e2e['frames']} frames {e2e['size']}, {e2e['clip']})",
                               ["pipeline", "fps", "ms/frame", "faces", "classified", "cached",
                                "x vs seed"],
                               [[r["name"], r["fps"], r["ms_per_frame"], r["faces"], r.get("classified"),
                                 r.get("cached"), r.get("speedup_vs_seed")] for r in e2e["rows"]]))
    goals = res.get("goals") or {}
    pf, pl = goals.get("per_face"), goals.get("pipeline")
    if pf:
        parts.append(table(f"Goal per face: maskd classify vs the seeds' predict loop ({pf['files']} "
                           f"facemask-4095 files, {pf['input_size']} px int8)",
                           ["path", "ms/face", "faces/s", "x vs seeds"],
                           [[r["name"], r["ms_per_face"], r["faces_per_s"], r["x_vs_seed"]]
                            for r in pf["rows"]]))
    if pl:
        parts.append(table(f"Goal pipeline: maskd scan vs the seed-style pipeline ({pl['frames']} frames "
                           f"{pl['size']}, {pl['clip']})", ["pipeline", "fps", "faces", "x vs seed"],
                           [[r["name"], r["fps"], r["faces"], r["x_vs_seed"]] for r in pl["rows"]]))
    for what, g in (("per face", pf), ("pipeline", pl)):
        if g and g.get("ratio"):
            verdict = "MET" if g["ratio"] >= g["goal"] else "NOT MET"
            parts.append(f"goal {what}: {g['ratio']:.1f}x (goal >= {g['goal']:.0f}x): {verdict}")
    est = res.get("estimates")
    if est:
        parts.append(table("ESTIMATES for other devices (published figures, not measured here)",
                           ["device", "est. ms/face", "faces/s", "source"],
                           [[r["device"], f"{r['est_ms_low']:.1f}-{r['est_ms_high']:.1f}",
                             r["est_faces_per_s"], r["source"]] for r in est["rows"]]))
        parts.append(f"scaling: {est['rows'][0]['scaling']}")
        parts.append("\n".join(f"reference: {r['what']}: {r['s_per_image']} s/image ({r['source']})"
                               for r in est["reference"]))
    if res["notes"]:
        parts.append("\nnotes:\n" + "\n".join(f"- {n}" for n in res["notes"]))
    return "\n".join(parts) + "\n"


def plot(res: dict[str, Any], folder: Path) -> list[Path]:
    """Bar charts of the per-face and end-to-end sections (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    stamp = (f"{res['machine']['cpu']}, {res['machine']['cores']} cores, load "
             f"{res['machine']['loadavg_start'][0] if res['machine']['loadavg_start'] else '?'}")
    face = res.get("face")
    if face and face["rows"]:
        rows = face["rows"]
        labels = [f"{r['name']}\n({r['threads']} thr)" if r["runtime"] != "keras" else r["name"]
                  for r in rows]
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
        ax.barh(range(len(rows)), [r["median_ms"] for r in rows], color=[
            "#c44e52" if r["runtime"] == "keras" else "#4c72b0" for r in rows])
        for i, r in enumerate(rows):
            txt = f"{r['median_ms']:.1f} ms"
            if r.get("speedup_vs_keras_predict"):
                txt += f"  ({r['speedup_vs_keras_predict']:.1f}x)"
            ax.text(r["median_ms"] * 1.05, i, txt, va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(min(r["median_ms"] for r in rows) / 2, max(r["median_ms"] for r in rows) * 4)
        ax.set_xlabel("median ms per face (log scale); (speed-up over Keras predict)")
        ax.set_title(f"Per-face classifier latency, {face['input_size']} px\n{stamp}", fontsize=9)
        fig.tight_layout()
        written.append(folder / "bench_face.png")
        save_figure(fig, written[-1], dpi=100)
        plt.close(fig)
    for k, e2e in enumerate(res.get("e2e", {}).get("clips", [])):
        if not e2e["rows"]:
            continue
        rows = e2e["rows"]
        fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.4))
        ax.barh(range(len(rows)), [r["fps"] for r in rows], color=[
            "#c44e52" if r["name"].startswith("seed") else "#4c72b0" for r in rows])
        for i, r in enumerate(rows):
            txt = f"{r['fps']:.1f} fps"
            if r.get("speedup_vs_seed"):
                txt += f"  ({r['speedup_vs_seed']:.1f}x)"
            ax.text(r["fps"] * 1.02, i, txt, va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("frames per second (ratio to the seed-style pipeline)")
        ax.set_title(f"End to end, {e2e['frames']} frames {e2e['size']}: {e2e['clip']}\n{stamp}",
                     fontsize=9)
        ax.set_xlim(0, max(r["fps"] for r in rows) * 1.3)
        fig.tight_layout()
        written.append(folder / f"bench_e2e_{k + 1}.png")
        save_figure(fig, written[-1], dpi=100)
        plt.close(fig)
    return written
