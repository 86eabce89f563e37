"""How much optdse-serve adds on top of the model and the transport, measured side by side.

In one run, on the MNIST softmax model with one image per request:
  model      p50 of an in-process call of the SavedModel signature, two ways: TF2's eager
             `tf.saved_model.load(...).signatures[...]` and the Session callable the server uses
  empty RPC  p50 of a unary gRPC round trip between two processes carrying raw bytes of the
             same sizes as the Predict request and response, with no work on the server side
  serve      p50 of Predict through optdse-serve, one client thread (tensorflow-serving-api stub)
and the ratio serve / (model + empty RPC), against the server's own model path (the strict
ratio: all of the difference is server overhead) and against the eager call. Then the peak
throughput of 16 closed-loop client threads (2 processes x 8 threads), with and without
--enable_batching. Rounds alternate so that drift of a shared machine hits every quantity.

Run from the repository root:  .venv/bin/python benchmarks/serving_overhead.py [--rounds 3]
The last line is the headline ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.tensorflow_import import import_tensorflow  # noqa: E402

import numpy as np  # noqa: E402

BATCHING_PARAMETERS = "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 1 }\n"


def p50_us(call, n: int, warmup: int = 200) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def empty_rpc_server(port: int, response_size: int) -> None:
    """Child process: answer every call with `response_size` raw bytes, doing nothing else."""
    import grpc

    response = b"\x00" * response_size
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: response)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Empty", {"Call": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def predict_request(images: np.ndarray):
    from tensorflow_serving.apis import predict_pb2

    from serving import codecs

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = "predict_images"
    codecs.fill_tensor_proto(request.inputs["images"], images)
    return request


def closed_loop_worker(port: int, threads: int, seconds: float, counts: multiprocessing.Queue) -> None:
    """Child process: `threads` clients each sending Predict back to back for `seconds`."""
    import_tensorflow(without_keras=True)
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_request(np.random.default_rng(0).random((1, 784), dtype=np.float32))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    for _ in range(50):
        stub.Predict(request, timeout=10)
    deadline = time.monotonic() + seconds

    def loop() -> int:
        done = 0
        while time.monotonic() < deadline:
            stub.Predict(request, timeout=10)
            done += 1
        return done

    with futures.ThreadPoolExecutor(threads) as pool:
        counts.put(sum(pool.map(lambda _: loop(), range(threads))))


def throughput(port: int, clients: int = 16, processes: int = 2, seconds: float = 5.0) -> float:
    counts: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=closed_loop_worker, args=(port, clients // processes, seconds, counts))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(counts.get(timeout=seconds + 120) for _ in workers)
    for worker in workers:
        worker.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="timed calls per p50 measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    args = parser.parse_args()

    tf = import_tensorflow(without_keras=True)
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.servable import Servable
    from tests.serving_process import ServerProcess, export_model, free_port

    workdir = Path(tempfile.mkdtemp(prefix="optdse-bench-"))
    base = workdir / "mnist"
    exported = export_model("mnist", base)
    if exported.returncode != 0:
        sys.exit(exported.stderr)
    images = np.random.default_rng(0).random((1, 784), dtype=np.float32)

    eager = tf.saved_model.load(str(base / "1")).signatures["predict_images"]
    servable = Servable("mnist", 1, base / "1")
    signature = servable.signature("predict_images")
    request = predict_request(images)

    plain = ServerProcess(base, "mnist", False)
    batching_file = workdir / "batching.txt"
    batching_file.write_text(BATCHING_PARAMETERS)
    batched = ServerProcess(base, "mnist", False, "--enable_batching", f"--batching_parameters_file={batching_file}")
    empty_port = free_port()
    response_size = None
    empty = None
    try:
        plain.wait_available()
        batched.wait_available()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(plain.channel)
        response_size = stub.Predict(request, timeout=10).ByteSize()
        empty = subprocess.Popen([sys.executable, __file__, "--empty-rpc-server", str(empty_port), str(response_size)],
                                 stdout=subprocess.PIPE, text=True)
        empty.stdout.readline()
        empty_call = grpc.insecure_channel(f"127.0.0.1:{empty_port}").unary_unary("/bench.Empty/Call")
        request_bytes = request.SerializeToString()

        rows: dict[str, list[float]] = {k: [] for k in ("eager", "callable", "rpc", "serve", "plain_rps", "batched_rps")}
        for round_index in range(args.rounds):
            rows["eager"].append(p50_us(lambda: eager(images=tf.constant(images)), args.requests))
            rows["callable"].append(p50_us(lambda: servable.run(signature, {"images": images}, ("scores",)), args.requests))
            rows["rpc"].append(p50_us(lambda: empty_call(request_bytes, timeout=10), args.requests))
            rows["serve"].append(p50_us(lambda: stub.Predict(request, timeout=10), args.requests))
            rows["plain_rps"].append(throughput(plain.port, seconds=args.seconds))
            rows["batched_rps"].append(throughput(batched.port, seconds=args.seconds))
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()), flush=True)
    finally:
        if empty is not None:
            empty.kill()
            empty.wait()
        plain.stop()
        batched.stop()
        servable.close()

    m = {k: statistics.median(v) for k, v in rows.items()}
    strict = m["serve"] / (m["callable"] + m["rpc"])
    versus_eager = m["serve"] / (m["eager"] + m["rpc"])
    print()
    print(f"machine: {multiprocessing.cpu_count()} cores; request {request.ByteSize()} B, response {response_size} B; "
          f"median of {args.rounds} rounds")
    print(f"model p50, eager signature call      {m['eager']:8.1f} us")
    print(f"model p50, the server's callable      {m['callable']:8.1f} us")
    print(f"empty gRPC round trip p50             {m['rpc']:8.1f} us")
    print(f"optdse-serve Predict p50, 1 thread    {m['serve']:8.1f} us")
    print(f"serve / (eager model + empty RPC)     {versus_eager:8.2f}")
    print(f"throughput, 16 client threads: no batching {m['plain_rps']:.0f} req/s, "
          f"batching {m['batched_rps']:.0f} req/s, ratio {m['batched_rps'] / m['plain_rps']:.2f}  ({BATCHING_PARAMETERS.strip().replace(chr(10), ', ')})")
    print(f"serve / (model + empty RPC) = {strict:.2f}  (target <= 1.3; model = the server's own callable)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--empty-rpc-server"]:
        empty_rpc_server(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
