"""What optdse adds to optuna-dashboard: a note per trial with its figures, the hypervolume
history as a saved plot, and `optdse dashboard` to serve a study's storage on 127.0.0.1."""

from __future__ import annotations

import socketserver
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from optdse.config import Config
from optdse.measurement import Measurement

HYPERVOLUME_PLOT_ID = "optdse-hypervolume-history"


def save_trial_note(trial: optuna.Trial, text: str) -> None:
    """Show `text` (Markdown) on the trial's page in the dashboard. optuna_dashboard is
    imported here, not with this module: it imports scikit-learn (about 1 s), which commands
    that stop before their first trial (a wrong study file, say) should not wait for."""
    from optuna_dashboard import save_note

    save_note(trial, text)


def trial_note(config: Config, result: Measurement) -> str:
    """The trial's measurement in Markdown, shown on its page in the dashboard."""
    energy = f"{result.energy_j:.2f} J ({result.energy_method})"  # the method says "estimate" where it is one
    lines = [
        f"## {config.describe()}",
        "",
        "| figure | value |", "|---|---|",
        f"| ART | {result.art_ms:.3f} ms |",
        f"| p50 / p95 / p99 / p99.9 | {result.p50_ms:.3f} / {result.p95_ms:.3f} / {result.p99_ms:.3f} / "
        f"{result.p999_ms:.3f} ms |",
        f"| load | {result.loop}"
        + (f"; {result.late_sends} sends more than {result.late_threshold_ms:g} ms late (worst {result.late_max_ms:.1f} ms)"
           + ("" if result.generator_kept_up else ": NOT VALID, the generator fell behind")
           if result.offered_rps else "") + " |",
        f"| throughput | {result.throughput_rps:.1f} req/s |",
        f"| ACU (replicas) | {result.acu_cores:.3f} cores"
        + (" (" + ", ".join(f"{node} {acu:.3f} with {result.replicas_by_node.get(node, 0)} replica(s)"
                            for node, acu in result.acu_by_node.items()) + ")"
           if len(result.acu_by_node) > 1 else "") + " |",
        f"| cost | {result.cost_cores:g} cores and {result.cost_memory_mb:g} MB reserved; per answered request "
        f"{result.cpu_ms_per_request:.3f} ms of replica CPU, {result.energy_j_per_request:.4f} J |",
        f"| model | {config.server.model.describe()} |",
        f"| server command | `{result.server_command}`"
        + (f"; batching file: {result.batching_parameters.strip().replace(chr(10), '; ')}"
           if result.batching_parameters else "") + " |",
        f"| each request | file size {config.client.file_size} ({result.file_size_unit}): {result.rows_per_request} "
        f"row(s), {result.request_bytes} bytes; inputs {result.request_source} |",
        f"| memory peak (largest replica) | {result.mem_peak_mb:.0f} MB |",
        f"| errors | {result.errors} of {result.requests_sent} ({result.error_rate:.2%})"
        + (f": {', '.join(f'{code} x{n}' for code, n in result.error_codes.items())}" if result.error_codes else "")
        + f"; deadline {result.deadline_ms:g} ms, {result.retried_requests} retried |",
        f"| network | {result.network_method}"
        + (f" ({config.client.network.describe()})" if config.client.network.impaired else "") + " |",
        f"| window | {result.window_s:.2f} s, {result.requests_in_window} requests "
        f"({result.warmup_requests} warm-up, {result.cooldown_requests} cool-down cut) |",
        f"| stability | spread {result.stability_spread:.1%} ({'stable' if result.stable else 'not stable'})"
        + (f"; ran {result.stop_rule}: " + ", ".join(f"{w['throughput_rps']:.0f} req/s {w['art_ms']:.2f} ms"
                                                     for w in result.windows) if result.stop_rule else "") + " |",
        f"| client CPU | {result.client_cpu_cores:.2f} cores ({result.client_processes} load processes) |",
        f"| energy | {energy} |",
        f"| accounting | {result.accounting}, limits {'enforced' if result.limits_enforced else 'NOT enforced'} |",
    ]
    if result.repeats > 1:
        lines.insert(2, f"Measured {result.repeats} times in a row: figures are means (counts are sums); "
                        f"coefficient of variation ART {result.art_cv:.1%}, ACU {result.acu_cv:.1%}.\n")
    if result.replicas_killed:
        lines.append(f"| chaos | killed {', '.join(result.replicas_killed)} during the load |")
    if result.scenarios:
        lines[0] = f"## {config.server_describe()}"
        lines.insert(2, f"Measured under {len(result.scenarios)} workload scenarios; figures are the "
                        f"{'worst scenario' if result.aggregate == 'worst' else 'mean'} of each "
                        "(the error rate the worst), the rest from the slowest.\n")
        lines += ["", "| scenario | ART | p99 | throughput | ACU | errors |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['name']} | {s['art_ms']:.3f} ms | {s['p99_ms']:.3f} ms | {s['throughput_rps']:.1f} req/s | "
                  f"{s['acu_cores']:.3f} cores | {s['error_rate']:.2%} |" for s in result.scenarios]
    lines += [f"\n**Warning:** {warning}" for warning in result.warnings]
    return "\n".join(lines)


def failure_note(config: Config | None, reason: str, message: str) -> str:
    title = config.describe() if config is not None else "configuration not reached"
    return f"## {title}\n\n**FAILED ({reason})**: {message}"


def save_hypervolume_plot(study: optuna.Study) -> bool:
    """Save (or replace) the hypervolume history among the study's plots in the dashboard;
    False while the study has no completed trial to draw."""
    from optuna_dashboard import save_plotly_graph_object

    from optdse.report.data import compute_hypervolume_only
    from optdse.report.page import hypervolume_figure

    data = compute_hypervolume_only(study)
    if data.study.completed == 0:
        return False
    save_plotly_graph_object(study, hypervolume_figure(data), graph_object_id=HYPERVOLUME_PLOT_ID)
    return True




class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server with a thread per request. The main thread then only waits for
    connections, so a stop signal lands there and ends `serve_forever`; answered in the main
    thread (what optuna-dashboard's own `run_server` does), a request that is running when
    Ctrl-C arrives swallows the KeyboardInterrupt in wsgiref's error handler and the server
    keeps going. Request threads are daemons: an answer still being written does not hold
    the process."""

    daemon_threads = True
    block_on_close = False


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # wsgiref's signature
        """No line per request on stderr (the command prints its own)."""


def dashboard_server(storage: str | optuna.storages.BaseStorage, port: int, host: str = "127.0.0.1") -> WSGIServer:
    """optuna-dashboard for `storage`, listening on host:port (an OSError if it cannot). Use it
    as a context manager (which closes its socket) and call `serve_forever`: it serves until a
    stop signal (`optdse.signals`) or Ctrl-C raises in the main thread."""
    from optuna_dashboard import wsgi

    return make_server(host, port, wsgi(storage), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)

__all__ = ["dashboard_server", "failure_note", "save_hypervolume_plot", "save_trial_note", "trial_note"]
