from __future__ import annotations

import pytest

from diffpol.sampler.main import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--port", "70000"], "port must be in 0..65535"),
        (["--port", "0", "--max-batch-size", "0"], "max_batch_size must be >= 1"),
        (["--port", "0", "--max-batch-wait-ms", "-1"], "max_batch_wait_ms must be >= 0"),
        (["--port", "0", "--max-restarts", "-2"], "--max-restarts must be >= -1"),
        (["--port", "0", "--replicas", "0"], "--replicas must be >= 1"),
        (["--port", "0", "--host", "0.0.0.0"], "refusing to serve plaintext gRPC on '0.0.0.0'"),
        (["--port", "0", "--tls-cert", "server.crt"], "give both or neither"),
        (["--port", "0", "--tls-cert", "a", "--tls-key", "b"], "--tls-cert: a is not a"),
        (["--port", "0", "--metrics-port", "70000"], "metrics_port must be in 0..65535"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(models, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(models["ddim"]), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_or_invalid_model_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(tmp_path / "nope.onnx"), "--port", "0"])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    with pytest.raises(SystemExit) as info:
        main(["--model", str(tmp_path / "bad.onnx"), "--port", "0"])
    assert info.value.code == 2 and "not a loadable ONNX model" in capsys.readouterr().err


def test_model_names_must_be_unique(models, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(models["ddim"]), "--model", str(models["ddim_v2"]), "--port", "0"])
    assert info.value.code == 2 and "'default' is given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--model", f"a={models['ddim']}", "--model", "b=/nope.onnx", "--port", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--model b=/nope.onnx" in err and "does not exist" in err
