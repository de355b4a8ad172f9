import pytest

from calicopy import config


def test_default_then_environment_then_explicit():
    p = config.ETCD_ENDPOINTS
    assert p.resolve(environ={}) == [("127.0.0.1", 2379)]
    assert p.resolve(environ={"ETCD_AUTHORITY": "10.0.0.1:4001"}) == [("10.0.0.1", 4001)]
    both = {"ETCD_ENDPOINTS": "a:1,b:2", "ETCD_AUTHORITY": "c:3"}
    assert p.resolve(environ=both) == [("a", 1), ("b", 2)]
    assert p.resolve("http://d:4", environ=both) == [("d", 4)]


def test_bad_value_names_parameter_value_and_source():
    with pytest.raises(config.ConfigError) as err:
        config.IPAM_ADDR.resolve(environ={"CALICO_IPAM_ADDR": "nohost"})
    assert str(err.value) == ("Invalid IPAM service address 'nohost' (from environment "
                              "variable CALICO_IPAM_ADDR): 'nohost' is not host:port")
