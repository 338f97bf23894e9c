"""The networks a stage starts from: fresh, imported (a transfer), or another stage's result.

Checkpoint files are read by the library (cartoon_stylegan.checkpoint); this module maps
the config onto architectures and picks the files of the run.
"""
from __future__ import annotations

import copy


def arch(cfg) -> tuple[dict, dict]:
    m = cfg.model
    g = dict(size=cfg.data.resolution, style_dim=m.style_dim, n_mlp=m.n_mlp,
             channel_multiplier=m.channel_multiplier, channel_max=m.channel_max, lr_mlp=m.lr_mlp,
             use_noise=m.use_noise)
    d = dict(size=cfg.data.resolution, channel_multiplier=m.channel_multiplier, channel_max=m.channel_max)
    return g, d


# The architecture a source generator file fixes: config key -> Generator.config key. A config that
# leaves a key out follows the file; one that sets it (in the YAML, a file it extends, or an override)
# must agree with the file.
FILE_FIXES = {"data.resolution": "size", "model.style_dim": "style_dim", "model.n_mlp": "n_mlp",
              "model.channel_multiplier": "channel_multiplier", "model.channel_max": "channel_max"}
# What another project's file suggests but the run may choose: followed when the config leaves it out;
# another value rescales the mapping's stored weights (the same function) or switches the noise inputs
# (see _fit_foreign). This project's own files (an exact format) fix these too.
FILE_SUGGESTS = {"model.lr_mlp": "lr_mlp", "model.use_noise": "use_noise"}


def architecture_from_init(tree: dict) -> dict:
    """The registry's ``resolve``: with ``finetune.init.path`` set, the architecture keys the config
    leaves out are taken from that file, and a key it sets differently is refused in one line naming
    the key, the config's value and the file's. A file that is missing or cannot be read as its format
    is refused here, in the init preflight's words (before any check of the architecture it would fix)."""
    from cartoon_stylegan.checkpoint import formats as importers
    from pipeline.config import ConfigError

    init = (tree.get("finetune") or {}).get("init") if isinstance(tree.get("finetune"), dict) else None
    if not isinstance(init, dict) or not isinstance(init.get("path"), str) or not init["path"]:
        return tree
    fmt = init.get("format", "native")
    if fmt not in importers.names():
        return tree  # validation names the format and the accepted ones
    found, problem = file_architecture(init["path"], fmt)
    if problem is not None:
        raise ConfigError(f"finetune.init.path: {init['path']!r}: {problem}")
    exact = importers.get(fmt).exact
    for table, strict in ((FILE_FIXES, True), (FILE_SUGGESTS, exact)):
        for dotted, key in table.items():
            section, name = dotted.split(".")
            node = tree.setdefault(section, {})
            if not isinstance(node, dict) or found.get(key) is None:
                continue  # a malformed section: validation names it
            if name not in node:
                node[name] = found[key]
            elif strict and node[name] != found[key]:
                raise ConfigError(f"{dotted}: the config says {node[name]!r}, but the source generator "
                                  f"{init['path']} (finetune.init.path) has {found[key]!r}; leave {dotted} "
                                  f"out to follow the file, or give a file of that architecture")
    return tree


_ARCH_CACHE: dict = {}


def file_architecture(path: str, fmt: str) -> tuple:
    """(the generator config recorded in or inferred from a checkpoint file of format ``fmt``, None) or
    (None, why it cannot be used: one line). Kept per file version: a config is loaded several times."""
    from pathlib import Path

    from cartoon_stylegan.checkpoint import formats as importers
    from toolbox import file_version

    p = Path(path).expanduser()
    if not p.is_file():
        return None, f"not a file (expected a {fmt} checkpoint: the pretrained source generator)"
    key = (*file_version(p), fmt)
    if key not in _ARCH_CACHE:
        try:
            nets = importers.get(fmt).load(str(p))
            G = nets.get("g_ema") if nets.get("g_ema") is not None else nets.get("g")
            _ARCH_CACHE[key] = (dict(G.config), None) if G is not None else (None, "holds no generator")
        except Exception as e:  # noqa: BLE001 -- every reason becomes one line
            _ARCH_CACHE[key] = (None, _load_problem(None, p, fmt, e))
    return _ARCH_CACHE[key]


def fresh_models(cfg, seed):
    import torch

    from cartoon_stylegan.networks import Discriminator, Generator

    g_cfg, d_cfg = arch(cfg)
    torch.manual_seed(seed)
    G, D = Generator(**g_cfg), Discriminator(**d_cfg)
    G_ema = copy.deepcopy(G).eval()
    return {"g": G, "d": D, "g_ema": G_ema}


def load_weights(cfg, path, fmt):
    """A transfer: weights of G, D, G_ema from a file of checkpoint format ``fmt`` (any registered in
    cartoon_stylegan.checkpoint.formats), checked against the configured architecture."""
    from cartoon_stylegan.checkpoint import formats as importers

    g_cfg, d_cfg = arch(cfg)
    imp = importers.get(fmt)
    if imp.exact:  # our own file: the recorded config must be the configured one
        nets = imp.load(path, expect_g_config=g_cfg, expect_d_config=d_cfg)
    else:
        nets = _fit_foreign(imp.load(path), path, g_cfg, d_cfg)
    if nets.get("g_ema") is None and nets.get("g") is None:
        raise ValueError(f"{path}: holds no generator")
    if nets.get("g") is None:
        nets["g"] = copy.deepcopy(nets["g_ema"])  # (an imported w_avg pin follows the weights)
    if nets.get("g_ema") is None:
        nets["g_ema"] = copy.deepcopy(nets["g"])
    if nets.get("d") is None:
        from cartoon_stylegan.networks import Discriminator

        nets["d"] = Discriminator(**d_cfg)
    return nets


def _fit_foreign(nets, path, g_cfg, d_cfg):
    """Networks of another project's file, checked against the configured architecture; the choices of
    this run that such files do not fix (the mapping's lr multiplier, noise on/off) are taken from the
    config -- lr_mlp by rescaling the mapping weights, so the network computes the same function."""
    from cartoon_stylegan import checkpoint

    training_only = ("lr_mlp", "use_noise")
    for key, want in (("g", g_cfg), ("g_ema", g_cfg), ("d", d_cfg)):
        net = nets.get(key)
        if net is None:
            continue
        got = {k: net.config.get(k) for k in want if k not in training_only}
        exp = {k: v for k, v in want.items() if k not in training_only}
        if got != exp:
            raise checkpoint.CheckpointMismatch(
                f"{path}: {key} has architecture {got}, the config asks for {exp} "
                f"(set data.resolution / model.* to match the checkpoint)")
        if key != "d":
            if net.lr_mlp != want["lr_mlp"]:
                net = nets[key] = net.with_lr_mlp(want["lr_mlp"])
            net.use_noise = want["use_noise"]
    return nets


def device():
    """Where swap and eval run: the GPU when there is one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def source_path(cfg, paths):
    """(file, format) of the source generator: finetune.init, else the pretrain stage's result."""
    init = cfg.finetune.init
    if init.path:
        return init.path, init.format
    return str(paths.of("pretrain").final_network()), "native"


def load_source(cfg, paths, device=None):
    """The frozen source generator (its EMA weights) on ``device``."""
    path, fmt = source_path(cfg, paths)
    G = load_weights(cfg, path, fmt)["g_ema"].eval().requires_grad_(False)
    return G.to(device) if device is not None else G


def load_variants(cfg, paths, G_src, device=None, truncation: float = 1.0):
    """[(VariantRun, Sampler)] of every fine-tuned run (variant x seed), each sampled as it was
    trained (its checkpoint's record of the FreezeSG prefix), with ``truncation``."""
    return [(run, load_variant(cfg, paths, G_src, run, device, truncation=truncation))
            for run in cfg.finetune.runs(cfg.seed)]


def load_variant(cfg, paths, G_src, run, device=None, truncation: float = 1.0):
    """The Sampler of one fine-tuned run (a VariantRun), sampled as it was trained."""
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.sampling import Sampler

    g_cfg, d_cfg = arch(cfg)
    path = paths.of("finetune").final_network(run.dir)
    nets = checkpoint.load_transfer(path, expect_g_config=g_cfg, expect_d_config=d_cfg)
    G = nets["g_ema"].eval().requires_grad_(False)
    G = G.to(device) if device is not None else G
    return Sampler.for_variant(G, G_src, nets.get("meta") or {}, truncation=truncation)


def check_init(cfg, key: str, init) -> None:
    """Preflight of an init checkpoint: it exists, loads as ``init.format`` and fits the configured
    architecture; else one ConfigError line naming the key, the file and what is wrong."""
    from pathlib import Path

    from pipeline.config import ConfigError

    if not init.path:
        return
    p = Path(init.path).expanduser()
    where = f"{key}.init.path: {str(p)!r}"
    if not p.is_file():
        raise ConfigError(f"{where} is not a file (expected a {init.format} checkpoint)")
    if p.stat().st_size == 0:
        raise ConfigError(f"{where} is empty (0 bytes): a failed copy or a full disk?")
    with open(p, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise ConfigError(f"{where}: not a PyTorch checkpoint (neither a torch zip file nor a pickle)")
    try:
        load_weights(cfg, str(p), init.format)
    except Exception as e:  # noqa: BLE001 -- every reason becomes one line
        raise ConfigError(f"{where}: {_load_problem(cfg, p, init.format, e)}") from None


def _load_problem(cfg, path, fmt: str, e: Exception) -> str:
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.checkpoint import formats as importers

    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, checkpoint.CheckpointMismatch):
        return f"does not fit the configured architecture (data.resolution / model.*): {text[:400]}"
    if isinstance(e, EOFError) or "PytorchStreamReader" in text or "zip archive" in text or "central directory" in text:
        return "truncated or damaged: not a complete PyTorch checkpoint file"
    other, _ = importers.sniff(path, skip=fmt)
    if other is not None:
        return f"this is a {other} checkpoint ({importers.get(other).help}): set init.format={other}"
    return f"cannot be read as a {fmt} checkpoint ({type(e).__name__}: {text[:300]})"
