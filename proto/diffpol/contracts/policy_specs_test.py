from __future__ import annotations

import pytest

from diffpol.contracts import (
    BUILTIN_POLICIES,
    ContractError,
    PolicyRef,
    build_policy,
    parse_policy_spec,
    policy_specs,
)


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_builtin_names(name):
    assert parse_policy_spec(name) == PolicyRef("builtin", name, name)


def test_onnx_paths_labels_and_grpc_addresses(tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for spec in (str(model), f"onnx:{model}", "model.onnx", "onnx:model.onnx"):
        assert parse_policy_spec(spec) == PolicyRef("onnx", str(model), spec)
    assert parse_policy_spec(f"ddim={model}") == PolicyRef("onnx", str(model), "ddim")
    assert parse_policy_spec("best=expert").label == "best"
    ref = parse_policy_spec("grpc://[::1]:50051", label="served")
    assert ref == PolicyRef("grpc", "[::1]:50051", "served")
    assert ref.spec == "grpc://[::1]:50051"
    assert PolicyRef("onnx", "/m.onnx", "x").spec == "onnx:/m.onnx"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "non-empty string"),
        ("greedy", r"unknown policy 'greedy'.*one of random, zero, expert"),
        ("onnx:missing.onnx", r"model file 'missing\.onnx' does not exist"),
        ("/no/such/model.onnx", "does not exist"),
        ("grpc://localhost", r"grpc://HOST:PORT with a port in 1\.\.65535"),
        ("grpc://host:99999", r"grpc://HOST:PORT"),
    ],
)
def test_bad_specs_say_what_is_accepted(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ContractError, match=message):
        parse_policy_spec(spec)


def test_external_policies_take_no_parameters():
    with pytest.raises(ContractError, match=r"'grpc://h:1' takes no parameters, got noise_max"):
        build_policy(PolicyRef("grpc", "h:1", "x"), "Pendulum-v1", noise_max=1.0)


def test_a_missing_component_is_named_with_its_distribution(monkeypatch):
    monkeypatch.setitem(policy_specs.BUILDERS, "grpc", ("diffpol.nowhere", "Client"))
    with pytest.raises(ContractError, match="needs the diffpol-nowhere distribution"):
        build_policy(PolicyRef("grpc", "h:1", "x"), "Pendulum-v1")
