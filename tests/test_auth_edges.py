"""Authentication at its edges, against a real chief: two authorization headers, a token file
others can read, a token file that is not text."""

import os
import subprocess
import sys
from types import SimpleNamespace

import grpc
import pytest

from harness import TOKEN
from kt_cluster.core import compat, protocol
from kt_cluster.cli import read_token, token_file_exposure
from kt_cluster.core.config import ConfigError

pytestmark = pytest.mark.timeout(300)


def _token_readable_by_others(c) -> None:
    c.token_path.chmod(0o644)  # what `echo token > file` leaves with umask 022


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    from harness import running_chief

    with running_chief(tmp_path_factory.mktemp("auth"), {"max_trials": 2}, before_start=_token_readable_by_others) as c:
        yield c


def get_space(address, authorization):
    with grpc.insecure_channel(address) as channel:
        stub = compat.oracle_stub_class()(channel)
        return stub.GetSpace(compat.oracle_messages().GetSpaceRequest(),
                             metadata=[(protocol.AUTHORIZATION, value) for value in authorization],
                             timeout=10, wait_for_ready=True)


@pytest.mark.parametrize("headers", [
    [f"Bearer {TOKEN}", "Bearer wrong-token-0123456789"],
    ["Bearer wrong-token-0123456789", f"Bearer {TOKEN}"],
    [f"Bearer {TOKEN}", f"Bearer {TOKEN}"],
])
def test_two_authorization_headers_are_refused_even_with_the_right_token(chief, headers):
    with pytest.raises(grpc.RpcError) as err:
        get_space(chief.address, headers)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert get_space(chief.address, [f"Bearer {TOKEN}"]).hyperparameters  # one right header passes


def test_a_token_file_others_can_read_is_used_with_a_warning_and_a_metric(chief):
    assert "--auth-token-file" in chief.tail("chief", 400) and "readable by others" in chief.tail("chief", 400)
    assert "ktc_chief_auth_token_file_exposed 1.0" in chief.scrape(chief.chief_metrics_port)


def test_token_file_exposure_allows_the_owner_and_the_process_own_group(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    assert token_file_exposure(str(path)) is None
    path.chmod(0o640)  # group: this process's own (the kubelet's fsGroup is the pod's own group)
    assert token_file_exposure(str(path)) is None
    path.chmod(0o604)
    assert "readable by others" in token_file_exposure(str(path))
    if os.geteuid() == 0:
        os.chown(path, -1, 65533)  # a group this process is not in
        path.chmod(0o640)
        assert "readable by group 65533" in token_file_exposure(str(path))


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00binary\x00token\x01\x02\x03\x04\x05\x06\x07", "is not UTF-8 text"),
    ("tökén-with-accents-0123456789".encode(), "printable ASCII"),
    (b"token with spaces 0123456789", "printable ASCII"),
])
def test_a_token_file_that_is_not_a_plain_token_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        read_token(SimpleNamespace(insecure=False, auth_token_file=str(path)))
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "chief", "--auth-token-file", str(path),
                          "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0] and "Traceback" not in out.stderr
