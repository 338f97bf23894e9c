"""CLI: python -m pipeline run | list | show | submit | compare | build-ops

  python -m pipeline run all                       # the whole DAG on configs/default.yaml
  python -m pipeline run pretrain train.kimg=2 data.resolution=32
  python -m pipeline run all --config configs/ffhq256.yaml --dry-run
  python -m pipeline list                          # done / stale / never run, when, how long
  python -m pipeline show finetune                 # the resolved config of a stage
  python -m pipeline submit all                    # SLURM: one sbatch job per stage, chained
  python -m pipeline compare                       # variants side by side, from MLflow
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime

import yaml

from pipeline import dag
from pipeline.config import ConfigError, load_config, to_dict


def _split(items):
    """Positional words -> (stage names, KEY=VALUE overrides)."""
    stages = [x for x in items if "=" not in x]
    overrides = [x for x in items if "=" in x]
    return stages, overrides


def _load(args, items):
    stages, overrides = _split(items)
    cfg = load_config(args.config, overrides)
    return cfg, stages, overrides


def cmd_run(args, items) -> int:
    cfg, targets, _ = _load(args, items)
    order = dag.plan(targets or ["all"])
    if args.dry_run:
        print(f"config: {cfg.config_path}\nexperiment: {cfg.experiment} -> {cfg.run_root}/{cfg.experiment}/")
        for name in order:
            st = dag.STAGES[name]
            print(f"  {name:9s} {dag.status(cfg, name):10s} needs: {', '.join(st.needs) or '-':10s} makes: {st.makes}")
        return 0
    for name in order:  # everything the plan needs is checked before the first second of compute
        module = dag.load_stage_module(name)
        check = getattr(module, "preflight", None)
        if check is not None and dag.status(cfg, name) != "done":
            check(cfg)
    from pipeline import launch, tracking

    tracker = parent = None
    if cfg.tracking.enabled:
        tracker = tracking.Tracker(cfg)  # fails here, naming the URI, when the server is unreachable
        closed = tracker.close_orphans()
        if closed:
            print(f"MLflow: marked {len(closed)} run(s) of a killed earlier `pipeline run` KILLED")
        parent = tracker.parent(f"run {' '.join(targets or ['all'])}", tags={"targets": " ".join(order)})
        parent.params({"config_path": cfg.config_path, "experiment": cfg.experiment})
    rc = dag.run(cfg, targets or ["all"], force=args.force,
                 execute=lambda n, fp, prev: launch.execute(cfg, n, fp, prev, tracker=tracker, parent=parent))
    if parent is not None:
        parent.finish({0: "FINISHED", 3: "KILLED"}.get(rc, "FAILED"))
        print(f"MLflow: {tracker.ui_hint()}")
    if rc == dag.EXIT_STOPPED and launch.in_slurm():
        from pipeline import slurm

        slurm.requeue_self("stopped on a signal; the checkpoint is written")
    return rc


def cmd_list(args, items) -> int:
    cfg, _, _ = _load(args, items)
    from pipeline.artifacts import StagePaths, read_json

    print(f"experiment {cfg.experiment} ({cfg.run_root}/{cfg.experiment}/)")
    print(f"{'stage':9s} {'status':10s} {'when':20s} {'took':>9s}  {'needs':9s} slurm")
    for name, st in dag.STAGES.items():
        state = dag.read_state(cfg, name)
        when = state.get("finished_at") or state.get("started_at") or "-"
        job = read_json(StagePaths(cfg, name).slurm_file, None)
        slurm_col = "-"
        if job:
            from pipeline import slurm

            slurm_col = f"job {job['job_id']} {slurm.job_state(job['job_id'])}"
        print(f"{name:9s} {dag.status(cfg, name):10s} {when:20s} {dag.fmt_duration(state.get('duration')):>9s}  "
              f"{','.join(st.needs) or '-':9s} {slurm_col}")
        if state.get("status") == "failed" and state.get("error"):
            print(f"          error: {state['error']}")
    return 0


def cmd_show(args, items) -> int:
    cfg, stages, _ = _load(args, items)
    tree = to_dict(cfg)
    if stages:
        sections = {}
        for name in stages:
            if name not in dag.STAGES:
                raise KeyError(f"unknown stage {name!r} (stages: {', '.join(dag.STAGES)})")
            for s in dag.STAGES[name].sections:
                node, parts = tree, s.split(".")
                for p in parts[:-1]:
                    node = node[p]
                dst = sections
                for p in parts[:-1]:
                    dst = dst.setdefault(p, {})
                dst[parts[-1]] = node[parts[-1]]
        tree = sections
    print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0


def cmd_submit(args, items) -> int:
    cfg, targets, _ = _load(args, items)
    from pipeline import slurm
    from pipeline.artifacts import StagePaths, slurm_log_dir

    order = [n for n in dag.plan(targets or ["all"]) if args.force or dag.status(cfg, n) != "done"]
    if not order:
        print("every stage is up to date; nothing to submit")
        return 0
    if not args.dry_run:
        slurm_log_dir(cfg).mkdir(parents=True, exist_ok=True)
    # the jobs read a frozen copy of the resolved config: editing the YAML while they queue changes nothing
    from pipeline.artifacts import experiment_dir

    frozen = experiment_dir(cfg) / "submitted" / f"config-{datetime.now():%Y%m%d-%H%M%S}.yaml"
    if not args.dry_run:
        frozen.parent.mkdir(parents=True, exist_ok=True)
        frozen.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        print(f"config frozen for these jobs: {frozen}")
    jobs = slurm.submit(order, config_path=str(frozen), overrides=[],
                        log_dir=slurm_log_dir(cfg), state_file_for=lambda n: StagePaths(cfg, n).ensure().slurm_file,
                        extra_sbatch_args=args.sbatch_arg or (), dry_run=args.dry_run)
    return 0 if jobs is not None else 1


def cmd_compare(args, items) -> int:
    cfg, _, _ = _load(args, items)
    from pipeline import compare

    return compare.main(cfg, experiment=args.experiment, out=args.out)


def cmd_build_ops(args, items) -> int:
    from cartoon_stylegan.ops import _backend

    path = _backend.build_ops(verbose=True)
    print(f"CUDA ops built and cached: {path}")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "show": cmd_show, "submit": cmd_submit,
            "compare": cmd_compare, "build-ops": cmd_build_ops}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=list(COMMANDS))
    ap.add_argument("items", nargs="*", help="stage names (or all) and KEY=VALUE overrides")
    ap.add_argument("--config", "-c", default=None, help="YAML config (default: configs/default.yaml)")
    ap.add_argument("--force", action="store_true", help="rerun the named stages even if up to date")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--experiment", default=None, help="compare: experiment name (default: the config's)")
    ap.add_argument("--out", default=None, help="compare: where to write the bar chart PNG")
    ap.add_argument("--sbatch-arg", action="append", help="submit: extra sbatch argument (repeatable)")
    args = ap.parse_intermixed_args(argv)
    try:
        return COMMANDS[args.command](args, args.items)
    except (ConfigError, KeyError) as e:
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
