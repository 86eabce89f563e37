"""optdse-serve's flags: TF Serving's names, and a one-line error with exit code 2 on mistakes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from serving.batching import BatchingParameters, parse_batching_parameters
from tests.serving_process import serve_command


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*serve_command(), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--model_base_path={base}", "--no_such_flag=1"], "--no_such_flag"),
        ([], "--model_base_path is required"),
        (["--model_base_path=/nonexistent/models"], "not a directory"),
        (["--model_base_path={empty}"], "no version directory"),
        (["--model_base_path={base}", "--port=9000", "--rest_api_port=9000"], "must differ"),
        (["--model_base_path={base}", "--batching_parameters_file={batching}"], "--enable_batching"),
        (["--model_base_path={base}", "--enable_batching=maybe"], "expected true or false"),
        (["--model_base_path={base}", "--port=-1"], "must be >= 0"),
        (["--model_base_path={base}", "--port=70000"], "between 0 and 65535"),
        (["--model_base_path={base}", "--enable_batching", "--batching_parameters_file={bad_batching}"], "max_batch_siz"),
    ],
)
@pytest.mark.slow
def test_bad_flags_exit_2_with_one_line(mnist_base_path: Path, tmp_path: Path, args: list[str], mentions: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "batching.txt").write_text("max_batch_size { value: 8 }\n")
    (tmp_path / "bad.txt").write_text("max_batch_siz { value: 8 }\n")
    paths = {"base": mnist_base_path, "empty": tmp_path / "empty", "batching": tmp_path / "batching.txt",
             "bad_batching": tmp_path / "bad.txt"}
    result = run_serve(*(arg.format(**paths) for arg in args))
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and mentions in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_tf_serving_flags() -> None:
    result = run_serve("--help")
    assert result.returncode == 0
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--enable_batching",
                 "--batching_parameters_file", "--tensorflow_intra_op_parallelism",
                 "--tensorflow_inter_op_parallelism", "--host"):
        assert flag in result.stdout


def test_batching_parameters_text_format() -> None:
    text = """
        # TF Serving's text format, as its batching guide writes it
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 1000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 4 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 16
        allowed_batch_sizes: 32
    """
    params = parse_batching_parameters(text)
    assert params == BatchingParameters(32, 1000, 100, 4, (8, 16, 32), False)
    assert [params.padded_size(n) for n in (1, 8, 9, 32)] == [8, 8, 16, 32]
    assert parse_batching_parameters("").max_batch_size == 1000  # TF's BasicBatchScheduler default


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
        ("max_batch_size { value: 16 } allowed_batch_sizes: 8", "must equal max_batch_size"),
        ("max_batch_size { value: 16 } allowed_batch_sizes: 16 allowed_batch_sizes: 8", "strictly increasing"),
        ("max_batch_size: 16", "max_batch_size"),
        ("pad_variable_length_inputs: true", "not supported"),
    ],
)
def test_bad_batching_parameters(text: str, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions) as raised:
        parse_batching_parameters(text, source="params.txt")
    assert str(raised.value).startswith("params.txt")


@pytest.mark.slow
def test_port_in_use_is_reported_not_shared(server, mnist_base_path: Path) -> None:
    """gRPC's SO_REUSEPORT is off: a second server must not silently share a busy port."""
    result = run_serve(f"--port={server.port}", "--model_name=mnist", f"--model_base_path={mnist_base_path}")
    assert result.returncode == 1
    assert "cannot listen for gRPC" in result.stderr and "Traceback" not in result.stderr
