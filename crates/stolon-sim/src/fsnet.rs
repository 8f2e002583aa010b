//! The failsafe network of the simulation: how acknowledgement and confirmation requests travel
//! between the simulated keepers and proxies (docs/failsafe.md).
//!
//! Each keeper registers its [`Responder`] under the address it reports; each caller (a keeper
//! asking for acknowledgements, a proxy asking for a confirmation) gets its own [`SimTransport`]
//! that knows who it is. A request crosses the network in `latency`, is answered by the
//! responder at that instant of the virtual clock, and the answer takes `latency` again. A cut
//! between the caller and the keeper, a keeper not registered (not running) or a latency beyond
//! the deadline looks like a network that dropped the request: the caller hears nothing until its
//! deadline. Cuts are symmetric and independent of the store: a keeper cut off from a peer here
//! may still read and write the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stolon_core::failsafe::wire::{AckRequestMsg, AnswerMsg, ConfirmRequestMsg};
use stolon_failsafe::{CallError, Responder, Transport};

/// A party of the failsafe network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Party {
    /// Keeper by index.
    Keeper(usize),
    /// Proxy by index.
    Proxy(usize),
}

#[derive(Default)]
struct NetState {
    /// Address -> the keeper there and its responder.
    responders: BTreeMap<String, (usize, Arc<dyn Responder>)>,
    /// Cut pairs, stored in order (a < b).
    cuts: BTreeSet<(Party, Party)>,
    /// One-way delay of a message.
    latency: Duration,
}

/// The simulated failsafe network, shared by the world and every transport.
#[derive(Clone, Default)]
pub struct FailsafeNet {
    state: Arc<Mutex<NetState>>,
}

fn ordered(a: Party, b: Party) -> (Party, Party) {
    if a <= b { (a, b) } else { (b, a) }
}

impl FailsafeNet {
    /// A network with one-way delay `latency`.
    pub fn new(latency: Duration) -> FailsafeNet {
        let net = FailsafeNet::default();
        net.lock().latency = latency;
        net
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("failsafe network state poisoned")
    }

    /// Keeper `i` answers at `addr` from now on (replacing whatever answered there).
    pub fn register(&self, i: usize, addr: &str, responder: Arc<dyn Responder>) {
        self.lock()
            .responders
            .insert(addr.to_string(), (i, responder));
    }

    /// Nothing answers for keeper `i` any more (its process died).
    pub fn unregister(&self, i: usize) {
        self.lock().responders.retain(|_, (k, _)| *k != i);
    }

    /// Cuts (`true`) or restores (`false`) the link between `a` and `b`.
    pub fn set_cut(&self, a: Party, b: Party, cut: bool) {
        let mut s = self.lock();
        if cut {
            s.cuts.insert(ordered(a, b));
        } else {
            s.cuts.remove(&ordered(a, b));
        }
    }

    /// Whether `a` and `b` are cut from each other.
    pub fn is_cut(&self, a: Party, b: Party) -> bool {
        self.lock().cuts.contains(&ordered(a, b))
    }

    /// Sets the one-way delay of every message.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The transport of caller `from`.
    pub fn transport(&self, from: Party) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            from,
            net: self.clone(),
        })
    }

    /// Delivers a request from `from` to `addr` within `deadline` and returns the answer made by
    /// `answer` there, or a timeout.
    async fn deliver(
        &self,
        from: Party,
        addr: &str,
        deadline: Duration,
        answer: impl FnOnce(&dyn Responder) -> AnswerMsg,
    ) -> Result<AnswerMsg, CallError> {
        let start = tokio::time::Instant::now();
        let timeout = || async move {
            tokio::time::sleep_until(start + deadline).await;
            Err(CallError::Timeout(addr.to_string()))
        };
        let latency = self.lock().latency;
        if 2 * latency > deadline {
            return timeout().await;
        }
        tokio::time::sleep(latency).await;
        // Who is there, and is the way open, when the request arrives.
        let target = {
            let s = self.lock();
            s.responders.get(addr).and_then(|(k, r)| {
                (!s.cuts.contains(&ordered(from, Party::Keeper(*k)))).then(|| r.clone())
            })
        };
        let Some(responder) = target else {
            return timeout().await;
        };
        let a = answer(responder.as_ref());
        tokio::time::sleep(latency).await;
        Ok(a)
    }
}

/// One caller's transport.
struct SimTransport {
    from: Party,
    net: FailsafeNet,
}

#[async_trait::async_trait]
impl Transport for SimTransport {
    async fn ack(
        &self,
        addr: &str,
        req: &AckRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError> {
        self.net
            .deliver(self.from, addr, deadline, |r| r.ack(req))
            .await
    }

    async fn confirm(
        &self,
        addr: &str,
        req: &ConfirmRequestMsg,
        deadline: Duration,
    ) -> Result<AnswerMsg, CallError> {
        self.net
            .deliver(self.from, addr, deadline, |r| r.confirm(req))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Grant(u64);

    impl Responder for Grant {
        fn ack(&self, _: &AckRequestMsg) -> AnswerMsg {
            AnswerMsg {
                granted_ms: Some(self.0),
                refused: None,
                refusal: None,
            }
        }
        fn confirm(&self, _: &ConfirmRequestMsg) -> AnswerMsg {
            AnswerMsg {
                granted_ms: Some(self.0 + 1),
                refused: None,
                refusal: None,
            }
        }
    }

    fn ack_req() -> AckRequestMsg {
        AckRequestMsg {
            master_db: "db0".into(),
            master_keeper: "keeper0".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_reach_the_keeper_unless_cut_or_too_slow() {
        let net = FailsafeNet::new(Duration::from_millis(10));
        net.register(1, "k1:8080", Arc::new(Grant(700)));
        let t = net.transport(Party::Keeper(0));
        let deadline = Duration::from_millis(500);
        let start = tokio::time::Instant::now();
        let a = t
            .ack("k1:8080", &ack_req(), deadline)
            .await
            .expect("answer");
        assert_eq!(a.granted_ms, Some(700));
        assert_eq!(start.elapsed(), Duration::from_millis(20));

        let p = net.transport(Party::Proxy(0));
        let c = p
            .confirm(
                "k1:8080",
                &ConfirmRequestMsg {
                    master_db: "db0".into(),
                },
                deadline,
            )
            .await
            .expect("answer");
        assert_eq!(c.granted_ms, Some(701));

        net.set_cut(Party::Keeper(1), Party::Keeper(0), true);
        assert!(net.is_cut(Party::Keeper(0), Party::Keeper(1)));
        let start = tokio::time::Instant::now();
        let e = t.ack("k1:8080", &ack_req(), deadline).await;
        assert!(matches!(e, Err(CallError::Timeout(_))), "{e:?}");
        assert_eq!(start.elapsed(), deadline);
        // The proxy is not cut.
        assert!(
            p.confirm(
                "k1:8080",
                &ConfirmRequestMsg {
                    master_db: "db0".into()
                },
                deadline
            )
            .await
            .is_ok()
        );
        net.set_cut(Party::Keeper(0), Party::Keeper(1), false);
        assert!(t.ack("k1:8080", &ack_req(), deadline).await.is_ok());

        net.set_latency(Duration::from_millis(300));
        assert!(matches!(
            t.ack("k1:8080", &ack_req(), deadline).await,
            Err(CallError::Timeout(_))
        ));
        net.set_latency(Duration::from_millis(10));
        net.unregister(1);
        assert!(matches!(
            t.ack("k1:8080", &ack_req(), deadline).await,
            Err(CallError::Timeout(_))
        ));
    }
}
