import pytest

from calicopy import config


def test_default_then_environment_then_explicit():
    p = config.ETCD_ENDPOINTS

    def urls(*args, **kw):
        return [str(e) for e in p.resolve(*args, **kw)]
    assert urls(environ={}) == ["https://127.0.0.1:2379"]
    assert urls(environ={"ETCD_AUTHORITY": "10.0.0.1:4001"}) == ["10.0.0.1:4001"]
    both = {"ETCD_ENDPOINTS": "a:1,b:2", "ETCD_AUTHORITY": "c:3"}
    assert urls(environ=both) == ["a:1", "b:2"]
    assert urls("http://d:4", environ=both) == ["d:4"]


def test_etcd_endpoints_with_tls_and_unix_sockets():
    found = config.parse_endpoints("https://etcd1:2379, https://[fd00::1]:2379,"
                                   "unixs:/run/etcd/localhost:2379,unix:///run/e/x:1")
    assert [(e.scheme, e.host, e.port, e.tls) for e in found] == [
        ("https", "etcd1", 2379, True), ("https", "fd00::1", 2379, True),
        ("unixs", "unix:/run/etcd/localhost", 2379, True), ("unix", "unix:/run/e/x", 1, False)]
    assert str(found[1]) == "https://[fd00::1]:2379" and str(found[2]) == \
        "unixs:/run/etcd/localhost:2379"
    with pytest.raises(config.ConfigError, match="use https://, http://, unixs: or unix:"):
        config.ETCD_ENDPOINTS.resolve("ftp://x:1")


def test_tls_files_all_or_none(tmp_path):
    files = {n: tmp_path / n for n in ("ca", "cert", "key")}
    for f in files.values():
        f.write_text("x")
    nowhere = {"CALICO_PKI_DIR": str(tmp_path / "none")}
    assert config.tls_files(environ=nowhere) is None
    full = {"CALICO_TLS_CA_FILE": str(files["ca"]), "CALICO_TLS_CERT_FILE": str(files["cert"]),
            "CALICO_TLS_KEY_FILE": str(files["key"])}
    assert config.tls_files(environ=full).cert == files["cert"]
    with pytest.raises(config.ConfigError, match="CALICO_TLS_KEY_FILE not set"):
        config.tls_files(environ={k: v for k, v in full.items() if "KEY" not in k})
    with pytest.raises(config.ConfigError, match="no such file"):
        config.tls_files(environ={**full, "CALICO_TLS_CA_FILE": str(tmp_path / "nope")})


def test_bad_value_names_parameter_value_and_source():
    with pytest.raises(config.ConfigError) as err:
        config.IPAM_ADDR.resolve(environ={"CALICO_IPAM_ADDR": "nohost"})
    assert str(err.value) == ("Invalid IPAM service address 'nohost' (from environment "
                              "variable CALICO_IPAM_ADDR): 'nohost' is not host:port")


def test_the_certificate_folder_s_admin_is_the_default(tmp_path):
    for name in ("ca.pem", "admin.pem", "admin-key.pem"):
        (tmp_path / name).write_text("x")
    found = config.tls_files(environ={"CALICO_PKI_DIR": str(tmp_path)})
    assert (found.ca, found.cert, found.key) == (tmp_path / "ca.pem", tmp_path / "admin.pem",
                                                 tmp_path / "admin-key.pem")
    etcd = config.etcd_tls_files(environ={"CALICO_PKI_DIR": str(tmp_path)})
    assert etcd == found                       # etcd: the same identity unless told


def test_service_addresses_are_one_or_the_replicas():
    resolve = config.POLICY_ADDR.resolve
    assert resolve(environ={}) == ["127.0.0.1:50052"]
    assert resolve(environ={"CALICO_POLICY_ADDR": "cp1:50052, 10.0.0.11:50052,[fd00::1]:5"}) \
        == ["cp1:50052", "10.0.0.11:50052", "[fd00::1]:5"]
    assert resolve("unix:/a.sock,unix:///b.sock") == ["unix:/a.sock", "unix:/b.sock"]
    for bad, why in (("unix:/a.sock,10.0.0.1:1", "give unix sockets or host:port addresses, "
                                                  "not both"),
                     ("a:1,b:2,a:1", "a:1 is given twice"), ("a:1,nohost", "'nohost' is not "
                                                                       "host:port")):
        with pytest.raises(config.ConfigError) as err:
            resolve(explicit=bad)
        assert str(err.value) == f"Invalid policy service address '{bad}' (from command " \
                                 f"line): {why}"
