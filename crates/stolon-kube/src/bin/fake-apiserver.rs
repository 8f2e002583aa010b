//! `fake-apiserver`: the in-test fake Kubernetes API server as a process, for benchmarks that
//! run the real binaries on the kubernetes backend (`bench/store-writes.sh`). Loopback only.
//!
//!   fake-apiserver PORT NAMESPACE CLUSTER COUNTS_FILE POD=COMPONENT...
//!
//! Serves on `127.0.0.1:PORT`, puts each pod in place (phase `Running`, labels `component` and
//! `stolon-cluster`), and every 500 ms rewrites COUNTS_FILE with one line per kind of write,
//! `METHOD RESOURCE NAME ANNOTATIONS COUNT` ([`FakeApiServer::write_counts`]). Stops on SIGTERM
//! or SIGINT, or after an hour.

use std::time::Duration;

use stolon_kube::testing::FakeApiServer;

const LIFETIME: Duration = Duration::from_secs(3600);

fn usage() -> ! {
    eprintln!("usage: fake-apiserver PORT NAMESPACE CLUSTER COUNTS_FILE POD=COMPONENT...");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        usage();
    }
    let Ok(port) = args[0].parse::<u16>() else {
        eprintln!("fake-apiserver: bad port {:?}", args[0]);
        std::process::exit(2);
    };
    let (ns, cluster, counts) = (&args[1], &args[2], &args[3]);
    let fake = match FakeApiServer::start_on(port).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-apiserver: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    for p in &args[4..] {
        let Some((pod, component)) = p.split_once('=') else {
            usage();
        };
        fake.add_pod(
            ns,
            pod,
            &[("component", component), ("stolon-cluster", cluster)],
            "Running",
        );
    }
    eprintln!("fake-apiserver: serving {}", fake.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let deadline = tokio::time::sleep(LIFETIME);
    tokio::pin!(deadline);
    loop {
        let mut text = String::new();
        for (what, n) in fake.write_counts() {
            text.push_str(&format!("{what} {n}\n"));
        }
        let tmp = format!("{counts}.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, counts);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = &mut deadline => break,
        }
    }
}
