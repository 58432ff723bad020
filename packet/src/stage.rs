//! The `Stage` trait every application implements, and the verdicts a stage returns.
//!
//! Stages in the VPP manner: a name, an enum of drop reasons with counters, a verdict per
//! packet. A drop is a counter increment with a reason, never an allocated error.

use crate::buffer::Buffer;

/// Why the fast path hands a packet to the management core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PuntReason {
    /// An ARP packet the management core must learn from (replies, requests for others).
    Arp = 0,
    /// The next hop has no resolved link-layer address yet.
    Resolve = 1,
    /// TTL expired in transit: answer ICMP time exceeded.
    TtlExceeded = 2,
    /// No route: answer ICMP destination unreachable (net).
    NoRoute = 3,
    /// Addressed to the router and not handled on the fast path (port unreachable etc.).
    Local = 4,
    /// Needs fragmentation and DF is set: answer ICMP frag needed.
    FragNeeded = 5,
    /// Owned by an application controller on the management core.
    Application = 6,
    /// To the limited broadcast (255.255.255.255) or the receiving link's directed broadcast:
    /// delivered locally, never forwarded (RFC 1812 4.2.2.11, 5.3.5), no ICMP error.
    Broadcast = 7,
}

impl PuntReason {
    /// Every reason, in discriminant order.
    pub const ALL: [PuntReason; 8] = [
        PuntReason::Arp,
        PuntReason::Resolve,
        PuntReason::TtlExceeded,
        PuntReason::NoRoute,
        PuntReason::Local,
        PuntReason::FragNeeded,
        PuntReason::Application,
        PuntReason::Broadcast,
    ];

    /// Stable name for counters and traces.
    pub fn name(self) -> &'static str {
        match self {
            PuntReason::Arp => "arp",
            PuntReason::Resolve => "resolve",
            PuntReason::TtlExceeded => "ttl-exceeded",
            PuntReason::NoRoute => "no-route",
            PuntReason::Local => "local",
            PuntReason::FragNeeded => "frag-needed",
            PuntReason::Application => "application",
            PuntReason::Broadcast => "broadcast",
        }
    }

    /// Decode from the discriminant.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// What a stage decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit on this port (the stage has written the link-layer header).
    Tx(u16),
    /// Hand to the next stage of the pipeline.
    Next,
    /// Hand to the management core.
    Punt(PuntReason),
    /// Drop, counting under the stage's drop reason with this index.
    Drop(u16),
    /// Hand to run-to-completion worker `w`, the one whose tables hold this packet's state (a
    /// call's transaction, for its reply): the engine moves it over a handoff ring and it
    /// enters that worker's pipeline as if received there. Only the engine produces it.
    Handoff(u16),
}

/// A stage's drop reasons: a `#[repr(u16)]` enum whose discriminants index [`DropReason::NAMES`].
pub trait DropReason: Copy {
    /// Counter names, indexed by discriminant.
    const NAMES: &'static [&'static str];
    /// This reason's index.
    fn index(self) -> u16;
    /// The verdict dropping a packet for this reason.
    #[inline]
    fn drop(self) -> Verdict {
        Verdict::Drop(self.index())
    }
}

/// One node of the packet pipeline.
pub trait Stage {
    /// The stage's drop reasons.
    type Reason: DropReason;
    /// Stage name for counters and traces.
    const NAME: &'static str;
    /// Process one packet in place and decide where it goes.
    fn process<B: Buffer>(&mut self, pkt: &mut B) -> Verdict;

    /// Process a burst (`verdicts.len() >= pkts.len()`). The pipeline's convention: a packet
    /// whose verdict is [`Verdict::Next`] on entry is this stage's to process; any other verdict
    /// was decided by an earlier stage and is left alone. Stages override this to work in
    /// vector passes (parse all, look up all, rewrite all), so independent table loads of
    /// different packets overlap.
    #[inline]
    fn process_burst<B: Buffer>(&mut self, pkts: &mut [B], verdicts: &mut [Verdict]) {
        for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
            if *v == Verdict::Next {
                *v = self.process(p);
            }
        }
    }
}

/// Declare a `#[repr(u16)]` drop-reason enum with its counter names.
#[macro_export]
macro_rules! drop_reasons {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        $vis enum $name { $($(#[$vm])* $variant),+ }
        impl $crate::stage::DropReason for $name {
            const NAMES: &'static [&'static str] = &[$($text),+];
            #[inline]
            fn index(self) -> u16 { self as u16 }
        }
    };
}
