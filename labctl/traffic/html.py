"""The report as one self-contained HTML file: inline CSS and SVG from a Jinja2 template.

Nothing is fetched when the file is opened: no scripts, no external style sheets, fonts or
images (a test loads it in headless Chromium and checks that no request leaves the page).
Autoescaping is on, so names from a capture (DNS answers) cannot inject markup.

The template lives here as a string: it is code (layout), and the asset roots are for lab
data; it renders structure only and every value comes from the report document.
"""

from __future__ import annotations

from typing import Any

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>labctl traffic report</title>
<style>
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}
.flag{background:#fde2c8;border-radius:3px;padding:0 4px;margin-right:4px}
.partial{background:#ffd0d0;padding:.5em}
section.device{border-top:2px solid #888;margin-top:1.5em}
svg text{font-size:10px}
</style></head><body>
<h1>Traffic report{% if sources.lab %}: {{ sources.lab }}{% endif %}</h1>
<p>{{ sources.files|length }} capture(s), {{ sources.packets }} packets,
{{ sources.first }} .. {{ sources.last }}</p>
{% if sources.partial %}<p class="partial" id="partial">Partial report:
{% for r in sources.partial_reasons %}{{ r.file }}: {{ r.what }} at byte {{ r.offset }}.
{% endfor %}</p>{% endif %}

<h2>Device &times; hour (UTC)</h2>
{% set rows = fleet.matrix.rows %}
<svg id="heatmap" xmlns="http://www.w3.org/2000/svg" width="{{ 170 + 24 * cell }}"
     height="{{ 20 + rows|length * cell }}">
{% for h in range(24) %}<text x="{{ 170 + h * cell + 3 }}" y="12">{{ '%02d'|format(h) }}</text>{% endfor %}
{% for r in rows %}{% set y = 16 + loop.index0 * cell %}
<text x="0" y="{{ y + cell - 6 }}">{{ (r.name ~ ' ' if r.name else '') ~ r.ip }}</text>
{% for v in r.hours %}<rect class="cell" data-device="{{ r.ip }}" data-hour="{{ loop.index0 }}"
 data-packets="{{ v }}" x="{{ 170 + loop.index0 * cell }}" y="{{ y }}" width="{{ cell - 1 }}"
 height="{{ cell - 1 }}" fill="{{ shade(v, peak) }}"><title>{{ r.ip }} {{ '%02d'|format(loop.index0) }}h: {{ v }} packets</title></rect>
{% endfor %}{% endfor %}
</svg>

<h2>Top talkers</h2>
{% set top = fleet.top_talkers %}{% set most = (top|map(attribute='bytes')|max) if top else 1 %}
<svg id="talkers" xmlns="http://www.w3.org/2000/svg" width="620" height="{{ 4 + top|length * 18 }}">
{% for t in top %}<text x="0" y="{{ 13 + loop.index0 * 18 }}">{{ (t.name ~ ' ' if t.name else '') ~ t.ip }}</text>
<rect class="bar" x="170" y="{{ 3 + loop.index0 * 18 }}" height="13"
 width="{{ (350 * t.bytes / (most or 1))|round(1) }}" fill="#4a78b5"></rect>
<text x="{{ 175 + (350 * t.bytes / (most or 1))|round(1) }}" y="{{ 13 + loop.index0 * 18 }}">{{ t.bytes }} B</text>
{% endfor %}</svg>

<h2>Top external destinations</h2>
<table><tr><th>destination</th><th>name</th><th>ports</th><th>devices</th><th>packets</th><th>bytes</th></tr>
{% for e in fleet.top_external %}<tr><td>{{ e.ip }}</td><td>{{ e.name or '' }}</td>
<td>{{ e.ports|join(', ') }}</td><td>{{ e.devices|join(', ') }}</td><td>{{ e.packets }}</td><td>{{ e.bytes }}</td></tr>
{% endfor %}</table>

<h2>Devices</h2>
{% for d in devices %}
<section class="device" id="device-{{ d.ip|replace('.', '-')|replace(':', '-') }}" data-ip="{{ d.ip }}">
<h3>{{ d.name or d.ip }} ({{ d.ip }})</h3>
<p>MAC {{ d.mac or '-' }} {{ d.vendor or '' }} &middot; out {{ d.packets_out }} packets /
{{ d.bytes_out }} B &middot; in {{ d.packets_in }} packets / {{ d.bytes_in }} B &middot;
{{ d.first_seen }} .. {{ d.last_seen }}</p>
<p>{% for f in d.flags %}<span class="flag" title="{{ f.detail }}">{{ f.flag }}</span>{% endfor %}</p>
{% if d.periodicity %}<ul>{% for p in d.periodicity %}<li>{{ p.text }}</li>{% endfor %}</ul>{% endif %}
<table><tr><th>peer</th><th>name</th><th>scope</th><th>ports</th><th>out</th><th>in</th></tr>
{% for p in d.peers %}<tr><td>{{ p.ip }}</td><td>{{ p.name or '' }}</td><td>{{ p.scope }}</td>
<td>{{ p.ports|join(', ') }}</td><td>{{ p.packets_out }} / {{ p.bytes_out }} B</td>
<td>{{ p.packets_in }} / {{ p.bytes_in }} B</td></tr>{% endfor %}</table>
</section>
{% endfor %}
</body></html>
"""  # noqa: E501 (HTML lines)


def _shade(v: int, peak: int) -> str:
    if v <= 0 or peak <= 0:
        return "#f4f4f4"
    level = 0.15 + 0.85 * v / peak
    r = int(255 - level * (255 - 200))
    g = int(255 - level * (255 - 40))
    b = int(255 - level * (255 - 40))
    return f"#{r:02x}{g:02x}{b:02x}"


def render_html(doc: dict[str, Any]) -> str:
    """The report document (:func:`labctl.traffic.report.build_report`) as HTML."""
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True)
    peak = max((v for r in doc["fleet"]["matrix"]["rows"] for v in r["hours"]), default=0)
    return env.from_string(TEMPLATE).render(
        sources=doc["sources"], fleet=doc["fleet"], devices=doc["devices"],
        cell=18, peak=peak, shade=_shade)
