//! The routing table of one listener: which upstream addresses new connections may go to, how
//! the next one is picked, and the cancellation token that closes every connection proxied to a
//! given address.
//!
//! No IO here. Each upstream address owns one [`CancellationToken`]; every connection proxied to
//! that address waits on a clone of it. When an address leaves the table its token is cancelled,
//! which closes all of its connections at once (one wake-up per connection, nothing else).

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// One upstream address that new connections may be sent to.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// Cancelled when `addr` leaves the table: closes every connection proxied to it.
    closed: CancellationToken,
}

/// Where a new client connection goes.
#[derive(Debug, Clone)]
pub(crate) struct Pick {
    /// The upstream address to connect to.
    pub(crate) addr: SocketAddr,
    /// Cancelled when the connection must be closed because its upstream is no longer routed to.
    pub(crate) closed: CancellationToken,
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
    /// keep their connections. Duplicates in `targets` are ignored.
    ///
    /// Returns true when the set of routed addresses (or the fallback) changed.
    pub(crate) fn replace(&mut self, targets: &[SocketAddr], fallback: Option<SocketAddr>) -> bool {
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
            gone.closed.cancel();
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
        self.replace(&[], None)
    }
}

/// The token for `addr`: shared with an entry already in `fresh`, taken over from `old`, or new.
fn reuse_token(old: &mut Vec<Target>, fresh: &[Target], addr: SocketAddr) -> CancellationToken {
    if let Some(existing) = fresh.iter().find(|t| t.addr == addr) {
        return existing.closed.clone();
    }
    match old.iter().position(|t| t.addr == addr) {
        Some(i) => old.swap_remove(i).closed,
        None => CancellationToken::new(),
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
        assert!(!r.replace(&[], None), "empty to empty is no change");
    }

    #[test]
    fn single_destination_change_cancels_old_connections() {
        let mut r = Routing::default();
        assert!(r.replace(&[addr(1)], None));
        let first = r.pick().expect("a destination");
        assert_eq!(first.addr, addr(1));
        assert!(
            !r.replace(&[addr(1)], None),
            "same destination is no change"
        );
        assert!(!first.closed.is_cancelled());

        assert!(r.replace(&[addr(2)], None));
        assert!(first.closed.is_cancelled());
        let second = r.pick().expect("a destination");
        assert_eq!(second.addr, addr(2));
        assert!(!second.closed.is_cancelled());

        assert!(r.clear());
        assert!(second.closed.is_cancelled());
        assert!(r.pick().is_none());

        // Back to an address used before: a fresh token, not the cancelled one.
        assert!(r.replace(&[addr(2)], None));
        assert!(!r.pick().expect("a destination").closed.is_cancelled());
    }

    #[test]
    fn round_robin_visits_every_target_in_turn() {
        let mut r = Routing::default();
        r.replace(&[addr(1), addr(2), addr(3), addr(2)], Some(addr(9)));
        let picked: Vec<u16> = (0..6)
            .map(|_| r.pick().expect("a destination").addr.port())
            .collect();
        assert_eq!(picked, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn fallback_used_only_without_targets() {
        let mut r = Routing::default();
        r.replace(&[], Some(addr(9)));
        let fb = r.pick().expect("fallback");
        assert_eq!(fb.addr, addr(9));

        // A standby appears; the fallback stays allowed, so its connections survive.
        assert!(r.replace(&[addr(1)], Some(addr(9))));
        assert!(!fb.closed.is_cancelled());
        assert_eq!(r.pick().expect("a destination").addr, addr(1));

        // Refusing instead of falling back closes the fallback's connections.
        assert!(r.replace(&[addr(1)], None));
        assert!(fb.closed.is_cancelled());
    }

    #[test]
    fn removing_one_standby_keeps_the_others() {
        let mut r = Routing::default();
        r.replace(&[addr(1), addr(2)], None);
        let a = r.pick().expect("first");
        let b = r.pick().expect("second");
        assert_eq!((a.addr, b.addr), (addr(1), addr(2)));
        assert!(r.replace(&[addr(2)], None));
        assert!(a.closed.is_cancelled());
        assert!(!b.closed.is_cancelled());
        // Order changes alone are not a change.
        r.replace(&[addr(2), addr(3)], None);
        assert!(!r.replace(&[addr(3), addr(2)], None));
    }

    #[test]
    fn fallback_equal_to_a_target_shares_its_token() {
        let mut r = Routing::default();
        r.replace(&[addr(1)], Some(addr(1)));
        let a = r.pick().expect("target");
        assert!(r.replace(&[], Some(addr(1))));
        assert!(!a.closed.is_cancelled(), "address still routed as fallback");
        assert!(r.replace(&[], None));
        assert!(a.closed.is_cancelled());
    }
}
