"""Launching workers: `--launch local|slurm --workers N` submits N copies of the study's own command through
submitit (`pip install -e ".[cluster]"`), then waits for them.

Each worker runs the same command without the launch flags and without `--fresh` (the launcher forgets the old
work once, before submitting), with `--no-report --no-progress`; the workers split the units through the shared
`--storage` (studies.lib.workqueue). When they are done, the launching command goes on as any worker would: it finds
every unit done (or finishes what a failed worker left) and writes the report.

local: N local processes (submitit's LocalExecutor). slurm: N SLURM jobs (submitit's SlurmExecutor), one task
each, with the partition, time, CPU, GPU and memory flags below; the storage and the tracking URI must then be
servers every node reaches (PostgreSQL, `mlflow server`), and the repository a folder every node sees.
Logs of every worker: `<out>/workers/` (`--launch-dir`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hat.tracking import REPO_ROOT

WORKER_ENV = "HAT_LAUNCHED_WORKER"  # set in every launched worker: a worker never launches workers itself
FLAGS_WITH_VALUE = ("--launch", "--workers", "--slurm-partition", "--slurm-time", "--slurm-cpus", "--slurm-gpus",
                    "--slurm-mem", "--launch-dir")
FLAGS_ALONE = ("--fresh", "--no-report", "--no-progress")  # dropped, then the worker's own added


class LaunchError(ValueError):
    """Launch flags that cannot work here (submitit missing, no SLURM, bad values)."""


def add_launch_args(p) -> None:
    g = p.add_argument_group('launching workers (submitit: pip install -e ".[cluster]")')
    g.add_argument("--launch", choices=("local", "slurm"), default=None,
                   help="run --workers copies of this command as local processes or SLURM jobs (through submitit), "
                        "wait for them, then report; they share --storage and --tracking-uri")
    g.add_argument("--workers", type=int, default=1, help="number of workers to launch with --launch (default: 1)")
    g.add_argument("--slurm-partition", default=None, help="SLURM partition of the worker jobs (default: the cluster's)")
    g.add_argument("--slurm-time", type=int, default=240, help="time limit of each worker job, minutes (default: 240)")
    g.add_argument("--slurm-cpus", type=int, default=2, help="CPUs per worker job (default: 2)")
    g.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per worker job (default: 0)")
    g.add_argument("--slurm-mem", default=None, help="memory per worker job, e.g. 16G (default: the partition's)")
    g.add_argument("--launch-dir", default=None, help="folder of the workers' submitit logs (default: <out>/workers)")


def check_launch_args(args) -> None:
    """LaunchError (one line) for launch flags that cannot work here; nothing is submitted."""
    if getattr(args, "launch", None) is None:
        return
    if args.workers < 1:
        raise LaunchError(f"--workers {args.workers}: expected an integer >= 1")
    for flag in ("slurm_time", "slurm_cpus"):
        if getattr(args, flag) < 1:
            raise LaunchError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected an integer >= 1")
    if args.slurm_gpus < 0:
        raise LaunchError(f"--slurm-gpus {args.slurm_gpus}: expected an integer >= 0")
    _submitit()
    if args.launch == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise LaunchError("--launch slurm: sbatch/srun not found; run the command on a SLURM login node "
                          "(or use --launch local)")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise LaunchError('--launch needs submitit, which is not installed: pip install -e ".[cluster]"') from None
    return submitit


def worker_argv(command: str) -> list[str]:
    """The worker's command line: the study's command (args.command) without the launch flags, --fresh and the
    output flags, plus --no-report --no-progress; run with this Python."""
    tokens = shlex.split(command)
    if tokens[:2] == ["python", "-m"]:
        tokens[0] = sys.executable
    out, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in FLAGS_WITH_VALUE:
            skip = "=" not in tok
            continue
        if tok in FLAGS_ALONE:
            continue
        out.append(tok)
    return [*out, "--no-report", "--no-progress"]


def run_worker(argv: list[str]) -> int:
    """One worker (runs inside a submitit job): the study command as a subprocess, its output in the job's log."""
    env = {**os.environ, WORKER_ENV: "1"}
    code = subprocess.run(argv, cwd=REPO_ROOT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"worker exited with status {code}: {shlex.join(argv)}")
    return code


def slurm_parameters(args, name: str) -> dict:
    """SlurmExecutor parameters from the --slurm-* flags."""
    params = {"job_name": f"hat-{name}", "time": args.slurm_time, "cpus_per_task": args.slurm_cpus, "ntasks_per_node": 1,
              "nodes": 1}
    if args.slurm_partition:
        params["partition"] = args.slurm_partition
    if args.slurm_gpus:
        params["gpus_per_node"] = args.slurm_gpus
    if args.slurm_mem:
        params["mem"] = args.slurm_mem
    return params


def executor(args, folder: Path, name: str):
    submitit = _submitit()
    if args.launch == "local":
        ex = submitit.LocalExecutor(folder=str(folder / "%j"))
        ex.update_parameters(timeout_min=60 * 24 * 30)  # local workers run until they are done
        return ex
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), python=sys.executable)
    ex.update_parameters(**slurm_parameters(args, name))
    return ex


SQUEUE_EVERY_S = 15  # how often the launcher asks squeue whether its jobs are still queued or running
GONE_GRACE_S = 15  # a job no longer in squeue counts as ended this long after, result file or not


def _queued_jobs() -> set[str] | None:
    """Ids of this user's SLURM jobs still pending or running (squeue --me); None when squeue fails."""
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.split())


def wait_for(jobs: list, slurm: bool) -> list:
    """Wait until every job has ended; the failed ones as (job, one-line reason).

    On SLURM, submitit learns that a job ended without a result from sacct, which fails where the cluster keeps no
    accounting (no slurmdbd): a worker cancelled, timed out or killed before writing its result would be waited for
    forever. So a job that squeue no longer lists counts as ended GONE_GRACE_S later (time for its result file)."""
    gone: dict[str, float] = {}
    asked = 0.0
    while True:
        now = time.time()
        pending = [j for j in jobs if now - gone.get(j.job_id, now) < GONE_GRACE_S and not j.done()]
        if not pending:
            break
        if slurm and now - asked >= SQUEUE_EVERY_S:
            queued, asked = _queued_jobs(), now
            for j in pending:
                if queued is not None and j.job_id not in queued:
                    gone.setdefault(j.job_id, now)
        time.sleep(1)
    failed = []
    for j in jobs:
        if not j.done():
            failed.append((j, "it left the SLURM queue without a result: cancelled, timed out or killed"))
            continue
        try:
            j.result()
        except Exception as e:
            failed.append((j, _reason(e)))
    return failed


def _reason(e: Exception) -> str:
    """One line for a failed job: the last `SomeError: ...` line of its message (submitit's ends with log paths)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"[\w.]+(Error|Exception|Interrupt|Exit): ", ln)]
    return (errors or lines or [type(e).__name__])[-1]


def launch(args, name: str, out: Path) -> list:
    """Submit args.workers copies of the study's command and wait for them; returns the finished jobs. A failed
    worker is reported (its log folder) and the launching command then finishes its units itself."""
    folder = Path(args.launch_dir or out / "workers")
    folder.mkdir(parents=True, exist_ok=True)
    argv = worker_argv(args.command)
    try:
        ex = executor(args, folder, name)
        jobs = [ex.submit(run_worker, argv) for _ in range(args.workers)]
    except Exception as e:
        raise LaunchError(f"--launch {args.launch}: could not submit the workers ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else e})") from None
    print(f"[hat] launched {len(jobs)} {args.launch} worker(s): jobs {', '.join(str(j.job_id) for j in jobs)}; "
          f"logs in {folder}; waiting for them", flush=True)
    failed = wait_for(jobs, slurm=args.launch == "slurm")
    for j, last in failed:
        print(f"[hat] worker job {j.job_id} failed ({last}); its log: {j.paths.stderr}", file=sys.stderr)
    print(f"[hat] {len(jobs) - len(failed)} of {len(jobs)} workers finished", flush=True)
    return jobs


def maybe_launch(args, name: str, out: Path, forget) -> None:
    """With --launch (and not inside a launched worker): forget the old work once if --fresh (forget()), launch the
    workers and wait for them; afterwards this process continues as a worker without --fresh."""
    if getattr(args, "launch", None) is None or os.environ.get(WORKER_ENV):
        return
    if args.fresh:
        forget()
        args.fresh = False
    launch(args, name, out)
