//! The admin API's view of a core: sessions listed with their user and
//! counters, closed by user or id, and blocked users refused (403).

use super::*;

#[test]
fn sessions_are_listed_closed_and_their_users_blocked() {
    let mut h = Harness::new();
    let (a, b) = (client(1000), client(2000));
    h.allocate(&a);
    let m = h.request(&b, method::ALLOCATE, vec![udp()]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    // A REST credential's user is the part after the expiry.
    let c = client(3000);
    let username = format!("{}:carol", START_UNIX + 3600);
    let pass = rest_password(SECRET.as_bytes(), &username);
    let raw = h.signed(&c, method::ALLOCATE, vec![udp()], &username, &pass);
    h.send(&c, &raw);
    assert_eq!(h.io.last().typ.class, CLASS_SUCCESS_RESPONSE);
    let all = h.core.sessions(h.clock.now(), None);
    assert_eq!(all.len(), 3);
    let carol = h.core.sessions(h.clock.now(), Some("carol"));
    assert_eq!(carol.len(), 1);
    assert_eq!(
        (carol[0].username.as_str(), carol[0].client),
        (username.as_str(), c.remote)
    );
    assert_eq!(carol[0].expires_unix, START_UNIX + 600);
    assert_eq!(h.core.sessions(h.clock.now(), Some("alice")).len(), 2);

    // Close alice's: both go, their relays with them; carol's stays.
    let now = h.clock.now();
    let closed = h.core.close_where(now, &mut h.io, |x| x.user() == "alice");
    assert_eq!(closed, 2);
    assert_eq!(h.io.closed.len(), 2);
    assert_eq!(h.core.allocation_count(), 1);

    // Blocked, alice's next Allocate is refused and counted; unblocked, it
    // succeeds.
    let blocks = &h.core.quotas.blocks;
    assert!(blocks.block("alice", START_UNIX + 60, START_UNIX));
    assert_eq!(
        blocks.list(START_UNIX),
        vec![("alice".to_owned(), START_UNIX + 60)]
    );
    let m = h.request(&a, method::ALLOCATE, vec![udp()]);
    assert_eq!(error_code(&m), 403);
    assert_eq!(
        h.core.stats.rejections[stats::Rejection::Blocked as usize],
        1
    );
    // The block ends by itself.
    h.clock.advance(61);
    assert!(!h.core.quotas.blocks.blocked("alice", h.clock.now().unix));
    h.allocate(&a);
    assert!(
        h.core
            .quotas
            .blocks
            .block("bob", START_UNIX + 9999, START_UNIX)
    );
    assert!(h.core.quotas.blocks.unblock("bob"));
    assert!(h.core.quotas.blocks.list(h.clock.now().unix).is_empty());
}
