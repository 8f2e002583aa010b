//! The store TLS flags against a real etcd serving TLS with client-certificate auth. The test
//! makes its own CA and certificates (openssl, through the harness).

use std::time::Duration;

use clap::Parser;
use stolon_store::testing::etcd::{EtcdServer, generate_test_pki};
use stolon_store::testing::suite::sample_cluster_data;
use stolon_store::{CommonArgs, StoreConfig, connect};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn config_from_flags(flags: &[String]) -> StoreConfig {
    let mut argv = vec!["test".to_string()];
    argv.extend(flags.iter().cloned());
    argv.extend(["--store-timeout".to_string(), "2s".to_string()]);
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    StoreConfig::from_common(&cli.common).expect("valid flags")
}

/// Writes then reads clusterdata; Err with the first failure.
async fn round_trip(cfg: &StoreConfig, marker: &str) -> Result<(), String> {
    let (store, _election) = connect(cfg).await.map_err(|e| e.to_string())?;
    store
        .force_put_cluster_data(&sample_cluster_data(marker))
        .await
        .map_err(|e| e.to_string())?;
    let read = store.get_cluster_data().await.map_err(|e| e.to_string())?;
    let uid = read.data.and_then(|d| d.cluster).map(|c| c.uid);
    if uid.as_deref() == Some(marker) {
        Ok(())
    } else {
        Err(format!("read back {uid:?}"))
    }
}

fn flags_without(flags: &[String], drop: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        if drop.contains(&f.as_str()) {
            it.next();
        } else {
            out.push(f.clone());
        }
    }
    out
}

#[tokio::test]
async fn tls_flags_against_client_cert_etcd() {
    let etcd = EtcdServer::start_tls_async().await.expect("TLS etcd");
    let flags = etcd.store_flags("tls");
    assert!(etcd.endpoint().starts_with("https://"));

    // With CA, client certificate and key: works.
    let cfg = config_from_flags(&flags);
    assert!(cfg.uses_tls());
    round_trip(&cfg, "with-cert")
        .await
        .expect("TLS with client cert");

    // Without the client certificate: refused by etcd.
    let no_cert = config_from_flags(&flags_without(
        &flags,
        &["--store-cert-file", "--store-key"],
    ));
    let err = round_trip(&no_cert, "no-cert")
        .await
        .expect_err("etcd must refuse a client without certificate");
    eprintln!("without client cert: {err}");

    // A CA that did not sign the server certificate: the server is not trusted.
    let other = tempfile::tempdir().expect("tempdir");
    let other_pki = generate_test_pki(other.path(), "other").expect("second PKI");
    let mut wrong_ca = flags_without(&flags, &["--store-ca-file"]);
    wrong_ca.extend([
        "--store-ca-file".to_string(),
        other_pki.ca_cert.to_string_lossy().into_owned(),
    ]);
    let err = round_trip(&config_from_flags(&wrong_ca), "wrong-ca")
        .await
        .expect_err("server certificate from another CA must be refused");
    eprintln!("wrong CA: {err}");

    // ... unless verification is skipped.
    let mut skip = wrong_ca.clone();
    skip.push("--store-skip-tls-verify".to_string());
    round_trip(&config_from_flags(&skip), "skip-verify")
        .await
        .expect("skip-verify accepts the server certificate");
    // No CA at all with skip-verify also works.
    let mut skip_no_ca = flags_without(&flags, &["--store-ca-file"]);
    skip_no_ca.push("--store-skip-tls-verify=true".to_string());
    round_trip(&config_from_flags(&skip_no_ca), "skip-no-ca")
        .await
        .expect("skip-verify without CA");

    // A client certificate from another CA is refused by etcd.
    let mut foreign_cert = flags_without(&flags, &["--store-cert-file", "--store-key"]);
    foreign_cert.extend([
        "--store-cert-file".to_string(),
        other_pki.client_cert.to_string_lossy().into_owned(),
        "--store-key".to_string(),
        other_pki.client_key.to_string_lossy().into_owned(),
    ]);
    let err = round_trip(&config_from_flags(&foreign_cert), "foreign-cert")
        .await
        .expect_err("client certificate from another CA must be refused");
    eprintln!("foreign client cert: {err}");

    // Plain http to the TLS port fails.
    let mut plain = etcd.store_config("tls");
    plain.endpoints = vec![etcd.endpoint().replace("https://", "http://")];
    plain.timeout = Duration::from_secs(2);
    round_trip(&plain, "plain")
        .await
        .expect_err("http to a TLS port");

    // The election works over TLS too.
    let (_s, election) = connect(&cfg).await.expect("connect");
    let rx = election.campaign("tls-sentinel").await.expect("campaign");
    let mut led = false;
    for _ in 0..100 {
        if *rx.borrow() {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(led, "no leadership over TLS");
    assert_eq!(
        election.leader().await.expect("leader").as_deref(),
        Some("tls-sentinel")
    );
    election.resign().await.expect("resign");
}

#[tokio::test]
async fn unreadable_tls_files_are_config_errors() {
    let mut cfg = StoreConfig::from_common(
        &Cli::try_parse_from([
            "test",
            "--cluster-name",
            "c",
            "--store-backend",
            "etcdv3",
            "--store-endpoints",
            "https://127.0.0.1:1",
            "--store-ca-file",
            "/nonexistent/ca.pem",
        ])
        .expect("parse")
        .common,
    )
    .expect("flags valid");
    match connect(&cfg).await {
        Err(stolon_store::StoreError::Config(m)) => {
            assert!(m.contains("/nonexistent/ca.pem"), "message: {m}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected with a missing CA file"),
    }
    cfg.ca_file = None;
    cfg.cert_file = Some("/nonexistent/cert.pem".into());
    cfg.key_file = Some("/nonexistent/key.pem".into());
    cfg.skip_tls_verify = true;
    match connect(&cfg).await {
        Err(stolon_store::StoreError::Config(m)) => {
            assert!(m.contains("/nonexistent/cert.pem"), "message: {m}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected with a missing cert file"),
    }
}
