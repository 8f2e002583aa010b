//! The routing table of one listener: which upstream addresses new connections may go to, how
//! the next one is picked, and the cancellation token that closes every connection proxied to a
//! given address.
//!
//! No IO here. Each upstream address owns one [`Withdrawal`]; every connection proxied to that
//! address waits on a clone of it. When an address leaves the table it is withdrawn, which wakes
//! all of its connections at once (one wake-up per connection, nothing else), telling them
//! whether new connections were being held at that moment.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The end of the route to one upstream address, shared by every connection proxied to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Withdrawal {
    token: CancellationToken,
    /// The hold in force when the route was withdrawn (`Some(limit)`: a planned switchover).
    hold: Arc<OnceLock<Option<Duration>>>,
}

impl Withdrawal {
    fn withdraw(&self, hold: Option<Duration>) {
        // Set before the wake-up, so every woken connection reads it.
        let _ = self.hold.set(hold);
        self.token.cancel();
    }

    /// Waits until the route is withdrawn; the hold in force then.
    pub(crate) async fn withdrawn(&self) -> Option<Duration> {
        self.token.cancelled().await;
        self.hold.get().copied().flatten()
    }

    /// Whether the route was withdrawn.
    #[cfg(test)]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// One upstream address that new connections may be sent to.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// Withdrawn when `addr` leaves the table: wakes every connection proxied to it.
    closed: Withdrawal,
}

/// Where a new client connection goes.
#[derive(Debug, Clone)]
pub(crate) struct Pick {
    /// The upstream address to connect to.
    pub(crate) addr: SocketAddr,
    /// Withdrawn when its upstream is no longer routed to.
    pub(crate) closed: Withdrawal,
}

/// Routing table: a round-robin list of targets and an optional fallback used when the list is
/// empty. A primary listener uses a list of at most one address and no fallback.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    targets: Vec<Target>,
    fallback: Option<Target>,
    /// Index of the next target in round-robin order.
    next: usize,
}

impl Routing {
    /// Replaces the table. Every address that was routed to before and is no longer present
    /// (neither in `targets` nor as `fallback`) has its connections closed. Addresses that stay
    /// keep their connections. Duplicates in `targets` are ignored. `hold` is the hold in force,
    /// told to the connections of the addresses withdrawn.
    ///
    /// Returns true when the set of routed addresses (or the fallback) changed.
    pub(crate) fn replace(
        &mut self,
        targets: &[SocketAddr],
        fallback: Option<SocketAddr>,
        hold: Option<Duration>,
    ) -> bool {
        let before = self.addresses_sorted();
        let mut old: Vec<Target> = self.targets.drain(..).collect();
        // A fallback equal to a target shares that target's token: keep one entry per address.
        if let Some(fb) = self.fallback.take()
            && !old.iter().any(|t| t.addr == fb.addr)
        {
            old.push(fb);
        }

        // Reuse the token of an address that stays, so its connections survive.
        let mut fresh: Vec<Target> = Vec::with_capacity(targets.len());
        for &addr in targets {
            if fresh.iter().any(|t| t.addr == addr) {
                continue;
            }
            let closed = reuse_token(&mut old, &fresh, addr);
            fresh.push(Target { addr, closed });
        }
        let fallback = fallback.map(|addr| Target {
            addr,
            closed: reuse_token(&mut old, &fresh, addr),
        });

        // Whatever is left in `old` is no longer routed to: close its connections.
        for gone in &old {
            gone.closed.withdraw(hold);
        }

        self.targets = fresh;
        self.fallback = fallback;
        if self.next >= self.targets.len() {
            self.next = 0;
        }
        before != self.addresses_sorted()
    }

    /// Targets (sorted, as round-robin order does not matter for change detection) and fallback.
    fn addresses_sorted(&self) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        let (mut targets, fallback) = self.addresses();
        targets.sort_unstable();
        (targets, fallback)
    }

    /// Picks the upstream for a new connection: the next target in round-robin order, else the
    /// fallback, else `None` (the connection must be refused).
    pub(crate) fn pick(&mut self) -> Option<Pick> {
        let target = if self.targets.is_empty() {
            self.fallback.as_ref()?
        } else {
            let i = self.next % self.targets.len();
            self.next = (i + 1) % self.targets.len();
            &self.targets[i]
        };
        Some(Pick {
            addr: target.addr,
            closed: target.closed.clone(),
        })
    }

    /// The addresses currently routed to (targets, then the fallback if any).
    pub(crate) fn addresses(&self) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        (
            self.targets.iter().map(|t| t.addr).collect(),
            self.fallback.as_ref().map(|t| t.addr),
        )
    }

    /// Closes every proxied connection and empties the table.
    pub(crate) fn clear(&mut self) -> bool {
        self.replace(&[], None, None)
    }
}

/// The token for `addr`: shared with an entry already in `fresh`, taken over from `old`, or new.
fn reuse_token(old: &mut Vec<Target>, fresh: &[Target], addr: SocketAddr) -> Withdrawal {
    if let Some(existing) = fresh.iter().find(|t| t.addr == addr) {
        return existing.closed.clone();
    }
    match old.iter().position(|t| t.addr == addr) {
        Some(i) => old.swap_remove(i).closed,
        None => Withdrawal::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn empty_table_refuses() {
        let mut r = Routing::default();
        assert!(r.pick().is_none());
        assert!(!r.replace(&[], None, None), "empty to empty is no change");
    }

    #[test]
    fn single_destination_change_cancels_old_connections() {
        let mut r = Routing::default();
        assert!(r.replace(&[addr(1)], None, None));
        let first = r.pick().expect("a destination");
        assert_eq!(first.addr, addr(1));
        assert!(
            !r.replace(&[addr(1)], None, None),
            "same destination is no change"
        );
        assert!(!first.closed.is_cancelled());

        assert!(r.replace(&[addr(2)], None, None));
        assert!(first.closed.is_cancelled());
        let second = r.pick().expect("a destination");
        assert_eq!(second.addr, addr(2));
        assert!(!second.closed.is_cancelled());

        assert!(r.clear());
        assert!(second.closed.is_cancelled());
        assert!(r.pick().is_none());

        // Back to an address used before: a fresh token, not the cancelled one.
        assert!(r.replace(&[addr(2)], None, None));
        assert!(!r.pick().expect("a destination").closed.is_cancelled());
    }

    #[test]
    fn round_robin_visits_every_target_in_turn() {
        let mut r = Routing::default();
        r.replace(&[addr(1), addr(2), addr(3), addr(2)], Some(addr(9)), None);
        let picked: Vec<u16> = (0..6)
            .map(|_| r.pick().expect("a destination").addr.port())
            .collect();
        assert_eq!(picked, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn fallback_used_only_without_targets() {
        let mut r = Routing::default();
        r.replace(&[], Some(addr(9)), None);
        let fb = r.pick().expect("fallback");
        assert_eq!(fb.addr, addr(9));

        // A standby appears; the fallback stays allowed, so its connections survive.
        assert!(r.replace(&[addr(1)], Some(addr(9)), None));
        assert!(!fb.closed.is_cancelled());
        assert_eq!(r.pick().expect("a destination").addr, addr(1));

        // Refusing instead of falling back closes the fallback's connections.
        assert!(r.replace(&[addr(1)], None, None));
        assert!(fb.closed.is_cancelled());
    }

    #[test]
    fn removing_one_standby_keeps_the_others() {
        let mut r = Routing::default();
        r.replace(&[addr(1), addr(2)], None, None);
        let a = r.pick().expect("first");
        let b = r.pick().expect("second");
        assert_eq!((a.addr, b.addr), (addr(1), addr(2)));
        assert!(r.replace(&[addr(2)], None, None));
        assert!(a.closed.is_cancelled());
        assert!(!b.closed.is_cancelled());
        // Order changes alone are not a change.
        r.replace(&[addr(2), addr(3)], None, None);
        assert!(!r.replace(&[addr(3), addr(2)], None, None));
    }

    #[test]
    fn fallback_equal_to_a_target_shares_its_token() {
        let mut r = Routing::default();
        r.replace(&[addr(1)], Some(addr(1)), None);
        let a = r.pick().expect("target");
        assert!(r.replace(&[], Some(addr(1)), None));
        assert!(!a.closed.is_cancelled(), "address still routed as fallback");
        assert!(r.replace(&[], None, None));
        assert!(a.closed.is_cancelled());
    }

    #[tokio::test]
    async fn a_withdrawal_tells_the_hold_in_force() {
        let mut r = Routing::default();
        r.replace(&[addr(1)], None, None);
        let a = r.pick().expect("target");
        let hold = Some(std::time::Duration::from_secs(30));
        r.replace(&[], None, hold);
        assert_eq!(a.closed.withdrawn().await, hold);
        r.replace(&[addr(2)], None, None);
        let b = r.pick().expect("target");
        r.replace(&[addr(3)], None, None);
        assert_eq!(b.closed.withdrawn().await, None);
    }
}
