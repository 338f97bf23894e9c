"""The runner's own settings (experiment, run root, seed, launch, tracking) and the root config.

The root config is assembled from a registry: these runner settings, the registry's
shared sections (data, model) and one section per stage, each declared by its owner.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal, Optional, Union

from toolbox.settings import SettingError, setting

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(value: str, key: str) -> str:
    """A config value that becomes a file or folder name: letters, digits, '_', '-', '.'; no '..'."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value or len(value) > 128:
        raise SettingError(f"{key}: {value!r} must be a name of letters, digits, '_', '-', '.' "
                           f"(starting with a letter or digit, no '..', at most 128 characters): it becomes a path")
    return value


@dataclass
class LaunchConfig:
    num_processes: int = setting(1, min=1, max=1024, help="processes on this machine (>1: accelerate launch, DDP)")
    mixed_precision: Literal["no", "fp16", "bf16"] = setting("no", help="GPU only; CPU always trains in fp32")
    cpu: Optional[bool] = setting(None, help="force CPU (null: CPU when no CUDA device)")
    accelerate_config: Optional[str] = setting(None, help="accelerate config file passed to accelerate launch")
    main_process_port: int = setting(0, min=0, max=65535, help="rendezvous port for local multi-process (0: a free one)")
    backend: Literal["ddp", "deepspeed"] = setting(
        "ddp", help="training backend: ddp (Accelerate DDP) or deepspeed (G and D as DeepSpeed ZeRO-1/2 engines)")
    deepspeed: str = setting("zero2", help="DeepSpeed config for backend=deepspeed: a shipped name (zero1, zero2: "
                             "cartoon_stylegan/training/deepspeed_presets/<name>.json) or a JSON file")
    parallel_runs: Union[Literal["auto"], int] = setting(
        1, help="a grid stage (finetune: one run per variant and seed): how many of its runs train at once on "
        "this machine, each on its own launch.num_processes GPUs (CUDA_VISIBLE_DEVICES split); auto: as many "
        "as the GPUs hold. On CPU, and for runs that span nodes, one at a time")

    def __post_init__(self):
        if self.parallel_runs != "auto" and not (isinstance(self.parallel_runs, int) and 1 <= self.parallel_runs <= 1024):
            raise SettingError(f"launch.parallel_runs: {self.parallel_runs!r} must be auto or a number of runs (1-1024)")
        if self.backend != "deepspeed":
            return
        import importlib.util

        # the file named by launch.deepspeed is checked by the training stages (what they can train with)
        if self.mixed_precision == "fp16":
            raise SettingError("launch.mixed_precision: fp16 is not supported with backend=deepspeed (ZeRO's backward takes "
                               "no loss scaler from Accelerate); use bf16")
        if importlib.util.find_spec("deepspeed") is None:
            raise SettingError("launch.backend: deepspeed needs the deepspeed package: pip install -e '.[deepspeed]'")


@dataclass
class SlurmConfig:
    """What ``pipeline submit`` asks SLURM for (slurm/README.md); derived per stage where unset."""

    partition: Optional[str] = setting(None, help="partition (null: the cluster's default)")
    account: Optional[str] = setting(None, help="account (--account)")
    qos: Optional[str] = setting(None, help="quality of service (--qos)")
    gpus: Union[Literal["auto", "all"], int] = setting("auto", help="GPUs per node for GPU stages: auto (launch.num_processes for training, 1 for "
                        "swap/eval; none on a CPU-only partition), all (every GPU of a node), or a number")
    cpus_per_task: Optional[int] = setting(None, min=1, max=4096, help="CPUs per task (null: from the stage, "
                                           "capped at a node's)")
    mem: Optional[str] = setting(None, help="memory per node, e.g. 64G (null: the cluster's default)")
    time: list[str] = setting(factory=list, help="time limits: 'STAGE=D-HH:MM:SS' entries, or one bare limit for "
                              "every stage (default: each script's #SBATCH --time, capped at the partition's)")
    sbatch_args: list[str] = setting(factory=list, help="extra sbatch arguments for every job")
    array: Optional[list[str]] = setting(None, help="the grid stages submitted as job arrays (null: every one: "
                                         "finetune, eval): one task per point (a fine-tune run, an eval row), each "
                                         "sized as the stage's job would be; a grid stage not listed runs its "
                                         "points one after another in one job")
    max_parallel: Optional[int] = setting(None, min=1, max=100000, help="a job array's tasks running at once "
                                          "(the array throttle of sbatch; null: as many as the cluster starts)")

    def __post_init__(self):
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,+-]+", value):
                raise SettingError(f"slurm.{key}: {value!r} is not a SLURM name")
        if self.gpus not in ("auto", "all") and not (isinstance(self.gpus, int) and 0 <= self.gpus <= 64):
            raise SettingError(f"slurm.gpus: {self.gpus!r} must be auto, all or a number of GPUs per node (0-64)")
        if self.mem is not None and not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", str(self.mem), re.I):
            raise SettingError(f"slurm.mem: {self.mem!r} is not a memory size (e.g. 64G, 4000M)")
        for entry in self.time:
            limit = entry.split("=", 1)[-1]
            if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}|infinite|unlimited", limit.strip(), re.I):
                raise SettingError(f"slurm.time: {entry!r} must be 'STAGE=D-HH:MM:SS' or a limit like 12:00:00")


@dataclass
class TrackingConfig:
    uri: Optional[str] = setting(None, help="MLflow tracking URI (default sqlite:///<run_root>/mlflow.db; "
                                 "MLFLOW_TRACKING_URI wins over this)")
    enabled: bool = setting(True, help="log to MLflow")


def _validate_root(self):
    check_name(self.experiment, "experiment")
    reg = self.__registry__
    for n in self.slurm.array or []:
        if n not in reg.names() or reg[n].points is None:
            grids = [s for s in reg.names() if reg[s].points is not None]
            raise SettingError(f"slurm.array: {n!r} is not a grid stage of this pipeline (those: {', '.join(grids) or 'none'})")
    for name, _, _ in self.__registry__.sections():
        check = getattr(getattr(self, name), "validate_against", None)
        if check is not None:
            check(self)


def root_config(registry) -> type:
    """The root config dataclass of ``registry``: runner settings + shared sections + stage sections."""
    fields = [
        ("experiment", str, setting("default", help="experiment name: MLflow experiment and runs/<experiment>/")),
        ("run_root", str, setting("runs", help="root of all outputs (relative paths: to the current directory)")),
        ("seed", int, setting(0, min=0, help="global seed")),
    ]
    taken = {"experiment", "run_root", "seed", "launch", "tracking", "slurm", "config_path"}
    for name, cls, help_ in registry.sections():
        if name in taken:
            raise ValueError(f"registry {registry.name}: section {name!r} clashes with a runner setting")
        taken.add(name)
        fields.append((name, cls, setting(factory=cls, help=help_)))
    fields += [
        ("launch", LaunchConfig, setting(factory=LaunchConfig, help="process launch")),
        ("tracking", TrackingConfig, setting(factory=TrackingConfig, help="MLflow")),
        ("slurm", SlurmConfig, setting(factory=SlurmConfig, help="SLURM requests of `pipeline submit`")),
        ("config_path", str, dataclasses.field(default="", metadata={"help": "(set by the loader)"})),
    ]
    cls = dataclasses.make_dataclass("RootConfig", fields, namespace={
        "__post_init__": _validate_root, "__registry__": registry,
        "__doc__": f"The whole config of registry {registry.name!r}."})
    cls.__module__ = __name__
    return cls
