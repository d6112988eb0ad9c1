"""The Jinja2 template of report.html (kept apart from report.py to keep both short).

Self-contained: inline CSS and JS, images as data URIs, no network. Images shared by several
cards (the thumbnail of one record seen by several models and modes) are stored once in a JSON
block and put into their <img> elements by the script at load time.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>MGPO evaluation report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
.meta { color: #666; font-size: .85em; }
.filters { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; z-index: 2; }
.filters label { margin-right: 1em; font-size: .9em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 1em; }
.card { border: 2px solid #ccc; border-radius: 6px; padding: 8px; width: 560px; font-size: .82em; }
.card.ok { border-color: #4a4; } .card.bad { border-color: #c44; }
.card h3 { margin: 0 0 .3em; font-size: 1em; }
.badge { display: inline-block; padding: 0 .4em; border-radius: 3px; color: #fff; font-weight: bold; }
.badge.ok { background: #393; } .badge.bad { background: #c33; }
.views { display: flex; gap: 8px; align-items: flex-start; }
.frame { position: relative; display: inline-block; line-height: 0; }
.frame img { max-width: 340px; max-height: 260px; }
.box { position: absolute; border: 2px solid; box-sizing: border-box; }
.box.pred { border-color: #e11; } .box.target { border-color: #1c1; border-style: dashed; }
.crop img { max-width: 200px; max-height: 200px; border: 1px solid #999; }
.turn pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: .3em; margin: .2em 0; max-height: 12em; overflow: auto; }
.err { color: #b00; }
.plots img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
</style>
</head>
<body>
<h1>MGPO evaluation report</h1>
<p class="meta">{{ subtitle }}</p>

<h2>Metrics</h2>
{% for bench, tables in metric_tables.items() %}
<h3>{{ bench }}</h3>
<table class="metrics">
<tr><th class="l">model</th><th class="l">mode</th><th>questions</th><th>accuracy</th><th>95% interval</th><th>std (repeats)</th><th>chance</th>
<th>valid box</th><th>mean IoU</th><th>crop hit</th><th>turns</th><th>tokens/sample</th><th>s/sample</th><th>samples/s</th><th>errors</th></tr>
{% for t in tables %}
<tr><td class="l">{{ t.model }}</td><td class="l">{{ t.mode }}</td><td>{{ t.m.n }}</td><td><b>{{ pct(t.m.accuracy) }}</b></td>
<td>{{ pct(t.m.accuracy_ci_low) }}–{{ pct(t.m.accuracy_ci_high) }}</td><td>{{ pct(t.m.accuracy_std) }}</td><td>{{ pct(t.m.chance) }}</td>
<td>{{ opt_pct(t.m.get('valid_box_ratio')) }}</td><td>{{ opt_num(t.m.get('mean_iou')) }}</td><td>{{ opt_pct(t.m.get('crop_hit_ratio')) }}</td><td>{{ opt_num(t.m.get('mean_turns')) }}</td>
<td>{{ "%.1f"|format(t.m.tokens_per_sample) }}</td><td>{{ "%.3f"|format(t.m.seconds_per_sample) }}</td><td>{{ "%.2f"|format(t.m.samples_per_second) }}</td><td>{{ t.m.errors }}</td></tr>
{% endfor %}
</table>
<table class="categories">
<tr><th class="l">model</th><th class="l">mode</th>{% for c in categories[bench] %}<th>{{ c }}</th>{% endfor %}</tr>
{% for t in tables %}
<tr><td class="l">{{ t.model }}</td><td class="l">{{ t.mode }}</td>{% for c in categories[bench] %}{% set cm = t.m.categories.get(c) %}
<td>{% if cm %}{{ pct(cm.accuracy) }} <span class="meta">({{ pct(cm.accuracy_ci_low) }}–{{ pct(cm.accuracy_ci_high) }}, n={{ cm.n }})</span>{% else %}–{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endfor %}

{% if plots %}
<h2>Plots</h2>
<div class="plots">{% for name, uri in plots %}<figure><img alt="{{ name }}" src="{{ uri }}"><figcaption class="meta">{{ name }}</figcaption></figure>{% endfor %}</div>
{% endif %}

<h2>Samples</h2>
<p class="meta">{{ cards|length }} cards (at most {{ max_cards }} per model, benchmark and mode). Red: the model's box mapped to the original image; dashed green: the target.</p>
<div class="filters">
{% for f in filters %}
<label>{{ f.label }} <select id="f-{{ f.key }}" data-key="{{ f.key }}"><option value="">all</option>{% for v in f.choices %}<option value="{{ v }}">{{ v }}</option>{% endfor %}</select></label>
{% endfor %}
<span class="meta">shown: <b id="shown-count">{{ cards|length }}</b></span>
</div>
<div class="cards">
{% for c in cards %}
<div class="card {{ 'ok' if c.correct else 'bad' }}" data-correct="{{ 'correct' if c.correct else 'incorrect' }}" data-category="{{ c.category }}" data-mode="{{ c.mode }}" data-model="{{ c.model }}" data-benchmark="{{ c.benchmark }}">
<h3><span class="badge {{ 'ok' if c.correct else 'bad' }}">{{ 'right' if c.correct else 'wrong' }}</span> {{ c.id }}</h3>
<div class="meta">{{ c.model }} · {{ c.benchmark }} · {{ c.mode }} · {{ c.category }}{% if c.cycle %} · cycle {{ c.cycle }}{% endif %}{% if c.repeat %} · repeat {{ c.repeat }}{% endif %}{% if c.target_size is not none %} · target size {{ c.target_size }}{% endif %}</div>
<div class="views">
{% if c.thumb %}<div class="frame"><img class="orig" alt="original" data-img="{{ c.thumb }}">{% for b in c.overlays %}<div class="box {{ b.kind }}" style="left:{{ b.left }}%;top:{{ b.top }}%;width:{{ b.width }}%;height:{{ b.height }}%"></div>{% endfor %}</div>
{% else %}<div class="err">original image unavailable: {{ c.image_error }}</div>{% endif %}
{% for crop in c.crops %}<div class="crop">{% if crop.img %}<img class="cropimg" alt="crop" data-img="{{ crop.img }}"><div class="meta">crop {{ loop.index }}: {{ crop.caption }}</div>{% else %}<div class="meta">no crop: {{ crop.caption }}</div>{% endif %}</div>{% endfor %}
</div>
<p><b>Q:</b> {{ c.question }}</p>
<ol type="A">{% for o in c.options %}<li>{{ o }}{% if loop.index0 == c.answer_index %} <b>(truth)</b>{% endif %}{% if loop.index0 == c.pred_index %} <b>(model)</b>{% endif %}</li>{% endfor %}</ol>
{% for t in c.turns %}<div class="turn"><details><summary>turn {{ loop.index }} prompt</summary><pre>{{ t.prompt }}</pre></details><div>turn {{ loop.index }} response:</div><pre>{{ t.response }}</pre></div>{% endfor %}
<p><b>answer:</b> {{ c.prediction or '(none)' }} · <b>truth:</b> {{ c.answer }}{% if c.iou is not none %} · IoU {{ "%.2f"|format(c.iou) }}{% endif %}{% if c.crop_hit is not none %} · crop {{ 'contains' if c.crop_hit else 'misses' }} the target{% endif %}</p>
{% if c.error %}<p class="err">error: {{ c.error }}</p>{% endif %}
</div>
{% endfor %}
</div>
<script type="application/json" id="mgpo-images">{{ images_json|safe }}</script>
<script>
(function () {
  "use strict";
  var images = JSON.parse(document.getElementById("mgpo-images").textContent);
  document.querySelectorAll("img[data-img]").forEach(function (img) {
    img.src = images[img.getAttribute("data-img")];
  });
  var selects = Array.prototype.slice.call(document.querySelectorAll(".filters select"));
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var ok = selects.every(function (s) {
        return !s.value || card.getAttribute("data-" + s.getAttribute("data-key")) === s.value;
      });
      card.style.display = ok ? "" : "none";
      if (ok) { shown += 1; }
    });
    document.getElementById("shown-count").textContent = String(shown);
  }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  window.mgpoApplyFilters = apply;
  apply();
})();
</script>
</body>
</html>
"""
