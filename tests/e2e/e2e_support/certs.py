"""A throw-away PKI made with the openssl CLI: a test CA, a leaf for the test host names, and two
certificates that must be refused (self-signed, wrong name) for the upstream-TLS tests."""

import dataclasses
import pathlib
import subprocess

# Every name the upstream leaf is valid for. The proxy reaches all of them through the config's
# `resolve` map, so none needs DNS.
LEAF_NAMES = ("allowed.test", "other.test", "api.openai.com", "api.anthropic.com",
              "api.github.com", "private.test", "blocked.test", "sub.allowed.test")


@dataclasses.dataclass(frozen=True)
class PkiFiles:
    directory: pathlib.Path
    ca_cert: pathlib.Path
    ca_key: pathlib.Path
    leaf_cert: pathlib.Path  # signed by the CA, SAN = LEAF_NAMES + 127.0.0.1
    leaf_key: pathlib.Path
    self_signed_cert: pathlib.Path  # CN/SAN allowed.test, but signed by itself
    self_signed_key: pathlib.Path
    wrong_name_cert: pathlib.Path  # signed by the CA, but only for wrong-name.invalid
    wrong_name_key: pathlib.Path


def _openssl(*args, cwd):
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _new_key(path, cwd):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", str(path), cwd=cwd)


def _leaf(directory, name, ca_cert, ca_key, dns_names, ip_names=()):
    key = directory / f"{name}-key.pem"
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    _new_key(key, directory)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={dns_names[0]}", "-out", str(csr),
             cwd=directory)
    san = ",".join([f"DNS:{n}" for n in dns_names] + [f"IP:{ip}" for ip in ip_names])
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-set_serial", str(int.from_bytes(name.encode(), "big") % (1 << 60) + 2),
             "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(cert), cwd=directory)
    return cert, key


def make_test_pki(directory: pathlib.Path) -> PkiFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca-key.pem"
    ca_cert = directory / "ca.pem"
    _new_key(ca_key, directory)
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "30",
             "-subj", "/CN=sbx e2e test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash",
             "-out", str(ca_cert), cwd=directory)
    leaf_cert, leaf_key = _leaf(directory, "leaf", ca_cert, ca_key, LEAF_NAMES, ("127.0.0.1",))
    wrong_cert, wrong_key = _leaf(directory, "wrong-name", ca_cert, ca_key,
                                  ("wrong-name.invalid",))

    self_key = directory / "self-signed-key.pem"
    self_cert = directory / "self-signed.pem"
    _new_key(self_key, directory)
    _openssl("req", "-x509", "-new", "-key", str(self_key), "-sha256", "-days", "30",
             "-subj", "/CN=allowed.test",
             "-addext", "subjectAltName=DNS:allowed.test,DNS:other.test",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-out", str(self_cert), cwd=directory)
    return PkiFiles(directory=directory, ca_cert=ca_cert, ca_key=ca_key,
                    leaf_cert=leaf_cert, leaf_key=leaf_key,
                    self_signed_cert=self_cert, self_signed_key=self_key,
                    wrong_name_cert=wrong_cert, wrong_name_key=wrong_key)
