"""The calibration report: a text summary, report.json and PNG plots (ROC, DET, histograms).

Plots are drawn from the scored comparisons themselves; the text and JSON from the
summary dict that `calibration.cli` builds (its layout is documented there).
"""

import json
import math
import os
from pathlib import Path

import numpy as np
from scipy.stats import norm

from calibration import metrics


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _ci(interval, fmt=_pct):
    return "" if interval is None else f"  95% CI [{fmt(interval[0])}, {fmt(interval[1])}]"


def _split_lines(name, m):
    if m is None:
        return [f"  {name}: none"]
    ids = "" if m["identities"] is None else f"{m['identities']} identities, "
    forgery = f" ({m['forgery']} skilled forgeries)" if m["forgery"] else ""
    conf = m["confidence"]
    lines = [
        f"  {name}: {ids}{m['genuine']} genuine, {m['impostor']} impostor comparisons{forgery}",
        f"    FMR  at threshold  {m['fmr']['text']}{_ci(m['fmr']['ci'])}",
        f"    FNMR at threshold  {m['fnmr']['text']}{_ci(m['fnmr']['ci'])}",
        f"    EER                {_pct(m['eer']['value'])}{_ci(m['eer']['ci'])}",
        f"    AUC                {m['auc']['value']:.4f}{_ci(m['auc']['ci'], lambda x: f'{x:.4f}')}",
    ]
    note = m.get("bootstrap") or {}
    if note.get("intervals") is None and note.get("reason", "--bootstrap 0") != "--bootstrap 0":
        lines.append(f"    (no intervals: {note['reason']})")  # --bootstrap 0 is stated with the protocol
    for key in ("fmr", "fnmr"):
        if m[key]["errors"] == 0:
            lines.append(f"    ({key.upper()}: no errors in {m[key]['total']}; the rule of three bounds it at "
                         f"{_pct(m[key]['rule_of_three'])} with 95% confidence)")
    for kind, row in (m.get("by_impostor") or {}).items():
        lines.append(f"    {kind + ' forgeries':17s}  FMR at threshold {row['fmr']['text']}, EER {_pct(row['eer'])} "
                     f"({row['impostor']} comparisons)")
    for target, row in m["fnmr_at_fmr"].items():
        value = f"{row['fnmr']['text']}{_ci(row['fnmr']['ci'])}" if row["supported"] else row["text"]
        lines.append(f"    FNMR at FMR={target:<7} {value}")
    lines.append(f"    confidence         ECE {conf['ece']:.4f}, Cllr {conf['cllr']:.4f} bits "
                 f"(map moved to this split's genuine share {conf['prior_used']:.3f})")
    return lines


def _impostor_text(section):
    kind = section.get("impostors", "all")
    return "" if kind == "all" else f" on {kind} forgeries"


def _section_lines(title, section):
    conf = section["confidence"]
    return [
        f"{title}: policy {section['policy']}{_impostor_text(section)} -> threshold {section['threshold']:.6g} (accept distance <= threshold)",
        f"  confidence: {conf['kind']} on distance, P(same) stated under prior {conf['prior']:g} "
        f"(fitted on a genuine share of {conf['train_prior']:.3f})",
        *_split_lines("dev ", section["metrics"]["dev"]),
        *_split_lines("eval", section["metrics"]["eval"]),
    ]


def _reliability_lines(name, m):
    lines = [f"  reliability of the confidence on {name} comparisons", "    bin          count  predicted  observed"]
    for row in m["confidence"]["reliability"]:
        if row["count"]:
            lines.append(f"    [{row['low']:.1f}, {row['high']:.1f}]  {row['count']:6d}  "
                         f"{row['mean_predicted']:9.3f}  {row['observed']:8.3f}")
    return lines


def text_summary(summary):
    """The readable terminal summary of a summary dict."""
    lines = [f"calibration of {summary['source']}", f"protocol: {summary['protocol']}", ""]
    fta = summary.get("failure_to_acquire")
    if fta:
        lines += ["failure to acquire (no face found): " + ", ".join(
            f"{name} {100 * part['rate']:.2f}% ({part['failed']}/{part['images']})"
            for name, part in fta.items()) + "; those images are in no comparison", ""]
    lines += _section_lines("pair verification", summary)
    shown = "eval" if summary["metrics"]["eval"] else "dev"
    lines += _reliability_lines(shown, summary["metrics"][shown])
    if summary.get("fusion"):
        fusion = summary["fusion"]
        lines += ["", *_section_lines(f"subject verification ({fusion['rule']} of "
                                      f"{fusion['templates_per_subject']} templates)", fusion)]
    for note in summary.get("notes", []):
        lines.append(f"note: {note}")
    if summary.get("written"):
        lines.append(f"wrote {summary['written']} (calibration_id {summary['calibration_id']})")
    if summary.get("report_dir"):
        lines.append(f"report: {summary['report_dir']}")
    return "\n".join(lines)


def json_safe(data):
    """`data` with every NaN or infinite float replaced by None: strict JSON has no inf or NaN."""
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def dumps(data):
    """Strict JSON text of `data` (non-finite floats become null)."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False)


def _probit_axis(axis, which, n_max):
    """Percent tick labels on a probit axis, down to the half comparison where `metrics.det` clips."""
    ticks = [t for t in (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99) if t >= 0.5 / n_max]
    getattr(axis, f"set_{which}ticks")(norm.ppf(ticks))
    getattr(axis, f"set_{which}ticklabels")([f"{100 * t:g}%" for t in ticks])


def _curves(splits):
    """[(label, genuine, impostor, threshold, linestyle)] for the splits that exist."""
    return [(label, comp.genuine, comp.impostor, threshold, style)
            for label, comp, threshold, style in splits if comp is not None]


def plot_roc(path, curves):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    for label, g, i, threshold, style in curves:
        curve = metrics.roc(g, i)
        (line,) = ax.step(np.maximum(curve.fmr, 0.5 / curve.n_impostor), 1 - curve.fnmr, where="post",
                          linestyle=style, label=f"{label} (AUC {metrics.auc(g, i):.3f})")
        point = metrics.fmr_fnmr(g, i, threshold)
        ax.plot(max(point.fmr.value, 0.5 / curve.n_impostor), 1 - point.fnmr.value, "o", color=line.get_color(),
                markeredgecolor="k", ms=6)
    ax.set_xscale("log")
    ax.set_xlabel("FMR (log; 0 drawn at half a comparison)")
    ax.set_ylabel("1 - FNMR")
    ax.set_title("ROC (dots: the calibrated threshold)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_det(path, curves):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    for label, g, i, threshold, style in curves:
        det = metrics.det(g, i)
        (line,) = ax.plot(det.fmr_probit, det.fnmr_probit, linestyle=style, label=label)
        point = metrics.fmr_fnmr(g, i, threshold)
        ax.plot(norm.ppf(np.clip(point.fmr.value, 0.5 / i.size, 1 - 0.5 / i.size)),
                norm.ppf(np.clip(point.fnmr.value, 0.5 / g.size, 1 - 0.5 / g.size)), "o", color=line.get_color(),
                markeredgecolor="k", ms=6)
    _probit_axis(ax, "x", max(i.size for _, _, i, _, _ in curves))
    _probit_axis(ax, "y", max(g.size for _, g, _, _, _ in curves))
    ax.set_xlabel("FMR (probit scale)")
    ax.set_ylabel("FNMR (probit scale)")
    ax.set_title("DET (dots: the calibrated threshold)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_histograms(path, curves):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 1, figsize=(6, 2.6 * len(curves)), squeeze=False, layout="constrained")
    for ax, (label, g, i, threshold, _) in zip(axes[:, 0], curves):
        bins = np.linspace(min(g.min(), i.min()), max(g.max(), i.max()), 41)
        ax.hist(i, bins=bins, density=True, alpha=0.5, label=f"impostor ({i.size})")
        ax.hist(g, bins=bins, density=True, alpha=0.5, label=f"genuine ({g.size})")
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("distance")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out_dir, summary, splits):
    """Write report.json, roc.png, det.png and histogram.png into `out_dir`.

    `splits`: [(label, Comparisons or None, threshold, linestyle)] to draw.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = _curves(splits)
    plot_roc(out / "roc.png", curves)
    plot_det(out / "det.png", curves)
    plot_histograms(out / "histogram.png", curves)
    (out / "report.json").write_text(dumps(summary) + "\n")
    return out
