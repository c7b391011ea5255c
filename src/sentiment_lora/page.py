"""HTML pages of a classifier: the run report (``report.html``) and the serving page.

Both are single files with their images embedded (data URIs), no scripts or fonts from
anywhere else: they open offline, from a file or from the server. The card (what the
classifier is and how well it did) is built once here and shown by both.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from .layout import CALIBRATION, CONFIG, CONFUSION, CURVES, METRICS, PREDICTIONS, REPORT, TRAIN_LOG

PLOTS = ((CURVES, "Training curves"), (CONFUSION, "Confusion matrix"),
         (CALIBRATION, "Reliability diagram"))

_STYLE = """
:root{--fg:#1d232a;--muted:#5b6670;--line:#d9dee3;--accent:#2f6fdb;--bg:#fafbfc}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
color:var(--fg);background:var(--bg)}main{max-width:980px;margin:0 auto;padding:16px}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:1.4em 0 .5em;border-bottom:1px solid var(--line)}
table{border-collapse:collapse;width:100%;margin:.4em 0;display:block;overflow-x:auto}
td,th{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
td.text{white-space:normal;min-width:16em}.muted{color:var(--muted)}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:8px}
.fact{min-width:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px}
.fact b{display:block;font-size:1.1em;overflow-wrap:break-word}code{white-space:pre-wrap;overflow-wrap:anywhere}
img{max-width:100%;height:auto;border:1px solid var(--line);
border-radius:4px;background:#fff}pre{background:#fff;border:1px solid var(--line);padding:8px;overflow-x:auto;
font-size:13px}figure{margin:.6em 0}figure img{max-width:min(100%,760px)}figcaption{color:var(--muted);font-size:.9em}
"""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def _num(x, digits: int = 4) -> str:
    """A figure for the page; a missing or non-finite one (an older metrics.json may hold NaN,
    which Python's json reads) is n/a, as an undefined figure is."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _cell(x) -> str:
    """A table cell: text as it is, a non-finite number as n/a."""
    return "n/a" if isinstance(x, float) and not math.isfinite(x) else str(x)


def image_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def facts(run_dir: str | Path, spec=None) -> dict:
    """What the card shows, read from a run (or exported) folder; missing parts are None."""
    from .config import load_config
    from .errors import UserError
    from .spec import ClassifierSpec

    run_dir = Path(run_dir)
    if spec is None:
        spec = ClassifierSpec.load(run_dir, verify=False)
    metrics = _read_json(run_dir / METRICS)
    metrics = metrics if isinstance(metrics, dict) else {}
    try:
        cfg = load_config(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
    except UserError:
        cfg = None
    b = spec.base_model
    base = b.origin if b.bundled and b.origin else (f"{b.name_or_path} ({b.gguf_file})" if b.gguf_file
                                                    else b.name_or_path)
    return {"name": run_dir.resolve().name, "base_model": base, "labels": spec.label_words,
            "template": spec.prompt.template, "max_length": spec.prompt.max_length,
            "truncation": spec.prompt.truncation, "threshold": spec.threshold, "method": spec.method,
            "dataset": spec.data.get("dataset"), "lora": dict(cfg.lora.__dict__) if cfg else None,
            "config_yaml": (run_dir / CONFIG).read_text(encoding="utf-8") if cfg else None,
            "metrics": metrics, "data": metrics.get("data") if isinstance(metrics.get("data"), dict) else {},
            "stack": spec.stack.baseline if spec.stack else None}


def card_html(f: dict, run_dir: str | Path) -> str:
    """The classifier's card: base model, LoRA, data, test metrics with their interval, plots."""
    m, d = f["metrics"], f["data"]
    ci = m.get("accuracy_ci95") if isinstance(m.get("accuracy_ci95"), list) else None
    acc = (f"{_num(m.get('accuracy'))} <span class=muted>(95% CI {_num(ci[0], 3)}–{_num(ci[1], 3)}, "
           f"n={escape(_cell(m.get('n')))})</span>") if ci and len(ci) == 2 else "n/a"
    lora = f["lora"]
    lora_text = (f"r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, "
                 f"targets {', '.join(lora['target_modules'])}") if lora else "n/a"
    sizes = (f"{d.get('train_sample', '?')} train / {d.get('val_sample', '?')} validation / "
             f"{d.get('test_sample', '?')} test") if d else "n/a"
    items = [("Base model", escape(str(f["base_model"]))), ("LoRA", escape(lora_text)),
             ("Training data", escape(f"{f['dataset'] or 'n/a'}: {sizes}")), ("Test accuracy", acc),
             ("Macro F1 · ROC-AUC · ECE",
              f"{_num(m.get('macro_f1'))} · {_num(m.get('roc_auc'))} · {_num(m.get('ece'))}"),
             ("Labels", escape(", ".join(f["labels"]))),
             ("Decision", escape(f"p({f['labels'][1]}) ≥ {_num(f['threshold'])}" if len(f["labels"]) == 2
                                 else "most probable label")),
             ("Max length", escape(f"{f['max_length']} tokens, cut {f['truncation']}"))]
    if f.get("stack"):
        st = m.get("stack") if isinstance(m.get("stack"), dict) else {}
        parts = st.get("test") if isinstance(st.get("test"), dict) else {}

        def acc_of(name):
            part = parts.get(name)
            return _num(part.get("accuracy")) if isinstance(part, dict) else "n/a"

        # The test figures above are the LLM's own; the stack decides, so it comes first.
        items.insert(3, ("Stacked with " + escape(f["stack"]),
                         escape(f"test accuracy {acc_of('stack')} (LLM alone {acc_of('llm')}, "
                                f"{f['stack']} alone {acc_of('baseline')})")))
    out = ['<div class=facts>'] + [f'<div class=fact><span class=muted>{k}</span><b>{v}</b></div>' for k, v in items]
    out.append("</div>")
    out.append(f"<p class=muted>Template: <code>{escape(f['template'])}</code></p>")
    for name, title in PLOTS:
        uri = image_uri(Path(run_dir) / name)
        if uri:
            out.append(f'<figure><img src="{uri}" alt="{escape(title)}"><figcaption>{escape(title)}</figcaption>'
                       f"</figure>")
    return "\n".join(out)


def _per_class(m: dict) -> str:
    rows = m.get("per_class") if isinstance(m.get("per_class"), dict) else {}
    if not rows:
        return ""
    body = "".join(f"<tr><td>{escape(str(w))}</td><td>{_num(r.get('precision'))}</td><td>{_num(r.get('recall'))}"
                   f"</td><td>{_num(r.get('f1'))}</td><td>{escape(_cell(r.get('support')))}</td></tr>"
                   for w, r in rows.items() if isinstance(r, dict))
    return ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
            f"{body}</table>")


def confident_mistakes(rows: list[dict], n: int = 10) -> list[dict]:
    """The ``n`` wrong predictions made with the highest probability."""
    wrong = [r for r in rows if r.get("pred") is not None and r.get("pred") != r.get("gold")
             and isinstance(r.get("prob"), (int, float)) and math.isfinite(r["prob"])]
    return sorted(wrong, key=lambda r: -r["prob"])[:n]


def report_html(run_dir: str | Path, spec=None) -> str:
    """``report.html``: metrics with intervals, plots, config, training log, confident mistakes."""
    run_dir = Path(run_dir)
    f = facts(run_dir, spec)
    log = _jsonl(run_dir / TRAIN_LOG)
    mistakes = confident_mistakes(_jsonl(run_dir / PREDICTIONS))
    keys = ["step", "epoch", "loss", "lr", "val_accuracy", "skipped_steps"]
    log_rows = "".join("<tr>" + "".join(f"<td>{escape(_cell(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in log)
    mistake_rows = "".join(
        f"<tr><td>{escape(str(r.get('id', '')))}</td><td class=text>{escape(str(r.get('text', '(not saved)')))}</td>"
        f"<td>{escape(str(r['gold']))}</td><td>{escape(str(r['pred']))}</td><td>{_num(r['prob'])}</td></tr>"
        for r in mistakes)
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        f"<title>Report: {escape(f['name'])}</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{escape(f['name'])}</h1><p class=muted>A {len(f['labels'])}-class classifier fine-tuned with "
        f"sentiment-lora; everything below was measured on its held-out test sample.</p>",
        card_html(f, run_dir), "<h2>Per class</h2>", _per_class(f["metrics"]) or "<p class=muted>n/a</p>",
        "<h2>The 10 most confident mistakes</h2>",
        ("<table><tr><th>id</th><th>text</th><th>gold</th><th>predicted</th><th>probability</th></tr>"
         f"{mistake_rows}</table>") if mistakes else "<p class=muted>none</p>",
        "<h2>Training log</h2>",
        ("<table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + f"</tr>{log_rows}</table>") if log
        else "<p class=muted>n/a</p>",
        "<h2>Resolved config</h2>", f"<pre>{escape(f['config_yaml'] or 'n/a')}</pre>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def write_report(run_dir: str | Path, spec=None) -> Path:
    from .storage import write_text

    return write_text(Path(run_dir) / REPORT, report_html(run_dir, spec))


def serving_page(run_dir: str | Path, spec=None) -> str:
    """``GET /``: a box for a review, a bar per label with its probability and the time the
    request took, then the classifier's card. Plain HTML and a few lines of script."""
    f = facts(run_dir, spec)
    script = """
const form=document.getElementById('f'),out=document.getElementById('out'),btn=document.getElementById('go');
document.getElementById('t').addEventListener('keydown',e=>{if(e.key==='Enter'&&(e.ctrlKey||e.metaKey))
form.requestSubmit()});
form.addEventListener('submit',async e=>{e.preventDefault();const text=document.getElementById('t').value;
btn.disabled=true;out.textContent='…';const t0=performance.now();
try{const r=await fetch('classify',{method:'POST',headers:{'Content-Type':'application/json'},
body:JSON.stringify({inputs:text})});const j=await r.json();const ms=performance.now()-t0;
if(!r.ok){out.innerHTML='';const p=document.createElement('p');p.className='err';p.textContent=j.error||r.status;
out.appendChild(p);return}
const res=j.results[0];out.innerHTML='';const h=document.createElement('p');h.id='label';
h.innerHTML='<b></b> <span class=muted></span>';h.querySelector('b').textContent=res.label;
h.querySelector('span').textContent=`${ms.toFixed(0)} ms (${j.ms.toFixed(0)} ms of it queued and scored)`;
out.appendChild(h);
for(const [w,p] of Object.entries(res.probs)){const row=document.createElement('div');row.className='bar';
row.dataset.label=w;row.dataset.prob=p;row.innerHTML='<span class=w></span><span class=track><span class=fill>'+
'</span></span><span class=p></span>';row.querySelector('.w').textContent=w;
row.querySelector('.fill').style.width=(100*p).toFixed(1)+'%';row.querySelector('.p').textContent=
(100*p).toFixed(1)+'%';out.appendChild(row)}}catch(err){out.textContent=String(err)}finally{btn.disabled=false}});
"""
    style = _STYLE + """
textarea{width:100%;min-height:8em;font:inherit;padding:8px;border:1px solid var(--line);border-radius:6px}
button{font:inherit;padding:8px 18px;margin-top:8px;border:0;border-radius:6px;background:var(--accent);color:#fff}
button:disabled{opacity:.5}.bar{display:flex;align-items:center;gap:8px;margin:4px 0}.bar .w{width:7em;
overflow:hidden;text-overflow:ellipsis}.track{flex:1;background:#e8ecf0;border-radius:4px;height:14px}
.fill{display:block;height:14px;background:var(--accent);border-radius:4px}.bar .p{width:4em;text-align:right}
.err{color:#b00020}#label b{font-size:1.3em}
"""
    return "\n".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        f"<title>{escape(f['name'])}: sentiment-lora</title><style>{style}</style></head><body><main>",
        f"<h1>{escape(f['name'])}</h1>",
        '<form id=f><label for=t class=muted>Type or paste a review (Ctrl+Enter classifies it)</label>',
        '<textarea id=t required placeholder="A wonderful, moving film."></textarea>',
        "<button id=go type=submit>Classify</button></form><div id=out aria-live=polite></div>",
        "<h2>The classifier</h2>", card_html(f, run_dir),
        f"<script>{script}</script></main></body></html>",
    ])
