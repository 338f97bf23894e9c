"""`python -m pipeline serve`: a local page to use the trained models (Flask; nothing fetched at run time).

Why Flask: it is already installed with MLflow (no new dependency), serves one self-contained page
(inline CSS/JS, no CDN, so it works on an offline machine), and parses uploads with werkzeug under a
request size limit. Gradio would bring a large frontend and its own server for two small forms.

Tab "Cartoonize": upload a photo, pick the variant, swap resolution, truncation-free projection steps;
the projection runs in a background thread (one at a time) while the page polls its progress, then shows
the crop, reconstruction and cartoon with a download link. Tab "Generate": a seed, the truncation and
SeFa sliders along the variant's top directions, redrawn on every change.
Uploads: at most MAX_UPLOAD bytes, at most MAX_PIXELS pixels (checked before decoding), fully decoded
(a truncated file is an error on the page, not a crash).
"""
from __future__ import annotations

import io
import threading
import uuid

MAX_UPLOAD = 20 * 2**20
MAX_PIXELS = 40_000_000

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Cartoon-StyleGAN</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}nav a{margin-right:1em}section{display:none}
section.on{display:block}img{image-rendering:pixelated;width:192px;border:1px solid #ccc;margin:4px}
#error{color:#b00}label{display:inline-block;min-width:9em}</style></head><body>
<h1>Cartoon-StyleGAN: experiment %(experiment)s</h1>
<nav><a href="#" id="tab-cartoonize" onclick="show('cartoonize')">Cartoonize a photo</a>
<a href="#" id="tab-generate" onclick="show('generate')">Generate and edit</a></nav>
<section id="cartoonize" class="on"><form id="upload">
<p><label>Photo</label><input type="file" name="photo" id="photo" accept="image/*"></p>
<p><label>Variant</label><select name="variant" id="variant">%(variants)s</select></p>
<p><label>Swap at (px)</label><select name="swap_res" id="swap_res"><option value="">no swap</option>%(swaps)s</select></p>
<p><label>Steps</label><input name="steps" id="steps" type="number" value="%(steps)d" min="1" max="5000"></p>
<p><button type="submit" id="go">Cartoonize</button></p></form>
<p id="progress"></p><p id="error"></p><div id="result"></div></section>
<section id="generate"><p><label>Variant</label><select id="gvariant">%(variants)s</select>
<label>Seed</label><input id="seed" type="number" value="0" min="0">
<label>Truncation</label><input id="trunc" type="number" value="0.7" min="0" max="1" step="0.05"></p>
%(sliders)s<p><img id="gen" alt="generated"></p></section>
<script>
function show(t){for(const s of document.querySelectorAll('section'))s.classList.toggle('on',s.id===t);return false}
const err=document.getElementById('error'),prog=document.getElementById('progress'),res=document.getElementById('result');
document.getElementById('upload').onsubmit=async e=>{e.preventDefault();err.textContent='';res.innerHTML='';
 prog.textContent='uploading...';const r=await fetch('/api/cartoonize',{method:'POST',body:new FormData(e.target)});
 const j=await r.json();if(!r.ok){prog.textContent='';err.textContent=j.error;return}poll(j.job)};
async function poll(id){const r=await fetch('/api/job/'+id);const j=await r.json();
 if(j.error){prog.textContent='';err.textContent=j.error;return}
 if(!j.done){prog.textContent='projecting: step '+j.step+' of '+j.steps+(j.pixel_mse!==undefined?' (pixel mse '+j.pixel_mse.toFixed(4)+')':'');setTimeout(()=>poll(id),300);return}
 prog.textContent='done: pixel mse '+j.pixel_mse.toFixed(4);
 res.innerHTML=['crop','reconstruction','cartoon'].map(k=>'<figure style="display:inline-block"><img id="'+k+'" src="/api/job/'+id+'/'+k+'.png"><figcaption>'+k+'</figcaption></figure>').join('')
  +'<p><a id="download" download="cartoon.png" href="/api/job/'+id+'/cartoon.png">download the cartoon</a></p>'}
function regen(){const q=new URLSearchParams({variant:gvariant.value,seed:seed.value,truncation:trunc.value});
 for(const s of document.querySelectorAll('.sefa'))q.append(s.id,s.value);document.getElementById('gen').src='/api/generate?'+q}
for(const el of document.querySelectorAll('#generate input,#generate select'))el.oninput=regen;regen();
</script></body></html>"""


def create_app(cfg, *, steps: int = 200, components: int = 3):
    import numpy as np
    import torch
    from flask import Flask, jsonify, request, send_file
    from PIL import Image, UnidentifiedImageError

    from cartoon_stylegan.edit import sefa_directions
    from cartoon_stylegan.imageutil import to_uint8
    from cartoon_stylegan.project import center_crop_square, project
    from cartoon_stylegan.sampling import seed_latents
    from pipeline.artifacts import StagePaths
    from stages.commands import UseError, _trained, load_sampler
    from stages.models import device, load_weights, source_path

    dev = device()
    res = cfg.data.resolution
    names = list(_trained(cfg))
    if "source" not in names:
        raise UseError(f"no source generator in experiment {cfg.experiment!r} under {cfg.run_root}: run "
                       "`python -m pipeline run pretrain` first")
    # the paper's method first in the picker
    variants = sorted((n for n in names if n != "source"), key=lambda n: (not n.startswith("freezesg"), n))
    src_file, fmt = source_path(cfg, StagePaths(cfg, "finetune"))
    nets = load_weights(cfg, src_file, fmt)
    G_src = nets["g_ema"].eval().requires_grad_(False).to(dev)
    D_src = nets["d"].eval().requires_grad_(False).to(dev) if nets.get("d") is not None else None
    samplers, dirs = {}, {}
    lock = threading.Lock()  # one projection or drawing at a time: the models are shared

    def sampler_of(name, swap=None, truncation=1.0):
        key = (name, swap, truncation)
        if key not in samplers:
            samplers[key] = load_sampler(cfg, name, swap_res=swap, truncation=truncation, device=dev)[0]
        return samplers[key]

    jobs: dict[str, dict] = {}
    app = Flask("cartoon-stylegan")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD

    def png(array) -> io.BytesIO:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        buf.seek(0)
        return buf

    @app.get("/")
    def page():
        opts = "".join(f'<option value="{v}">{v}</option>' for v in (variants or ["source"]))
        swaps = "".join(f'<option value="{r}">{r}</option>' for r in (2 ** k for k in range(2, 11)) if r <= res)
        sliders = "".join(f'<p><label>SeFa direction {k}</label><input class="sefa" id="d{k}" type="range" min="-5" '
                          f'max="5" step="0.5" value="0"></p>' for k in range(components))
        return PAGE % {"experiment": cfg.experiment, "variants": opts, "swaps": swaps, "sliders": sliders,
                       "steps": steps}

    @app.errorhandler(413)
    def too_large(e):
        return jsonify(error=f"the upload is larger than {MAX_UPLOAD // 2**20} MiB"), 413

    @app.post("/api/cartoonize")
    def cartoonize():
        f = request.files.get("photo")
        if f is None or not f.filename:
            return jsonify(error="choose a photo first"), 400
        data = f.read()
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    return jsonify(error=f"the image is {im.width}x{im.height}: at most {MAX_PIXELS // 10**6} "
                                         "megapixels"), 400
                im.load()  # decode all of it: a truncated file fails here
                crop = center_crop_square(im, res)
        except Image.DecompressionBombError:
            return jsonify(error=f"{f.filename}: too large to decode safely: at most {MAX_PIXELS // 10**6} "
                                 "megapixels"), 400
        except (UnidentifiedImageError, OSError, ValueError) as e:
            return jsonify(error=f"{f.filename}: not an image that can be read ({type(e).__name__})"), 400
        variant = request.form.get("variant") or (variants[0] if variants else "")
        if variant not in variants:
            return jsonify(error=f"variant {variant!r} is not trained here; trained: {', '.join(variants) or 'none'}"), 400
        if D_src is None:
            return jsonify(error="the source checkpoint holds no discriminator, which the projection needs"), 400
        try:
            swap = int(request.form["swap_res"]) if request.form.get("swap_res") else None
            n_steps = max(1, min(5000, int(request.form.get("steps") or steps)))
            target = sampler_of(variant, swap)
        except (ValueError, UseError) as e:
            return jsonify(error=str(e).splitlines()[0]), 400
        job = {"step": 0, "steps": n_steps, "done": False}
        jid = uuid.uuid4().hex
        jobs[jid] = job

        def work():
            try:
                x = torch.from_numpy(np.asarray(crop)).permute(2, 0, 1)[None].float() / 127.5 - 1

                def progress(step, rec):
                    job.update(step=step + 1, pixel_mse=rec["pixel_mse"])
                with lock:
                    wplus, hist = project(G_src, D_src, x.to(dev), steps=n_steps, progress=progress)
                    with torch.no_grad():
                        recon = G_src(wplus, input_is="wplus", noise_mode="const")
                        toon = target.G(wplus, input_is="wplus", noise_mode="const")
                job["images"] = {k: to_uint8(v.float())[0].permute(1, 2, 0).cpu().numpy()
                                 for k, v in (("crop", x), ("reconstruction", recon), ("cartoon", toon))}
                job.update(done=True, pixel_mse=hist[-1]["pixel_mse"])
            except Exception as e:  # noqa: BLE001 -- shown on the page
                job["error"] = f"projection failed: {type(e).__name__}: {e}"
        threading.Thread(target=work, daemon=True).start()
        return jsonify(job=jid)

    @app.get("/api/job/<jid>")
    def job_state(jid):
        job = jobs.get(jid)
        if job is None:
            return jsonify(error="no such job"), 404
        return jsonify({k: v for k, v in job.items() if k != "images"})

    @app.get("/api/job/<jid>/<kind>.png")
    def job_image(jid, kind):
        job = jobs.get(jid)
        if job is None or kind not in job.get("images", {}):
            return jsonify(error="no such image"), 404
        return send_file(png(job["images"][kind]), mimetype="image/png", download_name=f"{kind}.png")

    @app.get("/api/generate")
    def generate():
        try:
            variant = request.args.get("variant") or "source"
            seed = int(request.args.get("seed", 0))
            truncation = float(request.args.get("truncation", 0.7))
            if variant not in names or not 0 <= truncation <= 1 or not 0 <= seed < 2**31:
                raise ValueError(f"variant in {names}, seed >= 0, truncation 0..1")
            s = sampler_of(variant, None, truncation)
            if variant not in dirs:
                dirs[variant] = sefa_directions(s.G, components)[1].to(dev)
            amounts = [float(request.args.get(f"d{k}", 0)) for k in range(components)]
        except (ValueError, UseError) as e:
            return jsonify(error=str(e).splitlines()[0]), 400
        with lock, torch.no_grad():
            z = seed_latents([seed], s.style_dim, dev)
            wplus = s.wplus(z) + sum(a * d for a, d in zip(amounts, dirs[variant])).view(1, 1, -1)
            img = to_uint8(s.G(wplus, input_is="wplus", noise_mode="const").float())[0].permute(1, 2, 0).cpu().numpy()
        return send_file(png(img), mimetype="image/png")

    return app
