//! What to tell each CONNECTED peer about a destination (PROTOCOL §6.3).
//!
//! Wire semantics stay Candy's (`delay = metric + own cost`, `next = self`,
//! [`WITHDRAWN`] to delete), with split horizon and poison reverse on top:
//! the peer a route goes through is told the route is withdrawn, so it can
//! never pick us as its way back. A stock Candy receiver only deletes on a
//! withdrawal if its own entry already goes through us, which is exactly the
//! two-node loop we want to break, so poisoning is harmless to it.

use std::net::Ipv4Addr;

use super::table::Route;
use super::{MAX_METRIC, WITHDRAWN};
use crate::proto::udp::RouteAdvert;

/// The `delay` we advertise for `route` to `to`.
pub(crate) fn delay_for(route: Option<Route>, to: Ipv4Addr, cost: u32) -> i32 {
    match route {
        Some(r) if r.next != to => {
            let d = r.metric.saturating_add(cost);
            // Beyond the ceiling stock peers read a withdrawal anyway; say
            // so explicitly rather than rely on their range check.
            if d > MAX_METRIC {
                WITHDRAWN
            } else {
                d as i32
            }
        }
        _ => WITHDRAWN,
    }
}

/// The ROUTE for `dst` to peer `to`, or `None` when `to` is `dst` itself
/// (it ignores news about itself, so the datagram would be wasted).
pub(crate) fn message_for(
    own: Ipv4Addr,
    cost: u32,
    dst: Ipv4Addr,
    route: Option<Route>,
    to: Ipv4Addr,
) -> Option<RouteAdvert> {
    (to != dst).then(|| RouteAdvert {
        dst,
        next: own,
        delay_ms: delay_for(route, to, cost),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 202, d)
    }

    #[test]
    fn protocol_example_delay_is_metric_plus_cost() {
        // PROTOCOL §12: .2 advertises .3 with delay 25 (metric 20, cost 5).
        let r = Some(Route {
            next: ip(3),
            metric: 20,
        });
        assert_eq!(
            message_for(ip(2), 5, ip(3), r, ip(1)),
            Some(RouteAdvert {
                dst: ip(3),
                next: ip(2),
                delay_ms: 25
            })
        );
        assert_eq!(message_for(ip(2), 5, ip(3), r, ip(3)), None);
        assert_eq!(
            message_for(ip(2), 5, ip(3), None, ip(1)).unwrap().delay_ms,
            WITHDRAWN
        );
    }

    #[test]
    fn poison_reverse_and_ceiling() {
        let via4 = Some(Route {
            next: ip(4),
            metric: 30,
        });
        assert_eq!(delay_for(via4, ip(4), 5), WITHDRAWN);
        assert_eq!(delay_for(via4, ip(1), 5), 35);
        let long = Some(Route {
            next: ip(4),
            metric: 996,
        });
        assert_eq!(delay_for(long, ip(1), 4), 1000);
        assert_eq!(delay_for(long, ip(1), 5), WITHDRAWN);
    }
}
