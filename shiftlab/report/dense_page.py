"""The page of a dense model's report (``results["kind"] == "dense"``: a segmentation or image-to-image network
whose output is a (B, K, H, W) map): the same self-contained page as the classifier's (:mod:`shiftlab.report.page`:
inline CSS, a strict Content-Security-Policy, every outside string escaped, "Reproduce" commands beside each
number), with the dense audits' metrics table, the maps figure and the per-stage equivariance errors. Rendered
from the results alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from shiftlab.report.page import (_CSP, _CSS, GENERATOR, _banner, _classic, _e, _figure, _format_number, _reproduce,
                                  _section, _training, format_metric, scrolling_tables)

__all__ = ["DENSE_AUDITS", "dense_metric_rows", "render_dense_html"]

#: the dense report's audits in page order, with what each shows
DENSE_AUDITS = {"dense.sweep": "1-px diagonal rolls (circular)", "dense.circular": "random circular shifts",
                "dense.crop": "random crops (overlap only)"}
_METRIC_TITLES = {"massc": "mASSC (per-pixel top-1 agreement)", "equivariance": "equivariance error (relative)",
                  "miou": "mIoU against the masks"}
_PERCENT = {"massc": True, "miou": True, "equivariance": False}


def _result(results: Mapping, key: str) -> Mapping:
    return (((results.get("audits") or {}).get(key) or {}).get("result") or {})


def dense_metric_rows(results: Mapping) -> list[dict]:
    """One row per (audit, metric) of the dense audits: ``audit``, ``protocol``, ``metric``, the metric's dict."""
    rows = []
    for key in DENSE_AUDITS:
        result = _result(results, key)
        for name, metric in (result.get("metrics") or {}).items():
            rows.append({"audit": key, "protocol": (result.get("protocol") or {}).get("spec", ""), "metric": name,
                         "value": metric})
    return rows


def _cards(results: Mapping) -> str:
    from shiftlab.report.page import _card

    picks = [("dense.circular", "massc", "mASSC under two random circular shifts: pixels whose top-1 agrees"),
             ("dense.crop", "massc", "mASSC under two random crops, on their overlap"),
             ("dense.sweep", "massc", "mASSC after a 1-px diagonal roll (rolls 0..G)"),
             ("dense.sweep", "miou", "mIoU of the unshifted view against the masks"),
             ("dense.circular", "equivariance", "relative equivariance error of the map, circular shifts")]
    cards = []
    for key, name, what in picks:
        metric = (_result(results, key).get("metrics") or {}).get(name)
        if metric:
            cards.append(_card(what, metric, _PERCENT[name], ((results.get("audits") or {}).get(key) or {})
                               .get("command")))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _output_note(results: Mapping) -> str:
    output = (results.get("model") or {}).get("output") or {}
    shape = "×".join(str(v) for v in output.get("shape") or [])
    text = (f"The model returns a (B, {_e(shape.replace('×', ', '))}) map: {_e(output.get('classes'))} classes per "
            f"pixel, so this report measures how its output map moves with its input (mASSC, equivariance")
    text += ", mIoU)" if (results.get("data") or {}).get("masks") else ")"
    text += " instead of a classifier's top-1."
    if output.get("output_key") is not None:
        keys = ", ".join(str(k) for k in output.get("keys") or [])
        text += (f" It returns {'a dict with keys ' + _e(keys) if keys else 'a tuple'}: the report measures the "
                 f"entry <code>{_e(output['output_key'])}</code> (the audit's <code>--output-key "
                 f"{_e(output['output_key'])}</code>, named in every command below).")
    return f"<p>{text}</p>"


def _summary(results: Mapping) -> str:
    return _section("summary", "Summary", _output_note(results) + _cards(results))


def _maps(results: Mapping, figures: Mapping[str, str]) -> str:
    if "dense_maps" not in figures:
        return ""
    sentence = ("For the first images: the input, the model's top-1 class per pixel on the unshifted view (one "
                "colour per class; the legend names the classes shown), and where the top-1 changes under each "
                "audit's first compared pair, the second copy's map moved back by the shift: red where it differs, "
                "white where it agrees, grey where nothing is compared (outside the crops' overlap, an ignore "
                "pixel, or a shift the map's stride cannot represent).")
    body = _figure(figures, "dense_maps", "input, prediction and disagreement maps", _e(sentence))
    return _section("maps", "1. Where the output map changes", body + _reproduce(results, list(DENSE_AUDITS)))


def _table(results: Mapping) -> str:
    rows = []
    for row in dense_metric_rows(results):
        metric = row["value"]
        value, ci = format_metric(metric, _PERCENT.get(row["metric"], False))
        extra = ", ".join(f"{k} {_format_number(metric[k]) if isinstance(metric[k], float) else metric[k]}"
                          for k in ("pairs", "unrepresentable", "pixels", "classes") if k in metric)
        flag = " <span class='fail'>(constant predictions)</span>" if metric.get("flag") else ""
        ci_text = ci.split(", n = ")[0] if ci else ""
        rows.append(f"<tr><td>{_e(DENSE_AUDITS.get(row['audit'], row['audit']))}<br><span class='small'>"
                    f"<code>{_e(row['protocol'])}</code></span></td>"
                    f"<td>{_e(_METRIC_TITLES.get(row['metric'], row['metric']))}</td>"
                    f"<td class='num'>{_e(value)}{flag}</td><td class='num'>{_e(ci_text)}</td>"
                    f"<td class='num'>{_e(metric.get('n'))}</td><td class='num'>{_e(metric.get('images'))}</td>"
                    f"<td><span class='small'>{_e(extra)}</span></td></tr>")
    if not rows:
        return ""
    sentence = ("mASSC pools the compared pixels of all images (n); its 95% interval is computed over images (the "
                "pixels of one image are not independent). Circular shifts compare every pixel; crops only the "
                "part of the scene both views contain. mIoU's interval is a percentile bootstrap over images.")
    body = (f"<p>{_e(sentence)}</p><table class='wide'><thead><tr><th>audit</th><th>metric</th><th>value</th>"
            "<th>95% interval</th><th>n</th><th>images</th><th>counts</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>" + _reproduce(results, list(DENSE_AUDITS)))
    return _section("metrics", "2. The metrics, with intervals and counts", body)


def _layers(results: Mapping, figures: Mapping[str, str]) -> str:
    from shiftlab.report.dense_plots import dense_layer_rows

    rows = dense_layer_rows(results)
    if not rows:
        return ""
    cells = "".join(f"<tr><td>{_e(name)}</td><td class='num'>{_e(_format_number(value) if n else 'n/a')}</td>"
                    f"<td class='num'>{_e(n)}</td></tr>" for name, value, n in rows)
    sentence = ("Relative equivariance error ||φ(Tx) − T′φ(x)|| / ||φ(x)|| of each stage under the diagonal rolls, "
                "its map compared at the shift divided by its stride; n = 0 where no roll is a multiple of the stride.")
    body = _figure(figures, "dense_layers", "equivariance error per stage", _e(sentence))
    body += ("<table><thead><tr><th>stage</th><th>equivariance error</th><th>n</th></tr></thead><tbody>" + cells
             + "</tbody></table>" + _reproduce(results, ["dense.sweep"]))
    return _section("layers", "3. Where equivariance breaks inside the network", body)


def _method(results: Mapping) -> str:
    s, m, d, run = (results.get(k) or {} for k in ("settings", "model", "data", "run"))
    pre = m.get("preprocessing") or {}
    repro = _result(results, "dense.sweep").get("reproducibility") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (repro.get("versions") or {}).items() if v)
    masks = (f"yes (ignore index {d.get('ignore_index')})" if d.get("masks") else "no (mIoU needs images with masks, "
             "e.g. --data digit-masks)")
    rows = [("model", s.get("model")), ("weights", s.get("weights") or "the model's own"),
            ("architecture", f"{m.get('name')} ({m.get('parameters', 0):,} parameters, {m.get('classes')} classes)"),
            ("input", f"{'×'.join(str(v) for v in m.get('input_size', []))} px; mean {pre.get('mean')}, std "
                      f"{pre.get('std')}; {pre.get('source')}"),
            ("data", s.get("data")), ("images", d.get("n_images")), ("masks", masks), ("seed", s.get("seed")),
            ("quick", s.get("quick")),
            ("run time", f"{run.get('seconds', '?')} s on {run.get('threads', '?')} threads ({run.get('device', '?')})"),
            ("versions", versions), ("platform", repro.get("platform"))]
    table = "<table><tbody>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</tbody></table>"
    text = ("<p>Every number on this page comes from <code>shiftlab audit</code> (the same engine, the same "
            "arguments): each section lists the commands that reproduce its numbers to the same digits, and "
            "<code>results.json</code> holds every audit's full result (format: docs/report-json.md, "
            "\"Dense reports\"; the metrics: docs/audit-json.md, \"Dense outputs\").</p>")
    skipped = d.get("skipped") or []
    if skipped:
        text += "<p>Unreadable files skipped: " + ", ".join(f"{_e(p)} ({_e(r)})" for p, r in skipped) + "</p>"
    return _section("method", "How this was measured", text + table)


def render_dense_html(results: Mapping, figures: Mapping[str, str]) -> str:
    """The page of a dense model's report for saved ``results`` and ``figures`` (key -> relative path)."""
    import re

    s, d, run = (results.get(k) or {} for k in ("settings", "data", "run"))
    title = f"shiftlab report: {s.get('model', 'model')} on {s.get('data', 'data')}"
    sections = [_summary(results), _maps(results, figures), _table(results), _layers(results, figures),
                _classic(results, figures), _training(results, figures), _method(results)]
    sections = [scrolling_tables(sec) for sec in sections if sec]
    toc = "".join(f'<li><a href="#{a}">{t}</a></li>'
                  for a, t in re.findall(r'<section id="([^"]*)"><h2>(.*?)</h2>', "".join(sections)))
    meta = (f"{_e(s.get('model'))} on {_e(d.get('n_images', '?'))} images ({_e(s.get('data'))}), seed "
            f"{_e(s.get('seed'))}{', quick run' if s.get('quick') else ''}; computed in {_e(run.get('seconds', '?'))} s "
            f"by shiftlab {_e(results.get('shiftlab_version', ''))}.")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="{_e(GENERATOR)}">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            "<h1>Does the network's output map move with the image?</h1>\n"
            f'<p class="meta">{meta}</p>\n{_banner(results)}\n'
            f"<nav><ul>{toc}</ul></nav>\n" + "\n".join(sections) + "\n</main>\n</body>\n</html>\n")
