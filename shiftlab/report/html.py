"""The report page: saved results (``results.json``) and figure files in, one self-contained HTML page out.

The page opens from disk and makes no request to any network address: CSS is inline, images are PNG
files next to it referenced by relative paths, there is no script, and a Content-Security-Policy forbids
anything else. Every string that came from outside (file names, class names, model and data specs, the
content of experiment files) goes through :func:`html.escape`. The page is rendered from the results
alone; nothing is recomputed here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

__all__ = ["GENERATOR", "render_html", "render_figures", "write_report", "check_output_folder", "is_report_folder",
           "headline_metrics", "format_percent", "format_metric"]

GENERATOR = "shiftlab report"

_CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dde1e8; --accent: #2458a6; --bad: #b3261e; --good: #1e7b34; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--ink); background: #f6f7f9; }
main { max-width: 1060px; margin: 0 auto; padding: 28px 24px 60px; background: #fff; }
h1 { font-size: 1.75rem; margin: 0 0 4px; }
h2 { font-size: 1.3rem; margin: 40px 0 10px; padding-top: 12px; border-top: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 22px 0 6px; }
p { margin: 8px 0; }
.meta { color: var(--muted); font-size: 0.92rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fbfcfd; }
.card .value { font-size: 1.7rem; font-weight: 650; color: var(--accent); }
.card .ci { color: var(--muted); font-size: 0.85rem; }
.card .what { font-size: 0.92rem; margin-top: 4px; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--ink); font-size: 0.95rem; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 0.92rem; margin: 10px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num .small { white-space: normal; display: inline-block; min-width: 7em; }
table.wide { font-size: 0.85rem; }
.small { font-size: 0.85rem; color: var(--muted); }
nav ol { columns: 2; font-size: 0.95rem; padding-left: 20px; }
a { color: var(--accent); }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 0.9em; }
.ok { color: var(--good); font-weight: 600; }
.fail { color: var(--bad); font-weight: 600; }
"""

_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def format_percent(value: float | None, digits: int = 1) -> str:
    """0.875 -> '87.5%'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100.0 * value:.{digits}f}%"


def _format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e4:
        return f"{value:.2e}"
    return f"{value:.3f}"


def format_metric(metric: Mapping | None, percent: bool = True) -> tuple[str, str]:
    """A metric dict {"value", "ci", "n"} as ('87.5%', '95% CI 80.1–92.3%, n = 160')."""
    if not metric:
        return "n/a", ""
    fmt = format_percent if percent else _format_number
    lo, hi = metric.get("ci", (None, None))
    ci = f"95% CI {fmt(lo)}–{fmt(hi)}" if lo is not None else ""
    n = metric.get("n")
    return fmt(metric.get("value")), ", ".join(p for p in (ci, f"n = {n}" if n is not None else "") if p)


def headline_metrics(results: Mapping) -> list[tuple[str, dict, bool]]:
    """The summary's numbers: (what it is, metric dict, is a percentage), in page order."""
    out = []
    if results.get("accuracy"):
        out.append(("top-1 accuracy on the labelled photos (centre crop)", results["accuracy"], True))
    sc = results.get("shift_consistency") or {}
    if sc.get("crop_consistency"):
        out.append(("crop consistency: same top-1 for two random crops (offsets 0–31 px)",
                    sc["crop_consistency"], True))
    if sc.get("circular_consistency"):
        out.append(("circular consistency: same top-1 for two random circular shifts",
                    sc["circular_consistency"], True))
    crop = ((results.get("jaggedness") or {}).get("protocols") or {}).get("crop") or {}
    if crop.get("top1_change"):
        out.append(("P(top-1 change) when the crop moves by one pixel diagonally", crop["top1_change"], True))
    if sc.get("worst_case"):
        g = sc.get("grid", "?")
        out.append((f"photos whose top-1 survives every shift of a {g}×{g} px grid", sc["worst_case"], True))
    for row in (results.get("fixes") or {}).get("models", []):
        if row.get("name") == "antialias(aps, circular=True)" and row.get("circular_consistency"):
            out.append(("circular consistency after antialias(aps, circular=True), no retraining",
                        row["circular_consistency"], True))
            if row.get("agreement"):
                out.append(("…at a price: that converted network's top-1 agrees with the original's on the same views",
                            row["agreement"], True))
    return out


def _figure(figures: Mapping[str, str], key: str, alt: str, caption: str) -> str:
    if key not in figures:
        return ""
    return (f'<figure><img src="{_e(figures[key])}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>{body}</section>'


def _summary(results: Mapping) -> str:
    cards = []
    for what, metric, percent in headline_metrics(results):
        value, ci = format_metric(metric, percent)
        cards.append(f'<div class="card"><div class="value">{_e(value)}</div><div class="ci">{_e(ci)}</div>'
                     f'<div class="what">{_e(what)}</div></div>')
    rows = []
    for p in results.get("predictions", []):
        label = p.get("label_name")
        cells = [f"<td>{_e(p.get('image'))}</td>"]
        for prefix in ("", "whole_"):
            if p.get(f"{prefix}top1") is None:
                cells.append("<td></td>")
                continue
            verdict = ""
            if label is not None:
                right = p.get("label") == p.get(f"{prefix}top1")
                verdict = f' <span class="{"ok" if right else "fail"}">{"✓" if right else "✗"}</span>'
            cells.append(f"<td>{_e(p.get(f'{prefix}top1_name'))} <span class='small'>({_e(p.get(f'{prefix}top1'))}), "
                         f"{_e(format_percent(p.get(f'{prefix}probability')))}</span>{verdict}</td>")
        cells.append(f"<td>{_e(label)}</td>" if label is not None else "<td><span class=small>no label</span></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = ""
    if rows:
        size = "×".join(str(v) for v in (results.get("model") or {}).get("input_size", []))
        table = ("<h3>What the network sees in each photo</h3><table><thead><tr><th>photo</th>"
                 f"<th>top-1, centre crop (resize, then crop {_e(size)})</th><th>top-1, whole square resized to "
                 f"{_e(size)}</th><th>label</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                 "<p class='small'>The experiments below track the label's class where the photo has one, "
                 "else the centre crop's top-1 class.</p>")
    return _section("summary", "Summary", '<div class="cards">' + "".join(cards) + "</div>" + table)


def _jaggedness(results: Mapping, figures: Mapping[str, str]) -> str:
    sweep = results.get("jaggedness")
    if not sweep:
        return ""
    parts = []
    rows = []
    for protocol, entry in sweep.get("protocols", {}).items():
        prob = entry.get("probability") or []
        steps = [max(abs(a - b) for a, b in zip(p[1:], p[:-1])) for p in prob if len(p) > 1]
        worst = max(steps) if steps else None
        tc, mac = entry.get("top1_change"), entry.get("mean_abs_change")
        rows.append(f"<tr><td>{_e(protocol.replace('_', ', '))}</td>"
                    f"<td class='num'>{_e(' '.join(_pair(tc)))}</td><td class='num'>{_e(' '.join(_pair(mac, False)))}</td>"
                    f"<td class='num'>{_e(_format_number(worst))}</td></tr>")
    crop = sweep.get("protocols", {}).get("crop", {})
    crop_prob = crop.get("probability") or []
    jumps = [max(abs(a - b) for a, b in zip(p[1:], p[:-1])) for p in crop_prob if len(p) > 1]
    sentence = ("Each line is one photo; the x axis moves the 224-px window diagonally one pixel at a time. "
                "A shift-invariant network would draw flat lines.")
    if jumps:
        sentence += (f" Instead, a single 1-px step changed the tracked class's probability by up to "
                     f"{format_percent(max(jumps))} (crop protocol), and the canvas protocols, where the whole "
                     f"object stays visible, are no smoother.")
    parts.append(_figure(figures, "jaggedness", "top-class probability against diagonal shift", _e(sentence)))
    parts.append("<table><thead><tr><th>protocol</th><th>P(top-1 change), 1-px step</th>"
                 "<th>mean |Δ p(top-1)|</th><th>largest 1-px jump</th></tr></thead><tbody>"
                 + "".join(rows) + "</tbody></table>")
    return _section("jaggedness", "1. Jaggedness: the photo moves one pixel at a time", "".join(parts))


def _pair(metric, percent: bool = True) -> tuple[str, str]:
    value, ci = format_metric(metric, percent)
    return value, f"({ci})" if ci else ""


def _consistency(results: Mapping, figures: Mapping[str, str]) -> str:
    sc = results.get("shift_consistency")
    if not sc:
        return ""
    crop, _ = format_metric(sc.get("crop_consistency"))
    circ, _ = format_metric(sc.get("circular_consistency"))
    worst, _ = format_metric(sc.get("worst_case"))
    g = sc.get("grid")
    sentence = (f"Two random crops of the same photo get the same top-1 class {crop} of the time, two random "
                f"circular shifts {circ}; {worst} of the photos keep their top-1 class over all "
                f"{_e(g)}×{_e(g)} one-pixel shifts. Bars show 95% intervals; pairs from one photo are not "
                f"independent, so read the intervals as a lower bound on the uncertainty.")
    body = _figure(figures, "shift_metrics", "shift metrics with 95% intervals", _e(sentence))
    body += _figure(figures, "shift_map", "probability of the top-1 class over a grid of shifts",
                    _e(f"The shift map: each square is one photo, each cell the probability of its centre-crop "
                       f"class when the crop starts at (dy, dx), 0 to {_e(g - 1 if isinstance(g, int) else g)} px. "
                       f"A shift-invariant network would paint every square in one flat colour."))
    return _section("consistency", "2. Consistency under random shifts", body)


def _layer_profile(results: Mapping, figures: Mapping[str, str]) -> str:
    lp = results.get("layer_profile")
    if not lp:
        return ""
    layers = lp.get("layers", [])
    inv = [(l.get("one_pixel_invariance") or {}).get("value") for l in layers]
    sentence = ("Red: how much each layer's spatially averaged features change when the input moves by one pixel "
                "(circular shift; exactly zero for any stack of stride-1 circular convolutions). Blue: the "
                "equivariance error for the smallest shift the layer can represent (a crop moved by the layer's "
                f"cumulative stride, compared one feature cell away, {_e(lp.get('margin', 16))} px inside the "
                "border). Dashed lines mark the layers that subsample with stride 2, dotted lines asymmetric "
                "'same' padding, both found by shiftlab inspect.")
    if inv and all(v is not None for v in inv):
        k = max(range(len(inv)), key=lambda i: inv[i])
        first = layers[0]
        sentence += (f" The 1-px change is {format_percent(inv[0])} after {first.get('name')} and peaks at "
                     f"{format_percent(inv[k])} at {layers[k].get('name')} (stride {layers[k].get('stride')}).")
    body = _figure(figures, "layer_profile", "equivariance error along the depth of the network", _e(sentence))
    amap = lp.get("aliasing_map") or {}
    findings = amap.get("findings") or []
    if findings:
        rows = "".join(
            f"<tr><td>{_e(f.get('name'))}</td><td>{_e(f.get('module_type'))}</td><td>{_e(f.get('kind'))}</td>"
            f"<td>{_e(f.get('detail'))}</td><td class='num'>{_e(_stride(f.get('stride')))}</td>"
            f"<td class='num'>{_e(_stride(f.get('cumulative_stride')))}</td></tr>" for f in findings)
        total = _stride(amap.get("total_stride"))
        body += (f"<h3 id='aliasing-map'>The aliasing map</h3><p>Every layer of the network that subsamples or "
                 f"breaks exact shift equivariance, in the order data flows through them (<code>shiftlab "
                 f"inspect</code>). Total stride {_e(total)}: only circular shifts that are multiples of it commute "
                 f"with every subsampling layer.</p><table><thead><tr><th>layer</th><th>type</th><th>kind</th>"
                 f"<th>detail</th><th>stride</th><th>cumulative stride</th></tr></thead><tbody>{rows}</tbody></table>")
    return _section("layers", "3. Where equivariance breaks inside the network", body)


def _stride(value) -> str:
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return "" if value is None else str(value)


def _fixes(results: Mapping, figures: Mapping[str, str]) -> str:
    fx = results.get("fixes")
    if not fx:
        return ""
    head = ("<tr><th>model</th><th>crop consistency</th><th>circular consistency</th>"
            "<th>P(top-1 change), 1 px</th><th>stable over grid</th><th>same top-1 as original</th>"
            "<th>top-1 accuracy</th></tr>")
    rows = []
    for row in fx.get("models", []):
        replaced = row.get("replacements")
        note = "" if replaced is None else f"<br><span class='small'>{_e(replaced)} layers replaced</span>"
        cells = [f"<td>{_e(row.get('name'))}{note}</td>"]
        for key in ("crop_consistency", "circular_consistency", "top1_change", "worst_case", "agreement", "accuracy"):
            value, ci = format_metric(row.get(key))
            cells.append(f"<td class='num'>{_e(value)}<br><span class='small'>{_e(ci)}</span></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    sentence = ("The fixes applied to the pretrained weights without any retraining. Anti-aliasing and adaptive "
                "subsampling change the features the later layers were trained on, so the price is paid in "
                "agreement with the original network; the published gains come after fine-tuning.")
    body = _figure(figures, "fixes", "shift metrics before and after the fixes", _e(sentence))
    body += "<table class='wide'><thead>" + head + "</thead><tbody>" + "".join(rows) + "</tbody></table>"
    cert = fx.get("certify")
    if cert:
        verdict = ("<span class='ok'>certified</span>" if cert.get("passed") else "<span class='fail'>not certified</span>")
        shifts = (f"every shift of one period" if cert.get("full_period")
                  else f"{_e(cert.get('shifts_checked'))} shifts of one period, including (1, 1)")
        size = _stride(cert.get("input_size"))
        body += (f"<h3>Certificate: the APS model under circular shifts</h3><p>{verdict}: on "
                 f"{_e(cert.get('n_inputs'))} random {_e(size)} input(s) in {_e(cert.get('dtype'))}, {shifts} "
                 f"(total stride {_e(_stride(cert.get('total_stride')))}), the logits moved by at most "
                 f"{_e(_format_number(cert.get('max_abs_deviation')))} (relative "
                 f"{_e(_format_number(cert.get('max_rel_deviation')))}; tolerance "
                 f"{_e(_format_number(cert.get('tolerance')))}). Circular invariance is exact; agreement with the "
                 f"original network is another matter (the table above).</p>")
    return _section("fixes", "4. The fixes on the real network, without retraining", body)


_UNIT_SUFFIX = {"rotation": "°", "scale": "×", "brightness": "×"}


def _invariances(results: Mapping, figures: Mapping[str, str]) -> str:
    inv = results.get("invariances")
    if not inv:
        return ""
    parts = []
    for kind, entry in inv.items():
        values, stab = entry.get("values", []), entry.get("stability", [])
        if values and stab:
            worst = min(range(len(stab)), key=lambda i: stab[i].get("value", 1))
            parts.append(f"{format_percent(stab[worst].get('value'))} keep it at {kind} "
                         f"{values[worst]:g}{_UNIT_SUFFIX.get(kind, '')}")
    sentence = ("Top-1 stability (the fraction of photos keeping their centre-crop class) and that class's mean "
                "probability, against rotation angle (degrees, counter-clockwise; the corners a rotation uncovers "
                "are filled), zoom factor and brightness factor. At the worst setting of each, "
                + "; ".join(parts) + ".")
    body = _figure(figures, "invariances", "stability under rotation, scale and brightness", _e(sentence))
    return _section("invariances", "5. Rotation, scale and lighting", body)


_CLASSIC_TITLES = {
    "pixel": "A bright pixel through max pooling",
    "edges": "Convolution is equivariant: the edges move with the photo",
    "pooling": "Max pooling coarsens the edge map",
    "tandem": "Convolution and pooling in tandem",
}


def _classic_caption(name: str, r: Mapping) -> str:
    """One sentence per demonstration, from its saved numbers."""
    if name == "pixel":
        d = [("—" if v is None else f"{max(v)}") for v in r.get("distances", [])]
        return (f"Two {r.get('size')}×{r.get('size')} images, each with one bright pixel, go through "
                f"{r.get('kernel_size')}×{r.get('kernel_size')} max pooling: the distance between the bright "
                f"cells goes {', '.join(d)} (cells). Pooling makes nearby positions identical: invariance by "
                f"throwing position away.")
    if name == "edges":
        corr = r.get("mirror_relu_same_edges_correlation")
        return (f"Vertical edges of {r.get('source')}: edges of the shifted photo minus the shifted edges = "
                f"{_format_number(r.get('translation_interior_max_abs'))} (max, on "
                f"{r.get('translation_interior_pixels')} pixels away from the wrap-around seam). The mirrored "
                f"photo does not give the mirrored edges: it lights up the opposite edges"
                + (f" (correlation {corr:.2f} with the naive claim)." if isinstance(corr, float) else "."))
    if name == "pooling":
        shapes = " → ".join("×".join(str(v) for v in sh) for sh in r.get("shapes", []))
        return f"The edge map of {r.get('source')} max-pooled again and again: {shapes}. Detail and position fade."
    if name == "tandem":
        comp = (r.get("comparisons") or {}).get("translated") or {}
        cells = [c for c in comp.get("centroid_distance_cells", []) if c is not None]
        pixels = [c for c in comp.get("centroid_distance_pixels", []) if c is not None]
        if cells and pixels:
            return (f"The shifted photo's pooled edge map: its centroid is {cells[0]:.1f} cells from the original's "
                    f"before pooling and {cells[-1]:.2f} cells after the last pooling, yet {pixels[-1]:.1f} pixels: "
                    f"pooling coarsens the grid, it does not bring the features back.")
    return ""


def _classic(results: Mapping, figures: Mapping[str, str]) -> str:
    classic = results.get("classic") or {}
    keys = [k for k in figures if k.startswith("classic_")]
    if not keys:
        return ""
    body = ("<p>The source articles' demonstrations, as exact code on a real photo: what convolution and "
            "pooling do when the input moves (<code>shiftlab demo all</code>).</p>")
    for key in keys:
        name = key[len("classic_"):]
        body += f"<h3>{_e(_CLASSIC_TITLES.get(name, name))}</h3>"
        body += _figure(figures, key, _CLASSIC_TITLES.get(name, name), _e(_classic_caption(name, classic.get(name) or {})))
    return _section("classic", "The articles' demonstrations", body)


def _training(results: Mapping, figures: Mapping[str, str]) -> str:
    exp = results.get("training_experiments")
    if not exp:
        return ""
    from shiftlab.report import experiment_plots

    body = ("<p>Experiments that train small networks on CPU (<code>shiftlab experiment</code>), "
            "rendered from their saved results.</p>")
    for name, result in exp.items():
        try:
            title, caption = experiment_plots.experiment_title(result), experiment_plots.experiment_caption(result)
        except (KeyError, TypeError, ValueError):
            title, caption = str(name), "(this result could not be read)"
        body += f"<h3>{_e(title)} <span class='small'>({_e(name)}.json)</span></h3>"
        keys = [k for k in figures if k.startswith(f"experiment_{name}:")]
        for i, key in enumerate(keys):
            body += _figure(figures, key, title, _e(caption) if i == len(keys) - 1 else "")
        if not keys:
            body += f"<p>{_e(caption)}</p>"
    return _section("training", "Training experiments", body)


def _method(results: Mapping) -> str:
    s = results.get("settings", {})
    run = results.get("run", {})
    budget = s.get("budget", {})
    m = results.get("model", {})
    d = results.get("data", {})
    size = "×".join(str(v) for v in m.get("input_size", []))
    rows = [
        ("model", s.get("model")), ("architecture", f"{m.get('name')} ({m.get('parameters', 0):,} parameters)"),
        ("input size", f"{size} px"), ("data", s.get("data")),
        ("photos", f"{d.get('n_images')} ({d.get('labelled', 0)} with a label the model has)"),
        ("seed", s.get("seed")), ("quick", s.get("quick")),
        ("random pairs per photo", budget.get("pairs_per_image")),
        ("run time", f"{run.get('seconds', '?')} s on {run.get('threads', '?')} threads ({run.get('device', '?')})"),
        ("shiftlab", results.get("shiftlab_version")),
    ]
    table = "<table><tbody>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</tbody></table>"
    text = ("<p>Every photo is resized (shorter side to the input size + 32 px) and centre-cropped to a square base. "
            "<b>Crop</b>: a window of the input size at offset (dy, dx) in the base. <b>Canvas</b>: the base "
            "downscaled by 32 px and pasted at (dy, dx) into a black or inpainted canvas. <b>Circular</b>: the "
            "centre window rolled by (dy, dx). Intervals are 95% Wilson intervals for proportions and t intervals "
            "for means; views of one photo are not independent.</p>")
    skipped = d.get("skipped") or []
    if skipped:
        text += ("<p>Unreadable files skipped: " + ", ".join(f"{_e(p)} ({_e(r)})" for p, r in skipped) + "</p>")
    return _section("method", "How this was measured", text + table)


def render_html(results: Mapping, figures: Mapping[str, str]) -> str:
    """The report page for saved ``results`` and ``figures`` (key -> path relative to the page).

    Every string from ``results`` is escaped; sections whose results are missing are left out.
    """
    s = results.get("settings", {})
    title = f"shiftlab report: {s.get('model', 'model')} on {s.get('data', 'data')}"
    sections = [
        _summary(results),
        _classic(results, figures),
        _jaggedness(results, figures),
        _consistency(results, figures),
        _layer_profile(results, figures),
        _fixes(results, figures),
        _invariances(results, figures),
        _training(results, figures),
        _method(results),
    ]
    sections = [sec for sec in sections if sec]
    import re

    toc = "".join(
        f'<li><a href="#{a}">{t}</a></li>'
        for a, t in re.findall(r'<section id="([^"]*)"><h2>(.*?)</h2>', "".join(sections))
    )
    d = results.get("data", {})
    run = results.get("run", {})
    meta = (f"{_e(s.get('model'))} on {_e(d.get('n_images', '?'))} photos ({_e(s.get('data'))}), seed "
            f"{_e(s.get('seed'))}{', quick run' if s.get('quick') else ''}; computed in {_e(run.get('seconds', '?'))} s "
            f"by shiftlab {_e(results.get('shiftlab_version', ''))}.")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="{_e(GENERATOR)}">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        "<h1>Does the network give the same answer when the photo moves?</h1>\n"
        f'<p class="meta">{meta}</p>\n'
        f"<nav><ol>{toc}</ol></nav>\n" + "\n".join(sections) + "\n</main>\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------------------ writing

SCHEMA_PREFIX = "shiftlab-report/"


def is_report_folder(path) -> bool:
    """True if ``path`` holds a report written by shiftlab (its results.json names the report schema)."""
    import json
    from pathlib import Path

    results = Path(path) / "results.json"
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA_PREFIX)


def render_figures(results: Mapping, folder, force: bool = True, extra_figures: Mapping | None = None,
                   progress: bool = False) -> dict[str, str]:
    """Draw every figure the results allow into ``folder``; return key -> path relative to the page.

    ``extra_figures`` (key -> matplotlib figure) are saved too: the classic demonstrations, whose maps are
    not part of the saved results, are drawn when they are computed.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from shiftlab._io import save_figure
    from shiftlab._progress import track
    from shiftlab.report import plots

    folder = Path(folder)
    names = (results.get("data") or {}).get("names")
    tracked = [p.get("label_name") or p.get("top1_name") for p in results.get("predictions") or []]
    jobs = [(key, lambda fig=fig: fig) for key, fig in (extra_figures or {}).items()]
    if results.get("jaggedness"):
        jobs.append(("jaggedness", lambda: plots.plot_jaggedness(results["jaggedness"], names=names,
                                                                 class_names=tracked)))
    if results.get("shift_consistency"):
        jobs.append(("shift_metrics", lambda: plots.plot_shift_metrics(results["shift_consistency"],
                                                                       results.get("jaggedness"))))
        jobs.append(("shift_map", lambda: plots.plot_shift_map(results["shift_consistency"], names=names)))
    if (results.get("layer_profile") or {}).get("layers"):
        jobs.append(("layer_profile", lambda: plots.plot_layer_profile(results["layer_profile"])))
    if (results.get("fixes") or {}).get("models"):
        jobs.append(("fixes", lambda: plots.plot_fix_comparison(results["fixes"])))
    if results.get("invariances"):
        jobs.append(("invariances", lambda: plots.plot_invariances(results["invariances"])))
    if results.get("training_experiments"):
        from shiftlab.report import experiment_plots

        for name, result in results["training_experiments"].items():
            try:
                experiment_plots.experiment_title(result)
            except (KeyError, TypeError, ValueError):
                continue  # shown as unreadable on the page
            jobs.append((f"experiment_{name}", lambda result=result: experiment_plots.experiment_figures(result)))

    figures: dict[str, str] = {}
    for key, draw in track(jobs, "figures", total=len(jobs), enabled=progress):
        drawn = draw()
        for suffix, fig in (drawn.items() if isinstance(drawn, dict) else [(None, drawn)]):
            file_name = _slug(key if suffix is None else f"{key}{suffix}")
            try:
                save_figure(fig, folder / f"{file_name}.png", force=force)
            finally:
                plt.close(fig)
            figures[key if suffix is None else f"{key}:{suffix}"] = f"{folder.name}/{file_name}.png"
    return figures


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name))[:80] or "experiment"


def write_report(results: Mapping, out_dir, force: bool = False, extra_figures: Mapping | None = None,
                 progress: bool = False):
    """Write ``results.json``, the figures and ``index.html`` into ``out_dir``; return the page's path.

    Refuses (InputError) a non-empty folder that is not a previous shiftlab report unless ``force``.
    Each file is written atomically; the page last.
    """
    from pathlib import Path

    from shiftlab._io import atomic_write_text, write_json

    out = check_output_folder(out_dir, force)
    out.mkdir(parents=True, exist_ok=True)
    figures = render_figures(results, out / "figures", extra_figures=extra_figures, progress=progress)
    to_save = dict(results)
    to_save["figures"] = figures
    write_json(out / "results.json", to_save, force=True)
    return atomic_write_text(out / "index.html", render_html(to_save, figures), force=True)


def check_output_folder(out_dir, force: bool = False):
    """The report folder as a Path, if it may be written: absent, empty, a previous report, or ``force``."""
    from pathlib import Path

    from shiftlab.errors import InputError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_report_folder(out) and not force:
        raise InputError(f"{out} is not empty and holds no previous shiftlab report; "
                         "choose another --out or pass --force")
    return out
