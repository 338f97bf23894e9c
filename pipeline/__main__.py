"""CLI: python -m pipeline run | list | show | submit | compare | build-ops

  python -m pipeline run all                       # the whole DAG on configs/default.yaml
  python -m pipeline run pretrain pretrain.kimg=2 data.resolution=32
  python -m pipeline run all --config configs/ffhq256.yaml --dry-run
  python -m pipeline list                          # done / stale / never run, when, how long
  python -m pipeline show finetune                 # the resolved config of a stage
  python -m pipeline run finetune --only freezesg-seed2   # one point of a grid stage (a job array task)
  python -m pipeline submit all                    # SLURM: one sbatch job per stage, chained (a grid: an array)
  python -m pipeline compare                       # variants side by side, from MLflow
  python -m pipeline build-ops                     # build the CUDA kernels into their cache (a registry command)
  python -m pipeline generate --variant freezesg --seeds 0-15 --out samples/   # use a trained model
  python -m pipeline COMMAND --help                # the options of one command

The stages come from a registry module (``--registry``, default ``stages``): this CLI is
the one place that hands a registry to the runner.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime

import yaml

from pipeline import dag, registry as registries
from pipeline.config import ConfigError, load_config, to_dict


def _split(items):
    """Positional words -> (stage names, KEY=VALUE overrides)."""
    stages = [x for x in items if "=" not in x]
    overrides = [x for x in items if "=" in x]
    return stages, overrides


def _load(args):
    reg = registries.load(args.registry)
    stages, overrides = _split(args.items)
    cfg = load_config(args.config, overrides, registry=reg)
    if stages:
        reg.plan(stages, cfg)  # an unknown (or left-out) stage name fails here, with a suggestion
    return reg, cfg, stages


def _say_left_out(reg, cfg, out=None) -> None:
    """One line per stage this config leaves out, and why (run, --dry-run, list, submit)."""
    for name, why in reg.left_out(cfg).items():
        print(f"  {name:9s} left out: {why}", file=out or sys.stdout)


def _points(reg, cfg, targets, args):
    """The points ``--only`` / ``--point-index`` pick (None: the whole stages), for one grid stage."""
    if not args.only and args.point_index is None:
        return None
    if len(targets) != 1 or targets == ["all"]:
        raise ConfigError("--only/--point-index: name the one grid stage whose points to run (e.g. run finetune "
                          "--only freezesg-seed2)")
    from pipeline import grid

    names = [n for item in args.only or [] for n in item.split(",") if n]
    return grid.select(reg, cfg, targets[0], names or None, None if args.point_index is None else [args.point_index])


def _needs_done(reg, cfg, name):
    """--only runs a grid stage's points alone: what it needs must be done already."""
    missing = [f"{d} ({dag.status(reg, cfg, d)})" for d in reg.plan([name], cfg)[:-1] if dag.status(reg, cfg, d) != "done"]
    if missing:
        raise ConfigError(f"--only runs points of {name} alone, and what {name} needs is not done: "
                          f"{', '.join(missing)}; run it first (python -m pipeline run {name} runs everything)")


def _gpu_job_check(reg, cfg, order):
    """A SLURM job without a GPU, on a partition with GPUs, refuses to run GPU stages on CPU (a script
    run with plain `sbatch` asks for none); a CPU-only partition runs them on CPU; launch.cpu=true, on purpose."""
    from pipeline import launch

    if not launch.in_slurm() or cfg.launch.cpu:
        return
    gpu_stages = [n for n in order if reg[n].needs_on_slurm(cfg)["gpu"] and dag.status(reg, cfg, n) != "done"]
    if not gpu_stages:
        return
    from pipeline.slurm import resources

    part = resources.gpuless_job_on_gpu_partition()
    if part:
        raise ConfigError(f"this SLURM job has no GPU, and {', '.join(gpu_stages)} would train or sample on CPU: "
                          f"{part}. Ask for GPUs (sbatch --gpus-per-node=N ...), let `python -m pipeline submit` "
                          f"size the jobs, or set launch.cpu=true to run on CPU on purpose")


def cmd_run(args) -> int:
    reg, cfg, targets = _load(args)
    only = _points(reg, cfg, targets, args)
    order = reg.plan(targets or ["all"], cfg) if only is None else list(targets)
    if args.dry_run:
        print(f"config: {cfg.config_path}\nexperiment: {cfg.experiment} -> {cfg.run_root}/{cfg.experiment}/")
        for name in order:
            st = reg[name]
            print(f"  {name:9s} {dag.status(reg, cfg, name):10s} needs: {', '.join(reg.needs_of(name, cfg)) or '-':10s} "
                  f"makes: {st.makes}")
        _say_left_out(reg, cfg)
        return 0
    _say_left_out(reg, cfg)
    from pipeline.artifacts import check_run_root

    check_run_root(cfg)
    if only is not None:
        _needs_done(reg, cfg, targets[0])
    _gpu_job_check(reg, cfg, order)
    for name in order:  # everything the plan needs is checked before the first second of compute
        check = reg[name].preflight
        if check is not None and dag.status(reg, cfg, name) != "done":
            check(cfg)
    from pipeline import launch, tracking

    # the store is checked first (it fails, naming the URI, when unreachable), before anything is written
    tracker = tracking.Tracker(cfg) if cfg.tracking.enabled else None
    # one `pipeline run` per experiment at a time; the point runs of a grid stage (array tasks) side by side
    with dag.run_lock(cfg, shared=only is not None):
        rc = _run_locked(reg, cfg, targets, order, args, tracker, only)
    if rc == dag.EXIT_STOPPED and launch.in_slurm():
        from pipeline import slurm

        slurm.requeue_self("stopped on a signal; the checkpoint is written")
    return rc


def _run_locked(reg, cfg, targets, order, args, tracker, only=None) -> int:
    from pipeline import launch

    parent = None
    if tracker is not None:
        closed = tracker.close_orphans()
        if closed:
            print(f"MLflow: marked {len(closed)} run(s) of a killed earlier `pipeline run` KILLED")
        what = " ".join(targets or ["all"]) + (f" --only {','.join(only)}" if only is not None else "")
        parent = tracker.parent(f"run {what}", tags={"targets": " ".join(order)})
        parent.params({"config_path": cfg.config_path, "experiment": cfg.experiment})
    everything = not targets or list(targets) == ["all"]
    forced = args.force and (lambda n: everything or n in targets)  # what dag.run forces: the named stages
    rc = dag.run(reg, cfg, targets or ["all"], force=args.force, alone=only is not None,
                 execute=lambda n, fp, prev: launch.execute(reg, cfg, n, fp, prev, tracker=tracker, parent=parent,
                                                            only=only, force=bool(forced and forced(n))))
    if parent is not None:
        parent.finish({0: "FINISHED", 3: "KILLED"}.get(rc, "FAILED"))
        print(f"MLflow: {tracker.ui_hint()}")
    return rc


def cmd_list(args) -> int:
    reg, cfg, _ = _load(args)
    from pipeline.artifacts import StagePaths, read_json

    print(f"experiment {cfg.experiment} ({cfg.run_root}/{cfg.experiment}/)")
    print(f"{'stage':9s} {'status':10s} {'when':20s} {'took':>9s}  {'needs':9s} slurm")
    for name in reg.plan(["all"], cfg):
        state = dag.read_state(cfg, name)
        when = state.get("finished_at") or state.get("started_at") or "-"
        job = read_json(StagePaths(cfg, name).slurm_file, None)
        slurm_col, stuck = "-", None
        if job:
            from pipeline import slurm
            from pipeline.slurm import resources as slurm_resources

            state_now = "ARRAY" if job.get("array") else slurm.job_state(job["job_id"])
            slurm_col = f"job {job['job_id']} {state_now}"
            if job.get("array"):  # each task's state is on its point's line
                slurm_col = f"array job {job['job_id']} ({len(job['array'])} task(s))"
            elif state_now == "PENDING":
                reason = slurm_resources.pending_reason(job["job_id"])
                slurm_col += f" ({reason})" if reason else ""
                hint = slurm_resources.never_clears(reason)
                stuck = f"          blocked for good: {hint}" if hint else None
        print(f"{name:9s} {dag.status(reg, cfg, name):10s} {when:20s} {dag.fmt_duration(state.get('duration')):>9s}  "
              f"{','.join(reg.needs_of(name, cfg)) or '-':9s} {slurm_col}")
        if stuck:
            print(stuck)
        if state.get("status") == "failed" and state.get("error"):
            print(f"          error: {state['error']}")
        if reg[name].points is not None:
            _list_points(reg, cfg, name, job)
    _say_left_out(reg, cfg)
    return 0


def _list_points(reg, cfg, name, job):
    """A grid stage's points: done, running (where), pending in a job array (SLURM's reason), failed."""
    from pipeline import grid

    fp = dag.fingerprint(reg, cfg, name)
    tasks = (job or {}).get("array") or {}
    for p, st in grid.statuses(reg, cfg, name, fp).items():
        rec = grid.record(cfg, name, p)
        when = rec.get("finished_at") or rec.get("started_at") or "-"
        extra = ""
        if st == "running":
            extra = f"pid {rec.get('pid', '?')} on {rec.get('host', '?')}" + (f", SLURM {rec['slurm']}" if rec.get("slurm") else "")
        elif p in tasks and st != "done":
            from pipeline import slurm
            from pipeline.slurm import resources as slurm_resources

            task = f"{job['job_id']}_{tasks[p]}"
            state_now = slurm.job_state(task)
            extra = f"job {task} {state_now}"
            if state_now == "PENDING":
                reason = slurm_resources.pending_reason(task)
                extra += f" ({reason})" if reason else ""
                st = "pending"
        if st in ("failed", "stopped") and rec.get("error"):
            extra = (extra + "; " if extra else "") + f"error: {rec['error']}"
        print(f"  {p:20s} {st:11s} {when:20s} {dag.fmt_duration(rec.get('duration')) if st != 'running' else '':>9s}  {extra}")


def cmd_show(args) -> int:
    reg, cfg, stages = _load(args)
    tree = to_dict(cfg)
    if stages == ["all"]:
        stages = []
    if stages:
        sections = {}
        for name in stages:
            for key in reg[name].reads_for(cfg):
                node, parts = tree, key.split(".")
                for p in parts[:-1]:
                    node = node[p]
                dst = sections
                for p in parts[:-1]:
                    dst = dst.setdefault(p, {})
                dst[parts[-1]] = node[parts[-1]]
        tree = sections
    print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0


def cmd_submit(args) -> int:
    reg, cfg, targets = _load(args)
    from pipeline import slurm
    from pipeline.artifacts import StagePaths, experiment_dir, slurm_log_dir

    only = _points(reg, cfg, targets, args)
    # the jobs would train into the same folders; points alone (--only) may go beside other points' tasks
    if not args.dry_run and dag.run_in_progress(cfg, whole_only=only is not None):
        raise dag.RunLockHeld(f"a `pipeline run` is working on experiment {cfg.experiment!r} here (lock "
                              f"{dag.lock_path(cfg)}); submit when it has finished, or stop it first")

    _say_left_out(reg, cfg)
    order = [n for n in reg.plan(targets or ["all"], cfg) if args.force or dag.status(reg, cfg, n) != "done"]
    if only is not None and targets[0] not in order:
        order.append(targets[0])
    if not order:
        print("every stage is up to date; nothing to submit")
        return 0
    arrays = _arrays(reg, cfg, order, only, targets[0] if only is not None else None, force=args.force)
    if only is not None and targets[0] not in arrays:
        why = (f"{targets[0]} is not sent as a job array here (slurm.array: {cfg.slurm.array})"
               if cfg.slurm.array is not None and targets[0] not in cfg.slurm.array else
               f"{', '.join(only)}: done already (--force to train again)")
        raise ConfigError(f"--only: nothing to submit alone: {why}")
    # the jobs read a frozen copy of the resolved config: editing the YAML while they queue changes nothing
    frozen = experiment_dir(cfg) / "submitted" / f"config-{datetime.now():%Y%m%d-%H%M%S}.yaml"
    extra = [*cfg.slurm.sbatch_args, *(args.sbatch_arg or [])]
    try:
        stage_args = _slurm_requests(reg, cfg, order, frozen, extra, check=not args.no_check, dry_run=args.dry_run,
                                     arrays=arrays)
    except Exception as e:  # noqa: BLE001 -- ResourceError / SlurmError: one line, no traceback
        from pipeline.slurm.resources import ResourceError

        if not isinstance(e, (ResourceError, slurm.SlurmError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stage_args is None:
        return 1
    if not args.dry_run:
        slurm_log_dir(cfg).mkdir(parents=True, exist_ok=True)
        frozen.parent.mkdir(parents=True, exist_ok=True)
        frozen.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        print(f"config frozen for these jobs: {frozen}")
    jobs = slurm.submit(order, config_path=str(frozen), overrides=[],
                        log_dir=slurm_log_dir(cfg), state_file_for=lambda n: StagePaths(cfg, n).ensure().slurm_file,
                        extra_sbatch_args=extra, dry_run=args.dry_run, stage_sbatch_args=stage_args,
                        arrays=arrays)
    return 0 if jobs is not None else 1


def _arrays(reg, cfg, order, only, only_stage, *, force):
    """The grid stages of ``order`` that go as job arrays (those in slurm.array): {stage: ({point: index}, max at
    once)}, one task per point not done (``only``: those of ``only_stage``), indexed by its place in the
    grid (the task runs ``--point-index``)."""
    from pipeline import grid

    out = {}
    for name in order:
        if reg[name].points is None or (cfg.slurm.array is not None and name not in cfg.slurm.array):
            continue
        points = reg[name].points(cfg)
        fp = dag.fingerprint(reg, cfg, name)
        wanted = only if name == only_stage else points
        todo = [p for p in wanted if force or grid.point_status(cfg, name, p, fp) != "done"]
        if todo and (len(points) > 1 or name == only_stage):
            out[name] = ({p: points.index(p) for p in todo}, cfg.slurm.max_parallel)
    return out


def _slurm_requests(reg, cfg, order, frozen, extra, *, check: bool, dry_run: bool, arrays=None):
    """Each stage's resource arguments for ``partition`` (derived, printed), every job checked with
    ``sbatch --test-only``; None (after saying why) when a job could never start."""
    from pipeline import slurm
    from pipeline.slurm import resources as sr
    from pipeline.artifacts import slurm_log_dir

    try:
        found = sr.partitions()
    except (FileNotFoundError, sr.ResourceError) as e:
        why = "sinfo not found: is this a SLURM login node?" if isinstance(e, FileNotFoundError) else str(e)
        if not dry_run:
            raise slurm.SlurmError(why) from None
        print(f"note: {why}; the requests shown are the scripts' #SBATCH defaults")
        return {}
    part = sr.pick_partition(found, cfg.slurm.partition)
    print(part.describe())
    requests = {}
    for name in order:
        script, _ = slurm.script_for(name)
        req = sr.derive(name, reg[name].needs_on_slurm(cfg), cfg.slurm, part, sr.script_defaults(script))
        requests[name] = req
        print(f"  {name:9s} {req.describe()}")
        for note in req.notes:
            print(f"            note: {note}")
    if check:
        bad = []
        for name, req in requests.items():
            tasks = (arrays or {}).get(name)
            cmd = slurm.sbatch_command(name, config_path=frozen, log_dir=slurm_log_dir(cfg),
                                       extra_sbatch_args=[*req.args(), *extra],
                                       array=slurm.array_spec(list(tasks[0].values()), tasks[1]) if tasks else None)
            why = sr.test_only(cmd)
            if why:
                bad.append(f"stage {name}: {req.describe()}{' ' + ' '.join(extra) if extra else ''} can never start "
                           f"here: sbatch --test-only says: {why}. {part.describe()}")
        if bad:
            for line in bad:
                print(f"error: {line}", file=sys.stderr)
            print("error: nothing submitted; change slurm.* (or --sbatch-arg) and submit again", file=sys.stderr)
            return None
    return {name: req.args() for name, req in requests.items()}


def cmd_compare(args) -> int:
    reg, cfg, _ = _load(args)
    if reg.compare is None:
        print(f"error: registry {reg.name!r} has no comparison", file=sys.stderr)
        return 2
    return reg.compare(cfg, experiment=args.experiment, out=args.out)


def _common(p: argparse.ArgumentParser, items: bool = True, stages_help: str = "stage names (or all)"):
    if items:
        p.add_argument("items", nargs="*", help=f"{stages_help} and KEY=VALUE config overrides")
    p.add_argument("--config", "-c", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--registry", default=registries.DEFAULT_REGISTRY,
                   help="module whose REGISTRY lists the stages (default: %(default)s)")


def _parsers() -> dict[str, tuple[argparse.ArgumentParser, callable]]:
    out = {}

    def add(name, func, help_):
        p = argparse.ArgumentParser(prog=f"python -m pipeline {name}", description=help_)
        out[name] = (p, func)
        return p

    p = add("run", cmd_run, "Run the stages named (default all) and what they need; skips stages that are up to date.")
    _common(p)
    p.add_argument("--force", action="store_true", help="rerun the named stages even if up to date")
    p.add_argument("--dry-run", action="store_true", help="print the plan and each stage's status, run nothing")
    _point_options(p)
    p = add("list", cmd_list, "Each stage's status (done / stale / never run / failed / ...), when, how long.")
    _common(p, stages_help="(no stage names)")
    p = add("show", cmd_show, "Print the resolved config, or the keys the named stages read.")
    _common(p)
    p = add("submit", cmd_submit, "SLURM: one sbatch job per stage that is not up to date, chained by dependencies.")
    _common(p)
    p.add_argument("--force", action="store_true", help="submit stages even if up to date")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch commands, submit nothing")
    p.add_argument("--sbatch-arg", action="append", help="extra sbatch argument (repeatable; after the derived ones, "
                   "so it wins)")
    p.add_argument("--no-check", action="store_true", help="skip the sbatch --test-only check of every job")
    _point_options(p)
    p = add("compare", cmd_compare, "The fine-tuning variants side by side, read back from MLflow, and a bar chart.")
    _common(p, stages_help="(no stage names)")
    p.add_argument("--experiment", default=None, help="experiment name (default: the config's)")
    p.add_argument("--out", default=None, help="where to write the bar chart PNG")
    return out


def _point_options(p):
    p.add_argument("--only", action="append", metavar="POINT[,POINT]", help="a grid stage (finetune): run only "
                   "these of its points, e.g. freezesg-seed2 (what it needs must be done); others may run beside")
    p.add_argument("--point-index", type=int, default=None, metavar="I", help="a grid stage: run its I-th point "
                   "(0-based, in `list` order): a job array task (slurm/*.sh pass SLURM_ARRAY_TASK_ID)")


def _registry_name(argv) -> str:
    for i, a in enumerate(argv):
        if a == "--registry" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--registry="):
            return a.split("=", 1)[1]
    return registries.DEFAULT_REGISTRY


def _command_parsers(argv) -> dict:
    """The registry's model commands (generate, ...), each with the config options."""
    try:
        reg = registries.load(_registry_name(argv))
    except KeyError:
        return {}
    out = {}
    for c in reg.commands:
        p = argparse.ArgumentParser(prog=f"python -m pipeline {c.name}", description=c.help)
        if c.config:
            _common(p, stages_help="the command's own arguments (e.g. files)")
        else:
            p.add_argument("--registry", default=registries.DEFAULT_REGISTRY, help=argparse.SUPPRESS)
        c.arguments(p)

        def func(args, c=c):
            if not c.config:
                return c.run(registries.load(args.registry), None, args)
            # KEY=VALUE items override the config; the others are the command's (args.names: e.g. photos)
            args.names = [a for a in args.items if "=" not in a]
            args.items = [a for a in args.items if "=" in a]
            reg_, cfg, _ = _load(args)
            return c.run(reg_, cfg, args)
        out[c.name] = (p, func)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = _parsers()
    if argv and argv[0] not in parsers and not argv[0].startswith("-"):
        parsers.update(_command_parsers(argv))
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in parsers:
        print(__doc__.strip(), file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r} (commands: {', '.join(parsers)})", file=sys.stderr)
            return 2
        return 0 if argv else 2
    parser, func = parsers[argv[0]]
    args = parser.parse_intermixed_args(argv[1:])
    try:
        return func(args)
    except (ConfigError, KeyError, dag.RunLockHeld) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # tracking unreachable and other setup errors: one clear line
        from pipeline.tracking import TrackingError

        if isinstance(e, TrackingError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
