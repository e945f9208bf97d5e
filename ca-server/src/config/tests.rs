use super::*;

const MINIMAL: &str = r#"
data_dir = "data"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "online"
pin = { env = "CA_HSM_PIN" }
[ca]
certificate = "issuing.pem"
chain = "root.pem"
[profiles.client]
validity = "24h"
"#;

#[test]
fn minimal_config_parses_with_defaults() {
    let cfg = ServerConfig::parse(MINIMAL).expect("parses");
    cfg.validate().expect("valid");
    assert_eq!(cfg.listen.api.port(), 8443);
    assert_eq!(cfg.limits.max_body_bytes, 64 * 1024);
    assert_eq!(cfg.tokens.default_ttl.0, chrono::Duration::hours(1));
}

#[test]
fn hsm_module_is_required() {
    let text = MINIMAL.replace("module = \"/usr/lib/softhsm/libsofthsm2.so\"\n", "");
    let cfg = ServerConfig::parse(&text).expect("parses");
    let err = cfg.validate().expect_err("no module");
    assert!(err.to_string().contains("hsm.module"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\n[limits]\nbody = 3\n");
    let err = ServerConfig::parse(&text).expect_err("unknown key");
    let msg = err.to_string();
    assert!(msg.contains("limits"), "{msg}");
    assert!(msg.contains("body"), "{msg}");
}

#[test]
fn bad_value_names_the_key() {
    let text = MINIMAL.replace("validity = \"24h\"", "validity = \"forever\"");
    let err = ServerConfig::parse(&text).expect_err("bad span");
    assert!(
        err.to_string().contains("profiles.client.validity"),
        "{err}"
    );

    let text = format!("{MINIMAL}\n[limits.enroll]\nper_second = 0\nburst = 1\n");
    let err = ServerConfig::parse(&text)
        .expect("parses")
        .validate()
        .expect_err("zero rate");
    assert!(
        err.to_string().contains("limits.enroll.per_second"),
        "{err}"
    );

    for n in [0, 65] {
        let text = format!("{MINIMAL}\n[ocsp]\nissuance_batch_max = {n}\n");
        let err = ServerConfig::parse(&text)
            .expect("parses")
            .validate()
            .expect_err("batch size out of range");
        assert!(err.to_string().contains("ocsp.issuance_batch_max"), "{err}");
    }
    let text = format!("{MINIMAL}\n[ocsp]\nissuance_batch_window_ms = 101\n");
    let err = ServerConfig::parse(&text)
        .expect("parses")
        .validate()
        .expect_err("window too long");
    assert!(
        err.to_string().contains("ocsp.issuance_batch_window_ms"),
        "{err}"
    );
    let text = format!("{MINIMAL}\n[ocsp]\nissuance_batch_max = 1\n");
    let cfg = ServerConfig::parse(&text).expect("parses");
    cfg.validate()
        .expect("one certificate per response is valid");
    assert_eq!(cfg.ocsp.issuance_batch_max, Some(1));
}

#[test]
fn reserved_profile_names_are_refused() {
    let text = format!("{MINIMAL}\n[profiles._admin]\nvalidity = \"1h\"\n");
    let err = ServerConfig::parse(&text)
        .expect("parses")
        .validate()
        .expect_err("reserved");
    assert!(err.to_string().contains("profiles._admin"), "{err}");
}

#[test]
fn plain_pin_in_config_is_refused() {
    let text = MINIMAL.replace("pin = { env = \"CA_HSM_PIN\" }", "pin = \"1234\"");
    let err = ServerConfig::parse(&text).expect_err("pin as string");
    assert!(err.to_string().contains("hsm.pin"), "{err}");
}

#[test]
fn token_max_ttl_is_at_most_365_days() {
    let text = format!("{MINIMAL}\n[tokens]\nmax_ttl = \"100000000d\"\n");
    let err = ServerConfig::parse(&text)
        .expect("parses")
        .validate()
        .expect_err("huge max_ttl");
    assert!(
        err.to_string().contains("tokens.max_ttl") && err.to_string().contains("365d"),
        "{err}"
    );
    let text = format!("{MINIMAL}\n[tokens]\nmax_ttl = \"365d\"\n");
    ServerConfig::parse(&text).unwrap().validate().unwrap();
}

#[test]
fn audit_section_defaults_and_refusals() {
    let cfg = ServerConfig::parse(MINIMAL).expect("parses");
    assert_eq!(cfg.audit.key, None);
    assert_eq!(
        cfg.audit.checkpoint_interval.0,
        chrono::Duration::minutes(5)
    );
    assert_eq!(
        cfg.audit.public_key_path(Path::new("/var/lib/ca")),
        Path::new("/var/lib/ca/audit-checkpoint.pub.pem")
    );
    let with = |extra: &str| {
        let text = MINIMAL.replace(
            "[profiles.client]",
            &format!("[audit]\n{extra}\n[profiles.client]"),
        );
        ServerConfig::parse(&text)
            .expect("parses")
            .validate()
            .map_err(|e| e.to_string())
    };
    with("key = \"audit-checkpoint\"\ncheckpoint_interval = \"1m\"").expect("valid");
    for (extra, key) in [
        ("checkpoint_interval = \"1s\"", "audit.checkpoint_interval"),
        ("checkpoint_interval = \"2d\"", "audit.checkpoint_interval"),
        ("key = \"issuing-ca\"", "audit.key"),
        ("key = \"\"", "audit.key"),
    ] {
        let err = with(extra).expect_err(extra);
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[test]
fn connection_limits_are_validated_and_errors_name_the_key() {
    let cfg = ServerConfig::parse(MINIMAL).expect("parses");
    assert_eq!(
        cfg.limits.header_read_timeout.0,
        chrono::Duration::seconds(10)
    );
    assert_eq!(cfg.limits.max_connections_per_ip, 256);
    assert_eq!(
        cfg.limits.status.header_read_timeout.0,
        chrono::Duration::seconds(5)
    );
    for (extra, key) in [
        (
            "[limits]\nheader_read_timeout = \"2m\"\n",
            "limits.header_read_timeout",
        ),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        (
            "[limits]\nmax_connections = 10\nmax_connections_per_ip = 11\n",
            "limits.max_connections_per_ip",
        ),
        (
            "[limits]\nhttp2_max_streams = 0\n",
            "limits.http2_max_streams",
        ),
        (
            "[limits.status]\nmax_connections_per_ip = 0\n",
            "limits.status.max_connections_per_ip",
        ),
        (
            "[limits.status]\nrequest_timeout = \"0s\"\n",
            "limits.status.request_timeout",
        ),
        (
            "[ocsp]\nmemo_max_bytes = 2000000000\n",
            "ocsp.memo_max_bytes",
        ),
        ("[ocsp]\ncache_max_entries = 0\n", "ocsp.cache_max_entries"),
        (
            "[ocsp]\ncache_max_entries = 60000000\n",
            "ocsp.cache_max_entries",
        ),
        ("[ocsp]\ncache_max_bytes = 4095\n", "ocsp.cache_max_bytes"),
        (
            "[ocsp]\ncache_max_bytes = 100000000000\n",
            "ocsp.cache_max_bytes",
        ),
    ] {
        let cfg = ServerConfig::parse(&format!("{MINIMAL}\n{extra}")).expect("parses");
        let err = cfg.validate().expect_err(extra).to_string();
        assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
    }
    let err = ServerConfig::parse(&format!("{MINIMAL}\n[limits.status]\nidle = \"1s\"\n"))
        .expect_err("unknown key");
    assert!(err.to_string().contains("limits.status"), "{err}");
}

#[test]
fn store_defaults_to_sled() {
    let cfg = ServerConfig::parse(MINIMAL).expect("parses");
    assert_eq!(cfg.store.kind, StoreKind::Sled);
    assert!(cfg.store.url.is_none());
}

#[test]
fn postgres_store_takes_the_url_from_env_or_file() {
    let text = format!(
        "{MINIMAL}\n[store]\nkind = \"postgres\"\nurl = {{ env = \"CA_DB_URL\" }}\npool_size = 4\n"
    );
    let cfg = ServerConfig::parse(&text).expect("parses");
    cfg.validate().expect("valid");
    assert_eq!(cfg.store.kind, StoreKind::Postgres);
    assert_eq!(
        cfg.store.url,
        Some(UrlSource(UrlFrom::Env("CA_DB_URL".into())))
    );
    assert_eq!(cfg.store.pool_size, Some(4));
    let back = ServerConfig::parse(&cfg.to_toml().expect("serialises")).expect("reparses");
    assert_eq!(back.store.url, cfg.store.url);

    let text = format!("{MINIMAL}\n[store]\nkind = \"postgres\"\nurl = {{ file = \"db.url\" }}\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ca.toml");
    std::fs::write(&path, &text).expect("write");
    std::fs::write(dir.path().join("db.url"), "postgres://ca@db/ca\n").expect("write");
    let cfg = ServerConfig::load(&path).expect("loads");
    let url = cfg.store.url.as_ref().expect("url").read().expect("reads");
    assert_eq!(url.as_str(), "postgres://ca@db/ca");
}

#[test]
fn literal_database_url_is_refused() {
    let text =
        format!("{MINIMAL}\n[store]\nkind = \"postgres\"\nurl = \"postgres://ca:secret@db/ca\"\n");
    let err = ServerConfig::parse(&text).expect_err("literal URL");
    let msg = err.to_string();
    assert!(msg.contains("store.url"), "{msg}");
    assert!(msg.contains("literal"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
}

#[test]
fn store_section_is_strict() {
    for (extra, key) in [
        ("kind = \"mysql\"\n", "store.kind"),
        (
            "kind = \"postgres\"\nurl = { env = \"X\" }\nhost = \"db\"\n",
            "host",
        ),
        (
            "kind = \"postgres\"\nurl = { command = \"x\" }\n",
            "store.url",
        ),
    ] {
        let text = format!("{MINIMAL}\n[store]\n{extra}");
        let err = ServerConfig::parse(&text).expect_err(extra);
        let msg = err.to_string();
        assert!(msg.contains(key), "{extra}: {msg}");
    }
    for (extra, key) in [
        ("kind = \"postgres\"\n", "store.url"),
        (
            "kind = \"postgres\"\nurl = { env = \"X\" }\npool_size = 0\n",
            "store.pool_size",
        ),
        ("url = { env = \"X\" }\n", "store.url"),
        ("pool_size = 3\n", "store.pool_size"),
    ] {
        let text = format!("{MINIMAL}\n[store]\n{extra}");
        let cfg = ServerConfig::parse(&text).expect(extra);
        let err = cfg.validate().expect_err(extra);
        let msg = err.to_string();
        assert!(msg.contains(key), "{extra}: {msg}");
    }
}

#[test]
fn unset_url_variable_is_named_not_shown() {
    let src = UrlSource(UrlFrom::Env("CA_TEST_UNSET_DATABASE_URL_VARIABLE".into()));
    let err = src.read().expect_err("unset");
    let msg = err.to_string();
    assert!(msg.contains("store.url"), "{msg}");
    assert!(msg.contains("CA_TEST_UNSET_DATABASE_URL_VARIABLE"), "{msg}");
}

#[test]
fn retention_defaults_and_one_refusal_per_class() {
    let cfg = ServerConfig::parse(MINIMAL).expect("parses");
    cfg.validate().expect("valid");
    let r = &cfg.retention;
    assert!(r.enabled);
    assert_eq!(r.certificates.0, chrono::Duration::days(90));
    assert_eq!(r.tokens.0, chrono::Duration::days(7));
    assert_eq!(r.batch, 1000);
    assert_eq!(r.interval.0, chrono::Duration::minutes(10));
    let with = |extra: &str| {
        let text = MINIMAL.replace(
            "[profiles.client]",
            &format!("[retention]\n{extra}\n[profiles.client]"),
        );
        ServerConfig::parse(&text).and_then(|c| c.validate().map(|()| c))
    };
    let ok = with(
        "enabled = false\ncertificates = \"0s\"\ntokens = \"1h\"\nbatch = 1\ninterval = \"10s\"",
    )
    .expect("valid");
    assert!(!ok.retention.enabled);
    assert_eq!(ok.retention.certificates.0, chrono::Duration::zero());
    // The round trip `ca-server dev` relies on.
    let back = ServerConfig::parse(&ok.to_toml().unwrap()).unwrap();
    assert_eq!(back.retention.certificates.0, chrono::Duration::zero());
    for (extra, key, why) in [
        // Negative (not a duration), too long, wrong type, out of range, unknown key.
        (
            "certificates = \"-1d\"",
            "retention.certificates",
            "not a duration",
        ),
        (
            "certificates = \"36501d\"",
            "retention.certificates",
            "at most 36500d",
        ),
        ("tokens = \"90x\"", "retention.tokens", "not a duration"),
        ("tokens = \"99999d\"", "retention.tokens", "at most 36500d"),
        ("batch = 0", "retention.batch", "between 1 and 100000"),
        ("batch = 100001", "retention.batch", "between 1 and 100000"),
        ("batch = -5", "retention.batch", ""),
        (
            "interval = \"9s\"",
            "retention.interval",
            "between 10s and 24h",
        ),
        (
            "interval = \"25h\"",
            "retention.interval",
            "between 10s and 24h",
        ),
        ("enabled = \"yes\"", "retention.enabled", ""),
        ("keep = \"1d\"", "retention", "keep"),
    ] {
        let err = with(extra).expect_err(extra).to_string();
        assert!(err.contains(key), "{extra}: {err}");
        assert!(err.contains(why), "{extra}: {err}");
    }
}

#[test]
fn crl_shards_need_the_crl_url_and_default_off() {
    let cfg = ServerConfig::parse(MINIMAL).expect("parses");
    assert!(cfg.crl.shard_width.is_none(), "shards are off by default");
    assert_eq!(cfg.crl.full_interval(), chrono::Duration::minutes(5));
    let with = |urls: &str, crl: &str| {
        let text = MINIMAL.replace(
            "[profiles.client]",
            &format!("{urls}\n[crl]\n{crl}\n[profiles.client]"),
        );
        ServerConfig::parse(&text).and_then(|c| c.validate().map(|()| c))
    };
    let ok = with(
        "[urls]\ncrl = \"http://ca.test/crl\"",
        "shard_width = \"6h\"\nfull_interval = \"1m\"",
    )
    .expect("valid");
    assert_eq!(ok.crl.shard_width.unwrap().0, chrono::Duration::hours(6));
    assert_eq!(ok.crl.full_interval(), chrono::Duration::minutes(1));
    let back = ServerConfig::parse(&ok.to_toml().unwrap()).unwrap();
    assert_eq!(back.crl.shard_width, ok.crl.shard_width);
    let err = with("", "shard_width = \"6h\"").expect_err("no CRL URL");
    assert!(err.to_string().contains("crl.shard_width"), "{err}");
    let err = with("", "full_interval = \"-1m\"").expect_err("negative");
    assert!(err.to_string().contains("crl.full_interval"), "{err}");
    let err = with("", "shards = 4").expect_err("unknown key");
    assert!(err.to_string().contains("shards"), "{err}");
}
