"""NVIDIA's Model Analyzer against optdse, on one question both answer, against one tritonserver.

The question (studies/mnist-triton-throughput.yaml): on one tritonserver serving MNIST on this
machine, which instance count, max_batch_size, dynamic batching and client concurrency give the
most throughput with p99 under 10 ms? Model Analyzer's quick search (perf_analyzer measuring)
and optdse's study (TPE, optdse's load generator and stability rule) each answer it, one after
the other; then both answers are measured again by the same load generator, alternately for
--rounds rounds, so the two searches are judged by one yardstick (each tool's own throughput
figure depends on its client: perf_analyzer is C++, optdse's generator Python, and on two
cores the client's CPU is taken from the server's).

Model Analyzer cannot live in optdse's environment (it pins optuna 3.6.1; tritonclient 2.51's
perf_analyzer needs numpy < 2), so this script makes its own in WORK (default
results/model-analyzer): a venv with triton-model-analyzer 1.58.0 and the CUDA runtime library
perf_analyzer links (nvidia-cuda-runtime-cu12; no GPU is used), and perf_analyzer 2.51.0
unpacked from the tritonclient wheel (2.52-2.60 need glibc 2.38; Debian 12 has 2.36). All from
PyPI; it also needs Debian's libb64-0d. tritonserver is optdse's (`optdse triton install`).

Run from the repository root:  .venv/bin/python benchmarks/model_analyzer.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import ctypes.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402

from optdse.config import ServerConfig  # noqa: E402
from optdse.knobs import TritonKnobs  # noqa: E402
from optdse.models import builtin, ensure_model  # noqa: E402
from optdse.record import TrialRecord, records  # noqa: E402
from optdse.triton.install import find  # noqa: E402
from optdse.triton.repository import MODEL_FILE, model_config  # noqa: E402

ANALYZER = "triton-model-analyzer==1.58.0"
PERF_ANALYZER_WHEEL = "tritonclient==2.51.0"
P99_MS = 10.0


def _run(command: list[str], **kwargs: object) -> None:
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def set_up(work: Path) -> tuple[Path, Path, str]:
    """Model Analyzer's venv and perf_analyzer in `work` (once); their paths and the CUDA runtime's folder."""
    if not ctypes.util.find_library("b64"):
        sys.exit("perf_analyzer needs libb64.so.0d: apt-get install libb64-0d")
    venv = work / "venv"
    if not (venv / "bin" / "model-analyzer").exists():
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "--quiet", ANALYZER, "nvidia-cuda-runtime-cu12"])
    perf_analyzer = work / "bin" / "perf_analyzer"
    if not perf_analyzer.exists():
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
              "--platform", "manylinux1_x86_64", "--dest", str(work / "wheel"), PERF_ANALYZER_WHEEL])
        with zipfile.ZipFile(next((work / "wheel").glob("tritonclient-*.whl"))) as wheel:
            member = next(name for name in wheel.namelist() if name.endswith("/bin/perf_analyzer"))
            perf_analyzer.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as source, perf_analyzer.open("wb") as copy:
                shutil.copyfileobj(source, copy)
        perf_analyzer.chmod(0o755)
    cuda = next((venv / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"))
    return venv / "bin" / "model-analyzer", perf_analyzer, str(cuda)


def analyzer_config(work: Path, perf_analyzer: Path, cuda: str) -> Path:
    """The model repository (the config optdse writes, max_batch_size 8) and Model Analyzer's YAML."""
    triton = find()
    base = ensure_model("mnist", Console(stderr=True))
    server = ServerConfig(model=builtin("mnist"), replicas=1, cpus=2.0, memory_mb=4096, server="triton",
                          knobs=TritonKnobs(max_batch_size=8))
    model_dir = work / "models" / "mnist"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(model_config(server, base))
    shutil.copyfile(MODEL_FILE, model_dir / "1" / "model.py")
    environment = triton.environment()
    config = {
        "model_repository": str(work / "models"), "output_model_repository_path": str(work / "output"),
        "override_output_model_repository": True, "export_path": str(work / "results"),
        "checkpoint_directory": str(work / "checkpoints"),
        "triton_launch_mode": "local", "triton_server_path": str(triton.server), "perf_analyzer_path": str(perf_analyzer),
        "triton_server_flags": {"backend-directory": str(triton.backends), "http-address": "127.0.0.1",
                                "grpc-address": "127.0.0.1", "metrics-address": "127.0.0.1"},
        "triton_server_environment": {"LD_LIBRARY_PATH": f"{environment['LD_LIBRARY_PATH']}:{cuda}",
                                      "PATH": environment["PATH"]},
        "triton_http_endpoint": "127.0.0.1:18000", "triton_grpc_endpoint": "127.0.0.1:18001",
        "triton_metrics_url": "http://127.0.0.1:18002/metrics",
        "run_config_search_mode": "quick", "run_config_search_max_instance_count": 3,
        "run_config_search_max_concurrency": 16, "run_config_search_max_model_batch_size": 8,
        "profile_models": {"mnist": {"cpu_only": True, "objectives": {"perf_throughput": 10},
                                     "constraints": {"perf_latency_p99": {"max": P99_MS}}}},
    }
    path = work / "analyzer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_analyzer(analyzer: Path, config: Path, cuda: str, work: Path) -> tuple[float, list[dict[str, str]]]:
    for leftover in ("output", "results", "checkpoints"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    began = time.monotonic()
    _run([str(analyzer), "profile", "-f", str(config)], env={**os.environ, "LD_LIBRARY_PATH": cuda},
         stdout=(work / "analyzer.log").open("w"), stderr=subprocess.STDOUT)
    seconds = time.monotonic() - began
    with (work / "results" / "results" / "metrics-model-inference.csv").open() as table:
        return seconds, list(csv.DictReader(table))


def run_optdse(work: Path) -> tuple[float, list[TrialRecord]]:
    import optuna

    storage = f"sqlite:///{work / 'optdse.db'}"
    (work / "optdse.db").unlink(missing_ok=True)
    began = time.monotonic()
    _run([str(Path(sys.executable).parent / "optdse"), "study", "mnist-triton-throughput", "--storage", storage],
         stdout=(work / "optdse.log").open("w"), stderr=subprocess.STDOUT)
    seconds = time.monotonic() - began
    study = optuna.load_study(study_name="mnist-triton-throughput", storage=storage)
    return seconds, [record for record in records(study) if record.measurement is not None]


def measure(flags: list[str]) -> dict[str, float]:
    """One configuration measured by optdse's load generator and stability rule."""
    done = subprocess.run([str(Path(sys.executable).parent / "optdse"), "measure", "--server", "triton", "--cpus", "2",
                           "--memory", "4096", "--json", *flags], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout)
    return {"throughput_rps": figures["throughput_rps"], "p99_ms": figures["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="re-measurements of each tool's answer, alternately")
    parser.add_argument("--work", type=Path, default=Path("results/model-analyzer"))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    analyzer, perf_analyzer, cuda = set_up(work)
    config = analyzer_config(work, perf_analyzer, cuda)

    analyzer_s, rows = run_analyzer(analyzer, config, cuda, work)
    feasible = [r for r in rows if r["Satisfies Constraints"] == "Yes"]
    best_row = max(feasible, key=lambda r: float(r["Throughput (infer/sec)"]))
    configs = {r["Model Config Path"] for r in rows}
    config_text = (work / "output" / best_row["Model Config Path"] / "config.pbtxt").read_text()
    instances = int(config_text.split("count:")[1].split()[0])
    max_batch = int(config_text.split("max_batch_size:")[1].split()[0])
    dynamic = "dynamic_batching" in config_text
    analyzer_flags = ["--instance-count", str(instances), "--max-batch-size", str(max_batch), "--threads",
                      best_row["Concurrency"], *(["--dynamic-batching"] if dynamic else [])]

    optdse_s, trials = run_optdse(work)
    best_trial = max((t for t in trials if t.feasible), key=lambda t: t.measured.throughput_rps)
    chosen = best_trial.parameters
    optdse_flags = ["--instance-count", str(chosen["instance_count"]), "--max-batch-size", str(chosen["max_batch_size"]),
                    "--threads", str(chosen["threads"]), *(["--dynamic-batching"] if chosen["dynamic_batching"] else [])]

    again: dict[str, list[float]] = {"analyzer": [], "optdse": []}
    for _ in range(args.rounds):
        for tool, flags in (("analyzer", analyzer_flags), ("optdse", optdse_flags)):
            again[tool].append(measure(flags)["throughput_rps"])

    print(f"Model Analyzer (quick): {len(rows)} measurements of {len(configs)} configurations in {analyzer_s:.0f} s; "
          f"best {' '.join(analyzer_flags)}: {float(best_row['Throughput (infer/sec)']):.0f} infer/s, "
          f"p99 {best_row['p99 Latency (ms)']} ms (perf_analyzer's figures; no CPU use reported)")
    print(f"optdse (TPE): {len(trials)} trials in {optdse_s:.0f} s; best {' '.join(optdse_flags)}: "
          f"{best_trial.measured.throughput_rps:.0f} req/s, p99 {best_trial.measured.p99_ms:.2f} ms")
    for tool in again:
        print(f"{tool}'s answer, measured again by optdse ({args.rounds} rounds): "
              f"{', '.join(f'{v:.0f}' for v in again[tool])} req/s (median {statistics.median(again[tool]):.0f})")
    print(f"ratios optdse / Model Analyzer: wall time {optdse_s / analyzer_s:.2f}, evaluations "
          f"{len(trials) / len(rows):.2f}, re-measured throughput of the answers "
          f"{statistics.median(again['optdse']) / statistics.median(again['analyzer']):.2f}")


if __name__ == "__main__":
    main()
