"""Run the plan as Ray tasks: each training job, then each cell, with the resources of ``[executor]``.

Storage: with ``shared`` the workers read and write the driver's checkpoint cache and run directory
(one machine, or a path every node mounts). With ``object_store`` a task gets the weights it needs as
Ray objects, works in a cache local to its node, and sends back the weights it trained (a job) or the
files it wrote (a cell); the driver writes them into its own cache and run directory. ``auto`` picks
``shared`` when every node sees a probe file the driver writes into both directories.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from pathlib import Path

from ..cache import atomic_write_bytes
from ..config import ExecutorConfig
from ..errors import ConfigError
from ..plan import Job, Plan, Work
from .schedule import Schedule

log = logging.getLogger("stf_eval")

WORKER_ENV = {"TQDM_DISABLE": "1"}  # training bars off in workers: the driver shows one bar over jobs


# -- what runs on a worker -------------------------------------------------------------------------

def _read_blob(root: str, key: str) -> tuple[bytes, bytes]:
    return (Path(root) / f"{key}.pt").read_bytes(), (Path(root) / f"{key}.json").read_bytes()


def _write_blob(root: str, key: str, blob: tuple[bytes, bytes]) -> None:
    # weights first, metadata last: the cache treats an entry as present once both files exist
    atomic_write_bytes(Path(root) / f"{key}.pt", blob[0])
    atomic_write_bytes(Path(root) / f"{key}.json", blob[1])


def _node_cache(work: Work) -> str:
    """A cache on the worker's node for the object-store mode (kept between tasks of one driver cache)."""
    tag = hashlib.sha1(work.cache_root.encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / f"stf-eval-ray-cache-{tag}")


def _prepare_worker(work: Work) -> None:
    """Once per task (both steps are idempotent): quiet logs, the run's malloc setting."""
    from ..allocator import apply

    logging.getLogger("stf_eval").setLevel(logging.WARNING)
    apply(work.cfg.allocator)


def job_task(work: Work, job: Job, shared: bool, *dep_blobs):
    _prepare_worker(work)
    if shared:
        return work.run_job(job), None
    root = _node_cache(work)
    for key, blob in zip(job.deps, dep_blobs):
        _write_blob(root, key, blob)
    result = work.run_job(job, cache_root=root)
    return result, _read_blob(root, job.key)


def cell_task(work: Work, cell, shared: bool, keys: tuple, *blobs):
    _prepare_worker(work)
    if shared:
        return work.run_cell(cell), {}
    root = _node_cache(work)
    for key, blob in zip(keys, blobs):
        _write_blob(root, key, blob)
    with tempfile.TemporaryDirectory(prefix="stf-eval-cell-") as run_dir:
        result = work.run_cell(cell, cache_root=root, run_dir=run_dir)
        files = {p.relative_to(run_dir).as_posix(): p.read_bytes()
                 for p in Path(run_dir).rglob("*") if p.is_file()}
    return result, files


def probe_task(paths: list[str], token: str) -> bool:
    return all((Path(p) / ".stf-eval-probe").is_file() and (Path(p) / ".stf-eval-probe").read_text() == token
               for p in paths)


# -- the driver ---------------------------------------------------------------------------------------

class RayExecutor:
    def __init__(self, config: ExecutorConfig, progress: bool = True):
        self.config = config
        self.progress = progress

    def _connect(self) -> bool:
        """Join the cluster at ``address`` or start an instance here; True when this call started Ray."""
        import ray

        if ray.is_initialized():
            return False
        env = {"env_vars": WORKER_ENV}
        try:
            if self.config.address:
                ray.init(address=self.config.address, runtime_env=env, log_to_driver=True)
            else:
                ray.init(num_cpus=self.config.num_cpus or None, include_dashboard=False, runtime_env=env)
        except ConnectionError as exc:
            raise ConfigError(f"executor.address {self.config.address!r}: no Ray cluster to join ({exc}); "
                              f"start one with `ray start --head`, or leave the address empty") from exc
        return True

    def _shared(self, work: Work) -> bool:
        """Whether the workers see the driver's cache and run directory (``storage``, or a probe)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.config.storage != "auto":
            return self.config.storage == "shared"
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        here = ray.get_runtime_context().get_node_id()
        if nodes == [here]:
            return True
        token = uuid.uuid4().hex
        paths = [work.cache_root, work.run_dir]
        for p in paths:
            atomic_write_bytes(Path(p) / ".stf-eval-probe", token.encode())
        probe = ray.remote(num_cpus=0)(probe_task)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                        .remote(paths, token) for n in nodes])
        shared = all(seen)
        log.info("ray: %d node(s); the cache and run directory are %s", len(nodes),
                 "shared" if shared else "not visible on every node: weights go through the object store")
        return shared

    def run(self, plan: Plan, work: Work, on_cell) -> None:
        import ray

        started = self._connect()
        schedule = Schedule(plan, self.config.max_retries, self.progress)
        running: dict = {}  # object ref -> job or planned cell
        try:
            shared = self._shared(work)
            res = {"num_cpus": self.config.cpus_per_job, "num_gpus": self.config.gpus_per_job,
                   "max_retries": self.config.max_retries}  # Ray's own retries: worker or node lost
            remote_job = ray.remote(**res)(job_task)
            remote_cell = ray.remote(**res)(cell_task)
            work_ref = ray.put(work)
            blobs: dict = {}

            def blob(key):  # the driver's copy of a stage's weights, put in the object store once
                if key not in blobs:
                    blobs[key] = ray.put(_read_blob(work.cache_root, key))
                return blobs[key]

            def submit(item):
                schedule.started(item)
                if isinstance(item, Job):
                    deps = [] if shared else [blob(k) for k in item.deps]
                    ref = remote_job.remote(work_ref, item, shared, *deps)
                else:
                    keys = () if shared else item.stages
                    ref = remote_cell.remote(work_ref, item.cell, shared, keys, *[blob(k) for k in keys])
                running[ref] = item

            while schedule.unfinished():
                for item in schedule.ready():
                    submit(item)
                if not running:
                    schedule.strand_rest()
                    break
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    item = running.pop(ref)
                    try:
                        result, payload = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - reported by name, retried if it may pass
                        cause = getattr(exc, "cause", None) or exc
                        if schedule.failed(item, cause):
                            submit(item)
                        continue
                    if isinstance(item, Job):
                        if payload is not None:
                            _write_blob(work.cache_root, item.key, payload)
                    else:
                        for rel, data in payload.items():
                            atomic_write_bytes(Path(work.run_dir) / rel, data)
                        on_cell(item.cell, result)
                    schedule.succeeded(item)
        except KeyboardInterrupt:
            for ref in running:  # stop the cluster's work; finished jobs and cells are kept
                ray.cancel(ref, force=True)
            raise
        finally:
            schedule.close()
            if started:
                ray.shutdown()
        schedule.raise_failures()
