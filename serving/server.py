"""optdse-serve: wire flags, model, gRPC and REST together, and shut down cleanly.

Start-up order follows tensorflow_model_server: bind the ports, then load the model, so a
client polling GetModelStatus sees LOADING and then AVAILABLE. SIGTERM and SIGINT stop the
server gracefully (in-flight requests get up to a second to finish); before it serves
(importing TensorFlow, loading the model) they stop it at once. Either way it exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from serving.flags import ServerFlags, parse_flags
from serving.tensorflow_import import import_tensorflow

log = logging.getLogger("optdse-serve")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(flags: ServerFlags) -> int:
    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """Stop: once serving, after the loop below drains; before that (importing TensorFlow,
        loading the model, which can take many seconds) at once."""
        stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        return _serve(flags, stop, serving)
    except KeyboardInterrupt as interrupt:
        log.info("stopped by %s while starting", interrupt)
        return 0


def settings_line(flags: ServerFlags) -> str:
    """The settings in effect, flags and batching file read, in the flags' own names: what an
    operator (and optdse's tests) check a knob against."""
    batching = flags.batching
    batched = ("enable_batching=false" if batching is None else
               f"enable_batching=true max_batch_size={batching.max_batch_size} "
               f"batch_timeout_micros={batching.batch_timeout_micros} num_batch_threads={batching.num_batch_threads} "
               f"max_enqueued_batches={batching.max_enqueued_batches}")
    return (f"settings: {batched} tensorflow_intra_op_parallelism={flags.intra_op_threads} "
            f"tensorflow_inter_op_parallelism={flags.inter_op_threads} grpc_max_threads={flags.grpc_max_threads}")


def _serve(flags: ServerFlags, stop: threading.Event, serving: threading.Event) -> int:
    log.info("%s", settings_line(flags))
    import_tensorflow(without_keras=True)
    from serving.grpc_api import start_grpc
    from serving.model_server import ModelServer
    from serving.rest import start_rest

    model = ModelServer(flags.model_name, flags.model_base_path, flags.batching,
                        flags.intra_op_threads, flags.inter_op_threads)
    try:
        grpc_server, grpc_port = start_grpc(model, _address(flags.host, flags.port),
                                            flags.grpc_max_threads, flags.max_request_bytes)
    except (OSError, RuntimeError) as error:
        log.error("cannot listen for gRPC on %s: %s", _address(flags.host, flags.port), error)
        return 1
    rest_server = None
    try:
        if flags.rest_api_port:
            rest_server = start_rest(model, flags.host, flags.rest_api_port, flags.max_request_bytes)
        log.info("gRPC on %s%s", _address(flags.host, grpc_port),
                 f", REST on {_address(flags.host, flags.rest_api_port)}" if rest_server else "")
        try:
            model.load()
        except Exception as error:  # noqa: BLE001 - report any load failure as one line
            log.error("failed to load model %s: %s", flags.model_name, error)
            return 1
        serving.set()
        if stop.is_set():  # the signal came between the load's end and here
            return 0
        print(f"optdse-serve: serving {flags.model_name} version {model.version} on "
              f"{_address(flags.host, grpc_port)}", flush=True)
        while not stop.wait(timeout=1.0):
            pass
        log.info("shutting down")
        return 0
    except OSError as error:
        log.error("cannot listen for REST on %s: %s", _address(flags.host, flags.rest_api_port), error)
        return 1
    finally:
        grpc_server.stop(grace=1.0).wait()
        if rest_server is not None:
            rest_server.shutdown()
            rest_server.server_close()
        model.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s optdse-serve %(levelname)s %(message)s",
                        stream=sys.stderr)
    return serve(parse_flags(argv))


if __name__ == "__main__":
    sys.exit(main())
