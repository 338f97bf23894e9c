"""`python -m pipeline serve`: a local page to use the trained models (Flask; nothing fetched at run time).

Why Flask: it is already installed with MLflow (no new dependency), serves one self-contained page
(inline CSS/JS, no CDN, so it works on an offline machine), and parses uploads with werkzeug under a
request size limit. Gradio would bring a large frontend and its own server for two small forms.

Tab "Cartoonize": upload a photo, pick the variant, swap resolution, truncation-free projection steps;
the projection runs in a background thread while the page polls its progress (and can cancel it), then
shows the crop, reconstruction and cartoon with a download link. Tab "Generate": a seed, the truncation
and SeFa sliders along the variant's top directions, redrawn on every change.

What a visitor can make the server hold is bounded, whatever they send:

- loaded generators: an LRU of at most MAX_SAMPLERS, keyed by (variant, swap resolution) only; the
  truncation is applied per request (``Sampler.replace``, which copies no weights);
- projection jobs: one runs at a time (they share the source G and D; a second upload is refused until
  it ends or is cancelled); at most ``max_jobs`` are kept, a finished one for ``job_ttl_s`` seconds;
- drawing (the generate tab, a job's final images) takes a short lock of its own, so the generate tab
  answers while a projection runs;
- uploads: at most MAX_UPLOAD bytes, read by :func:`cartoon_stylegan.photo.read_photo` (the CLI's reader:
  at most ``photo.MAX_PIXELS`` pixels, checked before decoding; EXIF orientation; 16-bit and alpha converted).

Every field is checked against its declaration in FIELDS (the page's input limits come from there too):
a bad value is a 400 whose one line names the field and the range.
"""
from __future__ import annotations

import functools
import io
import math
import threading
import time
import uuid
from collections import OrderedDict

MAX_UPLOAD = 20 * 2**20
MAX_SAMPLERS = 4      # generators kept loaded: each (variant, swap) is a copy of the weights (~100 MB at 256 px)
MAX_JOBS = 8          # projection jobs kept, with their images; the oldest finished one goes first
JOB_TTL_S = 15 * 60   # a finished job's images stay this long

# The page's numeric fields, declared once: (type, lowest, highest). The HTML inputs' min/max and the
# server's checks both come from here. "direction" is every SeFa slider (d0, d1, ...).
FIELDS = {
    "steps": (int, 1, 5000),
    "seed": (int, 0, 2**31 - 1),
    "truncation": (float, 0.0, 1.0),
    "direction": (float, -5.0, 5.0),
}
STEPS_RANGE = FIELDS["steps"][1:]

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Cartoon-StyleGAN</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}nav a{margin-right:1em}section{display:none}
section.on{display:block}img{image-rendering:pixelated;width:192px;border:1px solid #ccc;margin:4px}
#error,#gerror{color:#b00}label{display:inline-block;min-width:9em}</style></head><body>
<h1>Cartoon-StyleGAN: experiment %(experiment)s</h1>
<nav><a href="#" id="tab-cartoonize" onclick="show('cartoonize')">Cartoonize a photo</a>
<a href="#" id="tab-generate" onclick="show('generate')">Generate and edit</a></nav>
<section id="cartoonize" class="on"><form id="upload">
<p><label>Photo</label><input type="file" name="photo" id="photo" accept="image/*"></p>
<p><label>Variant</label><select name="variant" id="variant">%(variants)s</select></p>
<p><label>Swap at (px)</label><select name="swap_res" id="swap_res"><option value="">no swap</option>%(swaps)s</select></p>
<p><label>Steps</label><input name="steps" id="steps" type="number" value="%(steps)d" min="%(steps_lo)d" max="%(steps_hi)d"></p>
<p><label>Crop</label><select name="crop" id="crop"><option value="face">the face, aligned</option><option value="center">the centre square</option></select></p>
<p><button type="submit" id="go">Cartoonize</button> <button type="button" id="cancel" hidden>Cancel</button></p></form>
<p id="progress"></p><p id="error"></p><div id="result"></div></section>
<section id="generate"><p><label>Variant</label><select id="gvariant">%(variants)s</select>
<label>Seed</label><input id="seed" type="number" value="0" min="%(seed_lo)d" max="%(seed_hi)d">
<label>Truncation</label><input id="trunc" type="number" value="0.7" min="%(trunc_lo)g" max="%(trunc_hi)g" step="0.05"></p>
%(sliders)s<p><img id="gen" alt="generated"></p><p id="gerror"></p></section>
<script>
function show(t){for(const s of document.querySelectorAll('section'))s.classList.toggle('on',s.id===t);return false}
const err=document.getElementById('error'),prog=document.getElementById('progress'),res=document.getElementById('result'),
 cancel=document.getElementById('cancel');let current=null;
document.getElementById('upload').onsubmit=async e=>{e.preventDefault();err.textContent='';res.innerHTML='';
 prog.textContent='uploading...';const r=await fetch('/api/cartoonize',{method:'POST',body:new FormData(e.target)});
 const j=await r.json();if(!r.ok){prog.textContent='';err.textContent=j.error;return}current=j.job;cancel.hidden=false;poll(j.job)};
cancel.onclick=()=>{if(current)fetch('/api/job/'+current+'/cancel',{method:'POST'})};
async function poll(id){const r=await fetch('/api/job/'+id);const j=await r.json();
 if(j.error){cancel.hidden=true;prog.textContent='';err.textContent=j.error;return}
 if(!j.done){prog.textContent='projecting: step '+j.step+' of '+j.steps+(j.pixel_mse!==undefined?' (pixel mse '+j.pixel_mse.toFixed(4)+')':'');setTimeout(()=>poll(id),300);return}
 cancel.hidden=true;prog.textContent='done: pixel mse '+j.pixel_mse.toFixed(4);
 res.innerHTML=['crop','reconstruction','cartoon'].map(k=>'<figure style="display:inline-block"><img id="'+k+'" src="/api/job/'+id+'/'+k+'.png"><figcaption>'+k+'</figcaption></figure>').join('')
  +'<p><a id="download" download="cartoon.png" href="/api/job/'+id+'/cartoon.png">download the cartoon</a></p>'}
const gen=document.getElementById('gen'),gerr=document.getElementById('gerror');
gen.onload=()=>{gerr.textContent=''};
gen.onerror=async()=>{const r=await fetch(gen.src);gerr.textContent=(await r.json()).error};
function regen(){const q=new URLSearchParams({variant:gvariant.value,seed:seed.value,truncation:trunc.value});
 for(const s of document.querySelectorAll('.sefa'))q.append(s.id,s.value);gen.src='/api/generate?'+q}
for(const el of document.querySelectorAll('#generate input,#generate select'))el.oninput=regen;regen();
</script></body></html>"""


class FieldError(ValueError):
    """A form or query field with a value the page cannot use: one line naming the field."""


def number_field(values, name: str, default, spec: str | None = None):
    """``values[name]`` (a request's form or query) parsed and checked as FIELDS[spec or name] declares; empty or
    absent gives ``default``. Raises FieldError naming the field, the value and the range."""
    kind, lo, hi = FIELDS[spec or name]
    raw = values.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value) or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise FieldError(f"{name}={raw[:40]!r}: expected {what} in {lo}..{hi}")
    return value


def create_app(cfg, *, steps: int = 200, components: int = 3, max_jobs: int = MAX_JOBS,
               job_ttl_s: float = JOB_TTL_S):
    import numpy as np
    import torch
    from flask import Flask, jsonify, request, send_file
    from PIL import Image

    from cartoon_stylegan.edit import sefa_directions
    from cartoon_stylegan.imageutil import to_uint8
    from cartoon_stylegan.photo import CROPS, PhotoError, photo_squares, read_photo
    from cartoon_stylegan.project import ProjectionCancelled, project
    from cartoon_stylegan.sampling import seed_latents
    from stages.paths import StagePaths
    from stages.use.trained import UseError, load_sampler, missing_source_hint, trained_networks
    from stages.models import device, load_weights, source_path

    if not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise UseError(f"steps {steps}: expected {STEPS_RANGE[0]}..{STEPS_RANGE[1]}")
    if max_jobs < 1:
        raise ValueError(f"create_app: max_jobs must be >= 1, got {max_jobs}")
    dev = device()
    res = cfg.data.resolution
    names = list(trained_networks(cfg))
    if "source" not in names:
        src_file, _ = source_path(cfg, StagePaths(cfg, "finetune"))
        raise UseError(f"no source generator in experiment {cfg.experiment!r} under {cfg.run_root}: "
                       f"{missing_source_hint(cfg, src_file)}")
    # the paper's method first in the picker
    variants = sorted((n for n in names if n != "source"), key=lambda n: (not n.startswith("freezesg"), n))
    swaps = [r for r in (2 ** k for k in range(2, 11)) if r <= res]
    src_file, fmt = source_path(cfg, StagePaths(cfg, "finetune"))
    nets = load_weights(cfg, src_file, fmt)
    G_src = nets["g_ema"].eval().requires_grad_(False).to(dev)
    D_src = nets["d"].eval().requires_grad_(False).to(dev) if nets.get("d") is not None else None

    @functools.lru_cache(maxsize=MAX_SAMPLERS)
    def sampler_of(name, swap):
        """The untruncated sampler of a (variant, swap); callers apply their truncation with ``replace``."""
        return load_sampler(cfg, name, swap_res=swap, truncation=1.0, device=dev)[0]

    dirs: dict[str, torch.Tensor] = {}  # SeFa directions per trained model name (a fixed, small set)
    draw_lock = threading.Lock()  # one forward pass at a time on the shared generators: short, never a projection

    # the jobs: insertion-ordered; "_"-keys are the server's own (cancel event, images, end time)
    jobs: OrderedDict[str, dict] = OrderedDict()
    jobs_lock = threading.Lock()

    def running_job() -> dict | None:  # under jobs_lock
        return next((j for j in jobs.values() if "_ended" not in j), None)

    def expire() -> None:  # under jobs_lock
        now = time.monotonic()
        for jid in [k for k, j in jobs.items() if "_ended" in j and now - j["_ended"] >= job_ttl_s]:
            del jobs[jid]

    def add_job(job: dict) -> str | None:
        """The new job's id, or None while another one runs."""
        with jobs_lock:
            expire()
            if running_job() is not None:
                return None
            while len(jobs) >= max_jobs:  # all finished (one runs at a time): the oldest goes
                jobs.popitem(last=False)
            jid = uuid.uuid4().hex
            jobs[jid] = job
            return jid

    def find_job(jid: str) -> dict | None:
        with jobs_lock:
            expire()
            return jobs.get(jid)

    app = Flask("cartoon-stylegan")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    app.extensions["cartoon_stylegan"] = {"samplers": sampler_of, "jobs": jobs}  # for tests and debugging

    def png(array) -> io.BytesIO:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        buf.seek(0)
        return buf

    def bad(message: str, status: int = 400):
        return jsonify(error=message), status

    @app.get("/")
    def page():
        opts = "".join(f'<option value="{v}">{v}</option>' for v in (variants or ["source"]))
        swap_opts = "".join(f'<option value="{r}">{r}</option>' for r in swaps)
        _, d_lo, d_hi = FIELDS["direction"]
        sliders = "".join(f'<p><label>SeFa direction {k}</label><input class="sefa" id="d{k}" type="range" '
                          f'min="{d_lo:g}" max="{d_hi:g}" step="0.5" value="0"></p>' for k in range(components))
        return PAGE % {"experiment": cfg.experiment, "variants": opts, "swaps": swap_opts, "sliders": sliders,
                       "steps": steps, "steps_lo": FIELDS["steps"][1], "steps_hi": FIELDS["steps"][2],
                       "seed_lo": FIELDS["seed"][1], "seed_hi": FIELDS["seed"][2],
                       "trunc_lo": FIELDS["truncation"][1], "trunc_hi": FIELDS["truncation"][2]}

    @app.errorhandler(413)
    def too_large(e):
        return bad(f"the upload is larger than {MAX_UPLOAD // 2**20} MiB", 413)

    def swap_field(values):
        raw = values.get("swap_res") or ""
        if not raw.strip():
            return None
        if raw.strip() in map(str, swaps):
            return int(raw)
        raise FieldError(f"swap_res={raw[:40]!r}: expected one of {', '.join(map(str, swaps))} (pixels), "
                         "or empty for no swap")

    @app.post("/api/cartoonize")
    def cartoonize():
        f = request.files.get("photo")
        if f is None or not f.filename:
            return bad("choose a photo first")
        variant = request.form.get("variant") or (variants[0] if variants else "")
        if variant not in variants:
            return bad(f"variant={variant[:40]!r}: not trained here; trained: {', '.join(variants) or 'none'}")
        try:
            swap = swap_field(request.form)
            n_steps = number_field(request.form, "steps", steps)
        except FieldError as e:
            return bad(str(e))
        crop_mode = request.form.get("crop") or "face"
        if crop_mode not in CROPS:
            return bad(f"crop={crop_mode[:20]!r}: expected one of {', '.join(CROPS)}")
        if D_src is None:
            return bad("the source checkpoint holds no discriminator, which the projection needs")
        with jobs_lock:
            busy = running_job()
        if busy is not None:  # checked again when the job is added; this spares decoding the upload
            return bad(f"another photo is being cartoonized (step {busy['step']} of {busy['steps']}): wait for it "
                       "or cancel it", 409)
        try:
            squares = photo_squares(read_photo(f.read(), name=f.filename[:100]), res, crop=crop_mode,
                                    name=f.filename[:100])
            crop, how = squares[0]  # the most confident face (the CLI cartoonizes each)
            target = sampler_of(variant, swap)
        except (PhotoError, UseError) as e:
            return bad(str(e).splitlines()[0])
        job = {"step": 0, "steps": n_steps, "done": False, "_cancel": threading.Event(), "crop": how,
               "faces": len(squares)}
        jid = add_job(job)
        if jid is None:
            return bad("another photo is being cartoonized: wait for it or cancel it", 409)

        def progress(step, rec):
            job.update(step=step + 1, pixel_mse=rec["pixel_mse"])

        def work():
            try:
                x = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() / 127.5 - 1
                wplus, hist = project(G_src, D_src, x.to(dev), steps=n_steps, progress=progress,
                                      cancel=job["_cancel"])
                with draw_lock, torch.no_grad():
                    recon = G_src(wplus, input_is="wplus", noise_mode="const")
                    toon = target.G(wplus, input_is="wplus", noise_mode="const")
                job["_images"] = {k: to_uint8(v.float())[0].permute(1, 2, 0).cpu().numpy()
                                  for k, v in (("crop", x), ("reconstruction", recon), ("cartoon", toon))}
                job.update(done=True, pixel_mse=hist[-1]["pixel_mse"])
            except ProjectionCancelled as e:
                job.update(error=str(e), cancelled=True)
            except Exception as e:  # noqa: BLE001 -- shown on the page
                job["error"] = f"projection failed: {type(e).__name__}: {e}"
            finally:
                job["_ended"] = time.monotonic()
        threading.Thread(target=work, daemon=True, name=f"projection-{jid[:8]}").start()
        return jsonify(job=jid)

    @app.get("/api/job/<jid>")
    def job_state(jid):
        job = find_job(jid)
        if job is None:
            return bad("no such job (finished jobs are kept for a while, then dropped)", 404)
        return jsonify({k: v for k, v in job.copy().items() if not k.startswith("_")})  # a copy: the worker adds keys

    @app.post("/api/job/<jid>/cancel")
    def job_cancel(jid):
        job = find_job(jid)
        if job is None:
            return bad("no such job", 404)
        if "_ended" in job:
            return bad("the job has already ended", 409)
        job["_cancel"].set()  # the projection checks it before its next step
        return jsonify(cancelling=True), 202

    @app.get("/api/job/<jid>/<kind>.png")
    def job_image(jid, kind):
        job = find_job(jid)
        if job is None or kind not in job.get("_images", {}):
            return bad("no such image", 404)
        return send_file(png(job["_images"][kind]), mimetype="image/png", download_name=f"{kind}.png")

    @app.get("/api/generate")
    def generate():
        q = request.args
        variant = q.get("variant") or "source"
        if variant not in names:
            return bad(f"variant={variant[:40]!r}: not trained here; trained: {', '.join(names)}")
        try:
            seed = number_field(q, "seed", 0)
            truncation = number_field(q, "truncation", 0.7)
            amounts = [number_field(q, f"d{k}", 0.0, "direction") for k in range(components)]
            s = sampler_of(variant, None).replace(truncation=truncation)
        except (FieldError, UseError) as e:
            return bad(str(e).splitlines()[0])
        with draw_lock, torch.no_grad():
            if variant not in dirs:
                dirs[variant] = sefa_directions(s.G, components)[1].to(dev)
            z = seed_latents([seed], s.style_dim, dev)
            wplus = s.wplus(z) + sum(a * d for a, d in zip(amounts, dirs[variant])).view(1, 1, -1)
            img = to_uint8(s.G(wplus, input_is="wplus", noise_mode="const").float())[0].permute(1, 2, 0).cpu().numpy()
        return send_file(png(img), mimetype="image/png")

    return app
