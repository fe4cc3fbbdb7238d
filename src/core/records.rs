//! Allocation records for usage accounting: one when an allocation ends,
//! with why, and interim ones for long allocations. Each counts what was
//! relayed since the allocation's previous record, so the sum over all
//! records of an allocation is its total. The core hands them to
//! [`Io::record`](super::Io::record) (never per packet); the I/O layer
//! writes them off the packet path.

use std::net::SocketAddr;
use std::time::Instant;

use super::alloc::{Allocation, Traffic};
use super::{Core, Io, Now, Transport};

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client deleted it (Refresh with lifetime 0).
    Client,
    /// Its lifetime ran out.
    Expired,
    /// Its REST credential expired (strict expiry).
    CredentialExpired,
    /// An operator closed it (admin API).
    Admin,
    /// Its client's TCP or TLS connection closed.
    ConnectionClosed,
    /// The server stopped.
    Shutdown,
}

impl EndReason {
    /// As written in records.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Expired => "expired",
            Self::CredentialExpired => "credential_expired",
            Self::Admin => "admin",
            Self::ConnectionClosed => "connection_closed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// One allocation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `None` for an interim record; why it ended otherwise.
    pub end: Option<EndReason>,
    /// The allocation's id (as in logs).
    pub id: u64,
    /// The user: a REST credential's name part, or the static user.
    pub user: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's transport.
    pub transport: Transport,
    /// The relayed address.
    pub relay: SocketAddr,
    /// Unix seconds the allocation was made.
    pub start_unix: u64,
    /// Unix seconds of this record (the end, or now for an interim one).
    pub time_unix: u64,
    /// What was relayed since the previous record.
    pub traffic: Traffic,
}

impl Record {
    /// A record of `a` now, counting from its previous one (which this
    /// becomes).
    pub(super) fn take(a: &mut Allocation, now: Now, end: Option<EndReason>) -> Self {
        let traffic = a
            .traffic
            .since(std::mem::replace(&mut a.recorded, a.traffic));
        a.recorded_at = now.instant;
        Self {
            end,
            id: a.id.to_bits(),
            user: a.user().to_owned(),
            client: a.client.remote,
            transport: a.client.transport,
            relay: a.relayed,
            start_unix: a.created_unix(now),
            time_unix: now.unix,
            traffic,
        }
    }
}

impl Core {
    /// Interim records of the allocations whose last record is older
    /// than the configured interval (from the tick).
    pub(super) fn interim_records(&mut self, now: Now, io: &mut impl Io) {
        let Some(every) = self.cfg.records else {
            return;
        };
        let due = |at: Instant| now.instant.saturating_duration_since(at) >= every;
        for a in self.allocs.values_mut().filter(|a| due(a.recorded_at)) {
            io.record(Record::take(a, now, None));
        }
    }
}
