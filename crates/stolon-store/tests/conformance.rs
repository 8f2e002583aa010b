//! The conformance suite against both backends: the in-memory one (paused tokio clock) and a
//! real etcd started by the test (always; the test fails when etcd cannot be started).

use std::sync::OnceLock;

use stolon_store::testing::etcd::EtcdServer;
use stolon_store::testing::suite::{self, MemHarness};

/// One etcd for every case of this test binary (each case uses its own cluster name). It is
/// stopped by its guard when the test process exits.
fn etcd() -> &'static EtcdServer {
    static ETCD: OnceLock<EtcdServer> = OnceLock::new();
    ETCD.get_or_init(|| EtcdServer::start().expect("start etcd for the conformance suite"))
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod mem {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $case() {
                    let h = MemHarness::new();
                    suite::run_case(&h, stringify!($case), "mem").await.expect(stringify!($case));
                }
            )*
        }
        mod etcd {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let h = super::etcd().harness();
                    suite::run_case(&h, stringify!($case), "etcd").await.expect(stringify!($case));
                }
            )*
        }
    };
}

cases!(
    cas,
    force_put,
    null_and_malformed,
    listing,
    member_disappearance,
    keeper_withdrawal,
    change_wakeups,
    election_resign,
    election_lease_end,
    election_heartbeats,
);

/// Every case of the suite is covered above.
#[test]
fn all_cases_listed() {
    let listed = [
        "cas",
        "force_put",
        "null_and_malformed",
        "listing",
        "member_disappearance",
        "keeper_withdrawal",
        "change_wakeups",
        "election_resign",
        "election_lease_end",
        "election_heartbeats",
    ];
    assert_eq!(listed, suite::CASES);
}

/// The whole suite in one go against the in-memory backend (what other crates call).
#[tokio::test(start_paused = true)]
async fn mem_run_all() {
    let h = MemHarness::new();
    suite::run_all(&h, "all").await.expect("suite");
}
