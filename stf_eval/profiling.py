"""Peak memory of a block of work, on the device it runs on.

CUDA: ``torch.cuda.max_memory_allocated`` after a reset (exact, tensors only).
CPU: there is no allocator counter, so a background thread samples the process' resident set size
(RSS, from /proc/self/statm) every few milliseconds and the peak growth over the RSS at the start
is reported. It includes allocator caching and is approximate; it is only comparable between models
measured the same way on the same machine.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark (kilobytes on Linux/BSD)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    def __init__(self):
        self.mb: float = 0.0
        self.method: str = ""


@contextmanager
def peak_memory(device: torch.device, interval: float = 0.005):
    """``with peak_memory(device) as m: ...`` then ``m.mb`` (MiB) and ``m.method``."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            result.method = "cuda_max_allocated"
        return
    start = _rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result.mb = max(0.0, (peak[0] - start) / 2**20)
        result.method = "cpu_peak_rss_growth"


# -- peak memory of one training step, in isolation ---------------------------------------------------------
#: Method names recorded beside ``train_step_peak_memory_mb`` (docs/efficiency.md).
STEP_METHOD_CPU = "cpu_fresh_process_step_rss"
STEP_METHOD_CUDA = "cuda_step_max_allocated"


def _step_blob(step: dict) -> bytes:
    """The step as bytes: net, loss and a description of the optimizer (a copy; nothing shared)."""
    import io

    opt = step["optimizer"]  # an optimizer, or (class, keyword arguments) for all trainable parameters
    params = [p for p in step["net"].parameters()]
    index = {id(p): i for i, p in enumerate(params)}
    if isinstance(opt, tuple):
        opt_cls, kwargs = opt
        groups = [{**kwargs, "params": [i for i, p in enumerate(params) if p.requires_grad]}]
    else:
        opt_cls = type(opt)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in opt.param_groups]
    blob = {"net": step["net"], "loss_fn": step["loss_fn"], "optimizer": opt_cls, "groups": groups,
            "x": step["x"].detach().cpu(), "y": step["y"].detach().cpu(), "train_mode": step["train_mode"],
            "options": step["options"], "dp": step.get("dp")}
    buf = io.BytesIO()
    torch.save(blob, buf)
    return buf.getvalue()


def _replay(blob: dict, device: torch.device):
    """(net, one_step(x, y)) rebuilt from a step blob on ``device``, with a fresh optimizer."""
    from .training import as_input_format, autocast, prepare_net

    options = blob["options"]
    net = prepare_net(blob["net"], device, options)
    net.train(blob["train_mode"])
    params = list(net.parameters())
    groups = [{**g, "params": [params[i] for i in g["params"]]} for g in blob["groups"]]
    opt = blob["optimizer"](groups)
    loss_fn = blob["loss_fn"]
    module = net
    dp = blob.get("dp")
    if dp:  # DP-SGD: per-sample gradients (opacus), clipped and noised by its optimizer
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        module = GradSampleModule(net)
        opt = DPOptimizer(opt, noise_multiplier=dp["noise_multiplier"], max_grad_norm=dp["max_grad_norm"],
                          expected_batch_size=dp["expected_batch_size"])

    def one_step(x, y):
        x = as_input_format(x.to(device), options)
        y = y.to(device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, options):
            loss = loss_fn(module, x, y)
        loss.backward()
        opt.step()
        if dp:
            opt.zero_grad(set_to_none=True)  # opacus keeps per-sample gradients until then
        return loss

    return net, one_step


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc), so the next allocations show in the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_blob_here(blob: dict, device: torch.device, threads: int) -> dict:
    """Warm up on two examples (kernels, optimizer state), then the peak of one full-batch step."""
    import warnings

    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    net, one_step = _replay(blob, device)
    x, y = blob["x"], blob["y"]
    one_step(x[:2], y[:2])
    if device.type == "cuda":
        xd, yd = x.to(device), y.to(device)
        with peak_memory(device) as mem:
            one_step(xd, yd)
        return {"mb": mem.mb, "method": STEP_METHOD_CUDA, "batch": len(x)}
    _release_freed_memory()
    with peak_memory(device, interval=0.001) as mem:
        one_step(x, y)
    return {"mb": mem.mb, "method": STEP_METHOD_CPU, "batch": len(x)}


def measure_train_step(step: dict, device: torch.device, timeout: float = 300.0) -> dict:
    """Peak memory (MiB) of one training step of ``step`` (recorded by ``training.fit``), in isolation.

    CPU: replayed in a fresh process (a child forked from a helper interpreter that only imported torch,
    see ``_StepMemoryServer``; off Linux a fresh interpreter): no allocator or library state of this one, RSS growth
    of one full-batch step over the RSS after a two-example warm-up step. CUDA: in this process on a
    copy, ``max_memory_allocated`` growth after a reset. Every model is measured from the same point:
    weights, optimizer state and the batch already on the device. Returns {"mb", "method", "batch"}
    or {"mb": None, "method": "unavailable: <why>"}.
    """
    import io
    import json
    import os
    import subprocess
    import sys
    import tempfile

    try:
        data = _step_blob(step)
    except Exception as exc:  # e.g. a user loss that cannot be pickled
        return {"mb": None, "method": f"unavailable: {type(exc).__name__}: {exc}"[:200]}
    if device.type == "cuda":
        blob = torch.load(io.BytesIO(data), weights_only=False)
        return _measure_blob_here(blob, device, 0)
    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
        fh.write(data)
        path = fh.name
    try:
        forked = _SERVER.measure(path, torch.get_num_threads(), timeout)
        if forked is not None:
            return forked
        out = subprocess.run([sys.executable, "-m", "stf_eval.profiling", path, str(torch.get_num_threads())],
                             capture_output=True, text=True, timeout=timeout, env=_interpreter_env())
        if out.returncode != 0:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return {"mb": None, "method": f"unavailable: {tail}"[:200]}
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        return {"mb": None, "method": f"unavailable: {type(exc).__name__}"}
    finally:
        os.unlink(path)


class _StepMemoryServer:
    """A helper interpreter that imports torch once and forks a fresh child for each step measurement
    (``python -m stf_eval.profiling --serve``): the child has a fresh address space and no allocator
    state of the training process, like a fresh interpreter, without its ~4 s of imports. Requests and
    answers are one line each (blob path and threads in, the JSON result out). Why by hand: a
    multiprocessing forkserver re-imports the caller's main module in every child (a user script
    without a main guard would run again); this server runs nothing but the measurement."""

    def __init__(self):
        self.proc = None

    def measure(self, path: str, threads: int, timeout: float) -> dict | None:
        """The result, or None where the server cannot run here (the caller starts a fresh interpreter)."""
        import json
        import select
        import subprocess
        import sys

        if not sys.platform.startswith("linux"):  # fork after importing torch is only safe to rely on there
            return None
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.proc = subprocess.Popen([sys.executable, "-m", "stf_eval.profiling", "--serve"],
                                             env=_interpreter_env(),
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True, bufsize=1)
            except OSError:
                return None
        try:
            self.proc.stdin.write(f"{threads}\t{path}\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
        except (OSError, ValueError):
            line = ""
        if not line:
            self.close()
            return {"mb": None, "method": "unavailable: the measuring process did not answer in time"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


_SERVER = _StepMemoryServer()


def _interpreter_env() -> dict[str, str]:
    """The environment of a measuring interpreter: this one's, with its import path."""
    import sys

    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _serve() -> int:
    """The server's loop: fork a child per request; the child measures and writes its JSON line."""
    import json
    import sys

    # what every replay would otherwise import in each child: an optimizer's lazy torch._dynamo import
    # (~3 s here) and opacus for DP-SGD steps
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    from . import training  # noqa: F401
    try:
        import opacus  # noqa: F401
    except ImportError:
        pass
    for line in sys.stdin:
        threads, _, path = line.rstrip("\n").partition("\t")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the measuring child
            os.close(read_end)
            try:
                result = _measure_blob_here(torch.load(path, weights_only=False), torch.device("cpu"), int(threads))
            except Exception as exc:  # noqa: BLE001 - reported as the figure's method
                result = {"mb": None, "method": f"unavailable: {type(exc).__name__}: {exc}"[:200]}
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as fh:
            answer = fh.read().decode()
        _, status = os.waitpid(pid, 0)
        if not answer:
            answer = json.dumps({"mb": None, "method": f"unavailable: the measuring process ended (status {status})"})
        print(answer, flush=True)
    return 0


# -- a distribution-free interval for a median ---------------------------------------------------------------
def median_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage): the narrowest symmetric order-statistic interval [x_(k), x_(n+1-k)] whose
    coverage of the population median, 1 - 2 P(Bin(n, 1/2) < k), is at least ``confidence``; with too
    few values, (min, max) and its (lower) coverage."""
    from math import comb

    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    if n == 1:
        return xs[0], xs[0], 0.0

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(comb(n, i) for i in range(k)) / 2**n

    best = 1
    for k in range(1, n // 2 + 1):
        if coverage(k) >= confidence:
            best = k
    return xs[best - 1], xs[n - best], coverage(best)


def _main(argv: list[str]) -> int:
    import json

    if argv[:1] == ["--serve"]:
        return _serve()

    blob = torch.load(argv[0], weights_only=False)
    print(json.dumps(_measure_blob_here(blob, torch.device("cpu"), int(argv[1]) if len(argv) > 1 else 1)))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
