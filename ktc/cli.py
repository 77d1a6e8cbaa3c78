"""`ktc`: one command, subcommands for each role and tool.

ktc local    a chief and N workers as local processes (the quickstart)
ktc chief    the oracle server (one per search)
ktc worker   a trial runner (many per search)
ktc data     dataset tools (`ktc data synth`)
ktc status   progress of a running search, from its chief
ktc results  summary and export of a finished (or running) search, from its results directory
ktc state    check or rebuild a search's state (the chief's journal) on disk

Exit codes: 0 done; 1 the search failed; 2 a bad argument, config, token file or dataset;
3 the search's state on disk cannot be trusted (the chief refuses to start; `ktc state`);
4 another chief serves the search; 5 the system refused (a full disk, a port in use);
6 the config changes what the stored search means (its objective, tuner, search space, ...): the
chief refuses to start, naming the field, and changes nothing (with --linger it keeps serving
/metrics, `ktc_chief_config_refused` 1, until stopped).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from kt_cluster.core.config import ENV_PREFIX, OVERRIDES, ConfigError, SearchConfig, field_at, load
from kt_cluster.core.dataset import DatasetError
from kt_cluster.results import FORMATS

DEFAULT_ORACLE_PORT = 8000
DEFAULT_CHIEF_METRICS_PORT = 9100
DEFAULT_WORKER_METRICS_PORT = 9101
DATA_POLL_SECONDS = 5.0
EXIT_CONFIG = 2  # a bad argument, config, token file or dataset
EXIT_STATE = 3  # the state on disk cannot be trusted
EXIT_LOCKED = 4  # another chief serves this search
EXIT_SYSTEM = 5  # a full disk, a port in use, ...


def _search_flags(parser: argparse.ArgumentParser) -> None:
    """`--config`, then one flag per `OVERRIDES` name, typed and described by its config field."""
    g = parser.add_argument_group("search (override the config file and KTC_* variables)")
    g.add_argument("--config", help="search config YAML, the same file for chief and workers")
    for name, dotted in OVERRIDES.items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, **flag_options(field_at(dotted), name))


def flag_options(field: FieldInfo, name: str) -> dict[str, Any]:
    """argparse options for a config field: type, choices from a Literal, help from its description."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None`: the int
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    while typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    help_text = f"{field.description.rstrip('.')} (config {OVERRIDES[name]}, env {ENV_PREFIX}{name.upper()})"
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        return {"choices": choices, "type": type(choices[0]), "help": help_text}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction, "default": None, "help": help_text}
    if kind in (int, float):
        return {"type": kind, "metavar": "N" if kind is int else "X", "help": help_text}
    return {"metavar": name.split("_")[-1].upper(), "help": help_text}


def _auth_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("authentication")
    g.add_argument("--auth-token-file", default=os.environ.get("KTC_AUTH_TOKEN_FILE"),
                   help="file holding the shared bearer token (env KTC_AUTH_TOKEN_FILE)")
    g.add_argument("--insecure", action="store_true", help="no authentication (stock keras-tuner workers)")


def search_config(args: argparse.Namespace) -> SearchConfig:
    return load(args.config, overrides={name: getattr(args, name) for name in OVERRIDES})


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token from `--auth-token-file`: printable ASCII (it travels in an HTTP/2 header),
    at least 16 characters. A file readable by others (or by a group this process is not in) is
    used, with a warning: `token_file_exposure` says why."""
    if args.insecure:
        return None
    if not args.auth_token_file:
        raise ConfigError("--auth-token-file: authentication is on by default; pass the token file "
                          "(a Kubernetes Secret in the chart) or --insecure")
    path = args.auth_token_file
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--auth-token-file: cannot read {path} ({exc.strerror})") from exc
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"--auth-token-file: {path} is not UTF-8 text (a binary file?)") from None
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ConfigError(f"--auth-token-file: the token in {path} must be printable ASCII without spaces")
    if len(token) < 16:
        raise ConfigError(f"--auth-token-file: the token in {path} is shorter than 16 characters")
    exposure = token_file_exposure(path)
    if exposure:
        logging.getLogger("ktc").warning("--auth-token-file: %s is %s; make it readable by its owner only "
                                         "(chmod 600)", path, exposure)
    return token


def token_file_exposure(path: str) -> str | None:
    """Who else can read the token file: None, or "readable by others" / "readable by group N"
    (a group this process is not in: the kubelet's fsGroup, which the pod itself holds, is fine)."""
    mode_gid = os.stat(path)
    if mode_gid.st_mode & 0o004:
        return f"readable by others (mode {mode_gid.st_mode & 0o777:04o})"
    if mode_gid.st_mode & 0o040 and mode_gid.st_gid not in {os.getgid(), *os.getgroups()}:
        return f"readable by group {mode_gid.st_gid} (mode {mode_gid.st_mode & 0o777:04o})"
    return None


def oracle_address(default_ip: str) -> tuple[str, int]:
    ip = os.environ.get("KERASTUNER_ORACLE_IP", default_ip)
    port = os.environ.get("KERASTUNER_ORACLE_PORT", str(DEFAULT_ORACLE_PORT))
    if not port.isdigit():
        raise ConfigError(f"KERASTUNER_ORACLE_PORT: must be a port number, got {port!r}")
    return ip, int(port)


def search_folder(config: SearchConfig) -> Path:
    return config.search_dir


def recovery_hint(args: argparse.Namespace) -> str:
    flags = f" --config {args.config}" if getattr(args, "config", None) else ""
    return (f"nothing was changed; `ktc state check{flags}` says what is wrong, `ktc state rebuild{flags}` "
            "rebuilds the state from its valid records and the trial files (keeping the old files aside)")


def cmd_chief(args: argparse.Namespace) -> int:
    from kt_cluster.core.dataset import check_dataset
    from kt_cluster.chief import recovery
    from kt_cluster.chief.lock import ChiefLock

    config, token = search_config(args), read_token(args)
    ip, port = oracle_address("0.0.0.0")
    if args.scale_workers_on_exit:
        from kt_cluster.chief.k8s import parse_target

        try:
            parse_target(args.scale_workers_on_exit)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if args.worker_replicas_file and not args.scale_workers_on_exit:
        raise ConfigError("--worker-replicas-file: goes with --scale-workers-on-exit")
    # Before TensorFlow loads: one chief per search, a state it can trust, and a dataset that
    # reads (a broken one fails here in a second, not trial by trial).
    # A new search's folder is made only once keras-tuner's release has been checked (below).
    folder = search_folder(config)
    lock = ChiefLock(folder)
    if folder.is_dir():
        lock.acquire()
    print(f"chief: state: {recovery.preflight(folder).line()}", flush=True)
    print(f"chief: {check_dataset(config.data_dir, config.data.classes)}", flush=True)
    from kt_cluster.chief.main import run_chief

    if not lock.held:
        lock.acquire()
        recovery.preflight(folder)  # another chief may have begun the search meanwhile

    try:
        return run_chief(config, f"{ip}:{port}", args.metrics_port, token, linger=args.linger,
                         scale_workers=args.scale_workers_on_exit, worker_replicas_file=args.worker_replicas_file,
                         final_scrape_seconds=args.final_scrape_seconds,
                         token_file_exposed=token is not None and token_file_exposure(args.auth_token_file) is not None)
    finally:
        lock.release()


def cmd_worker(args: argparse.Namespace) -> int:
    from kt_cluster.core.protocol import check_tuner_id

    config, token = search_config(args), read_token(args)
    tuner_id = check_tuner_id(os.environ.get("KERASTUNER_TUNER_ID"))
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        raise ConfigError("KERASTUNER_ORACLE_IP: must be set to the chief's address")
    ip, port = oracle_address("")
    if args.gpu_memory_mb is not None and args.gpu_memory_mb < 1:
        raise ConfigError(f"--gpu-memory-mb: must be >= 1 when set, got {args.gpu_memory_mb}")
    if args.processes != 1 or args.gpus_per_trial == "1":
        from kt_cluster.processes import plan, supervise

        slots = plan(args.argv, tuner_id, args.processes, args.metrics_port, args.threads, args.gpus, args.gpus_per_trial)
        return supervise(slots, args.grace_seconds)
    from kt_cluster.worker.main import run_worker

    return run_worker(config, f"{ip}:{port}", tuner_id, token, args.metrics_port, args.grace_seconds,
                      threads=args.threads, gpu_memory_mb=args.gpu_memory_mb,
                      final_scrape_seconds=args.final_scrape_seconds)


def cmd_local(args: argparse.Namespace) -> int:
    from kt_cluster.local import run_local

    return run_local(search_config(args), workers=args.workers, base_port=args.base_port, quiet=args.quiet,
                     final_scrape_seconds=args.final_scrape_seconds)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from kt_cluster.worker.data import synth

    classes = int(args.classes) if args.classes.isdigit() else args.classes.split(",")
    synth.generate(Path(args.out), count=args.count, size=args.size, classes=classes, seed=args.seed)
    print(f"wrote {args.count} synthetic scans to {args.out}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    import time

    from kt_cluster.core.dataset import DatasetError, check_dataset

    config = load(args.config, overrides={"data": args.data})
    deadline, said = time.monotonic() + args.wait, None
    while True:
        try:
            print(check_dataset(Path(config.data.path), config.data.classes), flush=True)
            return 0
        except DatasetError as exc:
            if time.monotonic() >= deadline:
                raise
            if str(exc) != said:  # one line per new problem, not one per poll
                print(f"ktc data check: waiting for the dataset: {exc}", flush=True)
                said = str(exc)
            time.sleep(min(DATA_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def cmd_status(args: argparse.Namespace) -> int:
    from kt_cluster.status import show_local_status, show_status

    if args.results:
        if args.chief:
            raise ConfigError("--chief: give either --chief or --results, not both")
        return show_local_status(Path(args.results), args.search_id, args.auth_token_file, as_json=args.json)
    return show_status(args.chief or f"localhost:{DEFAULT_ORACLE_PORT}", read_token(args), as_json=args.json)


def cmd_results(args: argparse.Namespace) -> int:
    from kt_cluster.results import show_results

    return show_results(Path(args.results), fmt=args.format, search_id=args.search_id,
                        plot_file=Path(args.plot) if args.plot else None)


def cmd_state_check(args: argparse.Namespace) -> int:
    from kt_cluster.chief import recovery

    folder = search_folder(search_config(args))
    print(f"ktc state check: {folder}: {recovery.check(folder).line()}")
    return 0


def cmd_state_rebuild(args: argparse.Namespace) -> int:
    from kt_cluster.chief import recovery
    from kt_cluster.chief.lock import ChiefLock

    folder = search_folder(search_config(args))
    lock = ChiefLock(folder)
    lock.acquire()  # no chief may serve the search meanwhile
    try:
        rebuilt = recovery.rebuild(folder) if not args.dry_run else recovery.collect(folder)
    finally:
        lock.release()
    for note in rebuilt.notes:
        print(f"  {note}")
    trials = rebuilt.replayed.trials
    if args.dry_run:
        print(f"ktc state rebuild: would keep {len(trials)} trials (nothing written: --dry-run)")
    else:
        print(f"ktc state rebuild: kept {len(trials)} trials; the old state is in {rebuilt.aside}")
    return 0


def _seconds(text: str) -> float:
    """A duration flag: a finite number >= 0 (argparse names the flag when this refuses)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _final_scrape_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--final-scrape-seconds", type=_seconds, default=0.0, metavar="SECONDS",
                        help="once the search is over, keep serving /metrics until a scrape has read the final "
                             "values, at most this long, so that Prometheus gets the last trial's counts "
                             "(0: exit at once); a chief with --scale-workers-on-exit waits this long before "
                             "scaling the workers down")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ktc", description="kt-cluster: distributed keras-tuner searches.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="run a chief and N workers on this machine")
    local.add_argument("--workers", type=int, default=2)
    local.add_argument("--base-port", type=int, default=0, help="first port to use (default: any free ports)")
    local.add_argument("--quiet", action="store_true", help="no live progress view")
    _final_scrape_flag(local)
    _search_flags(local)
    local.set_defaults(func=cmd_local)

    chief = sub.add_parser("chief", help="serve the oracle (KERASTUNER_ORACLE_IP/PORT: address to bind)")
    _search_flags(chief)
    _auth_flags(chief)
    chief.add_argument("--metrics-port", type=int, default=DEFAULT_CHIEF_METRICS_PORT)
    chief.add_argument("--linger", action="store_true",
                       help="keep serving status and metrics after the search is over (for Kubernetes)")
    chief.add_argument("--scale-workers-on-exit", metavar="NAMESPACE/STATEFULSET",
                       help="when the search is over, scale this worker StatefulSet to zero, and keep it there while "
                            "--linger (the pod's service account, else the kubeconfig)")
    chief.add_argument("--worker-replicas-file", metavar="FILE",
                       help="with --scale-workers-on-exit: a file holding the worker count to scale back up to when a "
                            "raised budget reopens a finished search (the chart's ConfigMap: workers.replicas)")
    _final_scrape_flag(chief)
    chief.set_defaults(func=cmd_chief)

    worker = sub.add_parser("worker", help="run trials (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP/PORT)")
    _search_flags(worker)
    _auth_flags(worker)
    worker.add_argument("--metrics-port", type=int, default=DEFAULT_WORKER_METRICS_PORT)
    _final_scrape_flag(worker)
    worker.add_argument("--grace-seconds", type=float, default=25.0,
                        help="time allowed to hand the trial back on SIGTERM")
    worker.add_argument("--threads", type=int, default=None,
                        help="TensorFlow CPU threads (default: TensorFlow's choice, one per core; "
                             "with --processes, cores / processes)")
    worker.add_argument("--processes", type=int, default=1,
                        help="worker processes in this pod or machine, each running its own trials (tuner id "
                             "<id>.<i>, metrics port --metrics-port + i): several trials per GPU")
    worker.add_argument("--gpus-per-trial", choices=("all", "1"), default="all",
                        help="all: every process trains each trial on all the GPUs it sees (MirroredStrategy "
                             "when several); 1: each process on one of the pod's --gpus GPUs")
    worker.add_argument("--gpus", type=int, default=0, help="GPUs of this pod, for --gpus-per-trial 1")
    worker.add_argument("--gpu-memory-mb", type=int, default=None,
                        help="GPU memory cap of each worker process in MiB (TensorFlow; default: memory growth)")
    worker.set_defaults(func=cmd_worker)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate synthetic paper scans with pixel-exact masks")
    synth.add_argument("--out", required=True)
    synth.add_argument("--count", type=int, default=64)
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--classes", default="3", help="a count, or comma-separated class names")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_data_synth)
    check = data.add_parser("check", help="check a dataset against the search config (what the chief checks at start)")
    check.add_argument("--config", help="search config YAML (its data.path and data.classes)")
    check.add_argument("--data", help="dataset directory (overrides data.path)")
    check.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="keep checking for up to this long until the dataset is complete (an init container)")
    check.set_defaults(func=cmd_data_check)

    status = sub.add_parser("status", help="progress of a running search")
    status.add_argument("--chief", help=f"HOST:PORT of the chief (default localhost:{DEFAULT_ORACLE_PORT})")
    status.add_argument("--results", metavar="DIR",
                        help="the results directory of a search started by `ktc local`: its chief and token "
                             "are found there (and its final status once it is over)")
    status.add_argument("--search-id", help="with --results: which search, when the directory holds several")
    status.add_argument("--json", action="store_true")
    _auth_flags(status)
    status.set_defaults(func=cmd_status)

    state = sub.add_parser("state", help="check or rebuild a search's state on disk").add_subparsers(
        dest="state_command", required=True)
    state_check = state.add_parser("check", help="replay the state strictly, as the chief does before it starts "
                                                 "(exit 3 when it cannot be trusted)")
    _search_flags(state_check)
    state_check.set_defaults(func=cmd_state_check)
    state_rebuild = state.add_parser("rebuild", help="rebuild the state from the journal's valid records and the "
                                                     "trial files; the old state is moved aside, never deleted")
    _search_flags(state_rebuild)
    state_rebuild.add_argument("--dry-run", action="store_true", help="report what would be kept, write nothing")
    state_rebuild.set_defaults(func=cmd_state_rebuild)

    results = sub.add_parser("results", help="summary and export of a search's results")
    results.add_argument("--results", required=True, metavar="DIR",
                         help="the results directory (or one search's folder in it)")
    results.add_argument("--search-id", default=None, help="which search, when the directory holds several")
    results.add_argument("--format", choices=FORMATS, default="summary",
                         help="summary: ranked trials, lineage of promoted trials, failures and files; csv, json: "
                              "every trial; keras-tuner: keras-tuner's own summary text")
    results.add_argument("--plot", metavar="FILE.png",
                         help="also write a figure: objective per trial and learning curves "
                              "(needs the plot extra: pip install 'kt-cluster[plot]')")
    results.set_defaults(func=cmd_results)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv = argv  # `ktc worker --processes` starts its children with the same flags
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from kt_cluster.chief.lock import Locked
    from kt_cluster.chief.state import StateError

    try:
        return args.func(args)
    except (ConfigError, DatasetError) as exc:
        print(f"ktc {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StateError as exc:
        verb = "refusing to start" if args.command == "chief" else "the state cannot be trusted"
        print(f"ktc {args.command}: {verb}: {exc}; {recovery_hint(args)}", file=sys.stderr)
        return EXIT_STATE
    except Locked as exc:
        print(f"ktc {args.command}: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as exc:
        if args.command not in ("chief", "state"):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"ktc {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_SYSTEM


if __name__ == "__main__":
    sys.exit(main())
