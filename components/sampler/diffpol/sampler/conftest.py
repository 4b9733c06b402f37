"""Shared fixtures of the sampler's tests: exported reference models (one export per test
process) and one running server on the deterministic DDIM model."""

from __future__ import annotations

import grpc
import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Paths of small exported samplers: deterministic DDIM (v1, v2) and stochastic DDPM."""
    from diffpol.sampler.testing import export_reference, export_reference_ddpm

    root = tmp_path_factory.mktemp("models")
    return {
        "ddim": export_reference(root / "ddim.onnx", model_version="v1", seed=0),
        "ddim_v2": export_reference(root / "ddim_v2.onnx", model_version="v2", seed=1),
        "ddpm": export_reference_ddpm(root / "ddpm.onnx", model_version="ddpm-v1", seed=2),
    }


@pytest.fixture(scope="session")
def policy(models):
    """The DDIM model in process: what every answer of ``server`` must equal."""
    from diffpol.sampler import OnnxPolicy

    return OnnxPolicy(models["ddim"])


@pytest.fixture(scope="session")
def server(models):
    """A SamplerServer on 127.0.0.1 (free port) for the DDIM model, max_batch_size 64.
    Shared: tests that reload, stop or reconfigure a server start their own."""
    from diffpol.sampler import serve

    srv = serve(models["ddim"], max_batch_size=64)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    from diffpol.v1 import sampler_pb2_grpc

    return sampler_pb2_grpc.SamplerServiceStub(channel)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """Throwaway PEM files for TLS tests, made with ``cryptography``: a CA, a server
    certificate it signed (for 127.0.0.1 and localhost), a client certificate it signed,
    and a client certificate from another CA. Never committed: made per test run."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def certificate(subject, key, issuer, issuer_key, *, ca=False, sans=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem: str, cert, key=None) -> None:
        (root / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (root / f"{stem}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    import ipaddress

    ca_key, other_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    write("ca", certificate("diffpol test CA", ca_key, "diffpol test CA", ca_key, ca=True))
    write("other-ca", certificate("other CA", other_ca_key, "other CA", other_ca_key, ca=True))
    sans = (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"))
    for stem, issuer, issuer_key, extra in (
        ("server", "diffpol test CA", ca_key, sans),
        ("client", "diffpol test CA", ca_key, ()),
        ("rogue-client", "other CA", other_ca_key, ()),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write(stem, certificate(stem, key, issuer, issuer_key, sans=extra), key)
    return {p.name.replace(".", "_").replace("-", "_"): str(p) for p in root.iterdir()}
