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

__all__ = ["GENERATOR", "render_classifier_html", "headline_metrics", "format_percent", "format_metric",
           "table_command", "scrolling_tables"]

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
.scroll { overflow-x: auto; max-width: 100%; margin: 10px 0; }
table { border-collapse: collapse; width: 100%; font-size: 0.92rem; margin: 0; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num .small { white-space: normal; display: inline-block; min-width: 7em; }
table.wide { font-size: 0.85rem; }
.small { font-size: 0.85rem; color: var(--muted); }
a { color: var(--accent); }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 0.9em; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 100%; overflow-x: auto; }
img { max-width: 100%; }
@media (max-width: 760px) { main { padding: 20px 12px 40px; } nav ul { columns: 1; } }
.ok { color: var(--good); font-weight: 600; }
.banner { border: 2px solid var(--bad); background: #fdf1f0; border-radius: 8px; padding: 10px 16px; margin: 14px 0; }
.banner ul { margin: 6px 0 0; padding-left: 20px; }
.card.flagged { background: #f2f2f2; }
.card.flagged .value { color: #888; text-decoration: line-through; }
.card .flag { color: var(--bad); font-size: 0.85rem; margin-top: 4px; }
.card details { margin-top: 6px; font-size: 0.8rem; }
.card details code { display: block; white-space: pre-wrap; word-break: break-all; }
.reproduce { margin: 6px 0 18px; }
.reproduce code.cmd { display: block; white-space: pre-wrap; word-break: break-all; margin: 3px 0; font-size: 0.8rem; }
img.thumb { width: 48px; height: 48px; border-radius: 3px; border: 1px solid var(--line); }
nav ul { columns: 2; font-size: 0.95rem; padding-left: 20px; }
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


def _audit(results: Mapping, key: str) -> Mapping:
    return ((results.get("audits") or {}).get(key) or {})


def _m(results: Mapping, key: str, name: str) -> Mapping | None:
    return ((_audit(results, key).get("result") or {}).get("metrics") or {}).get(name)


def _command(results: Mapping, key: str) -> str | None:
    return _audit(results, key).get("command")


def headline_metrics(results: Mapping) -> list[tuple[str, Mapping, bool, str]]:
    """The summary's numbers: (what it is, metric dict, is a percentage, audit key), in page order."""
    out = []
    acc = _m(results, "consistency.crop", "accuracy")
    if acc:
        out.append(("top-1 accuracy on the labelled photos (over the random crops)", acc, True, "consistency.crop"))
    for key, what in (("consistency.crop", "crop consistency: same top-1 for two random crops (offsets 0–31 px)"),
                      ("consistency.circular", "circular consistency: same top-1 for two random circular shifts")):
        m = _m(results, key, "consistency")
        if m:
            out.append((what, m, True, key))
    tc = _m(results, "sweep.crop", "top1_change")
    if tc:
        steps = ((_audit(results, "sweep.crop").get("result") or {}).get("protocol") or {}).get("n", "?")
        out.append((f"P(top-1 change) per 1-px diagonal step of the crop, over a {steps}-step diagonal sweep", tc,
                    True, "sweep.crop"))
    wc = _m(results, "worst_case", "worst_case_stability")
    if wc:
        g = ((_audit(results, "worst_case").get("result") or {}).get("protocol") or {}).get("n", "?")
        out.append((f"photos whose top-1 survives every shift of {_article(g)} {g}x{g} grid of 1-px shifts", wc, True,
                    "worst_case"))
    sub = _m(results, "subpixel", "worst_case_stability")
    if sub:
        out.append((f"photos whose top-1 survives every half-pixel shift ({_half_pixel_grid(results)})", sub, True,
                    "subpixel"))
    key = "aps:circular/consistency.circular"
    m = _m(results, key, "consistency")
    if m:
        out.append(("circular consistency after --fix aps:circular, no retraining", m, True, key))
        agree = _m(results, "aps:circular/consistency.crop", "reference_agreement")
        if agree and agree.get("value") is not None:
            if agree["value"] >= 0.995:
                what = "that converted network's top-1 agrees with the original's on the same views"
            else:
                what = ("…at a price: that converted network's top-1 agrees with the original's on only this "
                        "share of the same views")
            out.append((what, agree, True, "aps:circular/consistency.crop"))
    return out


def _figure(figures: Mapping[str, str], key: str, alt: str, caption: str) -> str:
    if key not in figures:
        return ""
    return (f'<figure><img src="{_e(figures[key])}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _reproduce(results: Mapping, keys, extra: list[str] | None = None) -> str:
    """The commands that reproduce a figure's numbers, to the same digits."""
    commands = [c for c in (_command(results, k) for k in keys) if c]
    commands += list(extra or [])
    if not commands:
        return ""
    lines = "".join(f"<code class='cmd'>{_e(c)}</code>" for c in dict.fromkeys(commands))
    return f"<div class='reproduce'><span class='small'>Reproduce these numbers:</span>{lines}</div>"


def scrolling_tables(page: str) -> str:
    """Every table of ``page`` inside a box that scrolls sideways on a narrow screen (the page itself never
    does)."""
    return page.replace("<table", "<div class='scroll'><table").replace("</table>", "</table></div>")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>{body}</section>'


def _card(what: str, metric: Mapping, percent: bool, command: str | None) -> str:
    value, ci = format_metric(metric, percent)
    images = metric.get("images")
    if images is not None and ci:
        ci += f" ({images} photos)"
    flagged = metric.get("flag")
    cls = "card flagged" if flagged else "card"
    note = "<div class='flag'>not meaningful: the model's predictions are constant</div>" if flagged else ""
    cmd = f"<details><summary>command</summary><code>{_e(command)}</code></details>" if command else ""
    return (f'<div class="{cls}"><div class="value">{_e(value)}</div><div class="ci">{_e(ci)}</div>'
            f'<div class="what">{_e(what)}</div>{note}{cmd}</div>')


def _summary(results: Mapping, figures: Mapping[str, str]) -> str:
    cards = [_card(what, metric, percent, _command(results, key))
             for what, metric, percent, key in headline_metrics(results)]
    omitted = ((_audit(results, "consistency.crop").get("result") or {}).get("omitted") or {}).get("accuracy")
    if omitted:
        cards.insert(0, f'<div class="card"><div class="value">–</div><div class="what">accuracy left out: '
                        f"{_e(omitted)}</div></div>")
    rows = []
    for p in results.get("predictions", []):
        label = p.get("label_name")
        thumb = figures.get(f"thumb:{p.get('index')}")
        image = f'<img class="thumb" src="{_e(thumb)}" alt="{_e(p.get("image"))}">' if thumb else ""
        cells = [f"<td>{image}</td>", f"<td>{_e(p.get('image'))}</td>"]
        verdict = ""
        if label is not None:
            right = p.get("label") == p.get("top1")
            verdict = f' <span class="{"ok" if right else "fail"}">{"✓" if right else "✗"}</span>'
        top5 = ", ".join(f"{name} {format_percent(prob)}" for _, name, prob in (p.get("top5") or [])[1:4])
        cells.append(f"<td>{_e(p.get('top1_name'))} <span class='small'>({_e(p.get('top1'))}), "
                     f"{_e(format_percent(p.get('probability')))}</span>{verdict}"
                     f"<br><span class='small'>then: {_e(top5)}</span></td>")
        cells.append(f"<td>{_e(label)}</td>" if label is not None else "<td><span class=small>no label</span></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = ""
    if rows:
        size = "×".join(str(v) for v in (results.get("model") or {}).get("input_size", []))
        table = ("<h3>What the network sees in each photo</h3><table><thead><tr><th></th><th>photo</th>"
                 f"<th>top-1 on the centre crop ({_e(size)}), then the next classes</th><th>label</th></tr></thead>"
                 "<tbody>" + "".join(rows) + "</tbody></table>"
                 "<p class='small'>The experiments below track the label's class where the photo has one, "
                 "else the class of each audit's reference view.</p>" + _table_reproduce(results))
    return _section("summary", "Summary", '<div class="cards">' + "".join(cards) + "</div>" + table)


def table_command(results: Mapping) -> str | None:
    """The command that reproduces the per-photo table: the audit whose first view of each photo is the table's
    (the centre crop, unchanged: angle 0 of the ``rotation`` audit), with ``--predictions`` (its JSON's
    ``predictions.top5``, copy 0). None where the report has no such audit."""
    command = _command(results, "rotation")
    transform = (((_audit(results, "rotation").get("result") or {}).get("protocol") or {}).get("spec") or "")
    if not command or not transform.startswith("rotate:0,"):
        return None
    return command if "--predictions" in command.split() else f"{command} --predictions"


def _table_reproduce(results: Mapping) -> str:
    command = table_command(results)
    if command is None:
        return ""
    return ("<div class='reproduce'><span class='small'>Reproduce this table: the first view of each photo "
            "(angle 0: the centre crop, unrotated) in the <code>predictions</code> (<code>top5</code>, copy 0) of "
            f"</span><code class='cmd'>{_e(command)}</code></div>")


def _banner(results: Mapping) -> str:
    warnings = results.get("warnings") or []
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f"<div class='banner' role='alert'><b>Read these numbers with care:</b><ul>{items}</ul></div>"


_SWEEP_TITLES = {"sweep.crop": "crop (the window moves)", "sweep.canvas_black": "canvas, black fill",
                 "sweep.canvas_inpaint": "canvas, inpainted fill"}


def _jaggedness(results: Mapping, figures: Mapping[str, str]) -> str:
    keys = [k for k in _SWEEP_TITLES if _audit(results, k)]
    if not keys:
        return ""
    rows = []
    for key in keys:
        tc, mac = _m(results, key, "top1_change"), _m(results, key, "mean_abs_change")
        rows.append(f"<tr><td>{_e(_SWEEP_TITLES[key])}</td>"
                    f"<td class='num'>{_e(' '.join(_pair(tc)))}</td><td class='num'>{_e(' '.join(_pair(mac, False)))}</td>"
                    "</tr>")
    n = len((results.get("data") or {}).get("names") or [])
    sentence = (f"Each line is one of the {n} photos; the x axis moves the view diagonally one pixel at a time, and "
                "a red cross marks a step where the top-1 class changed. A shift-invariant network would draw flat "
                "lines without crosses. In the canvas protocols the whole photo, shrunk, moves on a canvas: no "
                "content enters or leaves the view.")
    body = _figure(figures, "jaggedness", "probability of the tracked class against diagonal shift", _e(sentence))
    steps = sorted({str(((_audit(results, k).get("result") or {}).get("protocol") or {}).get("n", "?"))
                    for k in keys})
    body += ("<table><thead><tr><th>protocol</th>"
             f"<th>P(top-1 change) per 1-px step, over a {_e('/'.join(steps))}-step diagonal sweep</th>"
             "<th>mean |Δ p(top-1)|</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    body += _reproduce(results, keys)
    return _section("jaggedness", "1. Jaggedness: the photo moves one pixel at a time", body)


def _pair(metric, percent: bool = True) -> tuple[str, str]:
    value, ci = format_metric(metric, percent)
    if metric and metric.get("images") is not None and ci:
        ci += f", {metric['images']} photos"
    return value, f"({ci})" if ci else ""


def _half_pixel_grid(results: Mapping) -> str:
    """The half-pixel grid of the ``subpixel`` audit in words: "i/2, j/2 px for 1 ≤ i, j ≤ M"."""
    spec = ((_audit(results, "subpixel").get("result") or {}).get("protocol") or {}).get("spec", "")
    size = spec.split(":")[1] if spec.count(":") >= 1 else "?"
    return f"i/2, j/2 px for 1 ≤ i, j ≤ {size}, circular, Fourier resampling"


def _consistency(results: Mapping, figures: Mapping[str, str]) -> str:
    if not _audit(results, "consistency.crop"):
        return ""
    crop, _ = format_metric(_m(results, "consistency.crop", "consistency"))
    circ, _ = format_metric(_m(results, "consistency.circular", "consistency"))
    worst, _ = format_metric(_m(results, "worst_case", "worst_case_stability"))
    half, _ = format_metric(_m(results, "subpixel", "worst_case_stability"))
    g = ((_audit(results, "worst_case").get("result") or {}).get("protocol") or {}).get("n", "?")
    subpixel = (f", and {half} over every half-pixel shift ({_half_pixel_grid(results)})"
                if half != "n/a" and _audit(results, "subpixel") else "")
    sentence = (f"Two random crops of the same photo get the same top-1 class {crop} of the time, two random "
                f"circular shifts {circ}; {worst} of the photos keep their top-1 class over all {g}×{g} one-pixel "
                f"shifts{subpixel}. Bars show 95% intervals computed over photos (the pairs of one photo are not "
                f"independent), with the number of pairs n and of photos.")
    body = _figure(figures, "shift_metrics", "shift metrics with 95% intervals", _e(sentence))
    body += _figure(figures, "shift_map", "probability of the tracked class over a grid of shifts",
                    _e(f"The shift map: each square is one photo, each cell the probability of its tracked class when "
                       f"the crop window starts at (dy, dx), 0 to {g - 1 if isinstance(g, int) else g} px; a white "
                       f"cross marks a shift whose top-1 differs from the unshifted window's. A shift-invariant "
                       f"network would paint every square in one flat colour, without crosses."))
    body += _reproduce(results, ["consistency.crop", "consistency.circular", "worst_case", "subpixel", "sweep.crop",
                                 "sweep.canvas_black", "sweep.canvas_inpaint"])
    return _section("consistency", "2. Consistency under random shifts", body)


def _layer_profile(results: Mapping, figures: Mapping[str, str]) -> str:
    from shiftlab.report.plots import layer_rows

    lp = results.get("layer_profile")
    if not lp:
        return ""
    rows = layer_rows(results)
    sentence = ("Red: how much each layer's spatially averaged features change when the input moves by one pixel "
                "(a circular shift; exactly zero for any stack of stride-1 circular convolutions). Blue: the "
                "equivariance error ‖φ(Tx) − T′φ(x)‖ / ‖φ(x)‖ for crop moves that are multiples of the layer's "
                "cumulative stride, compared 16 px inside the border. Dashed lines mark the layers that subsample "
                "with stride 2, dotted lines asymmetric 'same' padding, both found by shiftlab inspect.")
    inv = [(r, r["invariance"]["value"]) for r in rows if r.get("invariance") and r["invariance"].get("value")
           is not None]
    if inv:
        top = max(inv, key=lambda t: t[1])
        sentence += (f" The 1-px change is {format_percent(inv[0][1])} after {inv[0][0]['name']} and peaks at "
                     f"{format_percent(top[1])} at {top[0]['name']} (stride {top[0]['stride']}).")
    body = _figure(figures, "layer_profile", "equivariance error along the depth of the network", _e(sentence))
    amap = lp.get("aliasing_map") or {}
    findings = amap.get("findings") or []
    size = "×".join(str(v) for v in (results.get("model") or {}).get("input_size", []))
    inspect_cmd = (f"shiftlab inspect --model {(results.get('settings') or {}).get('model')} --input-size "
                   f"{size.replace('×', ' ')}")
    body += _reproduce(results, ["sweep.crop", "layers.invariance"], [inspect_cmd])
    if findings:
        table_rows = "".join(
            f"<tr><td>{_e(f.get('name'))}</td><td>{_e(f.get('module_type'))}</td><td>{_e(f.get('kind'))}</td>"
            f"<td>{_e(f.get('detail'))}</td><td class='num'>{_e(_stride(f.get('stride')))}</td>"
            f"<td class='num'>{_e(_stride(f.get('cumulative_stride')))}</td></tr>" for f in findings)
        total = _stride(amap.get("total_stride"))
        body += (f"<h3 id='aliasing-map'>The aliasing map</h3><p>Every layer of the network that subsamples or "
                 f"breaks exact shift equivariance, in the order data flows through them (<code>shiftlab "
                 f"inspect</code>). Total stride {_e(total)}: only circular shifts that are multiples of it commute "
                 f"with every subsampling layer.</p><table><thead><tr><th>layer</th><th>type</th><th>kind</th>"
                 f"<th>detail</th><th>stride</th><th>cumulative stride</th></tr></thead><tbody>{table_rows}"
                 f"</tbody></table>")
    return _section("layers", "3. Where equivariance breaks inside the network", body)


def _stride(value) -> str:
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return "" if value is None else str(value)


def _fixes(results: Mapping, figures: Mapping[str, str]) -> str:
    from shiftlab.report.plots import fix_rows

    fx = results.get("fixes")
    if not fx:
        return ""
    budget = (results.get("settings") or {}).get("budget") or {}
    sweep, grid = budget.get("fix_sweep", 16), budget.get("fix_grid", 4)
    head = ("<tr><th>model</th><th>crop consistency</th><th>circular consistency</th>"
            f"<th>top-1 kept over a {_e(sweep)}-step diagonal sweep</th>"
            f"<th>stable over a {_e(grid)}x{_e(grid)} grid of 1-px shifts</th><th>same top-1 as original</th>"
            "<th>top-1 accuracy</th></tr>")
    rows, keys = [], []
    for row in fix_rows(results):
        rep = row.get("replacements")
        note = ""
        if rep is not None:
            note = f"<br><span class='small'>{_e(rep['replaced'])} layers replaced"
            note += f", {_e(rep['kept'])} kept</span>" if rep.get("kept") else "</span>"
        cells = [f"<td>{_e(row['name'])}{note}</td>"]
        for key in ("crop_consistency", "circular_consistency", "top1_kept", "worst_case", "agreement", "accuracy"):
            metric, audit_key = row[key]
            keys.append(audit_key)
            value, ci = format_metric(metric)
            if row["model"] == "original" and key == "agreement":
                value, ci = "(itself)", ""
            cells.append(f"<td class='num'>{_e(value)}<br><span class='small'>{_e(ci)}</span></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    sentence = ("The fixes applied to the pretrained weights without any retraining, measured on the same views as "
                "the original (same seed). Anti-aliasing and adaptive subsampling change the features the later "
                "layers were trained on, so the price is paid in agreement with the original network; the "
                "published gains come after fine-tuning.")
    body = _figure(figures, "fixes", "shift metrics before and after the fixes", _e(sentence))
    body += "<table class='wide'><thead>" + head + "</thead><tbody>" + "".join(rows) + "</tbody></table>"
    ft = fx.get("finetune")
    if ft:
        last = ft.get("last") or {}
        where = ("views of the very photos this table measures, so the row shows what fine-tuning recovers on "
                 "them, not on photos it never saw" if ft.get("same_data") else
                 f"views of {ft.get('data')}, photos this table does not measure")
        title = (fx.get("titles") or {}).get(ft.get("fix"), ft.get("fix"))
        body += (f"<p>After fine-tuning: {_e(title)} was fine-tuned for {_e(ft.get('steps'))} steps without "
                 f"labels ({_e(ft.get('views'))} views; the original network's softmax as the target) on "
                 f"{_e(where)}; at the end of training its top-1 agreed with the original on "
                 f"{_e(format_percent(last.get('agreement')))} of the training views. Its model is saved in the "
                 f"report folder as <code>{_e(ft.get('file'))}</code>, which its commands below name; "
                 f"made by <code>{_e(ft.get('command'))}</code> (with --out that file).</p>")
    cert = fx.get("certify")
    extra = []
    if cert:
        verdict = ("<span class='ok'>certified</span>" if cert.get("passed") else "<span class='fail'>not certified</span>")
        shifts = ("every shift of one period" if cert.get("full_period")
                  else f"{_e(cert.get('shifts_checked'))} shifts of one period, including (1, 1)")
        size = _stride(cert.get("input_size"))
        reason = f" ({_e(cert.get('reason'))})" if cert.get("reason") else ""
        body += (f"<h3>Certificate: the APS model under circular shifts</h3><p>{verdict}{reason}: on "
                 f"{_e(cert.get('n_inputs'))} random {_e(size)} input(s) in {_e(cert.get('dtype'))}, {shifts} "
                 f"(total stride {_e(_stride(cert.get('total_stride')))}), the logits moved by at most "
                 f"{_e(_format_number(cert.get('max_abs_deviation')))} (relative "
                 f"{_e(_format_number(cert.get('max_rel_deviation')))}; tolerance "
                 f"{_e(_format_number(cert.get('tolerance')))}). Circular invariance is exact; agreement with the "
                 f"original network is another matter (the table above).</p>")
        if cert.get("command"):
            extra.append(cert["command"])
    body += _reproduce(results, keys, extra)
    return _section("fixes", "4. The fixes on the real network, without retraining", body)


_UNIT_SUFFIX = {"rotation": "°", "scale": "×", "brightness": "×"}


def _invariances(results: Mapping, figures: Mapping[str, str]) -> str:
    kinds = [k for k in ("rotation", "scale", "brightness") if _audit(results, k)]
    if not kinds:
        return ""
    parts = []
    for kind in kinds:
        curve = (_m(results, kind, "agreement") or {}).get("curve") or {}
        values, agree = curve.get("parameters") or [], curve.get("value") or []
        if values and agree:
            worst = min(range(len(agree)), key=lambda i: agree[i])
            parts.append(f"{format_percent(agree[worst])} keep it at {kind} {values[worst]:g}{_UNIT_SUFFIX.get(kind, '')}")
    sentence = ("Top: the fraction of photos keeping the top-1 class they have at the reference value (no rotation, "
                "no zoom, unchanged brightness), with 95% intervals; bottom: the tracked class's probability, one "
                "line per photo; against rotation angle (degrees, counter-clockwise; the corners a rotation "
                "uncovers are filled), zoom factor and brightness factor. At the worst setting of each, "
                + "; ".join(parts) + ".")
    body = _figure(figures, "invariances", "stability under rotation, scale and brightness", _e(sentence))
    body += _reproduce(results, kinds)
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
    pre = m.get("preprocessing") or {}
    size = "×".join(str(v) for v in m.get("input_size", []))
    repro = ((_audit(results, "sweep.crop").get("result") or {}).get("reproducibility") or {})
    versions = ", ".join(f"{k} {v}" for k, v in (repro.get("versions") or {}).items() if v)
    rows = [
        ("model", s.get("model")), ("weights", s.get("weights") or "the model's own"),
        ("architecture", f"{m.get('name')} ({m.get('parameters', 0):,} parameters, {m.get('classes')} classes)"),
        ("input", f"{size} px; resize {pre.get('resize_size')}, {pre.get('interpolation')} "
                  f"(crop {pre.get('crop_pct')}); mean {pre.get('mean')}, std {pre.get('std')}; {pre.get('source')}"),
        ("data", s.get("data")),
        ("photos", f"{d.get('n_images')} ({d.get('labelled', 0)} with a label the model has)"),
        ("seed", s.get("seed")), ("quick", s.get("quick")),
        ("random pairs per photo", budget.get("passes")),
        ("run time", f"{run.get('seconds', '?')} s on {run.get('threads', '?')} threads ({run.get('device', '?')})"),
        ("versions", versions), ("platform", repro.get("platform")),
    ]
    table = "<table><tbody>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</tbody></table>"
    text = ("<p>Every number on this page comes from <code>shiftlab audit</code> (the same engine, the same "
            "arguments): each figure lists the commands that reproduce its numbers to the same digits, and "
            "<code>results.json</code> holds every audit's full result (format: docs/report-json.md). "
            "Each photo is resized as the model expects (shorter side to the resize size, then a centre crop), "
            "and the protocols cut their views from it: <b>crop</b>, a window of the input size at offset (dy, dx); "
            "<b>canvas</b>, the photo shrunk and pasted at (dy, dx) into a black or inpainted canvas; "
            "<b>circular</b>, the centre window rolled by (dy, dx).</p>"
            "<p>Intervals are 95% intervals computed over photos, not over pairs: the views of one photo are not "
            "independent, so an interval's width is set by the number of photos (Wilson intervals at the "
            "effective sample size of the cluster-robust variance for proportions, cluster-robust t intervals "
            "for means, never outside the metric's range). Each interval gives n (pairs, steps or views) and the "
            "number of photos behind it.</p>")
    skipped = d.get("skipped") or []
    if skipped:
        text += ("<p>Unreadable files skipped: " + ", ".join(f"{_e(p)} ({_e(r)})" for p, r in skipped) + "</p>")
    return _section("method", "How this was measured", text + table)


def render_classifier_html(results: Mapping, figures: Mapping[str, str]) -> str:
    """The report page of a classifier for saved ``results`` and ``figures`` (key -> path relative to the page).

    Every string from ``results`` is escaped; sections whose results are missing are left out.
    """
    import re

    s = results.get("settings", {})
    title = f"shiftlab report: {s.get('model', 'model')} on {s.get('data', 'data')}"
    sections = [
        _summary(results, figures),
        _classic(results, figures),
        _jaggedness(results, figures),
        _consistency(results, figures),
        _layer_profile(results, figures),
        _fixes(results, figures),
        _invariances(results, figures),
        _training(results, figures),
        _method(results),
    ]
    sections = [scrolling_tables(sec) for sec in sections if sec]
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
        f'<p class="meta">{meta}</p>\n{_banner(results)}\n'
        f"<nav><ul>{toc}</ul></nav>\n" + "\n".join(sections) + "\n</main>\n</body>\n</html>\n"
    )


def _article(number: int) -> str:
    """"a" or "an" before a number read aloud ("an 8x8 grid", "an 11x11 grid", "a 4x4 grid")."""
    text = str(number)
    return "an" if text.startswith("8") or text in ("11", "18") else "a"
