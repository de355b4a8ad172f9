"""The one log format (calicopy.logs) and the request id (calicopy.request_id)."""

import io
import json
import logging

import pytest

from calicopy import config, logs, request_id


@pytest.fixture
def root_logger():
    """The root logger as setup() leaves it, restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def lines_of(fmt: str, emit) -> list[str]:
    out = io.StringIO()
    logs.setup("endpoint", "host1", stream=out, fmt=fmt)
    emit(logging.getLogger("services.endpoint.endpoints"))
    return out.getvalue().splitlines()


def emit(log):
    log.info("outside any request")
    with request_id.request("5f0c3a9e1b2d4c6f"):
        log.info('added endpoint %s for "docker" = %s', "ep1", "10.0.0.1 fd00::1")
        try:
            raise ValueError("line one\nline two")
        except ValueError:
            log.exception("failed")


def test_kv_lines_split_into_their_fields(root_logger):
    first, second, third = lines_of("kv", emit)
    head = logs.parse_kv(first)
    assert head["level"] == "info" and head["component"] == "endpoint"
    assert head["node"] == "host1" and head["logger"] == "services.endpoint.endpoints"
    assert head["msg"] == "outside any request" and "request_id" not in head
    assert head["time"].endswith("Z")
    fields = logs.parse_kv(second)
    assert fields["request_id"] == "5f0c3a9e1b2d4c6f"
    assert fields["msg"] == 'added endpoint ep1 for "docker" = 10.0.0.1 fd00::1'
    failed = logs.parse_kv(third)
    assert failed["level"] == "error" and "line one\nline two" in failed["exc"]
    assert list(fields)[-1] == "msg"


def test_json_lines_parse_with_the_same_fields(root_logger):
    lines = lines_of("json", emit)
    assert len(lines) == 3          # a traceback stays on its line
    docs = [json.loads(line) for line in lines]
    assert docs[1]["request_id"] == "5f0c3a9e1b2d4c6f"
    assert docs[1]["msg"] == 'added endpoint ep1 for "docker" = 10.0.0.1 fd00::1'
    assert docs[2]["exc"].startswith("Traceback")
    assert set(docs[0]) == {"time", "level", "component", "node", "logger", "msg"}


def test_the_format_is_one_parameter_checked_with_its_source():
    assert config.LOG_FORMAT.resolve(environ={}) == "kv"
    assert config.LOG_FORMAT.resolve(environ={"CALICO_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(config.ConfigError, match="Invalid log format 'xml' \\(from "
                       "environment variable CALICO_LOG_FORMAT\\): use kv or json"):
        config.LOG_FORMAT.resolve(environ={"CALICO_LOG_FORMAT": "xml"})


def test_a_bad_format_is_said_once_and_kv_used(root_logger, monkeypatch, capsys):
    monkeypatch.setenv("CALICO_LOG_FORMAT", "xml")
    out = io.StringIO()
    logs.setup("ipam", stream=out)
    logging.getLogger("x").info("hello")
    assert "Invalid log format 'xml'" in capsys.readouterr().err
    assert logs.parse_kv(out.getvalue())["msg"] == "hello"


def test_request_ids_from_outside_are_checked_and_nested_requests_restore():
    assert request_id.current() == ""
    with request_id.request("bad id\nlevel=error") as rid:
        assert rid != "bad id\nlevel=error" and len(rid) == 16
        with request_id.request("cni-add-0123456789ab") as inner:
            assert request_id.current() == inner == "cni-add-0123456789ab"
        assert request_id.current() == rid
    assert request_id.current() == ""


def test_the_metrics_address_is_checked_and_off_means_none():
    assert config.metrics_addr("ipam", environ={}) == "127.0.0.1:9181"
    assert config.metrics_addr("node", environ={}) == "127.0.0.1:9180"
    assert config.metrics_addr("node", environ={"CALICO_METRICS_ADDR": "off"}) == ""
    assert config.metrics_addr("bgp", "10.0.0.1:0", environ={}) == "10.0.0.1:0"
    with pytest.raises(config.ConfigError, match="Invalid metrics address '9180' \\(from "
                       "environment variable CALICO_METRICS_ADDR\\)"):
        config.metrics_addr("node", environ={"CALICO_METRICS_ADDR": "9180"})
