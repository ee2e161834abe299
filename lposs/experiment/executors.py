"""Run a job's fixed shards on an executor chosen outside params.yaml: inline, local processes, SLURM, torchrun.

A job is a picklable *shard task* over `n_items` items (images):

    task.run(shard, advance)   compute and write the outputs of shard.items; call advance(n) after n items
    task.missing(shard)        the items of shard whose outputs are absent or unusable (empty list = done)
    task.fingerprint()         optional: a string naming what the outputs depend on (resumable run folder)

`run_shards(task, n_items)` splits the items into fixed contiguous shards (their number depends only on
`n_items`), skips the shards that are complete, runs the others on the executor, waits, and checks that
every shard is complete; the caller then reduces the outputs. Outputs are per item or per shard and written
atomically, so a killed worker costs only its unfinished shards: the next run computes those and nothing else.

The executor comes from the environment, never from params.yaml, so scale settings never invalidate DVC:

    LPOSS_EXECUTOR   inline (default: this process) | local (one process per GPU, or LPOSS_WORKERS CPU
                     processes) | slurm (a submitit job array) | torchrun (ranks from the environment; outside
                     torchrun, a `torchrun --standalone` of LPOSS_WORKERS ranks is launched on this node)
    LPOSS_WORKERS    worker processes / array jobs / ranks
    LPOSS_RUN_DIR    where run folders (progress, errors, SLURM logs, resumable per-shard outputs) live;
                     default ./.lposs-runs (git-ignored; on a cluster it must be on the shared filesystem)
    LPOSS_SLURM_*    PARTITION, TIME (minutes), GPUS (per job), CPUS (per job), MEM_GB, ACCOUNT, PARALLELISM,
                     CLUSTER (slurm | local | debug: submitit's executors); or the same keys, lower case, in a
                     git-ignored cluster.yaml (LPOSS_CLUSTER_FILE names another file); the variables win.

Progress: each worker writes its running count of items to the run folder; the parent shows one bar
(items done / total, items/s). A worker's exception is written with the shard it was working on and
re-raised here as `ShardFailed`; a worker that dies without a word (killed, out of memory) raises `WorkerLost`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from tqdm import tqdm

from ..io import atomic_write_bytes

EXECUTORS = ("inline", "local", "slurm", "torchrun")
MAX_SHARDS = 256  # shards of a job: the unit of resumption and of per-shard outputs
SLURM_KEYS = {"partition": str, "time": int, "gpus": int, "cpus": int, "mem_gb": int, "account": str,
              "parallelism": int, "cluster": str}
DEFAULT_SLURM = {"time": 240, "gpus": 1, "cpus": 8, "cluster": "slurm"}
DEFAULT_SLURM_WORKERS = 16
POLL_S = 0.5


class ShardFailed(RuntimeError):
    """A worker raised while computing a shard; the message holds the shard and the worker's traceback."""


class WorkerLost(RuntimeError):
    """A worker ended without finishing its shards and without an error (killed, out of memory, preempted)."""


class ShardsIncomplete(RuntimeError):
    """After the run, some shards still lack outputs."""


class ShardTask(Protocol):
    def run(self, shard: "Shard", advance: Callable[[int], None]) -> None: ...

    def missing(self, shard: "Shard") -> list[int]: ...


# --------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Items start..stop-1 of a job, shard `index` of `count`."""

    index: int
    count: int
    start: int
    stop: int

    @property
    def items(self) -> range:
        return range(self.start, self.stop)

    @property
    def key(self) -> str:
        return f"{self.index:05d}"

    def __str__(self) -> str:
        return f"shard {self.index + 1}/{self.count} (items {self.start}..{self.stop - 1})"


def split_shards(n_items: int, max_shards: int = MAX_SHARDS) -> list[Shard]:
    """min(n_items, max_shards) contiguous shards whose sizes differ by at most one; they depend on n_items only."""
    if n_items < 0 or max_shards < 1:
        raise ValueError(f"cannot split {n_items} items into at most {max_shards} shards")
    count = min(n_items, max_shards)
    bounds = [round(i * n_items / count) for i in range(count + 1)] if count else [0]
    return [Shard(i, count, bounds[i], bounds[i + 1]) for i in range(count)]


def assign(shards: Sequence[Shard], workers: int) -> list[list[Shard]]:
    """Round-robin: worker w takes shards w, w + workers, ...; no empty worker lists."""
    workers = max(1, min(workers, len(shards)))
    return [list(shards[w::workers]) for w in range(workers)]


# --------------------------------------------------------------------------------------------------
# Which executor: environment (and cluster.yaml), never params.yaml
# --------------------------------------------------------------------------------------------------

@dataclass
class ExecutorConfig:
    kind: str = "inline"
    workers: int | None = None
    run_root: Path = Path(".lposs-runs")
    slurm: dict[str, Any] = field(default_factory=dict)


def _whole_number(name: str, text: Any, minimum: int = 1) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = minimum - 1
    if value < minimum or (isinstance(text, float) and not text.is_integer()):
        raise ValueError(f"{name}={text!r}: give a whole number >= {minimum}")
    return value


def slurm_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """SLURM settings: defaults < cluster.yaml (or LPOSS_CLUSTER_FILE) < LPOSS_SLURM_* variables."""
    import yaml

    settings = dict(DEFAULT_SLURM)
    path = Path(environ.get("LPOSS_CLUSTER_FILE", "cluster.yaml"))
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(loaded) - set(SLURM_KEYS)) if isinstance(loaded, dict) else ["<not a mapping>"]
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(SLURM_KEYS)}")
        settings.update(loaded)
    elif "LPOSS_CLUSTER_FILE" in environ:
        raise FileNotFoundError(f"LPOSS_CLUSTER_FILE={path} does not exist")
    for key in SLURM_KEYS:
        if f"LPOSS_SLURM_{key.upper()}" in environ:
            settings[key] = environ[f"LPOSS_SLURM_{key.upper()}"]
    for key, kind in SLURM_KEYS.items():
        if key in settings and kind is int:
            settings[key] = _whole_number(f"slurm {key}", settings[key], 0 if key == "gpus" else 1)
    return settings


def executor_config(executor: str | None = None, workers: int | None = None,
                    environ: Mapping[str, str] | None = None) -> ExecutorConfig:
    """The executor: arguments first, then LPOSS_EXECUTOR / LPOSS_WORKERS / LPOSS_RUN_DIR, then inline."""
    environ = os.environ if environ is None else environ
    kind = (executor or environ.get("LPOSS_EXECUTOR") or "inline").strip().lower()
    if kind not in EXECUTORS:
        raise ValueError(f"LPOSS_EXECUTOR={kind!r}: choose one of {', '.join(EXECUTORS)}")
    if workers is None and environ.get("LPOSS_WORKERS"):
        workers = environ["LPOSS_WORKERS"]
    config = ExecutorConfig(kind, None if workers is None else _whole_number("LPOSS_WORKERS", workers),
                            Path(environ.get("LPOSS_RUN_DIR", ".lposs-runs")))
    if kind == "slurm":
        config.slurm = slurm_settings(environ)
    return config


def default_workers(config: ExecutorConfig) -> int:
    """LPOSS_WORKERS, else one per GPU of this machine, else one per CPU core (SLURM: 16 array jobs)."""
    if config.workers:
        return config.workers
    if config.kind == "slurm":
        return DEFAULT_SLURM_WORKERS
    import torch

    return torch.cuda.device_count() or os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# The run folder: progress counts and error reports of the workers
# --------------------------------------------------------------------------------------------------

def run_folder(task: Any, config: ExecutorConfig, desc: str) -> Path:
    """run_root/<desc>-<fingerprint>: the same task finds the same folder again (resume)."""
    fingerprint = task.fingerprint() if hasattr(task, "fingerprint") else f"{os.getpid()}-{time.time_ns()}"
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in desc)[:60]
    return config.run_root / f"{slug}-{hashlib.md5(fingerprint.encode()).hexdigest()[:12]}"


class Progress:
    """A worker's running count of finished items, written atomically to run_dir/progress/<worker> (throttled)."""

    def __init__(self, run_dir: Path, worker: int):
        self.path = Path(run_dir) / "progress" / str(worker)
        self.done, self.written_at = 0, 0.0

    def __call__(self, count: int = 1) -> None:
        self.done += count
        if time.monotonic() - self.written_at > POLL_S:
            self.flush()

    def flush(self) -> None:
        atomic_write_bytes(self.path, str(self.done).encode())
        self.written_at = time.monotonic()


def progress_done(run_dir: Path) -> int:
    total = 0
    for path in (Path(run_dir) / "progress").glob("[0-9]*"):
        try:
            total += int(path.read_text() or 0)
        except (OSError, ValueError):
            pass  # being replaced right now: counted at the next poll
    return total


class ProgressView:
    """One bar over all workers: polls the progress counts (items done / total, items/s) in a thread."""

    def __init__(self, run_dir: Path, total: int, initial: int, desc: str, enabled: bool):
        self.run_dir, self.initial = run_dir, initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(POLL_S):
            self.update()

    def update(self) -> None:
        done = min(self.bar.total, self.initial + progress_done(self.run_dir))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> "ProgressView":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.update()
        self.bar.close()


def reset_reports(run_dir: Path) -> None:
    for sub in ("progress", "errors"):
        shutil.rmtree(Path(run_dir) / sub, ignore_errors=True)
        (Path(run_dir) / sub).mkdir(parents=True, exist_ok=True)


def error_reports(run_dir: Path) -> list[str]:
    return [path.read_text() for path in sorted((Path(run_dir) / "errors").glob("*.txt"))]


# --------------------------------------------------------------------------------------------------
# The worker side (the same function on every executor)
# --------------------------------------------------------------------------------------------------

def work_shards(task: ShardTask, shards: Sequence[Shard], run_dir: str, worker: int,
                env: Mapping[str, str] | None = None) -> int:
    """Run shards one after the other; on an exception write run_dir/errors/<worker>.txt naming the shard."""
    os.environ.update(env or {})
    if "OMP_NUM_THREADS" in (env or {}):
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    progress = Progress(Path(run_dir), worker)
    for shard in shards:
        try:
            task.run(shard, progress)
        except BaseException:
            report = (f"worker {worker} (host {socket.gethostname()}, pid {os.getpid()}) failed on {shard}:\n"
                      + traceback.format_exc())
            atomic_write_bytes(Path(run_dir) / "errors" / f"{worker}.txt", report.encode())
            raise
        finally:
            progress.flush()
    return len(shards)


def worker_env(worker: int, gpus: int) -> dict[str, str]:
    """One GPU per worker (round-robin over this machine's GPUs), or one CPU thread per worker."""
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        return {"CUDA_VISIBLE_DEVICES": visible[worker % len(visible)]}
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------------

def run_inline(task: ShardTask, todo: list[Shard], run_dir: Path, workers: int) -> None:
    work_shards(task, todo, str(run_dir), 0)


def run_local(task: ShardTask, todo: list[Shard], run_dir: Path, workers: int) -> None:
    """One spawned process per worker; the first failure stops the others (their finished items are kept)."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    gpus = torch.cuda.device_count()
    plan = assign(todo, workers)
    processes = [context.Process(target=work_shards, args=(task, shards, str(run_dir), w, worker_env(w, gpus)),
                                 name=f"lposs-worker-{w}") for w, shards in enumerate(plan)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            if any(p.exitcode not in (None, 0) for p in processes):
                break
            time.sleep(POLL_S / 5)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    failed = [(w, p) for w, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        raise_failure(run_dir, [f"worker {w} (pid {p.pid}) ended with {describe_exit(p.exitcode)}; it had "
                                f"{', '.join(map(str, plan[w]))}" for w, p in failed])


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def raise_failure(run_dir: Path, lost: list[str]) -> None:
    """ShardFailed with the workers' tracebacks if any wrote one, else WorkerLost naming the lost workers."""
    reports = error_reports(run_dir)
    if reports:
        raise ShardFailed("\n\n".join(reports) + "\nFinished outputs are kept: fix the cause and run again.")
    raise WorkerLost("\n".join(lost) + "\nFinished outputs are kept: run again to compute only what is missing.")


def run_slurm(task: ShardTask, todo: list[Shard], run_dir: Path, workers: int, settings: dict[str, Any]) -> None:
    """A submitit job array, one job per worker; waits for all of them, then reports failures."""
    import submitit

    executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=settings.get("cluster"))
    parameters = {"timeout_min": settings["time"], "gpus_per_node": settings["gpus"],
                  "cpus_per_task": settings["cpus"], "name": f"lposs-{run_dir.name}"[:60]}
    optional = {"mem_gb": "mem_gb", "partition": "slurm_partition", "account": "slurm_account",
                "parallelism": "slurm_array_parallelism"}
    parameters.update({name: settings[key] for key, name in optional.items() if key in settings})
    executor.update_parameters(**parameters)
    plan = assign(todo, workers)
    env = {"OMP_NUM_THREADS": str(settings["cpus"])} if not settings["gpus"] else {}
    jobs = executor.map_array(work_shards, [task] * len(plan), plan, [str(run_dir)] * len(plan),
                              range(len(plan)), [env] * len(plan))
    print(f"submitted {len(jobs)} jobs ({', '.join(j.job_id for j in jobs[:3])}{', ...' if len(jobs) > 3 else ''}); "
          f"logs in {run_dir / 'submitit'}", file=sys.stderr)
    while not all(job.done() for job in jobs):
        time.sleep(POLL_S * 4)
    lost = [f"job {job.job_id} (worker {w}) failed: {str(job.exception()).strip()[-2000:]}"
            for w, job in enumerate(jobs) if job.exception() is not None]
    if lost:
        raise_failure(run_dir, lost)


def run_torchrun(task: ShardTask, todo: list[Shard], run_dir: Path, workers: int) -> None:
    """Inside torchrun: this rank's shards, between two barriers. Outside: launch `torchrun --standalone`."""
    if in_torchrun():
        return run_rank(task, todo, run_dir)
    job = run_dir / "torchrun-job.pkl"
    atomic_write_bytes(job, pickle.dumps((task, todo, str(run_dir))))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
               "-m", "lposs.experiment.executors", str(job)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise_failure(run_dir, [f"torchrun ({' '.join(command)}) ended with exit code {done.returncode}:\n"
                                + done.stdout[-4000:]])


def run_rank(task: ShardTask, todo: list[Shard], run_dir: Path) -> None:
    """This rank takes todo[rank::world_size] (one GPU per local rank); gloo barriers before and after."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    env = {}
    if torch.cuda.is_available():  # CUDA is initialised by now: pick the device, not the visible set
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    else:
        env = worker_env(local_rank, 0)
    dist.barrier()  # every rank has decided what is to do before any rank writes
    work_shards(task, todo[rank::world], str(run_dir), rank, env)
    dist.barrier()  # rank 0 (and every rank) may reduce now


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------

def run_shards(task: ShardTask, n_items: int, executor: str | None = None, workers: int | None = None,
               desc: str = "shards", progress: bool = True, run_dir: str | os.PathLike | None = None,
               max_shards: int = MAX_SHARDS) -> dict[str, Any]:
    """Compute every incomplete shard of task on the executor; raise unless every shard is complete after.

    executor/workers: override LPOSS_EXECUTOR / LPOSS_WORKERS. run_dir: the run folder (default
    LPOSS_RUN_DIR/<desc>-<task fingerprint>), removed after a complete run.
    Returns {"executor", "workers", "shards", "shards_run", "seconds"}.
    """
    start = time.perf_counter()
    config = executor_config(executor, workers)
    shards = split_shards(n_items, max_shards)
    run_dir = Path(run_dir) if run_dir is not None else run_folder(task, config, desc)
    todo = [s for s in shards if task.missing(s)]
    count = default_workers(config) if todo else 0
    if todo and is_main_process():
        reset_reports(run_dir)
    initial = n_items - sum(len(s.items) for s in todo)
    if todo:
        with ProgressView(run_dir, n_items, initial, desc, progress and is_main_process()):
            if config.kind == "slurm":
                run_slurm(task, todo, run_dir, count, config.slurm)
            else:
                {"inline": run_inline, "local": run_local, "torchrun": run_torchrun}[config.kind](
                    task, todo, run_dir, count)
    incomplete = [f"{s}: {len(m)} item(s) missing" for s in shards if (m := task.missing(s))]
    if incomplete:
        raise ShardsIncomplete(f"{desc}: after the run on executor {config.kind}, " + "; ".join(incomplete[:10])
                               + "\nThe workers reported no error; run again to compute what is missing.")
    barrier()  # under torchrun: every rank has checked before rank 0 removes the run folder
    if is_main_process():
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"executor": config.kind, "workers": count if config.kind != "inline" else 1, "shards": len(shards),
            "shards_run": len(todo), "seconds": time.perf_counter() - start}


def in_torchrun() -> bool:
    """Whether this process is a rank of a torchrun (or other torch.distributed) launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 under torchrun; always true otherwise (the rank that reduces and writes results)."""
    return os.environ.get("RANK", "0") == "0" if in_torchrun() else True


def barrier() -> None:
    """A gloo barrier across the ranks of a torchrun launch; nothing outside one."""
    import torch.distributed as dist

    if in_torchrun() and dist.is_available() and dist.is_initialized():
        dist.barrier()


def _torchrun_main(job: str) -> None:
    with open(job, "rb") as handle:
        task, todo, run_dir = pickle.load(handle)
    run_rank(task, todo, Path(run_dir))


if __name__ == "__main__":
    _torchrun_main(sys.argv[1])
