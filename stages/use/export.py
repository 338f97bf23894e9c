"""``python -m pipeline export``: a trained generator in rosinality's checkpoint layout, TorchScript or ONNX.

    python -m pipeline export --variant freezesg --format rosinality --out cartoon.pt
    python -m pipeline export --variant freezesg --swap-res 16 --format onnx --out swapped.onnx
    python -m pipeline export --checkpoint network-snapshot.pkl --format torchscript --out g.ts

From the experiment of the current config (``--variant``, as ``generate`` picks it) or from any
checkpoint file a run could start from (``--checkpoint``, its format guessed or given). The
library side is ``cartoon_stylegan.checkpoint.export``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline.artifacts import write_json
from pipeline.registry import Command
from stages.use.trained import UseError, check_use_args, load_sampler, writable_folder


def _arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--variant", help="source, or a fine-tuned variant of the experiment (NAME or NAME-seedK)")
    src.add_argument("--checkpoint", help="a checkpoint file (this project's, rosinality's .pt or NVlabs' .pkl)")
    p.add_argument("--checkpoint-format", default=None,
                   help="format of --checkpoint: native, rosinality, nvlabs (default: found by trying each)")
    p.add_argument("--swap-res", type=int, default=None,
                   help="with --variant: the source's layers up to this resolution, the variant's above, as one network")
    p.add_argument("--format", required=True, choices=("rosinality", "torchscript", "onnx"))
    p.add_argument("--truncation", type=float, default=1.0,
                   help="torchscript/onnx: truncation psi built into the network, 0..1 (default %(default)s = none)")
    p.add_argument("--input", choices=("z", "wplus"), default="z",
                   help="torchscript/onnx: the network's input, z (N, style_dim) or W+ (N, n_latent, style_dim)")
    p.add_argument("--mapping", choices=("own", "source"), default=None,
                   help="rosinality, FreezeSG variants only: the one mapping network his file can hold -- the "
                        "variant's own, or the source's (the reference Colab drives both generators with the "
                        "source's w); neither is exactly how the variant is sampled here")
    p.add_argument("--out", required=True, help="the file to write (a JSON of what was done goes beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")


def _out(path: str, overwrite: bool = False) -> Path:
    p = Path(path)
    if p.exists() and p.is_dir():
        raise UseError(f"--out {path}: is a folder; give a file name")
    if p.name.startswith(".") or not p.name:
        raise UseError(f"--out {path}: give a plain file name")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise UseError(f"--out {path}: exists; give another name, or --overwrite to replace it")
    writable_folder(p.parent, path)  # made and writable now, not a traceback after the export's work
    return p


def _from_checkpoint(args):
    """(sampler, nets, described) from --checkpoint."""
    from cartoon_stylegan.checkpoint import formats as importers
    from cartoon_stylegan.sampling import PREFIX_META_KEY, Sampler

    f = Path(args.checkpoint).expanduser()
    if not f.exists():
        raise UseError(f"--checkpoint {args.checkpoint}: no such file")
    if f.is_dir():
        raise UseError(f"--checkpoint {args.checkpoint}: is a folder; give a checkpoint file")
    if not f.is_file():
        raise UseError(f"--checkpoint {args.checkpoint}: not a regular file (a named pipe, socket or device); "
                       "give a checkpoint file")
    if args.checkpoint_format is None:
        reasons: dict = {}
        fmt, nets = importers.sniff(f, reasons=reasons)
        if fmt is None:
            refused = next((r for r in reasons.values() if "would import or run" in r or "nested more" in r), None)
            if refused:  # the file itself is the problem, whatever its format: say what
                raise UseError(f"--checkpoint {f}: {refused.split(': ', 1)[-1]}")
            raise UseError(f"--checkpoint {f}: not readable as any of {', '.join(importers.names())} "
                           f"({'; '.join(f'{k}: {v[:120]}' for k, v in reasons.items())})")
    else:
        fmt = args.checkpoint_format
        try:
            nets = importers.get(fmt).load(f)
        except Exception as e:  # noqa: BLE001 -- one line
            raise UseError(f"--checkpoint {f}: cannot be read as {fmt} ({str(e).splitlines()[0][:300]})") from None
    G = nets.get("g_ema") or nets.get("g")
    if G is None:
        raise UseError(f"--checkpoint {f}: holds no generator")
    prefix = int(((nets.get("meta") or {}).get(PREFIX_META_KEY)) or 0)
    if prefix:
        raise UseError(f"--checkpoint {f}: a FreezeSG variant (its first {prefix} W+ entries come from its source "
                       "generator, which the file does not hold): export it with --variant from its experiment")
    nets = {**nets, "g_ema": G}
    return Sampler(G.eval().requires_grad_(False), truncation=args.truncation), nets, f"{f} ({fmt})"


def _from_variant(reg, cfg, args):
    import torch

    from cartoon_stylegan import checkpoint
    from stages.models import arch

    sampler, network = load_sampler(cfg, args.variant, swap_res=args.swap_res, truncation=args.truncation,
                                    device=torch.device("cpu"))
    nets = {"g_ema": sampler.G}
    if args.swap_res is None:  # the file's training G and D go along (not for a swapped pair)
        if args.variant == "source":  # the pretrain result or finetune.init, in whatever format that is
            from stages.paths import StagePaths
            from stages.models import load_weights, source_path

            path, fmt = source_path(cfg, StagePaths(cfg, "finetune"))
            full = load_weights(cfg, path, fmt)
        else:
            g_cfg, d_cfg = arch(cfg)
            full = checkpoint.load_transfer(network, expect_g_config=g_cfg, expect_d_config=d_cfg)
        nets["g"], nets["d"] = full.get("g"), full.get("d")
    what = f"{args.variant}" + (f" swapped at {args.swap_res} px" if args.swap_res else "") + f" ({network})"
    return sampler, nets, what


def _rosinality(sampler, nets, args, out: Path) -> dict:
    import torch

    from cartoon_stylegan.checkpoint import atomic_save
    from cartoon_stylegan.checkpoint.export import to_rosinality

    mapping = "own"
    if sampler.prefix_len:
        src, G = sampler.source, sampler.G
        same = all(torch.equal(a, b) for a, b in zip(src.style.state_dict().values(), G.style.state_dict().values()))
        if not same and args.mapping is None:
            raise UseError(f"--variant {args.variant}: FreezeSG draws its first {sampler.prefix_len} W+ entries "
                           "with the source's mapping and the rest with its own; rosinality's generator holds one: "
                           "choose --mapping own or --mapping source, or export --format torchscript / onnx "
                           "(which carry both)")
        mapping = "own" if same else args.mapping
        if mapping == "source":  # the variant's synthesis under the source's mapping network
            nets = dict(nets)
            nets["g_ema"] = _with_mapping_of(nets["g_ema"], src)
            if nets.get("g") is not None:
                nets["g"] = _with_mapping_of(nets["g"], src)
    ck = to_rosinality(nets["g_ema"], g=nets.get("g"), d=nets.get("d"))
    atomic_save(ck, out)
    a = ck["args"]
    note = None
    if (a["latent"], a["n_mlp"]) != (512, 8):  # his generate.py / projector.py / apply_factor.py build (512, 8)
        note = (f"latent {a['latent']}, n_mlp {a['n_mlp']}: his train.py/generate.py take them as --latent/--n_mlp "
                "arguments, but projector.py and apply_factor.py hard-code 512 and 8 and will not load this file")
        print(f"note: {note}", file=sys.stderr)
    return {"keys": sorted(ck), "args": a, "mapping": mapping, "note": note}


def _with_mapping_of(G, src):
    import copy

    new = copy.deepcopy(G)
    new.style.load_state_dict(src.style.state_dict())
    return new


def _traced(sampler, args, out: Path) -> dict:
    from cartoon_stylegan.checkpoint.export import SamplingNetwork, export_onnx, export_torchscript

    net = SamplingNetwork(sampler, input_is=args.input)
    err = (export_torchscript if args.format == "torchscript" else export_onnx)(net, str(out))
    checked = ("onnxruntime" if args.format == "onnx" else "torch.jit.load") if err is not None else None
    if args.format == "onnx" and err is None:
        print("note: onnxruntime is not installed: the ONNX file was not run", file=sys.stderr)
    return {"input": args.input, "input_shape": ["N", *net.input_shape], "output_shape": ["N", 3, net.G.size,
            net.G.size], "truncation": net.psi, "prefix_len": net.prefix_len, "noise": "const",
            "checked_with": checked, "max_abs_difference": err}


def run(reg, cfg, args) -> int:
    from cartoon_stylegan.checkpoint.export import ExportError

    try:
        check_use_args(args, "export")
        if args.checkpoint and args.swap_res is not None:
            raise UseError("--swap-res needs --variant (a pair from the experiment)")
        if args.format == "rosinality" and (args.truncation != 1.0 or args.input != "z"):
            raise UseError("--truncation / --input shape a traced network; a rosinality checkpoint holds weights "
                           "(his scripts take --truncation themselves)")
        out = _out(args.out, args.overwrite)
        sampler, nets, what = _from_checkpoint(args) if args.checkpoint else _from_variant(reg, cfg, args)
        record = _rosinality(sampler, nets, args, out) if args.format == "rosinality" else _traced(sampler, args, out)
    except (UseError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as e:  # a network file that cannot be read (refused, damaged)
        print(f"error: {' '.join(str(e).split())[:400] or type(e).__name__}", file=sys.stderr)
        return 2
    record = {"command": "export", "format": args.format, "from": what, "file": str(out), **record}
    write_json(out.with_name(out.name + ".json"), record)
    extra = "" if record.get("max_abs_difference") is None else \
        f"; matches PyTorch to {record['max_abs_difference']:.1e}"
    print(f"wrote {out} ({args.format}) from {what}{extra}")
    return 0


COMMAND = Command("export", "A trained generator as rosinality's checkpoint (for his scripts and the Cartoon-StyleGAN "
                  "Colab), TorchScript or ONNX (one network: truncation, FreezeSG prefix and layer swap built in).",
                  _arguments, run)
