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
